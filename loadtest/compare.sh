#!/usr/bin/env bash
# Runs the same SMTP load against Postfix and against `indimail serve` on this machine, in one
# run, alternating the two, several times, and prints each figure's median and the ratio
# indimail/Postfix as a markdown table.
#
#   loadtest/compare.sh [--quick] [--postfix-only | --indimail-only] [--runs N]
#                       [--workloads accept,relay,virtual] [--sizes 1024,102400] [--rcpts 1,10]
#                       [--messages M] [--sessions S] [--per-session P] [--users U]
#                       [--out FILE] [--keep]
#
# Workloads (each at every size and recipient count):
#   accept   accept only. Postfix: queue manager disabled (smtpd + cleanup, queue file fsynced
#            before 250). indimail: INDIMAIL_NO_DELIVERY=1 (queue commit, no delivery).
#            Figure: msgs/s seen by the generator.
#   relay    accept and relay to an indimail-loadtest sink; the figure is end to end: from the
#            first message sent until the sink has counted every message.
#   virtual  deliver to U (default 1000) virtual users' Maildirs; end to end until every
#            recipient's file is in a Maildir new/.
# Durability is each MTA's default (both fsync before 250 and on Maildir delivery).
#
# Needs root (Postfix's master), Debian's postfix (installed if missing by postfix-instance.sh).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
DOMAIN=example.com

runs=3 quick=0 only="" out="" keep=0
workloads="accept,relay,virtual" sizes="1024,102400" rcpts_list="1,10"
messages="" sessions=20 per_session=1 users=1000
while [[ $# -gt 0 ]]; do
    case $1 in
        --quick) quick=1; shift ;;
        --postfix-only) only=postfix; shift ;;
        --indimail-only) only=indimail; shift ;;
        --runs) runs=$2; shift 2 ;;
        --workloads) workloads=$2; shift 2 ;;
        --sizes) sizes=$2; shift 2 ;;
        --rcpts) rcpts_list=$2; shift 2 ;;
        --messages) messages=$2; shift 2 ;;
        --sessions) sessions=$2; shift 2 ;;
        --per-session) per_session=$2; shift 2 ;;
        --users) users=$2; shift 2 ;;
        --out) out=$2; shift 2 ;;
        --keep) keep=1; shift ;;
        -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
        *) echo "compare.sh: unknown option $1" >&2; exit 2 ;;
    esac
done
if [[ $quick -eq 1 ]]; then
    # One size, one recipient count, fewer messages: a few minutes in all.
    sizes=${sizes/#1024,102400/1024}; rcpts_list=${rcpts_list/#1,10/1}
    messages=${messages:-2000}
fi
messages=${messages:-10000}
mtas=(postfix indimail)
[[ -n $only ]] && mtas=("$only")

log() { echo "compare: $*" >&2; }
die() { log "$*"; exit 1; }
[[ $(id -u) -eq 0 ]] || die "must run as root (Postfix's master needs it)"

# --- build ---------------------------------------------------------------------------------
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
log "building indimail-loadtest (release) in $CARGO_TARGET_DIR"
(cd "$ROOT" && cargo build --release -q -p indimail-loadtest) || die "building indimail-loadtest failed"
LT=$CARGO_TARGET_DIR/release/indimail-loadtest
IM=""
if [[ " ${mtas[*]} " == *" indimail "* ]]; then
    log "building indimail (release)"
    (cd "$ROOT" && cargo build --release -q -p indimail) || die "building indimail failed"
    IM=$CARGO_TARGET_DIR/release/indimail
fi

WORK=$(mktemp -d /tmp/indimail-compare.XXXXXX)
# Postfix daemons run as the postfix user and must be able to reach their directories.
chmod 755 "$WORK"
RESULTS=$WORK/results.tsv
: > "$RESULTS"
pids=()
cleanup() {
    local p
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    for d in "$WORK"/run-*/postfix; do
        [[ -d $d/conf ]] && "$HERE/postfix-instance.sh" stop "$d" 2>/dev/null || true
    done
    [[ $keep -eq 1 ]] && log "kept $WORK" || rm -rf "$WORK"
}
trap cleanup EXIT

free_port() {
    local p
    while :; do
        p=$((20000 + RANDOM % 20000))
        (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null || { echo "$p"; return; }
    done
}

wait_port() {
    local port=$1 i
    for ((i = 0; i < 300; i++)); do
        (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && return 0
        sleep 0.1
    done
    return 1
}

now() { date +%s.%N; }

json() { python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print(eval(sys.argv[2]))" "$@"; }

# Waits until "$@" prints a number >= target (or 600 s pass); prints nothing, returns 1 on timeout.
wait_count() {
    local target=$1; shift
    local deadline=$((SECONDS + 600)) n
    while :; do
        n=$("$@" 2>/dev/null || echo 0)
        [[ ${n:-0} -ge $target ]] && return 0
        [[ $SECONDS -ge $deadline ]] && { log "timed out at $n of $target"; return 1; }
        sleep 0.2
    done
}

sink_count() { json "$1" "d['messages']"; }
maildir_count() { find "$1" -path '*/new/*' -type f 2>/dev/null | wc -l; }

start_sink() { # dir -> sets SINK_PORT, SINK_STATS
    SINK_PORT=$(free_port)
    SINK_STATS=$1/sink.json
    "$LT" sink --listen "127.0.0.1:$SINK_PORT" --stats "$SINK_STATS" >/dev/null 2>"$1/sink.err" &
    SINK_PID=$!; pids+=("$SINK_PID")
    wait_port "$SINK_PORT" || die "sink did not start"
}

start_mta() { # mta workload dir port
    local mta=$1 workload=$2 dir=$3 port=$4
    case $mta in
        postfix)
            case $workload in
                accept) "$HERE/postfix-instance.sh" start --mode accept --domain $DOMAIN "$dir" "$port" ;;
                relay) "$HERE/postfix-instance.sh" start --mode relay --domain $DOMAIN "$dir" "$port" "127.0.0.1:$SINK_PORT" ;;
                virtual) "$HERE/postfix-instance.sh" start --mode virtual --domain $DOMAIN --users "$users" "$dir" "$port" ;;
            esac 2>>"$dir.log"
            ;;
        indimail)
            mkdir -p "$dir/control"
            echo "$DOMAIN" > "$dir/control/rcpthosts"
            local env=()
            case $workload in
                accept) env=(INDIMAIL_NO_DELIVERY=1) ;;
                relay) echo "$DOMAIN:127.0.0.1:$SINK_PORT" > "$dir/control/smtproutes" ;;
                virtual)
                    "$IM" domain add "$DOMAIN" --home "$dir" >>"$dir.log" 2>&1 || die "indimail domain add failed (see $dir.log)"
                    local n
                    for ((n = 1; n <= users; n++)); do
                        "$IM" user add "user$n@$DOMAIN" --password "pw$n" --home "$dir" >>"$dir.log" 2>&1 \
                            || die "indimail user add failed (see $dir.log)"
                    done
                    ;;
            esac
            env "${env[@]}" "$IM" serve --home "$dir" --smtp "127.0.0.1:$port" >>"$dir.log" 2>&1 &
            MTA_PID=$!; pids+=("$MTA_PID")
            wait_port "$port" || die "indimail serve did not listen on $port (see $dir.log)"
            ;;
    esac
}

stop_mta() { # mta dir
    case $1 in
        postfix) "$HERE/postfix-instance.sh" stop "$2" 2>>"$2.log" ;;
        indimail)
            kill -TERM "$MTA_PID" 2>/dev/null || true
            wait "$MTA_PID" 2>/dev/null || true
            ;;
    esac
}

# One measurement: prints "msgs_per_sec p99_ms e2e_msgs_per_sec" (e2e is "-" for accept).
measure() { # mta workload size rcpts run
    local mta=$1 workload=$2 size=$3 rcpts=$4 run=$5
    local dir=$WORK/run-$workload-$size-$rcpts-$run
    mkdir -p "$dir"
    local port; port=$(free_port)
    [[ $workload == relay ]] && start_sink "$dir"
    start_mta "$mta" "$workload" "$dir/$mta" "$port"
    local t0 t1 report=$dir/$mta-report.json
    t0=$(now)
    "$LT" send --quiet --target "127.0.0.1:$port" --messages "$messages" --sessions "$sessions" \
        --per-session "$per_session" --size "$size" --rcpts "$rcpts" --users "$users" \
        --rcpt-domain $DOMAIN --pipelining --json "$report" >"$dir/$mta-send.txt" 2>&1 \
        || die "send failed (see $dir/$mta-send.txt)"
    local accepted e2e="-"
    accepted=$(json "$report" "d['messages_accepted']")
    case $workload in
        relay) wait_count "$accepted" sink_count "$SINK_STATS" || true ;;
        virtual) wait_count $((accepted * rcpts)) maildir_count "$dir/$mta" || true ;;
    esac
    t1=$(now)
    if [[ $workload != accept ]]; then
        e2e=$(python3 -c "print(round($accepted / ($t1 - $t0), 1))")
    fi
    stop_mta "$mta" "$dir/$mta"
    if [[ $workload == relay ]]; then kill -TERM "$SINK_PID" 2>/dev/null || true; wait "$SINK_PID" 2>/dev/null || true; fi
    local rate p99 failed
    rate=$(json "$report" "round(d['msgs_per_sec'], 1)")
    p99=$(json "$report" "d['latency'].get('message', {}).get('p99_ms', 0)")
    failed=$(json "$report" "d['messages_failed']")
    [[ $failed -eq 0 ]] || log "$mta $workload: $failed messages failed: $(json "$report" "d['errors']")"
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$workload" "$size" "$rcpts" "$mta" "$run" "$rate" "$p99" "$e2e" >> "$RESULTS"
    log "$workload size=$size rcpts=$rcpts run=$run $mta: accept $rate msgs/s, p99 $p99 ms, end-to-end $e2e msgs/s"
    [[ $keep -eq 1 ]] || rm -rf "$dir/$mta"
}

IFS=, read -ra W <<< "$workloads"
IFS=, read -ra S <<< "$sizes"
IFS=, read -ra R <<< "$rcpts_list"
log "workloads ${W[*]}, sizes ${S[*]}, rcpts ${R[*]}, $messages messages, $sessions sessions, $runs runs, MTAs ${mtas[*]}"
for workload in "${W[@]}"; do
    for size in "${S[@]}"; do
        for rcpts in "${R[@]}"; do
            for ((run = 1; run <= runs; run++)); do
                # Alternate which MTA goes first so drift on the machine hits both alike.
                order=("${mtas[@]}")
                if (( run % 2 == 0 && ${#mtas[@]} == 2 )); then order=("${mtas[1]}" "${mtas[0]}"); fi
                for mta in "${order[@]}"; do
                    measure "$mta" "$workload" "$size" "$rcpts" "$run"
                done
            done
        done
    done
done

# --- table ---------------------------------------------------------------------------------
table=$(python3 - "$RESULTS" <<'PY'
import sys, statistics, collections
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if l.strip()]
data = collections.defaultdict(list)
order = []
for w, size, rcpts, mta, run, rate, p99, e2e in rows:
    key = (w, int(size), int(rcpts))
    if key not in order:
        order.append(key)
    data[key + (mta, "rate")].append(float(rate))
    data[key + (mta, "p99")].append(float(p99))
    if e2e != "-":
        data[key + (mta, "e2e")].append(float(e2e))
def med(key):
    v = data.get(key)
    return statistics.median(v) if v else None
def fmt(x, unit=""):
    return "-" if x is None else f"{x:,.1f}{unit}"
print("| workload | size | rcpts | figure | Postfix | indimail | indimail/Postfix |")
print("|---|---:|---:|---|---:|---:|---:|")
for key in order:
    w, size, rcpts = key
    figures = [("rate", "accepted msgs/s (generator)")]
    if w != "accept":
        figures.append(("e2e", "end-to-end msgs/s (drained)"))
    figures.append(("p99", "message p99 latency ms"))
    for fig, label in figures:
        p = med(key + ("postfix", fig))
        i = med(key + ("indimail", fig))
        ratio = f"{i / p:.2f}" if p and i else "-"
        print(f"| {w} | {size} | {rcpts} | {label} | {fmt(p)} | {fmt(i)} | {ratio} |")
PY
)
header="Medians of $runs runs; $messages messages per run, $sessions sessions, $per_session per connection, pipelining; $(nproc) CPUs; $(date -u '+%Y-%m-%d %H:%M UTC')."
printf '%s\n\n%s\n' "$header" "$table"
if [[ -n $out ]]; then
    printf '%s\n\n%s\n' "$header" "$table" > "$out"
    log "wrote $out"
fi
