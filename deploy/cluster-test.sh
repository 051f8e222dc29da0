#!/usr/bin/env bash
# The directory cluster in containers: builds the images (deploy/build-images.sh, which needs
# nats-server on this machine for the nats image), brings up deploy/docker-compose.cluster.yml
# (3 NATS servers with JetStream, 2 directory nodes d1 and d2 sharing one key, peers c1 and c2
# on d1, c3 and c4 on d2) under a project name of its own, and checks from outside:
#
#   1. peers on different nodes chat directly: c1 (d1) and c3 (d2) at the same time, `direct`;
#   2. and through the mailbox across nodes: c4 (d2) stopped, c1's messages `queued`, and c4
#      gets them once, in order, `mailbox`, when started again;
#   3. d1 killed (docker kill) mid-conversation: c1 and c2 move to d2 (online there), and every
#      message c1 sent to c3 before, during and after arrives exactly once, in order; mail that
#      d1 acknowledged (c2 to a stopped c4, `queued`) just before it died reaches c4 through d2;
#   4. one NATS server killed: lookups, direct messages and mailbox deposits keep working;
#   5. the killed ones started again: d1 is healthy (its replica catches up, from the newest
#      snapshot if the log was compacted past it) and serves peers;
#   6. a name registered through d1 (c1) is refused to another key through d2;
#   7. no container's log shows a panic, nothing was restarted behind our back, nothing
#      arrived twice, and the log was compacted meanwhile: the nodes compact it every 20
#      entries here (checking every 2 s), so every step runs across compactions.
#
# Environment: as deploy/compose-test.sh (COMPOSE_TEST_SKIP_BUILD=1, COMPOSE_TEST_KEEP=1).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

project="p2pchat-cluster-$$"
run="k$$"                 # in every message body, so nothing else can be mistaken for ours
send_bound=20             # seconds any `peer` command may take, all included
export CHAT_HEARTBEAT=1 CHAT_DIRECT_TIMEOUT=3
export DIRECTORY_LOG_COMPACT_AFTER=20 DIRECTORY_LOG_COMPACT_CHECK=2
export IMAGE_PREFIX=${IMAGE_PREFIX:-p2pchat} IMAGE_TAG=${IMAGE_TAG:-latest}
export RUST_LOG=${RUST_LOG:-peer=info,directory=info}

compose_file=deploy/docker-compose.cluster.yml
services=(nats1 nats2 nats3 d1 d2 c1 c2 c3 c4)
logs_dir="${CARGO_TARGET_DIR:-$root/target}/cluster-test-logs"
# shellcheck source=deploy/test-lib.sh
. deploy/test-lib.sh

# online_at NODE NAME: NAME is registered on NODE (its own registry), from NODE's log.
online_at() {
  timeout 20 docker logs "${cid[$1]}" 2>&1 | grep -q "name=\"$2\"}: directory::service: online"
}
stopped() { ! is_running "$1"; }

# ---------------------------------------------------------------------------------------------
build_images directory peer nats
start_stack
for d in d1 d2; do
  wait_for 90 is_healthy "$d" || fail "$d health" "healthy" "$(health "$d")"
done
for s in c1 c2 c3 c4; do
  wait_for 60 printed_online "$s" || fail "$s online" '{"type":"online",...} on stdout' \
    "$(timeout 10 docker logs --tail 20 "${cid[$s]}" 2>&1)"
done
for pair in "d1 c1" "d1 c2" "d2 c3" "d2 c4"; do
  # The peer prints its online line on the directory's answer; the node's log line about it
  # may reach `docker logs` a moment later.
  # shellcheck disable=SC2086
  wait_for 10 online_at $pair || fail "${pair#* } on node ${pair% *}" "registered there" \
    "$(timeout 10 docker logs --tail 20 "${cid[${pair% *}]}" 2>&1)"
done
fingerprints=$(for d in d1 d2; do stdout_of "$d"; done |
  sed -nE 's/^directory listening on .* fingerprint ([0-9a-f]+)$/\1/p' | sort -u)
[ "$(grep -c . <<<"$fingerprints")" = 1 ] || fail "the nodes' keys" "one fingerprint" "$fingerprints"
log "up: c1, c2 on d1; c3, c4 on d2; one key $fingerprints; network $net"

step="step 0 (the peers accept each other as contacts, across nodes)"
log "$step"
for a in c1 c2 c3 c4; do
  for b in c1 c2 c3 c4; do
    [ "$a" = "$b" ] && continue
    wait_for 30 is_online "$a" "$b" || fail "whois $b from $a" "online: true" \
      "$(peer_cmd "$a" whois "$b" 2>&1)"
    out=$(peer_cmd "$a" accept "$b" 2>&1) || fail "$a accept $b" "a contact line" "$out"
  done
done

# ---------------------------------------------------------------------------------------------
step="step 1 (c1 on d1 and c3 on d2, both ways at once, direct)"
log "$step"
tmp=$(mktemp -d)
send_all c1 c3 "$run-s1-c1" 1 4 delivered >"$tmp/a" 2>"$tmp/a.err" &
pa=$!
send_all c3 c1 "$run-s1-c3" 1 4 delivered >"$tmp/b" 2>"$tmp/b.err" &
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
expect_received c3 c1 "$run-s1-c1" 20 "$(lines "$run-s1-c1" 1 4 direct)"
expect_received c1 c3 "$run-s1-c3" 20 "$(lines "$run-s1-c3" 1 4 direct)"

# ---------------------------------------------------------------------------------------------
step="step 2 (c4 on d2 stopped: c1's messages through the mailbox, across nodes)"
log "$step"
dc stop -t 10 c4 >/dev/null 2>&1
wait_for 30 is_offline c1 c4 || fail "whois c4 after stopping it" "online: false" \
  "$(peer_cmd c1 whois c4 2>&1)"
send_all c1 c4 "$run-s2" 1 3 queued
dc start c4 >/dev/null 2>&1
expect_received c4 c1 "$run-s2" 60 "$(lines "$run-s2" 1 3 mailbox)"

# ---------------------------------------------------------------------------------------------
step="step 3 (d1 killed mid-conversation: c1 and c2 move to d2)"
log "$step"
send_all c1 c3 "$run-s3" 1 3 delivered
# Mail d1 acknowledges just before it dies: c2 (on d1) to c4, stopped.
dc stop -t 10 c4 >/dev/null 2>&1
wait_for 30 is_offline c2 c4 || fail "whois c4 after stopping it" "online: false" \
  "$(peer_cmd c2 whois c4 2>&1)"
send_all c2 c4 "$run-s3m" 1 3 queued
timeout 30 docker kill "${cid[d1]}" >/dev/null
wait_for 30 stopped d1 || fail "d1 after docker kill" "stopped" "still running"
# The conversation goes on while c1 notices (3 heartbeats) and moves: the direct link to c3
# does not need the directory.
send_all c1 c3 "$run-s3" 4 6 any
for s in c1 c2; do
  wait_for 60 online_at d2 "$s" || fail "$s after d1 was killed" "online at d2" \
    "$(timeout 10 docker logs --tail 20 "${cid[$s]}" 2>&1)"
done
wait_for 30 is_online c3 c1 || fail "whois c1 at d2" "online: true" "$(peer_cmd c3 whois c1 2>&1)"
send_all c1 c3 "$run-s3" 7 8 any
expect_received c3 c1 "$run-s3" 30 "$(lines "$run-s3" 1 8 any)"
dc start c4 >/dev/null 2>&1
expect_received c4 c2 "$run-s3m" 60 "$(lines "$run-s3m" 1 3 mailbox)"

# ---------------------------------------------------------------------------------------------
step="step 4 (nats1 killed: the cluster keeps working on two NATS servers of three)"
log "$step"
nats1_killed=$SECONDS
timeout 30 docker kill "${cid[nats1]}" >/dev/null
wait_for 30 stopped nats1 || fail "nats1 after docker kill" "stopped" "still running"
wait_for 30 is_online c4 c2 || fail "whois c2 from c4" "online: true" "$(peer_cmd c4 whois c2 2>&1)"
send_all c4 c2 "$run-s4" 1 2 delivered
dc stop -t 10 c2 >/dev/null 2>&1
wait_for 30 is_offline c4 c2 || fail "whois c2 after stopping it" "online: false" \
  "$(peer_cmd c4 whois c2 2>&1)"
# A deposit commits in the log: a majority of its 3 copies, on the 2 servers left, once the log
# has a leader among them. That election has taken from about 5 s to more than 20 s after the
# kill: probes (another tag, which the checks ignore) wait for it, and the time is logged.
deposits_work() { [[ "$(send c4 c2 "$run-p4")" == queued* ]]; }
wait_for 60 deposits_work || fail "a deposit with nats1 down" "queued within 60 s" \
  "$(send c4 c2 "$run-p4")"
log "deposits taken again $((SECONDS - nats1_killed)) s after nats1 was killed"
send_all c4 c2 "$run-s4" 3 4 queued
dc start c2 >/dev/null 2>&1
expect_received c2 c4 "$run-s4" 60 "$(lines "$run-s4" 1 2 direct; lines "$run-s4" 3 4 mailbox)"

# ---------------------------------------------------------------------------------------------
step="step 5 (nats1 and d1 started again)"
log "$step"
timeout 30 docker start "${cid[nats1]}" >/dev/null
timeout 30 docker start "${cid[d1]}" >/dev/null
wait_for 90 is_healthy d1 || fail "d1 health after the restart" "healthy" "$(health d1)"
fingerprints=$(stdout_of d1 | sed -nE 's/^directory listening on .* fingerprint ([0-9a-f]+)$/\1/p' | sort -u)
[ "$fingerprints" = "$(stdout_of d2 | sed -nE 's/^directory listening on .* fingerprint ([0-9a-f]+)$/\1/p' | sort -u)" ] ||
  fail "d1's key after the restart" "the cluster's key" "$fingerprints"
# d1 serves again: a short-lived peer asks it about c3 (online at d2).
ask_d1() {
  timeout "$send_bound" docker run --rm --network "$net" -e CHAT_HOME=/tmp/h \
    "$IMAGE_PREFIX/peer:$IMAGE_TAG" --name "$1" --directory d1:9000 --json --open "${@:2}"
}
out=$(ask_d1 "v$$" whois c3 2>&1) || fail "whois c3 at the restarted d1" "an answer" "$out"
[ "$(json_field online <<<"$out")" = True ] || fail "whois c3 at d1" "online: true" "$out"
if timeout 20 docker logs "${cid[d1]}" 2>&1 | grep -q "loading the newest snapshot"; then
  log "d1 started again from the newest snapshot"
else
  log "d1 started again by replaying the log from where its replica stood"
fi

# ---------------------------------------------------------------------------------------------
step="step 6 (c1's name, bound through d1, is refused to another key through d2)"
log "$step"
if out=$(timeout "$send_bound" docker run --rm --network "$net" -e CHAT_HOME=/tmp/h \
  "$IMAGE_PREFIX/peer:$IMAGE_TAG" --name c1 --directory d2:9000 inbox 2>&1); then
  fail "another key registering c1 at d2" "refused" "$out"
fi
grep -q "registered to another key" <<<"$out" ||
  fail "another key registering c1 at d2" "'registered to another key'" "$out"

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
expect_received c3 c1 "$run-s1-c1" 1 "$(lines "$run-s1-c1" 1 4 direct)"
expect_received c1 c3 "$run-s1-c3" 1 "$(lines "$run-s1-c3" 1 4 direct)"
expect_received c4 c1 "$run-s2" 1 "$(lines "$run-s2" 1 3 mailbox)"
expect_received c3 c1 "$run-s3" 1 "$(lines "$run-s3" 1 8 any)"
expect_received c4 c2 "$run-s3m" 1 "$(lines "$run-s3m" 1 3 mailbox)"
expect_received c2 c4 "$run-s4" 1 "$(lines "$run-s4" 1 2 direct; lines "$run-s4" 3 4 mailbox)"
compactions() {
  for d in d1 d2; do timeout 20 docker logs "${cid[$d]}" 2>&1; done |
    grep -c "compacted the cluster's log" || true
}
compacted() { [ "$(compactions)" -gt 0 ]; }
# A short run may end before the first compaction: the log holds more than 20 entries by now,
# and with every node live and current one comes within a few checks.
wait_for 60 compacted || fail "the nodes' logs" "the log compacted at least once" "no compaction"
compactions=$(compactions)
log "the log was compacted $compactions times during the test"
