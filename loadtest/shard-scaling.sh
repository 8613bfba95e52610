#!/usr/bin/env bash
# Delivery rate with one shard against two: the same number of queued messages per shard
# (written by `queue-fill`), for a remote domain routed to a counting sink; `indimail serve
# --cpus 0` then `--cpus 0,1` drains them, and the deliveries logged over a fixed window after
# the first one give each rate. Alternates, several runs; prints medians and the ratio.
#
#   loadtest/shard-scaling.sh [--per-shard N] [--seconds S] [--runs R] [--no-build]
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
per_shard=200000 seconds=8 runs=3 build=1
while [[ $# -gt 0 ]]; do
    case $1 in
        --per-shard) per_shard=$2; shift 2 ;;
        --seconds) seconds=$2; shift 2 ;;
        --runs) runs=$2; shift 2 ;;
        --no-build) build=0; shift ;;
        -h|--help) sed -n '2,8p' "$0"; exit 0 ;;
        *) echo "shard-scaling.sh: unknown option $1" >&2; exit 2 ;;
    esac
done
log() { echo "shard-scaling: $*" >&2; }
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
if [[ $build -eq 1 ]]; then
    (cd "$ROOT" && cargo build --release -q -p indimail -p indimail-loadtest -p indimail-benches --bin indimail --bin indimail-loadtest --bin queue-fill)
fi
BIN=$CARGO_TARGET_DIR/release
WORK=$(mktemp -d /tmp/indimail-scaling.XXXXXX)
pids=()
trap 'for p in "${pids[@]}"; do kill $p 2>/dev/null || true; done; rm -rf "$WORK"' EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }

one_run() { # $1 = CPU list; prints deliveries/s
    local cpus=$1 shards h sink_port port sink t_first n
    shards=$(echo "$cpus" | tr ',' '\n' | wc -l)
    h=$WORK/home-$RANDOM
    mkdir -p "$h/control" "$h/tcp"
    sink_port=$(free_port)
    "$BIN/indimail-loadtest" sink --listen "127.0.0.1:$sink_port" > "$h.sink" 2>&1 &
    sink=$!
    echo "example.com" > "$h/control/rcpthosts"
    echo "scaling.example.com" > "$h/control/me"
    echo "example.net:127.0.0.1:$sink_port" > "$h/control/smtproutes"
    echo "50" > "$h/control/concurrencyremote"
    for ((q = 1; q <= shards; q++)); do
        INDIMAIL_DRIVER=uring "$BIN/queue-fill" "$h/queue/queue$q" "$q" "$per_shard" user@example.net 2>/dev/null
    done
    port=$(free_port)
    INDIMAIL_ALLOW_ROOT=1 "$BIN/indimail" serve --home "$h" --cpus "$cpus" --smtp "127.0.0.1:$port" > "$h.out" 2> "$h.log" &
    pids+=($!)
    until grep -q "success" "$h.log" 2>/dev/null; do sleep 0.05; done
    t_first=$(grep -c "success" "$h.log" || true)
    local c0 s0 c1 s1
    c0=$(ticks "${pids[-1]}"); s0=$(ticks "$sink")
    sleep "$seconds"
    n=$(grep -c "success" "$h.log" || true)
    c1=$(ticks "${pids[-1]}"); s1=$(ticks "$sink")
    log "cpus=$cpus: server $(( (c1 - c0) * 100 / seconds / $(getconf CLK_TCK) ))% of a core, sink $(( (s1 - s0) * 100 / seconds / $(getconf CLK_TCK) ))%"
    kill "${pids[-1]}" "$sink" 2>/dev/null || true
    wait "${pids[-1]}" 2>/dev/null || true
    rm -rf "$h"
    python3 -c "print(round(($n - $t_first) / $seconds))"
}

declare -A rate
for ((r = 1; r <= runs; r++)); do
    for cpus in 0 0,1; do
        v=$(one_run $cpus)
        log "run $r cpus=$cpus: $v deliveries/s"
        rate[$cpus]+="$v "
    done
done
median() { tr ' ' '\n' | grep -v '^$' | sort -n | awk '{a[NR]=$1} END{print a[int((NR+1)/2)]}'; }
r1=$(echo "${rate[0]}" | median); r2=$(echo "${rate[0,1]}" | median)
echo "| shards | deliveries/s (median of $runs) |"
echo "|---|---:|"
echo "| 1 (cpu 0) | $r1 |"
echo "| 2 (cpus 0,1) | $r2 |"
python3 -c "print(f'| ratio 2/1 | {$r2/$r1:.2f} |')"
echo
echo "$per_shard queued messages per shard, ${seconds} s window, $(nproc) CPUs, $(date -u '+%Y-%m-%d %H:%M UTC'); the sink and the server share the machine"
