//! The directory's identity: its fingerprint, how peers pin it, and its clean exit.

use anyhow::{ensure, Context, Result};
use tests::{directory_fingerprint, DirOpts, Net, Sig, SHORT};

/// The same 64 hex digits with the first one changed.
fn wrong(fp: &str) -> String {
    let first = if fp.starts_with('0') { '1' } else { '0' };
    format!("{first}{}", &fp[1..])
}

/// `--pin` with the directory's fingerprint is accepted, any other is refused.
#[test]
fn explicit_pin_right_accepted_wrong_refused() -> Result<()> {
    let net = Net::new()?;
    let fp = net.dir().fingerprint().to_string();

    net.peer("c1")
        .pin(&fp)
        .args(["inbox"])
        .run(SHORT)?
        .success()?;
    net.peer("c2")
        .pin(&wrong(&fp))
        .args(["inbox"])
        .run(SHORT)?
        .failure(&["fingerprint", "pinned"])?;
    // A home that already pinned the right key also refuses a wrong --pin.
    net.peer("c1")
        .pin(&wrong(&fp))
        .args(["inbox"])
        .run(SHORT)?
        .failure(&["fingerprint", "pinned"])?;
    // The wrong pin registered nothing: c2 is unknown to the directory.
    net.peer("c1")
        .args(["send", "c2", "are you there"])
        .run(SHORT)?
        .failure(&["no peer"])?;
    net.assert_no_panics()
}

/// A peer pins the directory's key on first use. A different directory (new key) on the same
/// address is refused; the original directory, restarted on its data, is accepted again.
#[test]
fn key_change_on_same_address_is_refused() -> Result<()> {
    let mut net = Net::new()?;
    let addr = net.dir().addr();
    let fp_a = net.dir().fingerprint().to_string();
    net.register("c1")?; // first use: pins A's key for this address

    net.dir_mut().terminate()?;
    let mut b = net.start_directory(DirOpts {
        bind: Some(addr),
        ..DirOpts::default()
    })?;
    ensure!(
        b.addr() == addr,
        "B should be on A's address {addr}, is on {}",
        b.addr()
    );
    ensure!(
        b.fingerprint() != fp_a,
        "a directory with a fresh data dir has A's fingerprint {fp_a}"
    );

    net.peer("c1")
        .args(["inbox"])
        .run(SHORT)?
        .failure(&["fingerprint", "pinned"])?;
    // A peer that never met A pins B on first use.
    net.peer("c9")
        .directory(b.addr())
        .args(["inbox"])
        .run(SHORT)?
        .success()?;
    b.terminate()?;

    // A again, same data: same key, so c1 is happy again.
    net.dir_mut().restart()?;
    ensure!(
        net.dir().fingerprint() == fp_a,
        "restart on the same data changed the fingerprint: {fp_a} -> {}",
        net.dir().fingerprint()
    );
    net.peer("c1").args(["inbox"]).run(SHORT)?.success()?;
    net.assert_no_panics()
}

/// `directory fingerprint --data DIR` prints the start line's fingerprint; SIGTERM and SIGINT
/// both end the directory with status 0; the key survives restarts.
#[test]
fn fingerprint_command_and_clean_exit() -> Result<()> {
    let mut net = Net::new()?;
    let fp = net.dir().fingerprint().to_string();
    // Serve one peer first (SIGTERM right after the start line has its own test below).
    net.register("c1")?;

    net.dir_mut().terminate()?; // requires exit 0
    let printed = directory_fingerprint(net.dir().data())?;
    ensure!(
        printed == fp,
        "`directory fingerprint` printed {printed:?}, the start line said {fp:?}"
    );

    net.dir_mut().restart()?;
    ensure!(
        net.dir().fingerprint() == fp,
        "fingerprint changed across SIGTERM restart"
    );
    net.register("c1")?;
    let st = net.dir_mut().stop_with(Sig::SIGINT)?;
    ensure!(
        st.success(),
        "directory exited with {st} after SIGINT, expected 0"
    );

    net.dir_mut().restart()?;
    ensure!(
        net.dir().fingerprint() == fp,
        "fingerprint changed across SIGINT restart"
    );
    net.register("c1")?;
    net.assert_no_panics()
}

/// SIGTERM as soon as the start line is out still ends the directory with status 0: the
/// handler must be in place before it announces itself.
#[test]
fn sigterm_right_after_start_line_exits_zero() -> Result<()> {
    let mut net = Net::new()?;
    for round in 0..10 {
        if round > 0 {
            net.dir_mut().restart()?;
        }
        net.dir_mut()
            .terminate()
            .with_context(|| format!("round {round}"))?;
    }
    net.assert_no_panics()
}

/// A server on the directory's address with another key never sees the certificate of a peer
/// that pinned the directory: the pin is checked inside the handshake, which fails before the
/// peer sends its certificate. (Before, the peer completed the handshake, certificate
/// included, and only then compared the key.)
#[test]
fn an_impostor_never_gets_the_peers_certificate() -> Result<()> {
    use common::{defaults::ALPN_DIRECTORY, tls, Identity};
    use std::sync::mpsc;
    let mut net = Net::new()?;
    let addr = net.dir().addr();
    net.register("c1")?; // pins the directory's key
    net.dir_mut().terminate()?;

    // The impostor serves on a thread of its own while the test waits for the peer.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    // Each handshake's outcome, sent as the impostor learns it: the peer can exit on its
    // side of a failed handshake before the impostor's side has failed too.
    let (seen, outcomes) = mpsc::channel::<String>();
    let server = {
        let _guard = rt.enter();
        let impostor = Identity::generate("impostor")?;
        quinn::Endpoint::server(tls::server_config(&impostor, ALPN_DIRECTORY)?, addr)?
    };
    let accepting = {
        let server = server.clone();
        rt.spawn(async move {
            while let Some(incoming) = server.accept().await {
                let outcome = match incoming.await {
                    Ok(conn) => match tls::remote_key(&conn) {
                        Some(key) => format!("got the certificate of {key}"),
                        None => "a connection without a certificate".into(),
                    },
                    Err(e) => format!("handshake failed: {e}"),
                };
                if seen.send(outcome).is_err() {
                    break;
                }
            }
        })
    };
    let out = net.peer("c1").args(["inbox"]).run(SHORT)?;
    out.failure(&["fingerprint", "pinned"])?;
    let first = outcomes
        .recv_timeout(SHORT)
        .context("c1 never reached the impostor")?;
    let tried: Vec<String> = std::iter::once(first).chain(outcomes.try_iter()).collect();
    server.close(0u32.into(), b"done");
    accepting.abort();
    ensure!(
        tried.iter().all(|t| t.starts_with("handshake failed")),
        "the impostor saw: {tried:?}"
    );
    net.assert_no_panics()
}
