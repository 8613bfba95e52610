#!/usr/bin/env bash
# RCPT checks per second through SMTP (CHECKRECIPIENT on, the default) with 100,000 users,
# cache cold (fresh server) then warm (same server, same users again), counting the MySQL
# statements the server issued during each run; then the same with the embedded SQLite store.
#
# Usage: loadtest/directory-bench.sh [OUTDIR]
# Env: BIN (dir with indimail and indimail-loadtest; default $CARGO_TARGET_DIR/release),
#      USERS (100000), MESSAGES (10000 = every user once per run at 10 rcpts/message),
#      SESSIONS (20), RCPTS (10), SKIP_SQLITE=1, GENERAL_LOG=1 (MariaDB general log of each
#      run in OUTDIR, to see which statements were sent; slows the server, not for figures).
# Starts a PRIVATE mariadbd (own datadir, socket, port); the system server is never touched.
set -euo pipefail
# Run as root here: the server stays root instead of refusing (README, "Running as root").
export INDIMAIL_ALLOW_ROOT="${INDIMAIL_ALLOW_ROOT:-1}"

BIN=${BIN:-${CARGO_TARGET_DIR:-/work/target-bench2}/release}
USERS=${USERS:-100000}
MESSAGES=${MESSAGES:-10000}
SESSIONS=${SESSIONS:-20}
RCPTS=${RCPTS:-10}
OUT=${1:-$(mktemp -d /tmp/dirbench.XXXXXX)}
mkdir -p "$OUT"
D=$(mktemp -d /tmp/dirbench-db.XXXXXX)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    rm -rf "$D"
}
trap cleanup EXIT INT TERM

# free_port, mariadb_start, mariadb_sql
# shellcheck source=loadtest/bench-lib.sh
. "$(dirname "$0")/bench-lib.sh"
log() { echo "[$(date +%T)] $*" >&2; }

# ---- private MariaDB ----
log "mariadb (datadir $D/data)"
mariadb_start "$D"
PIDS+=("$MARIADB_PID")
PORT=$MARIADB_PORT
log "mariadb on 127.0.0.1:$PORT"
SQL() { mariadb_sql "$@"; }

# Print the u1..uN rows as multi-row INSERTs of 5,000 rows, copying u0's row.
# $1 = table name; stdin = u0's row, tab-separated: domain passwd uid gid gecos dir shell scram
gen_inserts() {
    awk -F'\t' -v users="$USERS" -v tbl="$1" '
    function q(v) { if (v == "NULL") return "NULL"; gsub(/\x27/, "\x27\x27", v); return "\x27" v "\x27" }
    NR == 1 {
        for (n = 1; n <= users; n++) {
            dir = $6; sub(/u0$/, "u" n, dir)
            row = "(" q("u" n) "," q($1) "," q($2) "," q($3) "," q($4) "," q($5) "," q(dir) "," q($7) "," q($8) ")"
            if ((n - 1) % 5000 == 0) printf "INSERT INTO %s (pw_name,pw_domain,pw_passwd,pw_uid,pw_gid,pw_gecos,pw_dir,pw_shell,scram) VALUES\n%s", tbl, row
            else printf ",\n%s", row
            if (n % 5000 == 0 || n == users) printf ";\n"
        }
    }'
}

make_home() { # $1 home, $2 "mysql"|"sqlite"
    local H=$1
    "$BIN/indimail" init --home "$H" >/dev/null
    if [ "$2" = mysql ]; then
        echo "127.0.0.1:root::$PORT" >"$H/control/host.mysql"
    fi
    "$BIN/indimail" domain add example.com --home "$H" >/dev/null
    "$BIN/indimail" user add u0@example.com --password pw --home "$H" >/dev/null
}

counters() { # Questions Com_select Com_stmt_execute Com_stmt_prepare
    SQL -e "SHOW GLOBAL STATUS WHERE Variable_name IN ('Questions','Com_select','Com_stmt_execute','Com_stmt_prepare')" |
        awk '{v[$1]=$2} END {print v["Questions"], v["Com_select"], v["Com_stmt_execute"], v["Com_stmt_prepare"]}'
}

start_server() { # $1 home; sets SMTP_PORT and SERVER_PID
    local H=$1
    SMTP_PORT=$(free_port)
    INDIMAIL_NO_DELIVERY=1 "$BIN/indimail" serve --home "$H" --smtp "127.0.0.1:$SMTP_PORT" \
        >"$H/serve.out" 2>"$H/serve.log" </dev/null &
    SERVER_PID=$!
    PIDS+=("$SERVER_PID")
    for _ in $(seq 1 300); do
        grep -q '^smtp listening on ' "$H/serve.out" 2>/dev/null && return 0
        sleep 0.1
    done
    log "server did not start:"; cat "$H/serve.log" >&2; exit 1
}

stop_server() {
    kill "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
}

run_load() { # $1 label
    log "load $1: $MESSAGES messages x $RCPTS rcpts, $SESSIONS sessions"
    "$BIN/indimail-loadtest" send --target "127.0.0.1:$SMTP_PORT" --sessions "$SESSIONS" \
        --messages "$MESSAGES" --rcpts "$RCPTS" --rcpt-template 'u{n}@example.com' \
        --users "$USERS" --size 512 --pipelining --quiet --json "$OUT/$1.json" >"$OUT/$1.txt"
}

summary() { # $1 label, $2 queries (or -)
    python3 - "$OUT/$1.json" "$1" "$2" "$RCPTS" <<'PY'
import json, sys
j = json.load(open(sys.argv[1])); label, q, rcpts = sys.argv[2], sys.argv[3], int(sys.argv[4])
lat = j.get("latency", {})
de = lat.get("data_end", {}); msg = lat.get("message", {})
acc = j.get("messages_accepted", 0); mps = j.get("msgs_per_sec", 0.0)
qpr = "-" if q == "-" else "%.3f" % (int(q) / max(1, acc * rcpts))
print("| %s | %d | %d | %.0f | %.0f | %s | %s | %s/%s | %s/%s | %s |" % (
    label, acc, j.get("messages_failed", 0), mps, mps * rcpts, q, qpr,
    de.get("p50_ms"), de.get("p99_ms"), msg.get("p50_ms"), msg.get("p99_ms"),
    json.dumps(j.get("errors", {}))))
PY
}

echo "| run | accepted | failed | msgs/s | RCPT checks/s | MySQL statements | statements/RCPT | final 250 p50/p99 ms | message p50/p99 ms | errors |" >"$OUT/table.md"
echo "|---|---|---|---|---|---|---|---|---|---|" >>"$OUT/table.md"

# ---- MariaDB-backed directory ----
HM=$D/home-mysql
make_home "$HM" mysql
log "inserting $USERS users into MariaDB"
SQL indimail -e "SELECT pw_domain,pw_passwd,pw_uid,pw_gid,pw_gecos,pw_dir,pw_shell,scram FROM indimail WHERE pw_name='u0'" |
    gen_inserts indimail | SQL indimail
log "users in MariaDB: $(SQL indimail -e 'SELECT COUNT(*) FROM indimail')"
start_server "$HM"
for label in mysql-cold mysql-warm; do
    read -r q0 s0 e0 p0 < <(counters)
    [ -n "${GENERAL_LOG:-}" ] && SQL -e "SET GLOBAL general_log_file='$OUT/$label.general.log'; SET GLOBAL general_log=1"
    run_load "$label"
    [ -n "${GENERAL_LOG:-}" ] && SQL -e "SET GLOBAL general_log=0"
    read -r q1 s1 e1 p1 < <(counters)
    # Minus the one SHOW STATUS of ours that Questions counts.
    q=$((q1 - q0 - 1))
    echo "$label: Questions +$q, Com_select +$((s1 - s0)), Com_stmt_execute +$((e1 - e0)), Com_stmt_prepare +$((p1 - p0))" >>"$OUT/queries.txt"
    summary "$label" "$q" >>"$OUT/table.md"
done
stop_server

# ---- embedded SQLite directory ----
if [ -z "${SKIP_SQLITE:-}" ] && command -v sqlite3 >/dev/null; then
    HS=$D/home-sqlite
    make_home "$HS" sqlite
    DB=$HS/db/indimail.sqlite
    log "inserting $USERS users into $DB"
    sqlite3 -separator $'\t' -nullvalue NULL "$DB" \
        "SELECT pw_domain,pw_passwd,pw_uid,pw_gid,pw_gecos,pw_dir,pw_shell,scram FROM indimail WHERE pw_name='u0'" |
        { echo "BEGIN;"; gen_inserts indimail; echo "COMMIT;"; } | sqlite3 "$DB"
    log "users in SQLite: $(sqlite3 "$DB" 'SELECT COUNT(*) FROM indimail')"
    start_server "$HS"
    for label in sqlite-cold sqlite-warm; do
        run_load "$label"
        summary "$label" - >>"$OUT/table.md"
    done
    stop_server
else
    echo "sqlite run skipped (sqlite3 missing or SKIP_SQLITE set)" >>"$OUT/queries.txt"
fi

cat "$OUT/table.md"; cat "$OUT/queries.txt"
log "results in $OUT"
