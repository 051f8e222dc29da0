// peer web: the page. Plain JavaScript, no framework, no build step.
//
// The server pushes every change over one WebSocket (see peer/src/web/hub.rs for the events);
// the page keeps a copy of what it shows and redraws from it. Text from the network goes into
// the document only through textContent: it is never parsed as HTML.
"use strict";

const HISTORY_PAGE = 50;
const $ = (id) => document.getElementById(id);

// A size as people read it, in the terminal's units: 1.50 MiB, not 1572864 bytes.
function size(n) {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) {
    n /= 1024;
    i += 1;
  }
  return i === 0 ? `${n} B` : `${n.toFixed(2)} ${units[i]}`;
}

const state = {
  me: null,
  convs: new Map(), // with -> {with, room, unread, presence, last_seen_ms, last_ms, order}
  shown: null,
  chats: new Map(), // with -> {items: [...], complete, limit, loading}
  ws: null,
  backoff: 250,
  progress: null,
};
// Figures for the browser tests: when the first message was drawn, when the last was sent.
window.peerTimings = { firstMessage: null, lastSend: null, connected: 0 };

// ---- the connection -------------------------------------------------------------------

function connect() {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const ws = new WebSocket(`${scheme}://${location.host}/ws`);
  state.ws = ws;
  ws.onopen = () => {
    state.backoff = 250;
  };
  ws.onmessage = (e) => {
    let event;
    try {
      event = JSON.parse(e.data);
    } catch {
      return;
    }
    handle(event);
  };
  ws.onclose = () => {
    if (state.ws !== ws) return;
    state.ws = null;
    setLink(false);
    // The peer restarts, or the network blinks: try again, a little slower each time.
    setTimeout(connect, state.backoff);
    state.backoff = Math.min(state.backoff * 2, 4000);
  };
}

function request(message) {
  if (!state.ws || state.ws.readyState !== WebSocket.OPEN) return false;
  state.ws.send(JSON.stringify(message));
  return true;
}

function setLink(up) {
  const link = $("link");
  link.dataset.link = up ? "up" : "down";
  link.textContent = up ? "connected" : "reconnecting…";
}

// ---- events from the server -------------------------------------------------------------

function handle(ev) {
  switch (ev.type) {
    case "hello":
      state.me = ev.me;
      document.body.dataset.attached = ev.attached;
      $("me").textContent = ev.me ? `${ev.me} · ${ev.key}` : "peer";
      state.convs.clear();
      ev.conversations.forEach(addConv);
      setLink(true);
      window.peerTimings.connected += 1;
      directory(ev.directory);
      // Everything may have changed while away: read the shown conversation afresh.
      state.chats.clear();
      if (state.shown) {
        addConv({ with: state.shown, room: state.shown.startsWith("#") });
        loadHistory(state.shown, HISTORY_PAGE);
        request({ type: "open", with: state.shown });
      }
      break;
    case "conversation":
    case "presence":
      addConv(ev.conversation);
      break;
    case "unread":
      conv(ev.with).unread = ev.unread;
      break;
    case "directory":
      directory(ev.directory);
      break;
    case "message": {
      const c = conv(ev.with);
      c.last_ms = Date.now();
      const chat = state.chats.get(ev.with);
      if (chat) chat.items.push({ kind: "message", request: ev.request, ...ev.message });
      if (ev.message.state === "received") arrived(ev.with, ev.unread, ev.message.from, ev.message.body);
      break;
    }
    case "state": {
      const m = findMessage(ev.with, (m) => m.cid === ev.cid);
      if (m) Object.assign(m, { id: ev.id, state: ev.state, detail: ev.detail });
      break;
    }
    case "receipt": {
      const chat = state.chats.get(ev.with);
      for (const m of chat ? chat.items : []) {
        if (m.id && ev.ids.includes(m.id) && (m.state === "queued" || m.state === "sending")) {
          m.state = "delivered_later";
          m.detail = ev.at_ms;
        }
      }
      break;
    }
    case "history": {
      const chat = state.chats.get(ev.with) || { limit: HISTORY_PAGE };
      const notes = (chat.items || []).filter((i) => i.kind === "notice");
      chat.items = ev.messages.map((m) => ({ kind: "message", ...m }));
      // Files received come with the history; notices are the page's own: kept, by time.
      for (const f of ev.files || []) chat.items.push({ kind: "file", ...f });
      for (const n of notes) chat.items.push(n);
      chat.items.sort((a, b) => a.at_ms - b.at_ms);
      chat.complete = ev.complete;
      chat.loading = false;
      state.chats.set(ev.with, chat);
      break;
    }
    case "file": {
      const c = conv(ev.with);
      c.last_ms = Date.now();
      const chat = state.chats.get(ev.with);
      if (chat) chat.items.push({ kind: "file", ...ev.file });
      arrived(ev.with, ev.unread, ev.file.from, `sent a file: ${ev.file.name}`);
      break;
    }
    case "file_progress":
      progress(ev.with, ev.done, ev.total, `sending to ${ev.with}`);
      break;
    case "file_arriving":
      if (ev.stopped || ev.done >= ev.total) progress(null);
      else progress(ev.with, ev.done, ev.total, `receiving ${ev.name} from ${ev.with}`);
      break;
    case "file_sent":
      progress(null);
      note(ev.with, ev.text, !ev.ok);
      break;
    case "notice":
      note(ev.with, ev.text, ev.alarm);
      break;
    case "show":
      show(ev.with);
      break;
  }
  draw();
}

function addConv(c) {
  const known = state.convs.get(c.with);
  state.convs.set(c.with, {
    order: known ? known.order : state.convs.size,
    unread: 0,
    presence: "unknown",
    last_ms: 0,
    ...known,
    ...c,
  });
}

function conv(w) {
  if (!state.convs.has(w)) addConv({ with: w, room: w.startsWith("#") });
  return state.convs.get(w);
}

function findMessage(w, pred) {
  const chat = state.chats.get(w);
  return chat ? chat.items.find((i) => i.kind === "message" && pred(i)) : undefined;
}

function directory(d) {
  const el = $("directory");
  el.textContent = d.text;
  el.dataset.alarm = d.state === "unreachable" || d.state === "refused";
}

function note(w, text, alarm) {
  const target = w || state.shown;
  const chat = target && state.chats.get(target);
  if (chat) chat.items.push({ kind: "notice", text, alarm, at_ms: Date.now() });
  else {
    const el = $("directory");
    el.textContent = text;
    el.dataset.alarm = alarm;
  }
}

// A message or file came in: unread unless shown and seen; a notification if not in view.
function arrived(w, unread, from, text) {
  const c = conv(w);
  const seen = w === state.shown && !document.hidden;
  if (seen) {
    c.unread = 0;
    request({ type: "read", with: w });
  } else {
    c.unread = unread ?? c.unread + 1;
  }
  if (!seen && "Notification" in window && Notification.permission === "granted") {
    const title = w.startsWith("#") ? `${from} in ${w}` : from;
    try {
      const n = new Notification(title, { body: text, tag: w });
      n.onclick = () => {
        window.focus();
        show(w);
      };
    } catch {
      // Some browsers allow notifications only from a service worker: the title still counts.
    }
  }
}

// ---- what the user does -----------------------------------------------------------------

function show(w) {
  state.shown = w;
  const c = conv(w);
  c.unread = 0;
  document.body.classList.add("viewing");
  request({ type: "open", with: w });
  request({ type: "read", with: w });
  if (!state.chats.has(w)) loadHistory(w, HISTORY_PAGE);
  draw(true);
  $("input").focus();
}

function loadHistory(w, limit) {
  const chat = state.chats.get(w) || { items: [], complete: false };
  chat.limit = limit;
  chat.loading = request({ type: "history", with: w, limit });
  state.chats.set(w, chat);
}

function send() {
  const input = $("input");
  const body = input.value;
  if (!state.shown || body.trim() === "") return;
  if (!request({ type: "send", to: state.shown, body })) {
    note(state.shown, "not connected to peer web: the message was not sent", true);
    draw();
    return;
  }
  window.peerTimings.lastSend = Date.now();
  input.value = "";
  grow();
}

function upload(file) {
  const to = state.shown;
  if (!to) return;
  if (to.startsWith("#")) {
    note(to, "files cannot be sent to a room yet", true);
    draw();
    return;
  }
  const xhr = new XMLHttpRequest();
  xhr.open("POST", `/upload?to=${encodeURIComponent(to)}&name=${encodeURIComponent(file.name)}`);
  xhr.upload.onprogress = (e) => {
    if (e.lengthComputable) progress(to, e.loaded, e.total, `uploading to ${to}`);
  };
  xhr.onload = () => {
    if (xhr.status !== 202) {
      progress(null);
      note(to, `${file.name}: ${xhr.responseText.trim() || xhr.status}`, true);
      draw();
    } else {
      note(to, `sending ${file.name} (${size(file.size)})`, false);
      draw();
    }
  };
  xhr.onerror = () => {
    progress(null);
    note(to, `${file.name}: the upload failed`, true);
    draw();
  };
  xhr.send(file);
}

function progress(w, done, total, what) {
  const box = $("progress");
  if (!w) {
    box.hidden = true;
    return;
  }
  box.hidden = false;
  $("bar").value = total ? Math.round((done * 100) / total) : 0;
  $("progress-text").textContent = `${what}: ${size(done)} of ${size(total)}`;
}

function grow() {
  const input = $("input");
  input.style.height = "auto";
  input.style.height = `${Math.min(input.scrollHeight + 2, 160)}px`;
}

// ---- drawing -------------------------------------------------------------------------------

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}

// One colour per sender, the same on every load: a hue from 40 to 320, never red (which the
// page keeps for what failed).
function colour(name) {
  let h = 0;
  for (const ch of name || "") h = (h * 31 + ch.codePointAt(0)) % 280;
  return `hsl(${40 + h}, 55%, 38%)`;
}

function time(ms) {
  if (!ms) return "";
  const d = new Date(ms);
  const today = new Date().toDateString() === d.toDateString();
  return today
    ? d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" })
    : d.toLocaleString([], { month: "short", day: "numeric", hour: "2-digit", minute: "2-digit" });
}

const STATES = {
  sending: "sending…",
  delivered: "✓ delivered",
  queued: "✉ queued",
  delivered_later: "✓ delivered later",
  failed: "✗ failed",
};

// How a direct link came about, where it is worth saying (as the terminal says it): a plain
// link over the internet ("public") goes unsaid.
const PATHS = { lan: "same network", punched: "through NAT" };

function stateText(m) {
  let text = STATES[m.state] || "";
  if (m.state === "delivered" && PATHS[m.detail]) text += ` (${PATHS[m.detail]})`;
  if (m.state === "delivered_later" && m.detail) text += ` ${time(m.detail)}`;
  if (m.state === "failed" && m.detail) text += `: ${m.detail}`;
  return text;
}

function drawList() {
  const list = $("list");
  const convs = [...state.convs.values()].sort((a, b) => b.last_ms - a.last_ms || a.order - b.order);
  list.replaceChildren(
    ...convs.map((c) => {
      const li = el("li");
      li.dataset.with = c.with;
      li.setAttribute("aria-current", c.with === state.shown);
      const dot = el("span", "presence", c.room ? "#" : undefined);
      dot.dataset.presence = c.room ? "room" : c.presence;
      dot.title = presenceText(c);
      li.append(dot, el("span", "name", c.with));
      const unread = el("span", "unread", String(c.unread));
      unread.dataset.unread = c.unread;
      li.append(unread);
      li.onclick = () => show(c.with);
      return li;
    }),
  );
  const total = convs.reduce((n, c) => n + c.unread, 0);
  const name = state.me ? `${state.me} — peer` : "peer";
  document.title = total ? `(${total}) ${name}` : name;
}

function presenceText(c) {
  if (c.room) return "room";
  if (c.presence === "online") return "online";
  if (c.presence === "offline") return c.last_seen_ms ? `offline, last seen ${time(c.last_seen_ms)}` : "offline";
  return "presence unknown";
}

function drawChat(toBottom) {
  const box = $("messages");
  const w = state.shown;
  $("title").textContent = w || "no conversation";
  const p = $("presence");
  if (w) {
    const c = conv(w);
    p.dataset.presence = c.room ? "room" : c.presence;
    p.textContent = c.room ? "room" : "";
    p.title = presenceText(c);
  }
  const chat = w && state.chats.get(w);
  if (!chat) {
    box.replaceChildren(el("div", "notice", "Pick a conversation, or open one by name (or #room)."));
    return;
  }
  const fromBottom = box.scrollHeight - box.scrollTop - box.clientHeight;
  const nodes = [];
  if (!chat.complete) nodes.push(el("div", "more", chat.loading ? "loading…" : "scroll up for earlier messages"));
  for (const item of chat.items) nodes.push(drawItem(item));
  box.replaceChildren(...nodes);
  // Stay at the bottom when there; keep the place when earlier messages come in above.
  box.scrollTop = toBottom || fromBottom < 40 ? box.scrollHeight : box.scrollHeight - box.clientHeight - fromBottom;
  if (window.peerTimings.firstMessage === null && chat.items.some((i) => i.kind === "message")) {
    window.peerTimings.firstMessage = performance.now();
  }
}

function drawItem(item) {
  if (item.kind === "notice") {
    const n = el("div", "notice", item.text);
    n.dataset.alarm = !!item.alarm;
    return n;
  }
  const mine = item.from === state.me;
  const div = el("div", mine ? "msg mine" : "msg");
  const meta = el("div", "meta");
  const from = el("span", "from", item.from || "");
  from.style.color = colour(item.from);
  meta.append(from, el("span", "time", time(item.at_ms)));
  if (item.kind === "file") {
    div.classList.add("file");
    const a = el("a", "download", `${item.name} (${size(item.size)})`);
    a.href = item.url;
    a.download = item.name;
    div.append(meta, a);
    return div;
  }
  div.dataset.state = item.state;
  if (item.id) div.dataset.id = item.id;
  if (item.cid) div.dataset.cid = item.cid;
  if (mine) {
    const s = el("span", "state", stateText(item));
    s.dataset.state = item.state;
    meta.append(s);
  } else if (item.detail === "via the mailbox") {
    meta.append(el("span", "via", "via the mailbox"));
  }
  if (item.request) meta.append(el("span", "request", `message request: /accept ${item.from} to accept`));
  div.append(meta, el("div", "body", item.body));
  return div;
}

function draw(toBottom) {
  drawList();
  drawChat(toBottom);
}

// ---- wiring --------------------------------------------------------------------------------

function start() {
  $("composer").addEventListener("submit", (e) => {
    e.preventDefault();
    send();
  });
  $("input").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
      e.preventDefault();
      send();
    }
  });
  $("input").addEventListener("input", grow);
  $("new").addEventListener("submit", (e) => {
    e.preventDefault();
    const w = $("new-name").value.trim();
    if (w) {
      $("new-name").value = "";
      show(w);
    }
  });
  $("back").addEventListener("click", () => {
    document.body.classList.remove("viewing");
  });
  $("file").addEventListener("change", (e) => {
    for (const f of e.target.files) upload(f);
    e.target.value = "";
  });
  const main = $("main");
  main.addEventListener("dragover", (e) => {
    e.preventDefault();
    main.classList.add("dragging");
  });
  main.addEventListener("dragleave", (e) => {
    if (e.target === $("drop")) main.classList.remove("dragging");
  });
  main.addEventListener("drop", (e) => {
    e.preventDefault();
    main.classList.remove("dragging");
    for (const f of e.dataTransfer.files) upload(f);
  });
  $("messages").addEventListener("scroll", () => {
    const w = state.shown;
    const chat = w && state.chats.get(w);
    if (chat && !chat.complete && !chat.loading && $("messages").scrollTop < 40) {
      loadHistory(w, chat.limit + HISTORY_PAGE);
      drawChat();
    }
  });
  document.addEventListener("visibilitychange", () => {
    if (!document.hidden && state.shown) {
      conv(state.shown).unread = 0;
      request({ type: "read", with: state.shown });
      drawList();
    }
  });
  // Browsers ask for notifications only after the user did something on the page.
  const ask = () => {
    if ("Notification" in window && Notification.permission === "default") Notification.requestPermission();
  };
  document.addEventListener("click", ask, { once: true });
  document.addEventListener("keydown", ask, { once: true });
  // The conversation in the address (#bob) is shown first.
  const wanted = decodeURIComponent(location.hash.slice(1));
  if (wanted) show(wanted);
  connect();
  draw();
}

start();
