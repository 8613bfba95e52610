#!/usr/bin/env bash
# Issue 17, "every key has a home shard": what it costs and what it saves, before (per-shard
# directory caches, commit --before) and after (each user's entry cached on its home shard
# only; the current tree).
#
#   loadtest/home-shard-bench.sh [--parts queries,relay] [--shards "1 2 8"] [--users 2000]
#       [--messages 2000] [--rcpts 10] [--sessions 20] [--sources 256] [--no-mysql]
#       [--relay-runs 3] [--relay-messages 5000] [--before REV | --before-bin PATH]
#       [--no-refresh-pass] [--no-build] [--out DIR] [--keep]
#
# queries: a directory of --users mailboxes (u1..uN@example.com) in the embedded SQLite store
#   and in a private MariaDB (loadtest/bench-lib.sh); for each shard count, a fresh
#   `indimail serve` (INDIMAIL_SHARDS=N, unpinned; INDIMAIL_NO_DELIVERY=1, so every lookup is
#   a CHECKRECIPIENT at RCPT) gets the same load twice: --messages messages of --rcpts
#   recipients (every user --messages*--rcpts/--users times per pass), 512 bytes, pipelining,
#   one message per connection, from --sources client addresses (127.1.0.1 upward, so the
#   connections land on every shard). Pass 1 starts with an empty cache ("cold"), pass 2
#   follows at once ("warm", within the 60 s TTL). Counted per pass: user records fetched
#   (`indimail_directory_user_queries_total`), cache hits and misses, questions to home
#   shards (after only: the metrics are new), and with MariaDB the statements in its general
#   log: SELECTs of a user record (indimail/indibak) and all statements (they include each
#   shard's change poll, one a second). Then, unless --no-refresh-pass, a third pass after
#   62 s, past the 60 s TTL of a user entry ("refresh": every entry is refetched once per
#   cache that holds it, what a warm cache costs per TTL in a steady load). The before
#   binary runs only against MariaDB (its fetches are counted there, it has no such metrics).
# relay: the same relay load against the before and the after binary at 2 shards
#   (`--cpus 0,1`), alternated, --relay-runs times: --relay-messages 1 KiB messages, one per
#   connection, --sessions sessions, to a remote domain routed (control/smtproutes) to an
#   `indimail-loadtest sink`; generator Postfix's smtp-source (one client address, so one
#   home shard accepts everything: the placement is the same before and after) and
#   `indimail-loadtest send --source-addrs` (--sources addresses, both shards accept).
#   End-to-end msgs/s (first connection until the sink has counted every message), server
#   CPU per message (utime+stime from /proc), and the share of messages shard 0 accepted.
#
# Prints markdown tables (also in OUT/results.md; raw rows in OUT/*.tsv). Needs root only
# for mariadbd's --user; runs the server as root with INDIMAIL_ALLOW_ROOT=1 (README).
set -euo pipefail
export INDIMAIL_ALLOW_ROOT="${INDIMAIL_ALLOW_ROOT:-1}"
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
parts=queries,relay shards="1 2 8" users=2000 messages=2000 rcpts=10 sessions=20 sources=256
mysql=1 refresh_pass=1 relay_runs=3 relay_messages=5000 before_rev=011e73b before_bin="" build=1 out="" keep=0
while [[ $# -gt 0 ]]; do
    case $1 in
        --parts) parts=$2; shift 2 ;;
        --shards) shards=$2; shift 2 ;;
        --users) users=$2; shift 2 ;;
        --messages) messages=$2; shift 2 ;;
        --rcpts) rcpts=$2; shift 2 ;;
        --sessions) sessions=$2; shift 2 ;;
        --sources) sources=$2; shift 2 ;;
        --no-mysql) mysql=0; shift ;;
        --no-refresh-pass) refresh_pass=0; shift ;;
        --relay-runs) relay_runs=$2; shift 2 ;;
        --relay-messages) relay_messages=$2; shift 2 ;;
        --before) before_rev=$2; shift 2 ;;
        --before-bin) before_bin=$2; shift 2 ;;
        --no-build) build=0; shift ;;
        --out) out=$2; shift 2 ;;
        --keep) keep=1; shift ;;
        -h|--help) sed -n '2,36p' "$0"; exit 0 ;;
        *) echo "home-shard-bench.sh: unknown option $1" >&2; exit 2 ;;
    esac
done
log() { echo "[$(date +%T)] home-shard-bench: $*" >&2; }
die() { log "$*"; exit 1; }
has_part() { [[ ",$parts," == *",$1,"* ]]; }

export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
WORK=$(mktemp -d /tmp/home-shard-bench.XXXXXX)
OUT=${out:-$WORK/out}
mkdir -p "$OUT"
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    [[ -d $WORK/before-src ]] && git -C "$ROOT" worktree remove --force "$WORK/before-src" 2>/dev/null
    if [[ $keep -eq 1 ]]; then log "kept $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT INT TERM

# ---- binaries ----
if [[ $build -eq 1 ]]; then
    log "building indimail and indimail-loadtest (release) in $CARGO_TARGET_DIR"
    (cd "$ROOT" && cargo build --release -q -p indimail -p indimail-loadtest) || die "build failed"
fi
AFTER=$CARGO_TARGET_DIR/release/indimail
LT=$CARGO_TARGET_DIR/release/indimail-loadtest
[[ -x $AFTER && -x $LT ]] || die "release binaries missing in $CARGO_TARGET_DIR/release"
if [[ -z $before_bin ]] && { has_part relay || [[ $mysql -eq 1 ]]; }; then
    before_target=${CARGO_TARGET_DIR%/}-before
    log "building indimail at $before_rev in $before_target (a temporary worktree)"
    git -C "$ROOT" worktree add --detach "$WORK/before-src" "$before_rev" >/dev/null 2>&1 ||
        die "cannot check out $before_rev"
    (cd "$WORK/before-src" && CARGO_TARGET_DIR=$before_target cargo build --release -q -p indimail) ||
        die "build of $before_rev failed"
    before_bin=$before_target/release/indimail
fi
BEFORE=$before_bin

# free_port, wait_port, cpu_ticks, mariadb_start, mariadb_sql
# shellcheck source=loadtest/bench-lib.sh
. "$HERE/bench-lib.sh"
now() { date +%s.%N; }
# The metrics of interest, summed over shards ("-" when the binary has none).
scrape() { # $1 port
    python3 - "$1" <<'PY'
import sys, urllib.request
text = urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/metrics", timeout=10).read().decode()
vals = {}
for line in text.splitlines():
    if line.startswith("#") or "{" in line or " " not in line:
        continue
    k, v = line.rsplit(" ", 1)
    vals[k] = v
names = ["directory_user_queries_total", "directory_home_questions_total",
         "directory_cache_hits_total", "directory_cache_misses_total"]
print(" ".join(vals.get("indimail_" + n, "-") for n in names))
PY
}

# ---- part 1: directory queries per message and cache hit rate ----
queries_part() {
    local QT=$OUT/queries.tsv
    : >"$QT"
    local backends=(sqlite)
    if [[ $mysql -eq 1 ]]; then
        mkdir -p "$WORK/mariadb"
        mariadb_start "$WORK/mariadb" || die "mariadb"
        PIDS+=("$MARIADB_PID")
        log "private MariaDB on 127.0.0.1:$MARIADB_PORT"
        backends+=(mysql)
    fi
    local backend H
    for backend in "${backends[@]}"; do
        H=$WORK/home-$backend
        "$AFTER" init --home "$H" >/dev/null
        [[ $backend == mysql ]] && echo "127.0.0.1:root::$MARIADB_PORT" >"$H/control/host.mysql"
        echo 0 >"$H/control/maxperip"
        "$AFTER" domain add example.com --home "$H" >/dev/null
        "$AFTER" user add u0@example.com --password pw --home "$H" >/dev/null
        local cols="pw_domain,pw_passwd,pw_uid,pw_gid,pw_gecos,pw_shell"
        if [[ $backend == mysql ]]; then
            mariadb_sql indimail -e "INSERT INTO indimail (pw_name,$cols,pw_dir)
                SELECT CONCAT('u',seq),$cols,CONCAT(pw_dir,seq) FROM indimail
                JOIN seq_1_to_${users} WHERE pw_name='u0'"
        else
            python3 - "$H/db/indimail.sqlite" "$users" "$cols" <<'PY'
import sqlite3, sys
db, n, cols = sys.argv[1], int(sys.argv[2]), sys.argv[3]
c = sqlite3.connect(db)
c.execute(f"""INSERT INTO indimail (pw_name,{cols},pw_dir)
    WITH RECURSIVE seq(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM seq WHERE n < {n})
    SELECT 'u' || n,{cols},pw_dir || n FROM indimail, seq WHERE pw_name = 'u0'""")
c.commit()
PY
        fi
        log "$backend: $users users"
        local n code bin
        for n in $shards; do
            for code in after before; do
                [[ $code == before && $backend == sqlite ]] && continue
                bin=$AFTER; [[ $code == before ]] && bin=$BEFORE
                queries_run "$bin" "$code" "$backend" "$n" "$H"
            done
        done
    done
}

queries_run() { # bin code backend shards home; appends one TSV row per pass
    local bin=$1 code=$2 backend=$3 n=$4 H=$5 port mport pid pass
    port=$(free_port); mport=$(free_port)
    local q=$WORK/queue-$code-$backend-$n
    INDIMAIL_SHARDS=$n INDIMAIL_NO_DELIVERY=1 QUEUE_BASE=$q "$bin" serve --home "$H" \
        --smtp "127.0.0.1:$port" --metrics "127.0.0.1:$mport" \
        >"$WORK/serve-$code-$backend-$n.out" 2>"$WORK/serve-$code-$backend-$n.log" </dev/null &
    pid=$!
    PIDS+=("$pid")
    wait_port "$port" && wait_port "$mport" || die "serve did not start (see $WORK/serve-$code-$backend-$n.log)"
    local passes=(cold warm)
    [[ $refresh_pass -eq 1 ]] && passes+=(refresh)
    for pass in "${passes[@]}"; do
        # Past the 60 s positive TTL of the entries the cold pass fetched.
        [[ $pass == refresh ]] && sleep 62
        local tag=$code-$backend-$n-$pass m0 m1 glog=$WORK/general-$code-$backend-$n-$pass.log
        m0=$(scrape "$mport")
        if [[ $backend == mysql ]]; then
            mariadb_sql -e "SET GLOBAL general_log_file='$glog'; SET GLOBAL general_log=1"
        fi
        "$LT" send --target "127.0.0.1:$port" --sessions "$sessions" --messages "$messages" \
            --rcpts "$rcpts" --rcpt-template 'u{n}@example.com' --users "$users" --size 512 \
            --pipelining --source-addrs "$sources" --quiet --json "$WORK/$tag.json" \
            >"$WORK/$tag.txt" 2>&1 || die "send failed (see $WORK/$tag.txt)"
        local selects=- statements=-
        if [[ $backend == mysql ]]; then
            mariadb_sql -e "SET GLOBAL general_log=0"
            # Executed statements (prepared or not), less our own SET.
            selects=$(grep -E $'[0-9]+ (Execute|Query)\t' "$glog" | grep -cE 'FROM (indimail|indibak) WHERE pw_name' || true)
            statements=$(grep -E $'[0-9]+ (Execute|Query)\t' "$glog" | grep -vc 'general_log' || true)
        fi
        # The gauge loop copies each shard's counts once a second.
        sleep 1.5
        m1=$(scrape "$mport")
        python3 - "$WORK/$tag.json" "$backend" "$code" "$n" "$pass" "$m0" "$m1" "$selects" "$statements" >>"$OUT/queries.tsv" <<'PY'
import json, sys
j = json.load(open(sys.argv[1]))
backend, code, n, pass_, m0, m1, selects, statements = sys.argv[2:]
d = [("-" if a == "-" or b == "-" else str(int(b) - int(a))) for a, b in zip(m0.split(), m1.split())]
print("\t".join([backend, code, n, pass_, str(j["messages_accepted"]), str(j["messages_failed"]),
                 str(j["recipients_accepted"]), "%.0f" % j["msgs_per_sec"], *d, selects, statements]))
PY
        log "$code $backend $n shards $pass: $(tail -n 1 "$OUT/queries.tsv" | cut -f5- | tr '\t' ' ')"
    done
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

queries_table() {
    python3 - "$OUT/queries.tsv" "$users" "$messages" "$rcpts" "$sources" <<'PY'
import sys
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if l.strip()]
users, messages, rcpts, sources = sys.argv[2:]
print("| store | code | shards | pass | accepted msgs (failed) | RCPTs | msgs/s | user records fetched | per message | user-entry hit rate | cache hit rate (all entries) | home questions per RCPT | MySQL statements per message |")
print("|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
for b, code, n, p, acc, failed, rc, mps, uq, hq, hits, misses, sel, stm in rows:
    acc_i, rc_i = int(acc), int(rc)
    # User records: the server's own count when it has one, else MariaDB's SELECTs.
    fetched = uq if uq != "-" else sel
    per_msg = "%.3f" % (int(fetched) / max(1, acc_i)) if fetched != "-" else "-"
    user_hit = "%.1f%%" % (100 * (1 - int(fetched) / max(1, rc_i))) if fetched != "-" else "-"
    hit = "-" if hits == "-" else "%.1f%%" % (100 * int(hits) / max(1, int(hits) + int(misses)))
    hq_r = "-" if hq == "-" else "%.2f" % (int(hq) / max(1, rc_i))
    st = "-" if stm == "-" else "%.2f" % (int(stm) / max(1, acc_i))
    sel_note = "" if sel == "-" or uq == "-" else f" ({sel} SELECTs)"
    print(f"| {b} | {code} | {n} | {p} | {acc} ({failed}) | {rc} | {mps} | {fetched}{sel_note} | {per_msg} | {user_hit} | {hit} | {hq_r} | {st} |")
print()
print(f"{users} users; each pass {messages} messages x {rcpts} recipients (each user {int(messages) * int(rcpts) // int(users)} times), "
      f"one message per connection from {sources} client addresses; cold = first pass after start, warm = second pass at once, "
      "refresh = third pass 62 s later (past the 60 s TTL: stale entries served while each cache refetches them). "
      "user-entry hit rate = 1 - user records fetched / RCPTs (every RCPT looks its user up once, on the user's home shard after, "
      "on the accepting shard before); cache hit rate = hits / (hits + misses) of every shard's cache (each RCPT also looks up its "
      "domain on the accepting shard).")
PY
}

# ---- part 2: relay rate before/after ----
relay_one() { # bin code gen run; appends a TSV row
    local bin=$1 code=$2 gen=$3 run=$4 h=$WORK/relay-$code-$gen-$run sink port spid pid
    mkdir -p "$h/control"
    local sport; sport=$(free_port)
    "$LT" sink --listen "127.0.0.1:$sport" --stats "$h.sink.json" >"$h.sink.out" 2>&1 &
    spid=$!
    PIDS+=("$spid")
    wait_port "$sport" || die "sink did not start"
    echo example.com >"$h/control/rcpthosts"
    echo relay.home-shard.example >"$h/control/me"
    echo 0 >"$h/control/maxperip"
    echo "example.com:127.0.0.1:$sport" >"$h/control/smtproutes"
    port=$(free_port)
    "$bin" serve --home "$h" --cpus 0,1 --smtp "127.0.0.1:$port" >"$h.out" 2>"$h.log" </dev/null &
    pid=$!
    PIDS+=("$pid")
    wait_port "$port" || die "serve did not start (see $h.log)"
    local c0 c1 t0 t1 t2
    c0=$(cpu_ticks "$pid"); t0=$(now)
    if [[ $gen == smtp-source ]]; then
        /usr/sbin/smtp-source -s "$sessions" -m "$relay_messages" -l 1024 \
            -f loadtest@loadtest.example.org -t user@example.com "127.0.0.1:$port" >"$h.gen" 2>&1 ||
            log "smtp-source exited non-zero (see $h.gen)"
    else
        "$LT" send --target "127.0.0.1:$port" --sessions "$sessions" --messages "$relay_messages" \
            --size 1024 --pipelining --rcpt-domain example.com --users 1000 \
            --source-addrs "$sources" --quiet --json "$h.gen.json" >"$h.gen" 2>&1 ||
            log "send exited non-zero (see $h.gen)"
    fi
    t1=$(now)
    local counted=0 i
    for ((i = 0; i < 6000; i++)); do
        counted=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["messages"])' "$h.sink.json" 2>/dev/null || echo 0)
        [[ $counted -ge $relay_messages ]] && break
        sleep 0.1
    done
    t2=$(now); c1=$(cpu_ticks "$pid")
    local s0 s1
    s0=$(grep -c 'shard0 new msg' "$h.log" || true)
    s1=$(grep -c ' new msg' "$h.log" || true)
    kill "$pid" "$spid" 2>/dev/null || true
    wait "$pid" "$spid" 2>/dev/null || true
    python3 - "$code" "$gen" "$run" "$relay_messages" "$counted" "$t0" "$t1" "$t2" "$c0" "$c1" \
        "$(getconf CLK_TCK)" "$s0" "$s1" >>"$OUT/relay.tsv" <<'PY'
import sys
code, gen, run, m, counted, t0, t1, t2, c0, c1, hz, s0, s1 = sys.argv[1:]
m, counted = int(m), int(counted)
t0, t1, t2 = float(t0), float(t1), float(t2)
drained = counted >= m
e2e = counted / (t2 - t0) if t2 > t0 else 0
acc = m / (t1 - t0) if t1 > t0 else 0
cpu_ms = (int(c1) - int(c0)) / int(hz) * 1000 / max(1, counted)
share = int(s0) / max(1, int(s1))
print("\t".join(map(str, [code, gen, run, round(e2e, 1), round(acc, 1), round(cpu_ms, 3),
                         round(share, 3), counted, "yes" if drained else "NOT DRAINED"])))
PY
    log "relay $code $gen run $run: $(tail -n 1 "$OUT/relay.tsv" | cut -f4-9 | tr '\t' ' ')"
    rm -rf "$h"
}

relay_part() {
    : >"$OUT/relay.tsv"
    local run gen order code
    for ((run = 1; run <= relay_runs; run++)); do
        for gen in smtp-source spread; do
            if ((run % 2)); then order=(before after); else order=(after before); fi
            for code in "${order[@]}"; do
                if [[ $code == before ]]; then relay_one "$BEFORE" before "$gen" "$run"
                else relay_one "$AFTER" after "$gen" "$run"; fi
            done
        done
    done
}

relay_table() {
    python3 - "$OUT/relay.tsv" "$relay_runs" "$relay_messages" "$sessions" "$sources" <<'PY'
import statistics, sys
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if l.strip()]
runs, m, sessions, sources = sys.argv[2:]
col = lambda code, gen, i: [float(r[i]) for r in rows if r[0] == code and r[1] == gen]
med = lambda v: statistics.median(v) if v else 0
names = {"smtp-source": "smtp-source (one client address)",
         "spread": f"indimail-loadtest send --source-addrs {sources}"}
print("| generator | code | end-to-end msgs/s, median [range] | generator-side msgs/s | server CPU ms per message | share accepted by shard 0 |")
print("|---|---|---:|---:|---:|---:|")
for gen in ("smtp-source", "spread"):
    for code in ("before", "after"):
        e = col(code, gen, 3)
        if not e:
            continue
        print(f"| {names[gen]} | {code} | {med(e):,.0f} [{min(e):,.0f}-{max(e):,.0f}] | {med(col(code, gen, 4)):,.0f} | "
              f"{med(col(code, gen, 5)):.3f} | {med(col(code, gen, 6)):.2f} |")
    b, a = med(col("before", gen, 3)), med(col("after", gen, 3))
    cb, ca = med(col("before", gen, 5)), med(col("after", gen, 5))
    if b and a:
        print(f"| {names[gen]} | **after / before** | **{a / b:.2f}** | - | {ca / cb:.2f} | - |")
undrained = [r for r in rows if r[8] != "yes"]
print()
print(f"{m} messages of 1 KiB per run, one per connection, {sessions} sessions, relayed to a sink, 2 shards "
      f"(--cpus 0,1), {runs} runs alternated; undrained runs: {len(undrained)}.")
PY
}

log "load average at start: $(cut -d' ' -f1-3 /proc/loadavg); $(nproc) CPUs"
{
    echo "## home-shard-bench $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) CPUs, load average $(cut -d' ' -f1-3 /proc/loadavg) at start"
    echo
} >"$OUT/results.md"
if has_part queries; then
    queries_part
    queries_table | tee -a "$OUT/results.md"
    echo | tee -a "$OUT/results.md"
fi
if has_part relay; then
    relay_part
    relay_table | tee -a "$OUT/results.md"
fi
echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$OUT/results.md"
