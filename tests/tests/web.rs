//! `peer web`: the page in a real browser (headless chromium through chromedriver) talking to
//! bob on the command line, and the server's refusals checked with a plain HTTP client.
//!
//! Without chromium and chromedriver the browser scenarios are skipped with a loud line, and
//! fail when `CI=true` (`.ci/run` installs both). They print two figures, measured, not
//! asserted: from opening the page to the first message drawn, and from pressing Enter in the
//! page to the message's line on bob's `chat`.

use anyhow::{ensure, Context, Result};
use serde_json::json;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};
use tests::{
    body, browser_available, http, is_message_from, is_type, now_ms, poll_until, workspace_root,
    Browser, Net, PeerCmd, Running, SHORT,
};

/// Long enough for a debug build on a slow machine; every wait ends as soon as it can.
const WAIT: Duration = Duration::from_secs(30);
/// WebDriver's key codes.
const ENTER: &str = "\u{E007}";
const SHIFT: &str = "\u{E008}";
const RELEASE: &str = "\u{E000}";

/// `peer web --bind ADDR` for `name`, and the page's address from its first line.
fn web(net: &Net, name: &str, bind: &str) -> Result<(Running, String, SocketAddr)> {
    web_with(net.peer(name), bind)
}

/// `cmd` + `web --bind ADDR`, and the page's address from its first line.
fn web_with(cmd: PeerCmd, bind: &str) -> Result<(Running, String, SocketAddr)> {
    let mut running = cmd.args(["web", "--bind", bind]).spawn()?;
    let url = running.wait_line("the page's address", WAIT, |l| l.starts_with("http://"))?;
    let addr = url
        .trim_start_matches("http://")
        .split('/')
        .next()
        .context("no address in the url")?
        .parse()
        .with_context(|| format!("no address in {url}"))?;
    Ok((running, url, addr))
}

/// The token in a page address.
fn token(url: &str) -> &str {
    url.split("token=").nth(1).unwrap_or_default()
}

/// JavaScript: the `data-state` of our last message whose text is `text`, if drawn.
fn state_of(text: &str) -> String {
    format!(
        "const m = [...document.querySelectorAll('#messages .msg.mine')]
             .filter(m => m.querySelector('.body').textContent === {text});
         return m.length ? m[m.length - 1].dataset.state : null;",
        text = json!(text)
    )
}

/// JavaScript: whether a message of theirs whose text is `text` is drawn.
fn shows_theirs(text: &str) -> String {
    format!(
        "return [...document.querySelectorAll('#messages .msg:not(.mine) .body')]
             .some(b => b.textContent === {text});",
        text = json!(text)
    )
}

/// JavaScript: the presence `with` has in the conversation list.
fn presence_of(with: &str) -> String {
    format!(
        "const p = document.querySelector('#list li[data-with={with}] .presence');
         return p ? p.dataset.presence : null;",
        with = json!(with)
    )
}

fn wait_state(browser: &Browser, text: &str, want: &str) -> Result<()> {
    browser.wait_for(
        &format!("the page to show {text:?} as {want}"),
        WAIT,
        &format!(
            "const s = (() => {{ {} }})(); return s === {} ? s : null;",
            state_of(text),
            json!(want)
        ),
    )?;
    Ok(())
}

fn screenshot_path(name: &str) -> std::path::PathBuf {
    workspace_root().join("target").join(name)
}

/// A browser on `url` + `fragment` (the conversation to show), `size` pixels, once the page
/// is connected to its peer.
fn open_page(net: &Net, url: &str, fragment: &str, size: (u32, u32)) -> Result<Browser> {
    let browser = Browser::start(&net.root().join("browser"), size.0, size.1)?;
    browser.goto(&format!("{url}{fragment}"))?;
    browser.wait_for(
        "the page to connect",
        WAIT,
        "return window.peerTimings.connected > 0",
    )?;
    Ok(browser)
}

/// The page refuses a request without the token, with a foreign `Origin` or `Host`; the first
/// load with the token sets the cookie, and the cookie then lets the page in. A bind that is
/// not loopback needs --allow-remote.
#[test]
fn requests_without_the_token_or_from_elsewhere_are_refused() -> Result<()> {
    let net = Net::new()?;
    let (mut alice, url, addr) = web(&net, "alice", "127.0.0.1:0")?;
    let secret = token(&url).to_string();
    ensure!(
        secret.len() == 64,
        "the address has no 64-digit token: {url}"
    );
    let with_token = format!("/?token={secret}");
    let host = addr.to_string();
    let own_origin = format!("http://{addr}");

    let bare = http(addr, "GET", "/", &[], b"")?;
    ensure!(bare.status == 403, "no token, yet {}", bare.status);
    for path in ["/app.js", "/ws", "/files/0", "/?token=00"] {
        let got = http(addr, "GET", path, &[], b"")?;
        ensure!(
            got.status == 403,
            "{path} without the token: {}",
            got.status
        );
    }
    let upload = http(addr, "POST", "/upload?to=bob&name=x", &[], b"data")?;
    ensure!(
        upload.status == 403,
        "upload without the token: {}",
        upload.status
    );

    let first = http(addr, "GET", &with_token, &[], b"")?;
    ensure!(
        first.status == 303 && first.header("location") == Some("/"),
        "the first load should set the cookie and leave the token: {} {:?}",
        first.status,
        first.headers
    );
    let set_cookie = first.header("set-cookie").context("no cookie set")?;
    ensure!(
        set_cookie.contains("HttpOnly") && set_cookie.contains("SameSite=Strict"),
        "cookie without HttpOnly/SameSite: {set_cookie}"
    );
    let cookie = set_cookie.split(';').next().unwrap_or_default().to_string();
    let page = http(addr, "GET", "/", &[("Cookie", &cookie)], b"")?;
    ensure!(
        page.status == 200,
        "the cookie does not let the page in: {}",
        page.status
    );
    let html = String::from_utf8_lossy(&page.body);
    ensure!(html.contains("/app.js"), "not the page: {html}");
    let csp = page.header("content-security-policy").unwrap_or_default();
    ensure!(
        csp.contains("script-src 'self'"),
        "no CSP: {:?}",
        page.headers
    );
    let js = http(addr, "GET", "/app.js", &[("Cookie", &cookie)], b"")?;
    ensure!(js.status == 200, "app.js with the cookie: {}", js.status);

    let foreign = [
        ("Origin", "http://evil.example"),
        ("Origin", "null"),
        ("Host", "evil.example"),
        ("Host", "attacker.test:80"),
    ];
    for (header, value) in foreign {
        let mut headers = vec![("Cookie", cookie.as_str()), (header, value)];
        if header == "Origin" {
            headers.push(("Host", &host));
        }
        for path in [with_token.as_str(), "/", "/ws", "/app.js"] {
            let got = http(addr, "GET", path, &headers, b"")?;
            ensure!(
                got.status == 403,
                "{header}: {value} on {path}: {}, expected 403",
                got.status
            );
        }
    }
    let own = [("Cookie", cookie.as_str()), ("Origin", own_origin.as_str())];
    let ok = http(addr, "GET", "/app.js", &own, b"")?;
    ensure!(ok.status == 200, "own Origin refused: {}", ok.status);
    alice.terminate()?;

    let out = net
        .peer("carol")
        .args(["web", "--bind", "0.0.0.0:0"])
        .run(SHORT)?
        .failure(&["--allow-remote"])?;
    ensure!(
        out.stderr.trim().lines().count() == 1,
        "one line expected: {}",
        out.stderr
    );

    // Asked for: served on every interface, with a warning, and any name for the machine.
    let mut dave = net
        .peer("dave")
        .args(["web", "--bind", "0.0.0.0:0", "--allow-remote"])
        .spawn()?;
    let url = dave.wait_line("the page's address", WAIT, |l| l.starts_with("http://"))?;
    ensure!(
        url.starts_with("http://127.0.0.1:"),
        "an address to open: {url}"
    );
    let port = url.rsplit(':').next().unwrap_or_default();
    let port: u16 = port.split('/').next().unwrap_or_default().parse()?;
    let lan_host = format!("box.lan:{port}");
    let from_lan = http(
        SocketAddr::from(([127, 0, 0, 1], port)),
        "GET",
        &format!("/?token={}", token(&url)),
        &[("Host", &lan_host)],
        b"",
    )?;
    ensure!(
        from_lan.status == 303,
        "another name for the machine: {}",
        from_lan.status
    );
    ensure!(
        dave.stderr_tail().contains("warning: serving on 0.0.0.0"),
        "no warning: {}",
        dave.stderr_tail()
    );
    dave.terminate()?;
    net.assert_no_panics()
}

/// Alice in the browser and bob on the command line: both ways, presence and delivery states,
/// a file each way, a hostile body shown as text, the phone-sized layout, and the figures.
#[test]
fn alice_in_the_browser_chats_with_bob_on_the_command_line() -> Result<()> {
    if !browser_available()? {
        return Ok(());
    }
    let net = Net::new()?;
    let mut bob = net.peer("bob").json().args(["chat", "alice"]).spawn()?;
    bob.wait_online()?;
    let (mut alice, url, addr) = web(&net, "alice", "127.0.0.1:0")?;
    let browser = open_page(&net, &url, "#bob", (1100, 720))?;
    browser.wait_for(
        "bob to show online",
        WAIT,
        &format!(
            "const p = (() => {{ {} }})(); return p === 'online';",
            presence_of("bob")
        ),
    )?;

    // Alice → bob, with Enter.
    browser.type_into("#input", &format!("hello bob{ENTER}"))?;
    let line = bob.wait_json("alice's message", WAIT, |v| {
        is_message_from(v, "alice") && body(v) == "hello bob"
    })?;
    ensure!(is_type(&line, "message"), "{line}");
    wait_state(&browser, "hello bob", "delivered")?;

    // Shift-Enter is a new line in the same message.
    browser.type_into(
        "#input",
        &format!("line one{SHIFT}{ENTER}{RELEASE}line two{ENTER}"),
    )?;
    bob.wait_json("the two-line message", WAIT, |v| {
        is_message_from(v, "alice") && body(v) == "line one\nline two"
    })?;

    // Bob → alice.
    bob.write_line("hi alice")?;
    browser.wait_for("bob's message in the page", WAIT, &shows_theirs("hi alice"))?;

    // A hostile body is text: shown as typed, nothing run, no element made.
    let hostile = "<script>window.__pwned = 1</script><img src=x onerror=\"window.__pwned = 2\">";
    bob.write_line(hostile)?;
    browser.wait_for("the hostile body, as text", WAIT, &shows_theirs(hostile))?;
    let harm = browser.run(
        "return [window.__pwned === undefined,
                 document.querySelectorAll('#messages img, #messages script').length];",
        json!([]),
    )?;
    ensure!(
        harm == json!([true, 0]),
        "the body was taken as HTML: {harm}"
    );

    // A file from the page arrives intact.
    let file = net.root().join("notes from alice.txt");
    let content: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(&file, &content)?;
    browser.type_into("#file", &file.display().to_string())?;
    let got = bob.wait_json("the file from the page", WAIT, |v| is_type(v, "file"))?;
    let path = got["path"].as_str().context("no path")?;
    let received = std::fs::read(path).with_context(|| format!("read {path}"))?;
    ensure!(
        blake3::hash(&received) == blake3::hash(&content),
        "the file arrived changed ({} bytes, sent {})",
        received.len(),
        content.len()
    );
    ensure!(
        got["blake3"] == blake3::hash(&content).to_hex().as_str(),
        "hash {got}"
    );
    browser.wait_for(
        "the page to say the file was delivered",
        WAIT,
        "return [...document.querySelectorAll('#messages .notice')]
             .some(n => n.textContent.startsWith('file delivered to bob'));",
    )?;

    // A file dropped on the conversation is sent too.
    browser.run(
        "const dt = new DataTransfer();
         dt.items.add(new File(['dropped bytes'], 'dropped.txt'));
         document.getElementById('main')
             .dispatchEvent(new DragEvent('drop', {dataTransfer: dt, bubbles: true, cancelable: true}));",
        json!([]),
    )?;
    let dropped = bob.wait_json("the dropped file", WAIT, |v| {
        is_type(v, "file")
            && v["path"]
                .as_str()
                .is_some_and(|p| p.ends_with("dropped.txt"))
    })?;
    let path = dropped["path"].as_str().context("no path")?;
    ensure!(
        std::fs::read(path)? == b"dropped bytes",
        "the dropped file arrived changed"
    );

    // A file from bob is a download link that gives the same bytes.
    let bobs = net.root().join("from bob.bin");
    std::fs::write(&bobs, b"bob's bytes \x00\x01\x02")?;
    net.peer("bob")
        .args(["send-file", "alice", &bobs.display().to_string()])
        .run(SHORT)?
        .success()?;
    let href = browser.wait_for(
        "the download link",
        WAIT,
        "const a = document.querySelector('#messages a.download');
         return a ? a.getAttribute('href') : null;",
    )?;
    let href = href.as_str().context("href")?;
    let cookie = format!("peer_web_{}={}", addr.port(), token(&url));
    let download = http(addr, "GET", href, &[("Cookie", &cookie)], b"")?;
    ensure!(
        download.status == 200 && download.body == b"bob's bytes \x00\x01\x02",
        "download {href}: {} {:?}",
        download.status,
        String::from_utf8_lossy(&download.body)
    );

    // A message in a conversation not shown: unread in the list and in the tab's title.
    net.send("carol", "alice", "hello from carol")?;
    let unread = browser.wait_for(
        "carol's unread message",
        WAIT,
        "const u = document.querySelector('#list li[data-with=\"carol\"] .unread');
         return u && u.textContent === '1' ? document.title : null;",
    )?;
    ensure!(
        unread == "(1) alice — peer",
        "the title does not count the unread message: {unread}"
    );

    browser.screenshot(&screenshot_path("web-screenshot.png"))?;

    // Bob leaves: the page shows him offline, and a message to him is queued.
    bob.close_stdin();
    bob.finish(Duration::from_secs(20))?;
    browser.wait_for(
        "bob to show offline",
        WAIT,
        &format!(
            "const p = (() => {{ {} }})(); return p === 'offline';",
            presence_of("bob")
        ),
    )?;
    browser.type_into("#input", &format!("are you there?{ENTER}"))?;
    wait_state(&browser, "are you there?", "queued")?;

    // Bob comes back and takes it: delivered later, and online again.
    let mut bob = net.listen("bob")?;
    bob.wait_json("the queued message", WAIT, |v| {
        is_message_from(v, "alice") && body(v) == "are you there?"
    })?;
    wait_state(&browser, "are you there?", "delivered_later")?;
    browser.wait_for(
        "bob to show online again",
        WAIT,
        &format!(
            "const p = (() => {{ {} }})(); return p === 'online';",
            presence_of("bob")
        ),
    )?;

    // Opening the page to the first message drawn.
    let opened = Instant::now();
    browser.goto(&format!("{url}#bob"))?;
    let first = browser.wait_for(
        "the first message after a reload",
        WAIT,
        "return window.peerTimings.firstMessage;",
    )?;
    let wall = opened.elapsed();
    // The file bob sent is still offered after the reload.
    browser.wait_for(
        "the download link after a reload",
        WAIT,
        "return document.querySelector('#messages a.download') !== null;",
    )?;

    // The phone-sized layout: the conversation fills the screen.
    browser.set_window_size(390, 844)?;
    let layout = browser.wait_for(
        "the narrow layout",
        WAIT,
        "const side = getComputedStyle(document.getElementById('side')).display;
         const main = document.getElementById('main').getBoundingClientRect();
         return window.innerWidth <= 700 && side === 'none' && main.width > 300
             ? [window.innerWidth, main.width] : null;",
    )?;
    browser.screenshot(&screenshot_path("web-screenshot-phone.png"))?;

    // From Enter in the page (its clock) to bob's line (the test's: the same machine's), the
    // median of a few, the link being up (bob is on `listen` now).
    let mut trips = Vec::new();
    for i in 0..7 {
        let text = format!("ping {i}");
        browser.type_into("#input", &format!("{text}{ENTER}"))?;
        bob.wait_json("a ping", WAIT, |v| body(v) == text)?;
        let arrived = now_ms();
        let sent_at = browser.run("return window.peerTimings.lastSend", json!([]))?;
        trips.push(arrived.saturating_sub(sent_at.as_u64().unwrap_or(arrived)));
    }
    trips.sort_unstable();
    let round_trip = format!("median {} ms, min {} ms", trips[trips.len() / 2], trips[0]);

    // Reported, never asserted: kept beside the screenshots, where CI prints it.
    let figures = format!(
        "web figures: page opened to first message drawn: {:.0} ms (navigation timing; \
         {} ms by the test's clock, WebDriver included; issue 18's bound 300 ms); Enter in \
         the page to bob's line: {round_trip} (bound 30 ms); phone layout {layout}\n",
        first.as_f64().unwrap_or(-1.0),
        wall.as_millis()
    );
    eprint!("{figures}");
    std::fs::write(screenshot_path("web-figures.txt"), figures)?;
    bob.terminate()?;
    alice.terminate()?;
    net.assert_no_panics()
}

/// The page stays open while `peer web` stops and starts again on the same address: it
/// reconnects by itself, with the same token, and goes on sending and receiving.
#[test]
fn the_page_survives_a_restart_of_the_peer() -> Result<()> {
    if !browser_available()? {
        return Ok(());
    }
    let net = Net::new()?;
    let mut bob = net.listen("bob")?;
    let (mut alice, url, addr) = web(&net, "alice", "127.0.0.1:0")?;
    let browser = open_page(&net, &url, "#bob", (1000, 700))?;
    browser.type_into("#input", &format!("before{ENTER}"))?;
    bob.wait_json("the first message", WAIT, |v| body(v) == "before")?;
    wait_state(&browser, "before", "delivered")?;

    // Each `hello` is a (re)connection, or a new session behind the same one.
    let hellos = browser.run("return window.peerTimings.connected", json!([]))?;
    alice.terminate()?;
    browser.wait_for(
        "the page to see the peer gone",
        WAIT,
        "return document.getElementById('link').dataset.link === 'down';",
    )?;
    let (mut alice, again, _) = web(&net, "alice", &addr.to_string())?;
    ensure!(
        token(&again) == token(&url),
        "the token changed: {url} then {again}"
    );
    browser.wait_for(
        "the page to reconnect by itself",
        WAIT,
        &format!(
            "return window.peerTimings.connected > {hellos}
                 && document.getElementById('link').dataset.link === 'up';"
        ),
    )?;
    // The history came back with it.
    wait_state(&browser, "before", "delivered")?;
    net.send("bob", "alice", "after the restart")?;
    browser.wait_for(
        "bob's message after the restart",
        WAIT,
        &shows_theirs("after the restart"),
    )?;
    browser.type_into("#input", &format!("still here{ENTER}"))?;
    bob.wait_json("the message after the restart", WAIT, |v| {
        is_message_from(v, "alice") && body(v) == "still here"
    })?;
    wait_state(&browser, "still here", "delivered")?;

    // Earlier messages come as the conversation is scrolled up: 50 at first, then more.
    browser.run(
        "for (let i = 0; i < 60; i++) request({type: 'send', to: 'bob', body: `n${i}`});",
        json!([]),
    )?;
    bob.wait_json("the last of 60 messages", WAIT, |v| body(v) == "n59")?;
    wait_state(&browser, "n59", "delivered")?;
    browser.goto(&format!("{url}#bob"))?;
    let count = "const n = document.querySelectorAll('#messages .msg').length;
                 return n > 0 ? n : null;";
    let first = browser.wait_for("the first page of history", WAIT, count)?;
    ensure!(
        first == 50,
        "{first} messages shown at first, expected the last 50"
    );
    browser.run(
        "document.getElementById('messages').scrollTop = 0;
         document.getElementById('messages').dispatchEvent(new Event('scroll'));",
        json!([]),
    )?;
    browser.wait_for(
        "earlier messages after scrolling up",
        WAIT,
        "return document.querySelectorAll('#messages .msg').length === 63
             && document.querySelector('#messages .more') === null;",
    )?;
    bob.terminate()?;
    alice.terminate()?;
    net.assert_no_panics()
}

/// With a `listen` running for alice, `peer web` uses it (as short commands do); when that
/// `listen` stops, `peer web` runs the peer itself, and the page carries on.
#[test]
fn the_page_uses_the_running_listen_and_takes_over_when_it_stops() -> Result<()> {
    if !browser_available()? {
        return Ok(());
    }
    let net = Net::new()?;
    let mut bob = net.listen("bob")?;
    let mut listen = net.listen("alice")?;
    net.send("bob", "alice", "before the page")?;
    let (mut alice, url, _) = web(&net, "alice", "127.0.0.1:0")?;
    let browser = Browser::start(&net.root().join("browser"), 1000, 700)?;
    browser.goto(&url)?;
    browser.wait_for(
        "the page to connect, through the running listen",
        WAIT,
        "return document.body.dataset.attached === 'true';",
    )?;
    // The list has the conversations of the running peer's history.
    browser.wait_for(
        "bob in the list",
        WAIT,
        "return document.querySelector('#list li[data-with=\"bob\"]') !== null;",
    )?;
    browser.click("#list li[data-with=\"bob\"]")?;
    browser.wait_for(
        "the earlier message",
        WAIT,
        &shows_theirs("before the page"),
    )?;
    browser.type_into("#input", &format!("through the listen{ENTER}"))?;
    bob.wait_json("the message", WAIT, |v| body(v) == "through the listen")?;
    wait_state(&browser, "through the listen", "delivered")?;
    net.send("bob", "alice", "to the listen")?;
    browser.wait_for("bob's message", WAIT, &shows_theirs("to the listen"))?;
    listen.wait_json("the listen's own copy", WAIT, |v| {
        body(v) == "to the listen"
    })?;
    // One conversation in every view: what the page sent shows in the listen, and what a
    // command sent through the listen shows in the page.
    listen.wait_json("the page's message, echoed", WAIT, |v| {
        is_type(v, "echo") && v["body"] == "through the listen"
    })?;
    net.send("alice", "bob", "from alice's command line")?;
    wait_state(&browser, "from alice's command line", "delivered")?;

    listen.terminate()?;
    browser.wait_for(
        "peer web to run the peer itself",
        WAIT,
        "return document.body.dataset.attached === 'false'
             && document.getElementById('link').dataset.link === 'up';",
    )?;
    // The history is the same, now read from the file this process holds.
    wait_state(&browser, "through the listen", "delivered")?;
    browser.wait_for("the earlier message", WAIT, &shows_theirs("to the listen"))?;
    net.send("bob", "alice", "to the page's own peer")?;
    browser.wait_for(
        "bob's next message",
        WAIT,
        &shows_theirs("to the page's own peer"),
    )?;
    browser.type_into("#input", &format!("on my own{ENTER}"))?;
    bob.wait_json("the message after the take-over", WAIT, |v| {
        body(v) == "on my own"
    })?;
    wait_state(&browser, "on my own", "delivered")?;
    bob.terminate()?;
    alice.terminate()?;
    net.assert_no_panics()
}

/// A room bob made and invited alice to appears in her list; the page talks in it, and a
/// message in it while another conversation is shown counts as unread.
#[test]
fn rooms_are_conversations_in_the_page() -> Result<()> {
    if !browser_available()? {
        return Ok(());
    }
    let net = Net::new()?;
    let mut bob = net.listen("bob")?;
    let (mut alice, url, _) = web(&net, "alice", "127.0.0.1:0")?;
    let browser = open_page(&net, &url, "#bob", (1000, 700))?;
    for args in [
        ["create", "#team"].as_slice(),
        &["invite", "#team", "alice"],
    ] {
        net.peer("bob")
            .args(["room"])
            .args(args)
            .run(SHORT)?
            .success()?;
    }
    browser.wait_for(
        "#team in the list",
        WAIT,
        "return document.querySelector('#list li[data-with=\"#team\"]') !== null;",
    )?;
    net.peer("bob")
        .args(["send", "#team", "welcome to the team"])
        .run(SHORT)?
        .success()?;
    browser.wait_for(
        "the room's message, unread",
        WAIT,
        "const u = document.querySelector('#list li[data-with=\"#team\"] .unread');
         return u && u.textContent === '1';",
    )?;
    browser.click("#list li[data-with=\"#team\"]")?;
    browser.wait_for(
        "the room's message",
        WAIT,
        &shows_theirs("welcome to the team"),
    )?;
    browser.type_into("#input", &format!("thanks, bob{ENTER}"))?;
    bob.wait_json("alice's message in the room", WAIT, |v| {
        is_type(v, "message") && v["room"] == "#team" && body(v) == "thanks, bob"
    })?;
    wait_state(&browser, "thanks, bob", "delivered")?;

    // The terminal client's commands work in the composer: join a public room, list its
    // members, talk in it.
    net.peer("bob")
        .args(["room", "create", "#lobby", "--public"])
        .run(SHORT)?
        .success()?;
    browser.type_into("#input", &format!("/join #lobby{ENTER}"))?;
    browser.wait_for(
        "the joined room shown, with its members",
        WAIT,
        "return document.getElementById('title').textContent === '#lobby'
             && [...document.querySelectorAll('#messages .notice')]
                 .some(n => n.textContent.startsWith('#lobby (public, 2 members)'));",
    )?;
    browser.type_into("#input", &format!("/members{ENTER}"))?;
    browser.wait_for(
        "the members with their presence",
        WAIT,
        "return [...document.querySelectorAll('#messages .notice')]
             .some(n => n.textContent.includes('bob (admin, online)'));",
    )?;
    browser.type_into("#input", &format!("//join is a word too{ENTER}"))?;
    bob.wait_json("alice's message in the lobby", WAIT, |v| {
        is_type(v, "message") && v["room"] == "#lobby" && body(v) == "/join is a word too"
    })?;
    browser.type_into("#input", &format!("/frobnicate{ENTER}"))?;
    browser.wait_for(
        "an unknown command said so",
        WAIT,
        "return [...document.querySelectorAll('#messages .notice[data-alarm=\"true\"]')]
             .some(n => n.textContent.startsWith('unknown command'));",
    )?;

    // A conversation opened by name; a message to a name nobody has fails, and says why.
    browser.type_into("#new-name", &format!("nobody{ENTER}"))?;
    browser.wait_for(
        "the new conversation shown",
        WAIT,
        "return document.getElementById('title').textContent === 'nobody';",
    )?;
    browser.type_into("#input", &format!("hello?{ENTER}"))?;
    wait_state(&browser, "hello?", "failed")?;
    let why = browser.run(
        "return document.querySelector('#messages .msg.mine .state').textContent;",
        json!([]),
    )?;
    ensure!(
        why.as_str().is_some_and(|w| w.starts_with("✗ failed: ")),
        "no reason shown: {why}"
    );
    bob.terminate()?;
    alice.terminate()?;
    net.assert_no_panics()
}

/// A stranger's message is a message request in the page (alice takes only her contacts'
/// messages directly), and `/accept` typed in the page makes the stranger a contact.
#[test]
fn a_message_request_is_accepted_from_the_page() -> Result<()> {
    if !browser_available()? {
        return Ok(());
    }
    let net = Net::new()?;
    let (mut alice, url, _) = web_with(net.peer("alice").closed(), "127.0.0.1:0")?;
    let browser = open_page(&net, &url, "", (1000, 700))?;
    net.peer("carol")
        .closed()
        .args(["send", "alice", "hi, it's carol"])
        .run(SHORT)?
        .success()?;
    browser.wait_for(
        "carol in the list",
        WAIT,
        "return document.querySelector('#list li[data-with=\"carol\"]') !== null;",
    )?;
    browser.click("#list li[data-with=\"carol\"]")?;
    browser.wait_for("carol's message", WAIT, &shows_theirs("hi, it's carol"))?;
    // The history does not keep whether a message was a request: a live one says so.
    net.peer("carol")
        .closed()
        .args(["send", "alice", "are you there?"])
        .run(SHORT)?
        .success()?;
    browser.wait_for(
        "the request marked",
        WAIT,
        "return [...document.querySelectorAll('#messages .msg .request')]
             .some(r => r.textContent === 'message request: /accept carol to accept');",
    )?;
    browser.type_into("#input", &format!("/accept carol{ENTER}"))?;
    browser.wait_for(
        "carol accepted",
        WAIT,
        "return [...document.querySelectorAll('#messages .notice, #directory')]
             .some(n => n.textContent === 'carol is accepted now');",
    )?;
    let contacts = net.peer("alice").args(["contacts"]).run(SHORT)?.success()?;
    ensure!(
        contacts.stdout.contains("carol"),
        "carol is not a contact: {}",
        contacts.stdout
    );
    alice.terminate()?;
    net.assert_no_panics()
}

/// A WebSocket handshake on `addr` with `cookie`: the open stream and the status line.
fn ws_handshake(addr: SocketAddr, cookie: &str) -> Result<(TcpStream, String)> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(WAIT))?;
    let request = format!(
        "GET /ws HTTP/1.1\r\nHost: {addr}\r\nOrigin: http://{addr}\r\nCookie: {cookie}\r\n\
         Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    );
    stream.write_all(request.as_bytes())?;
    // The head only: a socket that is let in stays open.
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        ensure!(stream.read(&mut byte)? == 1, "closed during the handshake");
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let status = head.lines().next().unwrap_or_default().to_string();
    Ok((stream, status))
}

/// The WebSocket is bounded: at most 16 pages at once (the next is refused until one goes),
/// and a message larger than 256 KiB closes the socket.
#[test]
fn websockets_are_bounded() -> Result<()> {
    let net = Net::new()?;
    let (mut alice, url, addr) = web(&net, "alice", "127.0.0.1:0")?;
    let cookie = format!("peer_web_{}={}", addr.port(), token(&url));
    let mut open = Vec::new();
    for i in 0..16 {
        let (stream, status) = ws_handshake(addr, &cookie)?;
        ensure!(status.contains(" 101 "), "socket {i}: {status}");
        open.push(stream);
    }
    let (_, status) = ws_handshake(addr, &cookie)?;
    ensure!(status.contains(" 503 "), "a 17th socket: {status}");
    drop(open.pop());
    poll_until(
        "a place for a new socket",
        WAIT,
        Duration::from_millis(50),
        || {
            let (stream, status) = ws_handshake(addr, &cookie)?;
            Ok(status.contains(" 101 ").then_some(stream))
        },
    )?;

    // One text frame of 300 KiB, masked as a client's must be.
    let mut socket = open.pop().context("a socket")?;
    let payload = vec![b'a'; 300 * 1024];
    let mut frame = vec![0x81, 0x80 | 127];
    frame.extend_from_slice(&(payload.len() as u64).to_be_bytes());
    frame.extend_from_slice(&[0, 0, 0, 0]);
    frame.extend_from_slice(&payload);
    // The server may close before it has read it all.
    let _ = socket.write_all(&frame);
    let mut buf = [0u8; 64 * 1024];
    socket.set_read_timeout(Some(Duration::from_millis(200)))?;
    let closed = poll_until("the socket closed", WAIT, Duration::from_millis(1), || {
        match socket.read(&mut buf) {
            // The end, or a reset: the server dropped it.
            Ok(0) => Ok(Some(())),
            Err(e) if !matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                Ok(Some(()))
            }
            // The page's `hello`, or nothing yet.
            Ok(_) | Err(_) => Ok(None),
        }
    });
    ensure!(closed.is_ok(), "a 300 KiB message did not close the socket");
    drop(open);
    alice.terminate()?;
    net.assert_no_panics()
}
