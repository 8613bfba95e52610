#!/usr/bin/env bash
# Restart with a full queue: fills the queues of a fresh home with N messages (default one
# million, half per shard on this 2-CPU machine) for a remote domain routed to a counting sink,
# starts `indimail serve` on it and reports how long until it (a) listens, (b) answers a new
# message with 250, (c) has delivered the first queued message, and how many the sink has after
# a few more seconds.
#
#   loadtest/restart-1m.sh [--messages N] [--no-build]
set -euo pipefail
# Run as root here: the server stays root instead of refusing (README, "Running as root").
export INDIMAIL_ALLOW_ROOT="${INDIMAIL_ALLOW_ROOT:-1}"
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
messages=1000000 build=1
while [[ $# -gt 0 ]]; do
    case $1 in
        --messages) messages=$2; shift 2 ;;
        --no-build) build=0; shift ;;
        -h|--help) sed -n '2,8p' "$0"; exit 0 ;;
        *) echo "restart-1m.sh: unknown option $1" >&2; exit 2 ;;
    esac
done
log() { echo "restart-1m: $*" >&2; }
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
if [[ $build -eq 1 ]]; then
    log "building (release)"
    (cd "$ROOT" && cargo build --release -q -p indimail -p indimail-loadtest -p indimail-benches --bin indimail --bin indimail-loadtest --bin queue-fill)
fi
BIN=$CARGO_TARGET_DIR/release
WORK=$(mktemp -d /tmp/indimail-restart.XXXXXX)
pids=()
trap 'for p in "${pids[@]}"; do kill $p 2>/dev/null || true; done; rm -rf "$WORK"' EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

sink_port=$(free_port)
"$BIN/indimail-loadtest" sink --listen "127.0.0.1:$sink_port" > "$WORK/sink.out" 2>&1 &
pids+=($!)
H=$WORK/home
mkdir -p "$H/control" "$H/tcp"
echo "example.com" > "$H/control/rcpthosts"
echo "restart.example.com" > "$H/control/me"
echo "example.net:127.0.0.1:$sink_port" > "$H/control/smtproutes"
echo ":allow" > "$H/tcp/tcp.smtp"
shards=$(nproc)
for ((q = 1; q <= shards; q++)); do
    INDIMAIL_DRIVER=uring "$BIN/queue-fill" "$H/queue/queue$q" "$q" $((messages / shards)) user@example.net 2>&1 | tail -1 >&2
done
log "queues: $(du -sh "$H/queue" | cut -f1) on disk; dropping the page cache is not attempted (needs a quiet machine)"

port=$(free_port)
t0=$(date +%s.%N)
"$BIN/indimail" serve --home "$H" --smtp "127.0.0.1:$port" > "$WORK/serve.out" 2> "$WORK/serve.log" &
pids+=($!)
until grep -q "listening on" "$WORK/serve.out" 2>/dev/null; do sleep 0.01; done
t_listen=$(date +%s.%N)
python3 - "$port" <<'PY'
import smtplib, sys
s = smtplib.SMTP("127.0.0.1", int(sys.argv[1]), timeout=60)
s.sendmail("new@example.org", ["new@example.com"], "Subject: after restart\r\n\r\nhello\r\n")
s.quit()
PY
t_accept=$(date +%s.%N)
until grep -q "success" "$WORK/serve.log" 2>/dev/null; do sleep 0.01; done
t_deliver=$(date +%s.%N)
sleep 5
delivered=$(grep -c "success" "$WORK/serve.log" || true)
recovered=$(grep "recovered" "$WORK/serve.log" | sed 's/^[0-9.]* //' | tr '\n' ';')
python3 - "$t0" "$t_listen" "$t_accept" "$t_deliver" <<PY
import sys
t0, l, a, d = map(float, sys.argv[1:])
print(f"$messages queued messages, $shards shards")
print(f"listening after      {l - t0:6.2f} s")
print(f"250 for a new message{a - t0:6.2f} s")
print(f"first delivery after {d - t0:6.2f} s")
print(f"deliveries in the 5 s after that: $delivered")
print("recovery: $recovered")
PY
