#!/usr/bin/env bash
# The cost of TLS on one shard: the same load against one `indimail serve` (one shard, pinned
# with --cpus), over plaintext and over TLS, alternating, several runs; prints medians, the
# server CPU per operation and the ratios TLS/plaintext as a markdown table.
#
#   loadtest/tls-cost.sh [--runs N] [--seconds S] [--sessions C] [--size BYTES]
#                        [--cert ecdsa|rsa] [--cpus LIST] [--gen-cpus LIST] [--resume]
#                        [--no-build] [--tsv FILE] [--keep]
#
# Measurements (each S seconds, default 4, closed loop, C concurrent sessions, default 20):
#   conn      sessions without mail: connect, greeting, EHLO, QUIT, close
#             (`indimail-loadtest handshake`), on the smtp listener in cleartext and on the
#             smtps listener with implicit TLS (RFC 8314): a full TLS handshake per session
#             unless --resume (then the generator resumes TLS 1.3 sessions where it can).
#   msg1      accept-only messages of --size bytes (default 10240), one per connection
#             (INDIMAIL_NO_DELIVERY=1: queue commit, no delivery), cleartext vs implicit TLS:
#             the handshake is part of every message.
#   msg100    the same with 100 messages per connection: the cost of the TLS record layer.
# For each: operations per second seen by the generator, and the server's CPU time per
# operation (utime+stime of the server process from /proc over the measured window). On a
# shared machine the rate moves with what else runs; the CPU per operation is the steadier
# figure, and 1 s / (CPU per operation) is what one shard could do with a core to itself.
# The certificate is the server's self-signed demo certificate (ECDSA P-256), or with
# --cert rsa an RSA-2048 one made with openssl. The server runs on --cpus (default 0, one
# shard), the generator under taskset on --gen-cpus (default 1) when the machine has 2 CPUs
# or more.
set -euo pipefail
# Run as root here: the server stays root instead of refusing (README, "Running as root").
export INDIMAIL_ALLOW_ROOT="${INDIMAIL_ALLOW_ROOT:-1}"
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
runs=3 seconds=4 sessions=20 size=10240 cert=ecdsa cpus=0 gen_cpus=1 resume=0 build=1 tsv="" keep=0
while [[ $# -gt 0 ]]; do
    case $1 in
        --runs) runs=$2; shift 2 ;;
        --seconds) seconds=$2; shift 2 ;;
        --sessions) sessions=$2; shift 2 ;;
        --size) size=$2; shift 2 ;;
        --cert) cert=$2; shift 2 ;;
        --cpus) cpus=$2; shift 2 ;;
        --gen-cpus) gen_cpus=$2; shift 2 ;;
        --resume) resume=1; shift ;;
        --no-build) build=0; shift ;;
        --tsv) tsv=$2; shift 2 ;;
        --keep) keep=1; shift ;;
        -h|--help) sed -n '2,28p' "$0"; exit 0 ;;
        *) echo "tls-cost.sh: unknown option $1" >&2; exit 2 ;;
    esac
done
[[ $cert == ecdsa || $cert == rsa ]] || { echo "tls-cost.sh: --cert ecdsa|rsa" >&2; exit 2; }
log() { echo "tls-cost: $*" >&2; }
die() { log "$*"; exit 1; }

export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
if [[ $build -eq 1 ]]; then
    log "building indimail and indimail-loadtest (release) in $CARGO_TARGET_DIR"
    (cd "$ROOT" && cargo build --release -q -p indimail -p indimail-loadtest) || die "build failed"
fi
IM=$CARGO_TARGET_DIR/release/indimail
LT=$CARGO_TARGET_DIR/release/indimail-loadtest
[[ -x $IM && -x $LT ]] || die "release binaries missing in $CARGO_TARGET_DIR/release"
GEN=()
if [[ $(nproc) -ge 2 ]] && command -v taskset >/dev/null; then GEN=(taskset -c "$gen_cpus"); fi

WORK=$(mktemp -d /tmp/indimail-tls-cost.XXXXXX)
RESULTS=${tsv:-$WORK/results.tsv}
: > "$RESULTS"
pid=""
cleanup() {
    [[ -n $pid ]] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
    [[ $keep -eq 1 ]] && log "kept $WORK" || rm -rf "$WORK"
}
trap cleanup EXIT

# free_port, wait_port, cpu_ticks
# shellcheck source=loadtest/bench-lib.sh
. "$HERE/bench-lib.sh"
json() { python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print(eval(sys.argv[2]))" "$@"; }

# --- the server: one home, one process, both listeners on the one shard ------------------
H=$WORK/home
mkdir -p "$H/control" "$H/tcp"
echo example.com > "$H/control/rcpthosts"
echo tls-cost.example > "$H/control/me"
echo 0 > "$H/control/maxperip"
echo ":allow" > "$H/tcp/tcp.smtp"
if [[ $cert == rsa ]]; then
    openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=tls-cost.example \
        -keyout "$WORK/key.pem" -out "$WORK/cert.pem" 2>/dev/null || die "openssl failed"
    cat "$WORK/cert.pem" "$WORK/key.pem" > "$H/control/servercert.pem"
    chmod 600 "$H/control/servercert.pem"
fi
PLAIN=$(free_port); TLSP=$(free_port)
while [[ $TLSP == "$PLAIN" ]]; do TLSP=$(free_port); done
INDIMAIL_NO_DELIVERY=1 "$IM" serve --home "$H" --cpus "$cpus" --smtp "127.0.0.1:$PLAIN" \
    --smtps "127.0.0.1:$TLSP" >"$WORK/serve.out" 2>"$WORK/serve.log" &
pid=$!
wait_port "$PLAIN" && wait_port "$TLSP" || die "indimail serve did not start (see $WORK/serve.log)"

# One measurement: kind (conn|msg1|msg100), transport (plain|tls), run; appends a TSV row:
# kind transport run ops_per_s server_cpu_us_per_op ops failed generator_cpu_pct negotiated
measure() {
    local kind=$1 transport=$2 run=$3 port=$PLAIN tls=() report=$WORK/$1-$2-$3.json
    if [[ $transport == tls ]]; then
        port=$TLSP tls=(--tls-on-connect)
        [[ $resume -eq 1 ]] && tls+=(--tls-resume)
    fi
    local c0 c1
    c0=$(cpu_ticks "$pid")
    # `times` in this shell (not in a $(...) subshell): its children's CPU so far.
    times > "$WORK/times0"
    case $kind in
        conn)
            "${GEN[@]}" "$LT" handshake --quiet --target "127.0.0.1:$port" --duration "$seconds" \
                --connections 100000000 --sessions "$sessions" "${tls[@]}" --json "$report" \
                >"$WORK/$kind-$transport-$run.txt" 2>&1 || die "handshake failed (see $WORK/$kind-$transport-$run.txt)"
            ;;
        msg*)
            "${GEN[@]}" "$LT" send --quiet --target "127.0.0.1:$port" --duration "$seconds" \
                --messages 100000000 --sessions "$sessions" --per-session "${kind#msg}" \
                --size "$size" --pipelining --rcpt-domain example.com "${tls[@]}" --json "$report" \
                >"$WORK/$kind-$transport-$run.txt" 2>&1 || die "send failed (see $WORK/$kind-$transport-$run.txt)"
            ;;
    esac
    c1=$(cpu_ticks "$pid")
    times > "$WORK/times1"
    python3 - "$kind" "$transport" "$run" "$report" "$c0" "$c1" "$(getconf CLK_TCK)" \
        "$(sed -n 2p "$WORK/times0")" "$(sed -n 2p "$WORK/times1")" >> "$RESULTS" <<'PY'
import json, re, sys
kind, transport, run, path, c0, c1, hz, g0, g1 = sys.argv[1:]
d = json.load(open(path))
if kind == "conn":
    ops, failed, rate = d["completed"], d["failed"], d["sessions_per_sec"]
    neg = d.get("tls_negotiated") or "-"
    if neg != "-":
        neg += f", {d.get('tls_resumed', 0)} of {ops} handshakes resumed"
else:
    ops, failed, rate = d["messages_accepted"], d["messages_failed"], d["msgs_per_sec"]
    neg = "-"
cpu_s = (int(c1) - int(c0)) / int(hz)
us = cpu_s * 1e6 / ops if ops else 0
secs = lambda t: sum(int(m) * 60 + float(s) for m, s in re.findall(r"(\d+)m([\d.]+)s", t))
gen = 100 * (secs(g1) - secs(g0)) / d["elapsed_s"] if d["elapsed_s"] > 0 else 0
srv = 100 * cpu_s / d["elapsed_s"] if d["elapsed_s"] > 0 else 0
print("\t".join(map(str, [kind, transport, run, round(rate, 1), round(us, 1), ops, failed,
                         round(gen, 1), round(srv, 1), neg])))
PY
    local row; row=$(tail -n 1 "$RESULTS")
    log "run $run $kind $transport: $(cut -f4 <<<"$row")/s, server CPU $(cut -f5 <<<"$row") µs/op ($(cut -f9 <<<"$row")% of a core), generator $(cut -f8 <<<"$row")%, failed $(cut -f7 <<<"$row")"
}

log "server pid $pid on CPUs $cpus; generator ${GEN[*]:-unpinned}; $runs runs of ${seconds}s each; cert $cert"
log "load average: $(cut -d' ' -f1-3 /proc/loadavg)"
load0=$(cut -d' ' -f1-3 /proc/loadavg)
for ((run = 1; run <= runs; run++)); do
    for kind in conn msg1 msg100; do
        # Alternate which transport goes first so drift on the machine hits both alike.
        if (( run % 2 )); then order=(plain tls); else order=(tls plain); fi
        for transport in "${order[@]}"; do measure "$kind" "$transport" "$run"; done
    done
done
load1=$(cut -d' ' -f1-3 /proc/loadavg)
log "load average: $load1"
warnings=$(grep -c "warning" "$WORK/serve.log" || true)

python3 - "$RESULTS" "$runs" "$seconds" "$sessions" "$size" "$cert" "$resume" "$load0" "$load1" "$warnings" <<'PY'
import statistics, sys
path, runs, seconds, sessions, size, cert, resume, load0, load1, warnings = sys.argv[1:]
rows = [l.rstrip("\n").split("\t") for l in open(path) if l.strip()]
med = lambda k, t, col: statistics.median(float(r[col]) for r in rows if r[0] == k and r[1] == t)
rng = lambda k, t, col: [float(r[col]) for r in rows if r[0] == k and r[1] == t]
neg = next((r[9] for r in rows if r[0] == "conn" and r[1] == "tls" and r[9] != "-"), "-")
names = {
    "conn": "sessions without mail (connect, EHLO, QUIT) per s",
    "msg1": f"{int(size) // 1024} KiB messages per s, 1 per connection",
    "msg100": f"{int(size) // 1024} KiB messages per s, 100 per connection",
}
fmt = lambda x: f"{x:,.0f}" if x >= 100 else f"{x:,.1f}"
print(f"| measure | plaintext | implicit TLS | TLS / plaintext |")
print(f"|---|---:|---:|---:|")
for k in ("conn", "msg1", "msg100"):
    p, t = med(k, "plain", 3), med(k, "tls", 3)
    pr, tr = rng(k, "plain", 3), rng(k, "tls", 3)
    print(f"| {names[k]} | {fmt(p)} [{fmt(min(pr))}-{fmt(max(pr))}] | {fmt(t)} [{fmt(min(tr))}-{fmt(max(tr))}] | **{t / p:.2f}** |")
for k in ("conn", "msg1", "msg100"):
    p, t = med(k, "plain", 4), med(k, "tls", 4)
    print(f"| {k}: server CPU µs per operation | {fmt(p)} | {fmt(t)} | {t / p:.2f} |")
for k in ("conn", "msg1", "msg100"):
    p, t = med(k, "plain", 4), med(k, "tls", 4)
    print(f"| {k}: per shard at 100% of a core (1 s / CPU per op) | {fmt(1e6 / p)} | {fmt(1e6 / t)} | {p / t:.2f} |")
for k in ("conn", "msg1", "msg100"):
    print(f"| {k}: server CPU % of its core / generator CPU % | {med(k, 'plain', 8):.0f} / {med(k, 'plain', 7):.0f} | {med(k, 'tls', 8):.0f} / {med(k, 'tls', 7):.0f} | - |")
failed = sum(int(r[6]) for r in rows)
print()
print(f"Medians of {runs} runs of {seconds} s each [range], {sessions} concurrent sessions, closed loop; "
      f"TLS: {neg}, {'ECDSA P-256 demo' if cert == 'ecdsa' else 'RSA-2048'} certificate, "
      f"{'resumption allowed' if resume == '1' else 'a full handshake per connection'}; "
      f"failed operations: {failed}; server warnings: {warnings}; load average {load0} at start, {load1} at end.")
PY
