#!/usr/bin/env bash
# The cost of queue-time message processing on the relay path: the same load relayed through
# `indimail serve` to the load tool's SMTP sink, with message processing off, with the header
# rules on (removeheaders, envheaders, logheaders), and with the header rules plus DKIM signing
# (RSA 2048 or Ed25519, every message signed as it leaves); the modes alternate, several runs
# each. The
# time is measured from the first message sent until the sink has every message, so remote
# delivery (where signing happens) is included. Prints medians and ratios against "off".
#
#   loadtest/msgproc-cost.sh [--runs N] [--messages M] [--sessions S] [--no-build]
set -euo pipefail
export INDIMAIL_ALLOW_ROOT="${INDIMAIL_ALLOW_ROOT:-1}"
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
runs=3 messages=5000 sessions=20 build=1
while [[ $# -gt 0 ]]; do
    case $1 in
        --runs) runs=$2; shift 2 ;;
        --messages) messages=$2; shift 2 ;;
        --sessions) sessions=$2; shift 2 ;;
        --no-build) build=0; shift ;;
        -h|--help) sed -n '2,9p' "$0"; exit 0 ;;
        *) echo "msgproc-cost.sh: unknown option $1" >&2; exit 2 ;;
    esac
done
log() { echo "msgproc-cost: $*" >&2; }
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
if [[ $build -eq 1 ]]; then
    log "building (release)"
    (cd "$ROOT" && cargo build --release -q -p indimail -p indimail-loadtest)
fi
IM=$CARGO_TARGET_DIR/release/indimail
LT=$CARGO_TARGET_DIR/release/indimail-loadtest
WORK=$(mktemp -d /tmp/indimail-msgproc-cost.XXXXXX)
pid="" sink=""
trap '[[ -n $pid ]] && kill $pid 2>/dev/null; [[ -n $sink ]] && kill $sink 2>/dev/null; rm -rf "$WORK"' EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 300); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; return 1; }
sink_count() { python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['messages'])" "$1" 2>/dev/null || echo 0; }
cpu_ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }

run_one() { # $1 = off|rules|dkim|ed25519, $2 = run number; prints "msgs_per_s cpu_us_per_msg delivered"
    local h=$WORK/$1-$2 c port sport stats t0 t1 c0 c1 n env=()
    c=$h/control
    mkdir -p "$c" "$h/tcp"
    echo "example.com" > "$c/rcpthosts"
    echo "loadtest.example.com" > "$c/me"
    echo 0 > "$c/maxperip"
    echo ":allow" > "$h/tcp/tcp.smtp"
    sport=$(free_port); stats=$h/sink.json
    "$LT" sink --listen "127.0.0.1:$sport" --stats "$stats" >/dev/null 2>"$h/sink.err" &
    sink=$!
    wait_port "$sport"
    echo "example.com:127.0.0.1:$sport" > "$c/smtproutes"
    case $1 in
        off) env=(DKIMSIGN=) ;;
        rules|dkim|ed25519)
            printf 'X-Loadtest-Seq\nX-Mailer\n' > "$c/removeheaders"
            printf 'Subject:200\n' > "$c/envheaders"
            printf 'Message-ID\n' > "$c/logheaders"
            case $1 in
                rules) env=(DKIMSIGN=) ;;
                dkim) "$IM" dkim keygen loadtest.example.org --home "$h" >/dev/null 2>&1 ;;
                ed25519) "$IM" dkim keygen loadtest.example.org --type ed25519 --home "$h" >/dev/null 2>&1 ;;
            esac ;;
    esac
    port=$(free_port)
    env "${env[@]}" "$IM" serve --home "$h" --smtp "127.0.0.1:$port" >"$h/serve.out" 2>"$h/serve.log" &
    pid=$!
    wait_port "$port"
    c0=$(cpu_ticks $pid); t0=$(date +%s.%N)
    "$LT" send --target "127.0.0.1:$port" --messages "$messages" --sessions "$sessions" \
        --pipelining --quiet --json "$h/load.json" >/dev/null
    for _ in $(seq 3000); do
        n=$(sink_count "$stats"); [[ $n -ge $messages ]] && break; sleep 0.1
    done
    t1=$(date +%s.%N); c1=$(cpu_ticks $pid)
    kill $pid; wait $pid 2>/dev/null || true; pid=""
    kill $sink; wait $sink 2>/dev/null || true; sink=""
    python3 -c "
import sys
t0, t1, c0, c1, n, tck = float(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
print(f'{n/(t1-t0):.0f} {(c1-c0)/tck*1e6/max(n,1):.0f} {n}')" "$t0" "$t1" "$c0" "$c1" "$(sink_count "$stats")" "$(getconf CLK_TCK)"
}

declare -A rate cpu
for ((r = 1; r <= runs; r++)); do
    for mode in off rules dkim ed25519; do
        read -r m u n < <(run_one $mode $r)
        log "run $r $mode: $m msgs/s end to end, $u us server CPU per message, $n delivered"
        rate[$mode]+="$m "; cpu[$mode]+="$u "
    done
done
median() { tr ' ' '\n' | grep -v '^$' | sort -n | awk '{a[NR]=$1} END{print a[int((NR+1)/2)]}'; }
ro=$(echo "${rate[off]}" | median); rr=$(echo "${rate[rules]}" | median); rd=$(echo "${rate[dkim]}" | median)
co=$(echo "${cpu[off]}" | median); cr=$(echo "${cpu[rules]}" | median); cd=$(echo "${cpu[dkim]}" | median)
re=$(echo "${rate[ed25519]}" | median); ce=$(echo "${cpu[ed25519]}" | median)
echo "| message processing | msgs/s relayed (median of $runs) | server CPU µs/msg | msgs/s vs off | CPU vs off |"
echo "|---|---|---|---|---|"
echo "| off | $ro | $co | 1.00 | 1.00 |"
python3 -c "print(f'| header rules | $rr | $cr | {$rr/$ro:.2f} | {$cr/$co:.2f} |')"
python3 -c "print(f'| header rules + DKIM signing (RSA 2048) | $rd | $cd | {$rd/$ro:.2f} | {$cd/$co:.2f} |')"
python3 -c "print(f'| header rules + DKIM signing (Ed25519) | $re | $ce | {$re/$ro:.2f} | {$ce/$co:.2f} |')"
echo
echo "$messages messages per run, $sessions sessions, 1 rcpt, ~1 KiB, pipelining, relayed to the load tool's sink, $(nproc) CPUs, $(date -u '+%Y-%m-%d %H:%M UTC')"
