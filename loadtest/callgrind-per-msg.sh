#!/usr/bin/env bash
# Instructions the server executes per message, counted by valgrind's callgrind (deterministic
# whatever else the machine runs, so before/after comparisons hold on a loaded machine).
#
#   loadtest/callgrind-per-msg.sh [--workload relay|mailbox] [--messages N] [--sessions S]
#                                 [--size B] [--out DIR] [--no-build]
#
# Starts `indimail serve` (release build, 2 shards, io_uring) under callgrind on a private home,
# warms it up with 50 messages, zeroes the counters, sends N (default 400) messages with
# Postfix's smtp-source (S sessions, default 10; B-byte bodies, default 1024) and waits until
# the log shows every delivery (relay: to an indimail-loadtest sink over smtproutes; mailbox:
# into one virtual user's Maildir), then dumps the counters. Prints instructions per message
# and the top functions (inclusive and self); the callgrind file stays in DIR for
# callgrind_annotate / kcachegrind. Needs valgrind and smtp-source (Debian: valgrind, postfix).
set -euo pipefail
export INDIMAIL_ALLOW_ROOT="${INDIMAIL_ALLOW_ROOT:-1}"
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
workload=relay messages=400 sessions=10 size=1024 out="" build=1
while [[ $# -gt 0 ]]; do
    case $1 in
        --workload) workload=$2; shift 2 ;;
        --messages) messages=$2; shift 2 ;;
        --sessions) sessions=$2; shift 2 ;;
        --size) size=$2; shift 2 ;;
        --out) out=$2; shift 2 ;;
        --no-build) build=0; shift ;;
        -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
        *) echo "callgrind-per-msg.sh: unknown option $1" >&2; exit 2 ;;
    esac
done
[[ $workload == relay || $workload == mailbox ]] || { echo "callgrind-per-msg.sh: unknown workload $workload" >&2; exit 2; }
log() { echo "callgrind: $*" >&2; }
die() { log "$*"; exit 1; }
command -v valgrind >/dev/null || die "valgrind missing"
[[ -x /usr/sbin/smtp-source ]] || die "/usr/sbin/smtp-source missing (Debian package postfix)"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
[[ $build -eq 0 ]] || (cd "$ROOT" && cargo build --release -q -p indimail -p indimail-loadtest) || die "build failed"
IM=$CARGO_TARGET_DIR/release/indimail LT=$CARGO_TARGET_DIR/release/indimail-loadtest
[[ -x $IM && -x $LT ]] || die "$IM or $LT missing"
# shellcheck source=loadtest/bench-lib.sh
source "$HERE/bench-lib.sh"

W=${out:-$(mktemp -d /tmp/indimail-callgrind.XXXXXX)}
mkdir -p "$W"
pids=()
cleanup() { local p; for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

home=$W/home
mkdir -p "$home/control"
echo example.com > "$home/control/rcpthosts"
echo 0 > "$home/control/maxperip"
to=user@example.com
if [[ $workload == relay ]]; then
    sink_port=$(free_port)
    "$LT" sink --listen "127.0.0.1:$sink_port" --stats "$W/sink.json" >/dev/null 2>"$W/sink.err" &
    pids+=($!)
    echo "example.com:127.0.0.1:$sink_port" > "$home/control/smtproutes"
else
    "$IM" domain add example.com --home "$home" >/dev/null
    "$IM" user add 1user@example.com --password pw1 --home "$home" >/dev/null
    to=1user@example.com
fi
port=$(free_port)
valgrind --tool=callgrind --callgrind-out-file="$W/callgrind.out" --dump-line=no \
    "$IM" serve --home "$home" --smtp "127.0.0.1:$port" >"$W/serve.log" 2>&1 &
vg=$!; pids+=("$vg")
for ((i = 0; i < 600; i++)); do
    grep -q "smtp listening on" "$W/serve.log" 2>/dev/null && break
    kill -0 "$vg" 2>/dev/null || die "serve exited under valgrind (see $W/serve.log)"
    sleep 0.2
done
grep -q "smtp listening on" "$W/serve.log" || die "serve did not start (see $W/serve.log)"

send() { # count
    /usr/sbin/smtp-source -s "$sessions" -m "$1" -l "$size" -f loadtest@loadtest.example.org \
        -M loadtest.example.org -t "$to" "127.0.0.1:$port" || die "smtp-source failed"
}
delivered() { grep -Ec 'delivery [0-9]+: success' "$W/serve.log" || true; }
wait_delivered() { # count
    local deadline=$((SECONDS + 900))
    while [[ $(delivered) -lt $1 ]]; do
        [[ $SECONDS -lt $deadline ]] || die "only $(delivered) of $1 delivered (see $W/serve.log)"
        sleep 0.5
    done
}
warm=50
send "$warm"; wait_delivered "$warm"
callgrind_control -z "$vg" >/dev/null
send "$messages"; wait_delivered $((warm + messages))
callgrind_control -d "$vg" >/dev/null
sleep 1
dump=$(ls -t "$W"/callgrind.out* | head -1)
total=$(callgrind_annotate "$dump" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1; exit}')
log "$workload: $messages messages, $size-byte bodies, $sessions sessions: $total instructions, $((total / messages)) per message ($dump)"
echo "## $workload: $((total / messages)) instructions per message"
echo
echo "Top inclusive:"
callgrind_annotate --inclusive=yes "$dump" 2>/dev/null | sed -n '/file:function/,$p' | sed -n '2,41p'
echo
echo "Top self:"
callgrind_annotate "$dump" 2>/dev/null | sed -n '/file:function/,$p' | sed -n '2,41p'
kill -TERM "$vg" 2>/dev/null || true
wait "$vg" 2>/dev/null || true
