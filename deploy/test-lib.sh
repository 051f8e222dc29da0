# Shared by deploy/compose-test.sh and deploy/cluster-test.sh: sourced, not run. Brings up
# nothing itself; the sourcing script sets, before sourcing:
#
#   compose_file   the compose file (deploy/...yml)
#   project        the compose project name
#   services       the services whose containers are watched (logs kept, panics checked)
#   logs_dir       where every container's whole log is written at the end
#   send_bound     seconds any `peer` command may take, all included
#
# It gets `build_images` and `start_stack` (which fills cid[SERVICE] with container ids and
# `net` with the stack's network), `log`, `fail`,
# `wait_for`, `dc` (compose on this project), `peer_cmd`, `send`, `send_all`, `received`,
# `expect_received`, `lines`, `is_online`, `is_offline`, `is_running`, `printed_online`,
# `json_field`, and a teardown on exit that keeps the logs and takes the stack down.

started=$SECONDS
step="setup"
log() { printf '[%3ds] %s\n' "$((SECONDS - started))" "$*"; }

if docker compose version >/dev/null 2>&1; then
  compose=(docker compose)
elif command -v docker-compose >/dev/null 2>&1; then
  compose=(docker-compose)
else
  echo "$(basename "$0"): neither 'docker compose' nor 'docker-compose' is available" >&2
  exit 1
fi

dc() { timeout 180 "${compose[@]}" -p "$project" -f "$compose_file" "$@"; }

declare -A cid=()

teardown() {
  local rc=$?
  set +e
  # Every container's whole log (stdout and stderr), kept for a look after the run.
  rm -rf "$logs_dir" && mkdir -p "$logs_dir"
  for s in "${services[@]}"; do
    [ -n "${cid[$s]:-}" ] && timeout 20 docker logs -t "${cid[$s]}" >"$logs_dir/$s.log" 2>&1
  done
  # A stack that failed to come up has no containers recorded yet: take the logs of all.
  if [ "${#cid[@]}" -eq 0 ] && [ "$rc" -ne 0 ]; then
    dc logs -t --no-color >"$logs_dir/stack.log" 2>&1
    echo "---- last lines of the stack's logs"
    tail -60 "$logs_dir/stack.log"
  fi
  if [ "$rc" -ne 0 ]; then
    for s in "${services[@]}"; do
      [ -n "${cid[$s]:-}" ] || continue
      echo "---- last lines of $s's log (stdout and stderr)"
      timeout 20 docker logs --tail 40 "${cid[$s]}" 2>&1
    done
  fi
  if [ "$rc" -ne 0 ] && [ "${COMPOSE_TEST_KEEP:-}" = 1 ]; then
    echo "$(basename "$0"): left the stack up: ${compose[*]} -p $project -f $compose_file down -v"
  else
    log "tearing down"
    dc down -v --remove-orphans -t 5 >/dev/null 2>&1 ||
      echo "$(basename "$0"): teardown failed; remove project $project by hand" >&2
  fi
  echo "$(basename "$0"): the containers' logs are in $logs_dir"
  if [ "$rc" -eq 0 ]; then
    log "$(basename "$0" .sh) passed"
  else
    echo "$(basename "$0"): FAILED in $step (after $((SECONDS - started)) s)" >&2
  fi
  exit "$rc"
}
trap teardown EXIT
trap 'exit 130' INT TERM

# fail WHAT EXPECTED RECEIVED
fail() {
  {
    echo "FAILED: $step: $1"
    echo "  expected: $2"
    echo "  received: ${3//$'\n'/$'\n            '}"
  } >&2
  exit 1
}

# wait_for SECONDS CMD...: runs CMD every 0.3 s until it succeeds; non-zero after SECONDS.
wait_for() {
  local deadline=$((SECONDS + $1))
  shift
  until "$@"; do
    [ "$SECONDS" -lt "$deadline" ] || return 1
    sleep 0.3
  done
}

# The stdout of a service's container: the JSON Lines its `listen` printed, over all its runs.
stdout_of() { timeout 20 docker logs "${cid[$1]}" 2>/dev/null; }

# received SERVICE FROM TAG: "BODY VIA" for each message from FROM whose body starts with TAG,
# in the order SERVICE printed them.
received() {
  stdout_of "$1" | python3 -c '
import json, sys
sender, tag = sys.argv[1], sys.argv[2]
for line in sys.stdin:
    try:
        o = json.loads(line)
    except ValueError:
        continue
    if o.get("type") == "message" and o.get("from") == sender and o.get("body", "").startswith(tag):
        print(o["body"], o["via"])
' "$2" "$3"
}

# json_field FIELD: the FIELD of the first JSON object on stdin.
json_field() {
  python3 -c '
import json, sys
for line in sys.stdin:
    try:
        o = json.loads(line)
    except ValueError:
        continue
    print(o.get(sys.argv[1], ""))
    break
' "$1"
}

# peer_cmd SERVICE ARGS...: runs `peer --name SERVICE --json ARGS` in SERVICE's container,
# where it goes through the running `listen` (control socket).
peer_cmd() {
  local svc=$1
  shift
  timeout "$send_bound" "${compose[@]}" -p "$project" -f "$compose_file" \
    exec -T "$svc" peer --name "$svc" --json "$@"
}

# send FROM TO BODY: prints "STATUS SECONDS" (STATUS is delivered, queued, or error:...).
send() {
  local t0 t out status
  t0=${EPOCHREALTIME/./}
  if out=$(peer_cmd "$1" send "$2" "$3" 2>&1); then
    status=$(json_field status <<<"$out")
  else
    status="error:$(tr '\n' ' ' <<<"$out")"
  fi
  t=$((${EPOCHREALTIME/./} - t0))
  echo "${status:-error:$(tr '\n' ' ' <<<"$out")} $((t / 1000000)).$((t / 100000 % 10))"
}

# send_all FROM TO TAG FIRST LAST EXPECTED_STATUS [MAX_SECONDS]: sends TAG-FIRST .. TAG-LAST in
# order; each must end as EXPECTED_STATUS (delivered or queued, if "any": never an error),
# within MAX_SECONDS if given
# (and always within $send_bound).
send_all() {
  local from=$1 to=$2 tag=$3 first=$4 last=$5 want=$6 max=${7:-} i result status secs
  for i in $(seq "$first" "$last"); do
    result=$(send "$from" "$to" "$tag-$i")
    status=${result% *}
    secs=${result##* }
    if { [ "$want" != any ] && [ "$status" != "$want" ]; } ||
      { [ "$want" = any ] && [ "$status" != delivered ] && [ "$status" != queued ]; }; then
      fail "$from sends $tag-$i to $to" "status $want" "$status after ${secs}s"
    fi
    if [ -n "$max" ] && [ "${secs%.*}" -ge "$max" ]; then
      fail "$from sends $tag-$i to $to" "$want within ${max}s" "$status after ${secs}s"
    fi
    echo "$tag-$i $status ${secs}s"
  done
}

# same_as EXPECTED GOT: the same "BODY VIA" lines in the same order, where an expected VIA of
# "any" stands for either path.
same_as() {
  local e g
  [ "$(grep -c . <<<"$1")" = "$(grep -c . <<<"$2")" ] || return 1
  while IFS= read -r e <&3 && IFS= read -r g <&4; do
    [ "$e" = "$g" ] || { [ "${e##* }" = any ] && [ "${e% *}" = "${g% *}" ]; } || return 1
  done 3<<<"$1" 4<<<"$2"
}

# expect_received SERVICE FROM TAG WAIT EXPECTED: waits up to WAIT seconds until SERVICE has
# printed as many TAG messages from FROM as EXPECTED has lines, then compares (body and via,
# in order; a duplicate or a reordering fails).
expect_received() {
  local svc=$1 from=$2 tag=$3 wait=$4 expected=$5 n got
  n=$(grep -c . <<<"$expected")
  have_enough() { [ "$(received "$svc" "$from" "$tag" | grep -c .)" -ge "$n" ]; }
  wait_for "$wait" have_enough || true
  got=$(received "$svc" "$from" "$tag")
  if ! same_as "$expected" "$got"; then
    fail "$svc's messages from $from ($tag-*), within ${wait}s" \
      "$(tr '\n' ',' <<<"$expected")" "$(tr '\n' ',' <<<"${got:-nothing}")"
  fi
}

# lines TAG FIRST LAST VIA: the expected "BODY VIA" lines.
lines() { for i in $(seq "$2" "$3"); do echo "$1-$i $4"; done; }

is_online() { # is_online ASKER NAME
  [ "$(peer_cmd "$1" whois "$2" 2>/dev/null | json_field online)" = True ]
}
is_offline() {
  [ "$(peer_cmd "$1" whois "$2" 2>/dev/null | json_field online)" = False ]
}
health() { timeout 10 docker inspect -f '{{.State.Health.Status}}' "${cid[${1:-directory}]}"; }
is_healthy() { [ "$(health "${1:-directory}")" = healthy ]; }
is_running() { [ "$(timeout 10 docker inspect -f '{{.State.Running}}' "${cid[$1]}")" = true ]; }
printed_online() { stdout_of "$1" | grep -q '"type":"online"'; }


# build_images IMAGE...: builds the images (deploy/build-images.sh) unless
# COMPOSE_TEST_SKIP_BUILD=1, then checks that each $IMAGE_PREFIX/IMAGE:$IMAGE_TAG exists.
build_images() {
  step="build"
  if [ "${COMPOSE_TEST_SKIP_BUILD:-}" = 1 ]; then
    log "reusing the images $IMAGE_PREFIX/{$(IFS=,; echo "$*")}:$IMAGE_TAG"
  else
    log "building the images"
    deploy/build-images.sh
  fi
  local image
  for image in "$@"; do
    docker image inspect "$IMAGE_PREFIX/$image:$IMAGE_TAG" >/dev/null ||
      fail "image $IMAGE_PREFIX/$image:$IMAGE_TAG" "built (nats needs nats-server here)" "missing"
  done
}

# start_stack: brings the stack up, fills cid[SERVICE] for every service in $services, and sets
# `net` to the network the last of them is on.
start_stack() {
  step="start"
  log "starting the stack (project $project, ${compose[*]})"
  local out s
  out=$(dc up -d 2>&1) || fail "${compose[*]} up -d" "the stack up" "$out"
  for s in "${services[@]}"; do
    cid[$s]=$(dc ps -q "$s")
    [ -n "${cid[$s]}" ] || fail "container of $s" "a container id" "none"
  done
  net=$(docker inspect -f '{{range $k, $v := .NetworkSettings.Networks}}{{$k}}{{end}}' "${cid[$s]}")
}
