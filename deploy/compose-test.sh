#!/usr/bin/env bash
# The multi-peer test in containers: builds the images (deploy/build-images.sh), brings up
# deploy/docker-compose.yml (a directory and peers c1, c2, c3, each `peer --json listen`) under
# a project name of its own, and checks from outside, with `compose exec ... peer --json`:
#
#   1. c1 -> c2 and c2 -> c1 at the same time: every message delivered, and received, `direct`;
#   2. c3 stopped: c1's messages to it are `queued`;
#   3. the directory is killed (docker kill) and started again: healthy with the same key, and
#      the peers reconnect (the queued messages are checked in step 4);
#   4. c3 started again: it receives every queued message (from before and after the kill)
#      exactly once, in order, via `mailbox`;
#   5. c2 cut off (docker network disconnect) in the middle of a conversation: c1's next
#      messages are `queued` within a bound; after docker network connect, c2 receives them
#      all, once, in order, and the conversation carries on;
#   6. a room #ops of c1, c2 and c3: c1's room messages reach both, with "room":"#ops"; with c3
#      stopped they are queued for it, and it gets them from its mailbox when started again;
#   7. no container's log shows a panic, and no container was restarted behind our back.
#
# What each peer received is read from its container's stdout (`docker logs`, stdout only):
# the JSON Lines of its `listen`. Everything is torn down at the end, also on failure; a failure
# names the step and prints expected vs received, then the tail of every container's log.
#
# Environment: COMPOSE_TEST_SKIP_BUILD=1 reuses the images already built (for iterating on this
# script); COMPOSE_TEST_KEEP=1 leaves the stack up after a failure, for a look around.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

project="p2pchat-test-$$"
run="r$$"                 # in every message body, so nothing else can be mistaken for ours
heartbeat=1               # seconds; a dead connection is noticed after 3 heartbeats
direct_timeout=3          # seconds before a sender gives up on the direct path
send_bound=20             # seconds any `peer` command may take, all included
fallback_slack=9          # seconds a fallback may take beyond the direct timeout (exec, deposit)
export CHAT_HEARTBEAT=$heartbeat CHAT_DIRECT_TIMEOUT=$direct_timeout
export IMAGE_PREFIX=${IMAGE_PREFIX:-p2pchat} IMAGE_TAG=${IMAGE_TAG:-latest}
export RUST_LOG=${RUST_LOG:-peer=info,directory=info}

compose_file=deploy/docker-compose.yml
services=(directory c1 c2 c3)
logs_dir="${CARGO_TARGET_DIR:-$root/target}/compose-test-logs"
# shellcheck source=deploy/test-lib.sh
. deploy/test-lib.sh

# ---------------------------------------------------------------------------------------------
build_images directory peer
start_stack
wait_for 60 is_healthy || fail "directory health" "healthy" "$(health)"
for s in c1 c2 c3; do
  # The peer printed "online" only after it resolved `directory` and registered there.
  wait_for 60 printed_online "$s" || fail "$s online" '{"type":"online",...} on stdout' \
    "$(timeout 10 docker logs --tail 20 "${cid[$s]}" 2>&1)"
done
for pair in "c1 c2" "c1 c3" "c2 c1"; do
  # shellcheck disable=SC2086
  wait_for 30 is_online $pair || fail "whois ${pair#* } from ${pair% *}" "online: true" \
    "$(peer_cmd ${pair% *} whois ${pair#* } 2>&1)"
done
fingerprint=$(stdout_of directory | sed -nE 's/^directory listening on .* fingerprint ([0-9a-f]+)$/\1/p')
log "up: c1, c2, c3 resolved directory:9000 and registered; directory $fingerprint, network $net"

# ---------------------------------------------------------------------------------------------
step="step 0 (c1, c2 and c3 accept each other as contacts)"
log "$step"
# Until then each is a stranger to the others: the directory gives none of them the others'
# addresses, and their first messages would be message requests through the mailbox.
for a in c1 c2 c3; do
  for b in c1 c2 c3; do
    [ "$a" = "$b" ] && continue
    out=$(peer_cmd "$a" accept "$b" 2>&1) || fail "$a accept $b" "a contact line" "$out"
    [ "$(json_field standing <<<"$out")" = accepted ] || fail "$a accept $b" "standing: accepted" "$out"
  done
done

# ---------------------------------------------------------------------------------------------
step="step 1 (c1 -> c2 and c2 -> c1 at the same time, direct)"
log "$step"
n1=5
tmp=$(mktemp -d)
send_all c1 c2 "$run-s1-c1" 1 "$n1" delivered >"$tmp/a" 2>"$tmp/a.err" &
pa=$!
send_all c2 c1 "$run-s1-c2" 1 "$n1" delivered >"$tmp/b" 2>"$tmp/b.err" &
pb=$!
ra=0 rb=0
wait "$pa" || ra=$?
wait "$pb" || rb=$?
cat "$tmp/a" "$tmp/b"
if [ "$ra" -ne 0 ] || [ "$rb" -ne 0 ]; then
  cat "$tmp/a.err" "$tmp/b.err" >&2
  rm -rf "$tmp"
  exit 1
fi
rm -rf "$tmp"
expect_received c2 c1 "$run-s1-c1" 20 "$(lines "$run-s1-c1" 1 "$n1" direct)"
expect_received c1 c2 "$run-s1-c2" 20 "$(lines "$run-s1-c2" 1 "$n1" direct)"

# ---------------------------------------------------------------------------------------------
step="step 2 (c3 stopped: queued)"
log "$step"
dc stop -t 10 c3 >/dev/null 2>&1
wait_for 30 is_offline c1 c3 || fail "whois c3 after stopping it" "online: false" \
  "$(peer_cmd c1 whois c3 2>&1)"
send_all c1 c3 "$run-s2" 1 3 queued

# ---------------------------------------------------------------------------------------------
step="step 3 (directory killed and started again)"
log "$step"
timeout 30 docker kill "${cid[directory]}" >/dev/null
not_running() { ! is_running directory; }
wait_for 30 not_running || fail "directory after docker kill" "stopped" "still running"
timeout 30 docker start "${cid[directory]}" >/dev/null
wait_for 60 is_healthy || fail "directory health after the restart" "healthy" "$(health)"
fingerprints=$(stdout_of directory | sed -nE 's/^directory listening on .* fingerprint ([0-9a-f]+)$/\1/p' | sort -u)
[ "$fingerprints" = "$fingerprint" ] ||
  fail "the directory's key after the restart" "$fingerprint" "$fingerprints"
# The peers notice the dead connection (3 heartbeats) and reconnect, with the pinned key.
wait_for 60 is_online c1 c2 || fail "c2 reconnected, seen by c1" "online: true" \
  "$(peer_cmd c1 whois c2 2>&1)"
wait_for 30 is_online c2 c1 || fail "c1 reconnected, seen by c2" "online: true" \
  "$(peer_cmd c2 whois c1 2>&1)"
# More for c3, behind the ones queued before the kill.
send_all c1 c3 "$run-s2" 4 5 queued

# ---------------------------------------------------------------------------------------------
step="step 4 (c3 back: the mailbox, exactly once, in order)"
log "$step"
dc start c3 >/dev/null 2>&1
expect_received c3 c1 "$run-s2" 60 "$(lines "$run-s2" 1 5 mailbox)"

# ---------------------------------------------------------------------------------------------
step="step 5 (c2 cut off mid-conversation)"
log "$step"
send_all c1 c2 "$run-s5" 1 3 delivered
expect_received c2 c1 "$run-s5" 20 "$(lines "$run-s5" 1 3 direct)"
timeout 30 docker network disconnect "$net" "${cid[c2]}"
log "c2 disconnected from $net"
# The first send waits out the direct timeout (${direct_timeout}s) for an ack that cannot come,
# then goes to the mailbox; the next ones see the mailbox in use. Each must be queued within
# the direct timeout plus $fallback_slack s (for docker exec and the deposit).
send_all c1 c2 "$run-s5" 4 6 queued $((direct_timeout + fallback_slack))
if [ -n "$(received c2 c1 "$run-s5-" | sed -n '4,$p')" ]; then
  fail "c2 while cut off" "nothing after $run-s5-3" "$(received c2 c1 "$run-s5-")"
fi
timeout 30 docker network connect --alias c2 "$net" "${cid[c2]}"
log "c2 connected again"
# c2 gets the queued ones from the mailbox. A copy c1 had written on the direct stream before
# it gave up may still get through when the path comes back (QUIC retransmits it); it carries
# the same id, so c2 shows whichever copy comes first, once. Hence "any" path for 4 to 6.
expect_received c2 c1 "$run-s5" 60 "$(lines "$run-s5" 1 3 direct; lines "$run-s5" 4 6 any)"
# The conversation carries on (by either path: the mailbox stays in use until it is drained).
send_all c1 c2 "$run-s5" 7 8 any
expect_received c2 c1 "$run-s5" 30 "$(lines "$run-s5" 1 3 direct; lines "$run-s5" 4 8 any)"

# ---------------------------------------------------------------------------------------------
step="step 6 (a room: c1, c2 and c3; c3 stopped and started again)"
log "$step"
out=$(peer_cmd c1 room create '#ops' 2>&1) || fail "c1 room create #ops" "a room line" "$out"
out=$(peer_cmd c1 room invite '#ops' c2 c3 2>&1) || fail "c1 room invite #ops c2 c3" "a room line" "$out"
grep -q '"name":"c3"' <<<"$out" || fail "c1 room invite #ops c2 c3" "c2 and c3 members" "$out"
send_all c1 '#ops' "$run-r" 1 2 any
expect_received c2 c1 "$run-r" 30 "$(lines "$run-r" 1 2 any)"
expect_received c3 c1 "$run-r" 30 "$(lines "$run-r" 1 2 any)"
dc stop -t 10 c3 >/dev/null 2>&1
wait_for 30 is_offline c1 c3 || fail "whois c3 after stopping it" "online: false" \
  "$(peer_cmd c1 whois c3 2>&1)"
# Delivered to c2, queued for c3: the room's `sent` line says queued.
send_all c1 '#ops' "$run-r" 3 4 queued
dc start c3 >/dev/null 2>&1
expect_received c3 c1 "$run-r" 60 "$(lines "$run-r" 1 2 any; lines "$run-r" 3 4 mailbox)"
expect_received c2 c1 "$run-r" 30 "$(lines "$run-r" 1 4 any)"
for s in c2 c3; do
  outside=$(stdout_of "$s" | python3 -c '
import json, sys
for line in sys.stdin:
    try:
        o = json.loads(line)
    except ValueError:
        continue
    if o.get("type") == "message" and o.get("body", "").startswith(sys.argv[1]) and o.get("room") != "#ops":
        print(o["body"], o.get("room"))
' "$run-r")
  [ -z "$outside" ] || fail "$s's room messages" 'every one with "room":"#ops"' "$outside"
done

# ---------------------------------------------------------------------------------------------
step="step 7 (no panics, nothing restarted, no late duplicates)"
log "$step"
for s in "${services[@]}"; do
  panics=$(timeout 20 docker logs "${cid[$s]}" 2>&1 | grep -iE 'panicked|RUST_BACKTRACE|stack backtrace' || true)
  [ -z "$panics" ] || fail "$s's log" "no panic" "$panics"
  restarts=$(timeout 10 docker inspect -f '{{.RestartCount}}' "${cid[$s]}")
  [ "$restarts" = 0 ] || fail "$s's restart count" 0 "$restarts"
  is_running "$s" || fail "$s" "running" "$(timeout 10 docker inspect -f '{{.State.Status}} exit {{.State.ExitCode}}' "${cid[$s]}")"
done
# Everything received so far, once more: a duplicate that came late would show here.
expect_received c2 c1 "$run-s1-c1" 1 "$(lines "$run-s1-c1" 1 "$n1" direct)"
expect_received c1 c2 "$run-s1-c2" 1 "$(lines "$run-s1-c2" 1 "$n1" direct)"
expect_received c3 c1 "$run-s2" 1 "$(lines "$run-s2" 1 5 mailbox)"
expect_received c2 c1 "$run-s5" 1 "$(lines "$run-s5" 1 3 direct; lines "$run-s5" 4 8 any)"
expect_received c2 c1 "$run-r" 1 "$(lines "$run-r" 1 4 any)"
expect_received c3 c1 "$run-r" 1 "$(lines "$run-r" 1 2 any; lines "$run-r" 3 4 mailbox)"
