#!/usr/bin/env bash
# Issue 22, the clustered directory: MySQL connections per host at several shard counts, and
# the lookup rate through the local replica against the master.
#
#   loadtest/replica-bench.sh [--parts conns,rate] [--shards "1 2 8"] [--users 20000]
#       [--messages 2000] [--rcpts 10] [--sessions 20] [--sources 256] [--runs 3]
#       [--bin-dir DIR] [--before-bin PATH] [--no-build] [--out DIR] [--keep]
#
# Two private MariaDB servers (loadtest/bench-lib.sh): a primary (binlog, server id 1) and a
# replica of it (server id 2, GTID replication), and --users mailboxes u1..uN@example.com
# added on the primary and replicated. Each load is one pass of --messages messages of
# --rcpts recipients from --sources client addresses (so every shard accepts some) with
# INDIMAIL_NO_DELIVERY=1; with messages × rcpts = users every RCPT names a user not yet
# cached, so every RCPT is one user fetch from the database.
# conns: for each shard count (INDIMAIL_SHARDS=N), a fresh `indimail serve` with
#   control/host.mysql = the replica and control/host.master = the primary, one pass; the
#   client connections each server sees from it are sampled every 0.2 s during the pass
#   (information_schema.PROCESSLIST less replication's own threads and the sampling client):
#   the peak, and the count after the pass. With --before-bin, the same with that binary
#   (older code: no host.master, so host.mysql = the primary) and with the current one on
#   the same one-server configuration.
# rate: at 2 shards, alternated --runs times: the current binary reading through the replica
#   (host.mysql = replica, host.master = primary) against reading the primary itself
#   (host.mysql = primary); RCPTs/s of the pass = user lookups per second, and the prepared
#   statements each server executed during the pass (where the reads went).
#
# Prints markdown tables (also in OUT/results.md; raw rows in OUT/*.tsv). Needs root only for
# mariadbd's --user; runs the server as root with INDIMAIL_ALLOW_ROOT=1 (README).
set -euo pipefail
export INDIMAIL_ALLOW_ROOT="${INDIMAIL_ALLOW_ROOT:-1}"
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
parts=conns,rate shards="1 2 8" users=20000 messages=2000 rcpts=10 sessions=20 sources=256
runs=3 bin_dir="" before_bin="" build=1 out="" keep=0
while [[ $# -gt 0 ]]; do
    case $1 in
        --parts) parts=$2; shift 2 ;;
        --shards) shards=$2; shift 2 ;;
        --users) users=$2; shift 2 ;;
        --messages) messages=$2; shift 2 ;;
        --rcpts) rcpts=$2; shift 2 ;;
        --sessions) sessions=$2; shift 2 ;;
        --sources) sources=$2; shift 2 ;;
        --runs) runs=$2; shift 2 ;;
        --bin-dir) bin_dir=$2; shift 2 ;;
        --before-bin) before_bin=$2; shift 2 ;;
        --no-build) build=0; shift ;;
        --out) out=$2; shift 2 ;;
        --keep) keep=1; shift ;;
        -h|--help) sed -n '2,26p' "$0"; exit 0 ;;
        *) echo "replica-bench.sh: unknown option $1" >&2; exit 2 ;;
    esac
done
log() { echo "[$(date +%T)] replica-bench: $*" >&2; }
die() { log "$*"; exit 1; }
has_part() { [[ ",$parts," == *",$1,"* ]]; }

export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
if [[ -z $bin_dir ]]; then
    bin_dir=$CARGO_TARGET_DIR/release
    if [[ $build -eq 1 ]]; then
        log "building indimail and indimail-loadtest (release) in $CARGO_TARGET_DIR"
        (cd "$ROOT" && cargo build --release -q -p indimail -p indimail-loadtest) || die "build failed"
    fi
fi
BIN=$bin_dir/indimail
LT=$bin_dir/indimail-loadtest
[[ -x $BIN && -x $LT ]] || die "binaries missing in $bin_dir"

WORK=$(mktemp -d /tmp/replica-bench.XXXXXX)
OUT=${out:-$WORK/out}
mkdir -p "$OUT"
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    if [[ $keep -eq 1 ]]; then log "kept $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT INT TERM

# free_port, wait_port, mariadb_start, mariadb_sql
# shellcheck source=loadtest/bench-lib.sh
. "$HERE/bench-lib.sh"

# ---- the two servers ----
mkdir -p "$WORK/primary" "$WORK/replica"
mariadb_start "$WORK/primary" --log-bin=binlog --binlog-format=ROW --server-id=1 || die "primary"
PRIMARY_DIR=$MARIADB_DIR PRIMARY_PORT=$MARIADB_PORT
PIDS+=("$MARIADB_PID")
mariadb_start "$WORK/replica" --skip-log-bin --server-id=2 --relay-log=relay || die "replica"
REPLICA_DIR=$MARIADB_DIR REPLICA_PORT=$MARIADB_PORT
PIDS+=("$MARIADB_PID")
sql_on() { local d=$1; shift; mariadb --socket="$d/sock" -N -B "$@"; }
sql_on "$REPLICA_DIR" -e "CHANGE MASTER TO MASTER_HOST='127.0.0.1', MASTER_PORT=$PRIMARY_PORT,
    MASTER_USER='root', MASTER_PASSWORD='', MASTER_CONNECT_RETRY=1, MASTER_USE_GTID=slave_pos;
    START SLAVE"
log "primary on 127.0.0.1:$PRIMARY_PORT, replica on 127.0.0.1:$REPLICA_PORT"
caught_up() {
    local i want have
    for ((i = 0; i < 600; i++)); do
        want=$(sql_on "$PRIMARY_DIR" -e 'SELECT @@gtid_binlog_pos')
        have=$(sql_on "$REPLICA_DIR" -e 'SELECT @@gtid_slave_pos')
        [[ $want == "$have" ]] && return 0
        sleep 0.1
    done
    die "replica not caught up ($have of $want)"
}
# Client connections of the directory (not replication's, not the asking client's).
clients() { # $1 server dir
    sql_on "$1" -e "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE ID <> CONNECTION_ID()
        AND COMMAND NOT IN ('Binlog Dump', 'Daemon', 'Slave_IO', 'Slave_SQL', 'Slave_worker')
        AND USER NOT IN ('system user', 'event_scheduler')"
}

# ---- the users, added on the primary ----
SEED=$WORK/seed
"$BIN" init --home "$SEED" >/dev/null
echo "127.0.0.1:root::$PRIMARY_PORT" >"$SEED/control/host.mysql"
"$BIN" domain add example.com --home "$SEED" >/dev/null
"$BIN" user add u0@example.com --password pw --home "$SEED" >/dev/null
cols="pw_domain,pw_passwd,pw_uid,pw_gid,pw_gecos,pw_shell"
sql_on "$PRIMARY_DIR" indimail -e "INSERT INTO indimail (pw_name,$cols,pw_dir)
    SELECT CONCAT('u',seq),$cols,CONCAT(pw_dir,seq) FROM indimail
    JOIN seq_1_to_${users} WHERE pw_name='u0'"
caught_up
log "$users users on the primary and the replica"

home_for() { # $1 name $2 reads(replica|primary); prints the home
    local h=$WORK/home-$1
    "$BIN" init --home "$h" >/dev/null 2>&1 || true
    echo example.com >"$h/control/rcpthosts"
    echo 0 >"$h/control/maxperip"
    rm -f "$h/control/host.master"
    if [[ $2 == replica ]]; then
        echo "127.0.0.1:root::$REPLICA_PORT" >"$h/control/host.mysql"
        echo "127.0.0.1:root::$PRIMARY_PORT" >"$h/control/host.master"
    else
        echo "127.0.0.1:root::$PRIMARY_PORT" >"$h/control/host.mysql"
    fi
    echo "$h"
}

# Prepared statements a server has executed: every lookup of the directory is one (the
# sampling client's plain queries are not).
statements() { # $1 server dir
    sql_on "$1" -e "SELECT VARIABLE_VALUE FROM information_schema.GLOBAL_STATUS
        WHERE VARIABLE_NAME = 'COM_STMT_EXECUTE'"
}

# One pass against a fresh server; prints "rcpts_per_sec peak_replica peak_primary
# after_replica after_primary failed_msgs statements_replica statements_primary".
one_pass() { # bin home shards tag
    local bin=$1 h=$2 n=$3 tag=$4 port pid sampler
    port=$(free_port)
    INDIMAIL_SHARDS=$n INDIMAIL_NO_DELIVERY=1 QUEUE_BASE=$WORK/queue-$tag "$bin" serve --home "$h" \
        --smtp "127.0.0.1:$port" >"$WORK/serve-$tag.out" 2>"$WORK/serve-$tag.log" </dev/null &
    pid=$!
    PIDS+=("$pid")
    wait_port "$port" || die "serve did not start (see $WORK/serve-$tag.log)"
    local s0r s0p
    s0r=$(statements "$REPLICA_DIR") s0p=$(statements "$PRIMARY_DIR")
    : >"$WORK/samples-$tag"
    (while :; do
        echo "$(clients "$REPLICA_DIR") $(clients "$PRIMARY_DIR")" >>"$WORK/samples-$tag"
        sleep 0.2
    done) &
    sampler=$!
    "$LT" send --target "127.0.0.1:$port" --sessions "$sessions" --messages "$messages" \
        --rcpts "$rcpts" --rcpt-template 'u{n}@example.com' --users "$users" --size 512 \
        --pipelining --source-addrs "$sources" --quiet --json "$WORK/$tag.json" \
        >"$WORK/$tag.txt" 2>&1 || die "send failed (see $WORK/$tag.txt)"
    kill "$sampler" 2>/dev/null || true
    wait "$sampler" 2>/dev/null || true
    local after_r after_p s1r s1p
    after_r=$(clients "$REPLICA_DIR") after_p=$(clients "$PRIMARY_DIR")
    s1r=$(statements "$REPLICA_DIR") s1p=$(statements "$PRIMARY_DIR")
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    python3 - "$WORK/$tag.json" "$WORK/samples-$tag" "$after_r" "$after_p" \
        "$((s1r - s0r))" "$((s1p - s0p))" <<'PY'
import json, sys
j = json.load(open(sys.argv[1]))
s = [tuple(map(int, l.split())) for l in open(sys.argv[2]) if len(l.split()) == 2]
peak_r = max((a for a, _ in s), default=0)
peak_p = max((b for _, b in s), default=0)
rate = j["recipients_accepted"] / max(1e-9, j["messages_accepted"] / max(1e-9, j["msgs_per_sec"]))
failed = j["messages_failed"]
stm_r, stm_p = int(sys.argv[5]), int(sys.argv[6])
print("%.0f %d %d %s %s %d %d %d" % (rate, peak_r, peak_p, sys.argv[3], sys.argv[4], failed, stm_r, stm_p))
PY
}

# ---- part 1: connections per host ----
if has_part conns; then
    CT=$OUT/conns.tsv
    : >"$CT"
    for n in $shards; do
        h=$(home_for conns-$n replica)
        read -r rate pr pp ar ap failed _ _ < <(one_pass "$BIN" "$h" "$n" "conns-$n")
        printf 'current\treplica+master\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$n" "$pr" "$pp" "$ar" "$ap" "$rate" "$failed" >>"$CT"
        log "current replica+master $n shards: peak replica $pr primary $pp, after $ar/$ap, $rate RCPT/s"
        if [[ -n $before_bin ]]; then
            for code in before current; do
                bin=$BIN; [[ $code == before ]] && bin=$before_bin
                h=$(home_for conns1-$code-$n primary)
                read -r rate pr pp ar ap failed _ _ < <(one_pass "$bin" "$h" "$n" "conns1-$code-$n")
                printf '%s\tprimary only\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$code" "$n" "$pr" "$pp" "$ar" "$ap" "$rate" "$failed" >>"$CT"
                log "$code primary-only $n shards: peak primary $pp, after $ap, $rate RCPT/s"
            done
        fi
    done
    {
        echo "| code | servers | shards | peak connections to the replica | to the primary | after the pass: replica / primary | RCPT/s (failed msgs) |"
        echo "|---|---|---:|---:|---:|---:|---:|"
        while IFS=$'\t' read -r code cfg n pr pp ar ap rate failed; do
            echo "| $code | $cfg | $n | $pr | $pp | $ar / $ap | $rate ($failed) |"
        done <"$CT"
        echo
    } | tee -a "$OUT/results.md"
fi

# ---- part 2: lookup rate through the replica and through the primary ----
if has_part rate; then
    RT=$OUT/rate.tsv
    : >"$RT"
    for ((r = 1; r <= runs; r++)); do
        order=(replica primary)
        ((r % 2 == 0)) && order=(primary replica)
        for via in "${order[@]}"; do
            h=$(home_for rate-$via-$r "$via")
            read -r rate pr pp ar ap failed sr sp < <(one_pass "$BIN" "$h" 2 "rate-$via-$r")
            printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$via" "$r" "$rate" "$failed" "$sr" "$sp" >>"$RT"
            log "run $r via $via: $rate RCPT/s (peak conns replica $pr, primary $pp; statements replica $sr, primary $sp)"
        done
    done
    python3 - "$RT" "$users" <<'PY' | tee -a "$OUT/results.md"
import statistics, sys
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if l.strip()]
lookups = int(sys.argv[2])
by, st = {}, {}
for via, run, rate, failed, sr, sp in rows:
    by.setdefault(via, []).append(float(rate))
    st.setdefault(via, []).append((int(sr), int(sp)))
print("| reads through | user lookups (RCPT) per second, median [range] | runs | statements per lookup on the replica / the primary (median) |")
print("|---|---:|---:|---:|")
for via in ("replica", "primary"):
    v = by.get(via, [])
    if v:
        r = statistics.median(a for a, _ in st[via]) / lookups
        p = statistics.median(b for _, b in st[via]) / lookups
        print(f"| {via} | {statistics.median(v):,.0f} [{min(v):,.0f}-{max(v):,.0f}] | {len(v)} | {r:.2f} / {p:.2f} |")
if by.get("replica") and by.get("primary"):
    print(f"| **replica / primary** | **{statistics.median(by['replica']) / statistics.median(by['primary']):.2f}** | | |")
print()
PY
fi
log "results in $OUT/results.md"
