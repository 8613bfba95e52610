#!/usr/bin/env bash
# The cost of IndiMail's access controls at MAIL/RCPT/DATA time: the same accept-only load
# (INDIMAIL_NO_DELIVERY=1) against `indimail serve` with no controls and with a realistic full
# set, alternating the two, several runs each; prints medians and the ratio all/none.
#
#   loadtest/policy-cost.sh [--runs N] [--messages M] [--sessions S] [--rcpts R] [--no-build]
#
# The full set: badmailfrom 10,000 lines (addresses and @domains), badmailpatterns 200,
# badrcptto 10,000, badrcptpatterns 200, goodrcptto 1,000, blackholedsender 1,000,
# blackholedrcpt 1,000, accesslist 1,000 rules, hostaccess 1,000, from.envrules 200,
# badhelo 500, badip 1,000, bodycheck 50 patterns, rcptrate/msgrate set (high enough not to
# refuse), clients not relay clients (rcpthosts decides). No rule matches the load's addresses,
# so every list is consulted in full on every message. Greylisting, DNSBL and SPF are left out:
# they answer from network peers, not from the control files.
set -euo pipefail
# Run as root here: the server stays root instead of refusing (README, "Running as root").
export INDIMAIL_ALLOW_ROOT="${INDIMAIL_ALLOW_ROOT:-1}"
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
runs=3 messages=20000 sessions=20 rcpts=1 build=1
while [[ $# -gt 0 ]]; do
    case $1 in
        --runs) runs=$2; shift 2 ;;
        --messages) messages=$2; shift 2 ;;
        --sessions) sessions=$2; shift 2 ;;
        --rcpts) rcpts=$2; shift 2 ;;
        --no-build) build=0; shift ;;
        -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
        *) echo "policy-cost.sh: unknown option $1" >&2; exit 2 ;;
    esac
done
log() { echo "policy-cost: $*" >&2; }
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
if [[ $build -eq 1 ]]; then
    log "building (release)"
    (cd "$ROOT" && cargo build --release -q -p indimail -p indimail-loadtest)
fi
IM=$CARGO_TARGET_DIR/release/indimail
LT=$CARGO_TARGET_DIR/release/indimail-loadtest
WORK=$(mktemp -d /tmp/indimail-policy-cost.XXXXXX)
pid=""
trap '[[ -n $pid ]] && kill $pid 2>/dev/null; rm -rf "$WORK"' EXIT

make_home() { # $1 = home, $2 = none|all
    local h=$1 c=$1/control
    mkdir -p "$c" "$h/tcp"
    echo "example.com" > "$c/rcpthosts"
    echo "loadtest.example.com" > "$c/me"
    echo ":allow" > "$h/tcp/tcp.smtp"
    [[ $2 == all ]] || return 0
    python3 - "$c" <<'PY'
import sys, os
c = sys.argv[1]
def w(name, lines):
    with open(os.path.join(c, name), "w") as f:
        f.write("\n".join(lines) + "\n")
w("badmailfrom", [f"spammer{i}@bad{i % 997}.example" if i % 2 else f"@junk{i}.example" for i in range(10000)])
w("badmailpatterns", [f"*@*.spam{i}.example" for i in range(200)])
w("badrcptto", [f"nobody{i}@example.com" if i % 2 else f"@gone{i}.example" for i in range(10000)])
w("badrcptpatterns", [f"trap{i}-*@example.com" for i in range(200)])
w("goodrcptto", [f"vip{i}@example.com" for i in range(1000)])
w("blackholedsender", [f"void{i}@sink.example" for i in range(1000)])
w("blackholedrcpt", [f"hole{i}@example.com" for i in range(1000)])
w("accesslist", [f"from:intern{i}@partner{i % 50}.example:boss{i}@example.com" if i % 2 else f"rcpt:ceo{i}@example.com:*@board{i}.example" for i in range(1000)])
w("hostaccess", [f"corp{i}.example:10.{i % 250}.1-20.*" for i in range(1000)])
w("from.envrules", [f"*@big{i}.example:DATABYTES=100000000" for i in range(200)])
w("badhelo", [f"*.dyn{i}.example" for i in range(500)])
w("badip", [f"192.0.{i % 250}.{i // 250 + 1}" for i in range(1000)])
w("bodycheck", [f"viagra{i}:spam words" for i in range(50)])
w("rcptrate", ["100000000"])
w("msgrate", ["100000000"])
PY
}

# Server CPU ticks (utime+stime, all threads) of process $1.
cpu_ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }

run_one() { # $1 = none|all, $2 = run number; prints "msgs_per_s cpu_us_per_msg"
    local h=$WORK/$1-$2 port json t0 t1
    make_home "$h" "$1"
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    INDIMAIL_NO_DELIVERY=1 "$IM" serve --home "$h" --smtp "127.0.0.1:$port" >"$h/serve.out" 2>"$h/serve.log" &
    pid=$!
    for _ in $(seq 300); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
    json=$h/load.json
    t0=$(cpu_ticks $pid)
    "$LT" send --target "127.0.0.1:$port" --messages "$messages" --sessions "$sessions" \
        --rcpts "$rcpts" --pipelining --quiet --json "$json" >/dev/null
    t1=$(cpu_ticks $pid)
    kill $pid; wait $pid 2>/dev/null || true; pid=""
    python3 - "$json" "$t0" "$t1" "$messages" "$(getconf CLK_TCK)" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
rate = d["msgs_per_sec"]
ok = d["messages_accepted"]
ticks = int(sys.argv[3]) - int(sys.argv[2])
us = ticks / int(sys.argv[5]) * 1e6 / int(sys.argv[4])
print(f"{rate:.0f} {us:.0f} {ok}")
PY
}

declare -A rate cpu
for ((r = 1; r <= runs; r++)); do
    for mode in none all; do
        read -r m u ok < <(run_one $mode $r)
        log "run $r $mode: $m msgs/s, $u us server CPU per message, accepted $ok"
        rate[$mode]+="$m "; cpu[$mode]+="$u "
    done
done
median() { tr ' ' '\n' | grep -v '^$' | sort -n | awk '{a[NR]=$1} END{print a[int((NR+1)/2)]}'; }
rn=$(echo "${rate[none]}" | median); ra=$(echo "${rate[all]}" | median)
cn=$(echo "${cpu[none]}" | median); ca=$(echo "${cpu[all]}" | median)
echo "| controls | msgs/s (median of $runs) | server CPU µs/msg |"
echo "|---|---|---|"
echo "| none | $rn | $cn |"
echo "| full set | $ra | $ca |"
python3 -c "print(f'| ratio full/none | {$ra/$rn:.2f} | {$ca/$cn:.2f} |')"
echo
echo "$messages messages per run, $sessions sessions, $rcpts rcpt(s), pipelining, $(nproc) CPUs, $(date -u '+%Y-%m-%d %H:%M UTC')"
