#!/usr/bin/env bash
# Runs the main job end to end on this machine: builds the binaries, starts a directory on a
# free loopback port, brings c2 online, and has c1 chat with it (direct), then sends to c3,
# who is offline, (mailbox) and lets c3 pick its message up. Everything lives in a temporary
# folder that is removed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet -p directory -p peer
bin=target/release
work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

"$bin/directory" --bind 127.0.0.1:0 --data "$work/directory" >"$work/directory.out" 2>"$work/directory.log" &
pids+=($!)
for _ in $(seq 100); do grep -q listening "$work/directory.out" 2>/dev/null && break; sleep 0.05; done
addr=$(sed -E 's/^directory listening on ([^ ]+) .*/\1/' "$work/directory.out")
echo "== $(cat "$work/directory.out")"
peer() { local name=$1; shift; "$bin/peer" --name "$name" --directory "$addr" --home "$work/$name" "$@"; }

peer c3 inbox >/dev/null                  # c3 claims its name once, then goes away
# The binary itself, not the function: $! must be its pid for the cleanup to stop it.
"$bin/peer" --name c2 --directory "$addr" --home "$work/c2" listen >"$work/c2.out" 2>"$work/c2.log" &
pids+=($!)
for _ in $(seq 100); do peer c1 whois c2 2>/dev/null | grep -q ': online' && break; sleep 0.1; done

peer c1 inbox >/dev/null                  # c1 claims its name
echo "== c2 accepts c1 as a contact (a stranger gets no address: its messages are requests)"
peer c2 accept c1
echo "== c1 chats with c2 (direct QUIC)"
printf 'hello c2\nhow are you?\n/to c3\nc3, are you there?\n' | peer c1 chat c2
for _ in $(seq 50); do [ "$(wc -l <"$work/c2.out")" -ge 2 ] && break; sleep 0.1; done
echo "== what c2 saw"
cat "$work/c2.out"
echo "== c2 answers through its running listen process (control socket)"
peer c2 send c1 fine, thanks
echo "== c3 comes back and reads its mailbox"
peer c3 inbox
echo "== c1 reads what came while it was away"
peer c1 inbox
echo "== whois c2"
peer c1 whois c2
