#!/usr/bin/env bash
# Relay throughput with recipients spread over two mailstores (issue 11), against Postfix
# doing the same routing, and the MySQL statements per message with a warm directory cache.
#
# Setup: a private MariaDB holding USERS users u1..uN of example.com, odd ones placed on
# store1 and even ones on store2 (hostcntrl → host_table → smtp_port); the mailstores are
# `indimail-loadtest sink`s on 127.0.0.3 and 127.0.0.4 (count and discard), so the figure is
# the relay's: accept, look up each recipient's mailstore, split the message into one
# transaction per mailstore, deliver by SMTP. The peer is Postfix relaying the same load with
# a transport map of one entry per user to the same two sinks (a local hash lookup, no MySQL).
# Each run: fresh sinks, `send` with pipelining, end-to-end time = first message sent until
# the sinks have counted every recipient. indimail: one warm-up pass (every user looked up
# three times), then the measured runs, counting MariaDB's Questions during each (they include
# each shard's change-counter poll, one a second).
#
# Usage: loadtest/cluster-bench.sh [OUTDIR]
# Env: BIN (dir with release indimail and indimail-loadtest; default
#      $CARGO_TARGET_DIR/release), USERS (1000), MESSAGES (5000), RCPTS (10), SESSIONS (20),
#      RUNS (3), SIZE (1024), SKIP_POSTFIX=1.
set -euo pipefail
export INDIMAIL_ALLOW_ROOT="${INDIMAIL_ALLOW_ROOT:-1}"

HERE=$(cd "$(dirname "$0")" && pwd)
BIN=${BIN:-${CARGO_TARGET_DIR:-$HERE/../target}/release}
USERS=${USERS:-1000}
MESSAGES=${MESSAGES:-5000}
RCPTS=${RCPTS:-10}
SESSIONS=${SESSIONS:-20}
RUNS=${RUNS:-3}
SIZE=${SIZE:-1024}
OUT=${1:-$(mktemp -d /tmp/clusterbench.XXXXXX)}
mkdir -p "$OUT"
D=$(mktemp -d /tmp/clusterbench-work.XXXXXX)
chmod 755 "$D" # the postfix user must reach its instance below
PIDS=()
PF=$D/postfix
cleanup() {
    [ -d "$PF" ] && "$HERE/postfix-instance.sh" stop "$PF" >/dev/null 2>&1 || true
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    rm -rf "$D"
}
trap cleanup EXIT INT TERM

free_port() { python3 -c 'import socket,sys; s=socket.socket(); s.bind((sys.argv[1],0)); print(s.getsockname()[1])' "${1:-127.0.0.1}"; }
log() { echo "[$(date +%T)] $*" >&2; }
ROOTARG=()
[ "$(id -u)" = 0 ] && ROOTARG=(--user=root)

# ---- private MariaDB ----
PORT=$(free_port)
log "mariadb on 127.0.0.1:$PORT"
mariadb-install-db --no-defaults --datadir="$D/data" --skip-test-db \
    --auth-root-authentication-method=normal "${ROOTARG[@]}" >/dev/null
mariadbd --no-defaults --datadir="$D/data" --socket="$D/sock" --port="$PORT" \
    --bind-address=127.0.0.1 --skip-grant-tables --pid-file="$D/mysqld.pid" \
    --log-error="$D/err.log" --tmpdir="$D" --skip-log-bin --max-connections=500 \
    "${ROOTARG[@]}" </dev/null >/dev/null 2>&1 &
PIDS+=($!)
for _ in $(seq 1 600); do
    mariadb --socket="$D/sock" -e 'select 1' >/dev/null 2>&1 && break
    sleep 0.1
done
SQL() { mariadb --socket="$D/sock" -N -B "$@"; }
questions() { SQL -e "SHOW GLOBAL STATUS LIKE 'Questions'" | awk '{print $2}'; }

# ---- the relay's home and the shared directory ----
H=$D/relay
"$BIN/indimail" init --home "$H" >/dev/null
echo "127.0.0.1:root::$PORT" >"$H/control/host.mysql"
echo relay >"$H/control/hostid"
"$BIN/indimail" --home "$H" domain add example.com >/dev/null
"$BIN/indimail" --home "$H" user add u0@example.com --password pw >/dev/null
SQL indimail -e "INSERT INTO indimail (pw_name,pw_domain,pw_passwd,pw_uid,pw_gid,pw_gecos,pw_dir,pw_shell,scram)
    SELECT CONCAT('u',seq),pw_domain,pw_passwd,pw_uid,pw_gid,pw_gecos,CONCAT(pw_dir,seq),pw_shell,scram
    FROM indimail JOIN seq_1_to_${USERS} WHERE pw_name='u0';
  INSERT INTO hostcntrl (pw_name,pw_domain,pw_passwd,host)
    SELECT CONCAT('u',seq),'example.com','',IF(seq % 2 = 1,'store1','store2') FROM seq_1_to_${USERS};"
log "users: $(SQL indimail -e 'SELECT COUNT(*) FROM indimail'), placed: $(SQL indimail -e 'SELECT host, COUNT(*) FROM hostcntrl GROUP BY host' | tr '\n\t' '  ')"

# The two mailstores: sinks on fixed ports (registered once, reused by every run).
P1=$(free_port 127.0.0.3)
P2=$(free_port 127.0.0.4)
"$BIN/indimail" --home "$H" cluster add-host store1 127.0.0.3 --domain example.com --smtp-port "$P1" >/dev/null
"$BIN/indimail" --home "$H" cluster add-host store2 127.0.0.4 --domain example.com --smtp-port "$P2" >/dev/null
"$BIN/indimail" --home "$H" cluster hosts >&2

SINKS=()
start_sinks() { # fresh counters; sets SINKS
    SINKS=()
    local i addr
    for i in 1 2; do
        [ $i = 1 ] && addr=127.0.0.3:$P1 || addr=127.0.0.4:$P2
        rm -f "$D/sink$i.json"
        "$BIN/indimail-loadtest" sink --listen "$addr" --stats "$D/sink$i.json" \
            >"$D/sink$i.out" 2>/dev/null &
        SINKS+=($!)
        PIDS+=($!)
        for _ in $(seq 1 100); do grep -q listening "$D/sink$i.out" 2>/dev/null && break; sleep 0.05; done
    done
}
stop_sinks() {
    for p in "${SINKS[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
}
delivered() { # recipients counted by both sinks
    python3 - "$D/sink1.json" "$D/sink2.json" <<'PY'
import json, sys
n = 0
for f in sys.argv[1:]:
    try: n += json.load(open(f))["recipients"]
    except Exception: pass
print(n)
PY
}
sink_split() {
    python3 - "$D/sink1.json" "$D/sink2.json" <<'PY'
import json, sys
print(" ".join("%d/%d" % (j["messages"], j["recipients"]) for j in (json.load(open(f)) for f in sys.argv[1:])))
PY
}

# One run against TARGET: prints "accepted_mps e2e_mps split".
run_load() { # $1 label, $2 target
    local label=$1 target=$2 want t0 t1
    start_sinks
    t0=$(date +%s.%N)
    "$BIN/indimail-loadtest" send --target "$target" --sessions "$SESSIONS" \
        --messages "$MESSAGES" --rcpts "$RCPTS" --users "$USERS" \
        --rcpt-template 'u{n}@example.com' --size "$SIZE" --pipelining --quiet \
        --json "$OUT/$label.json" >"$OUT/$label.txt"
    want=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["messages_accepted"] * int(sys.argv[2]))' "$OUT/$label.json" "$RCPTS")
    for _ in $(seq 1 6000); do
        [ "$(delivered)" -ge "$want" ] && break
        sleep 0.05
    done
    t1=$(date +%s.%N)
    sleep 0.3 # the sinks' last stats write
    local got; got=$(delivered)
    python3 - "$OUT/$label.json" "$t0" "$t1" "$got" "$want" "$(sink_split)" <<'PY'
import json, sys
j = json.load(open(sys.argv[1])); t0, t1 = float(sys.argv[2]), float(sys.argv[3])
got, want, split = int(sys.argv[4]), int(sys.argv[5]), sys.argv[6]
acc = j["messages_accepted"]
print("%.0f %.0f %s %d/%d" % (j["msgs_per_sec"], acc / (t1 - t0), split.replace(" ", ","), got, want))
PY
    stop_sinks
}

echo "| run | MTA | accepted msgs/s | end-to-end msgs/s | sink1 / sink2 msgs/rcpts | rcpts delivered/expected | MySQL statements/msg |" >"$OUT/table.md"
echo "|---|---|---|---|---|---|---|" >>"$OUT/table.md"

# ---- indimail relay ----
RP=$(free_port 127.0.0.2)
"$BIN/indimail" serve --home "$H" --smtp "127.0.0.2:$RP" >"$H/serve.out" 2>"$H/serve.log" </dev/null &
RELAY_PID=$!
PIDS+=($RELAY_PID)
for _ in $(seq 1 300); do grep -q '^smtp listening on ' "$H/serve.out" 2>/dev/null && break; sleep 0.1; done
grep -q '^smtp listening on ' "$H/serve.out" || { cat "$H/serve.log" >&2; exit 1; }

# ---- Postfix relay with a per-user transport map to the same sinks ----
PFPORT=$(free_port)
if [ -z "${SKIP_POSTFIX:-}" ]; then
    "$HERE/postfix-instance.sh" start --mode relay --domain example.com "$PF" "$PFPORT" "127.0.0.3:$P1"
    for ((n = 1; n <= USERS; n++)); do
        if ((n % 2)); then echo "u$n@example.com smtp:[127.0.0.3]:$P1"; else echo "u$n@example.com smtp:[127.0.0.4]:$P2"; fi
    done >"$PF/conf/transport"
    postmap -c "$PF/conf" "hash:$PF/conf/transport"
    postfix -c "$PF/conf" reload >/dev/null 2>&1
fi

# Each shard keeps its own cache and a connection lands on either shard: three passes make
# every user very likely known to every shard (and to the delivery side).
log "warm-up: every user three times through the indimail relay"
MESSAGES_SAVED=$MESSAGES
MESSAGES=$(( 3 * (USERS + RCPTS - 1) / RCPTS ))
run_load warmup "127.0.0.2:$RP" >/dev/null
MESSAGES=$MESSAGES_SAVED

for ((r = 1; r <= RUNS; r++)); do
    order=(indimail postfix)
    ((r % 2 == 0)) && order=(postfix indimail)
    for mta in "${order[@]}"; do
        if [ "$mta" = indimail ]; then
            log "run $r: indimail relay, $MESSAGES msgs x $RCPTS rcpts"
            q0=$(questions)
            read -r acc e2e split dl < <(run_load "indimail-$r" "127.0.0.2:$RP")
            q1=$(questions)
            qpm=$(python3 -c "print('%.3f' % (($q1 - $q0 - 1) / $MESSAGES))")
            echo "| $r | indimail | $acc | $e2e | $split | $dl | $qpm |" >>"$OUT/table.md"
        elif [ -z "${SKIP_POSTFIX:-}" ]; then
            log "run $r: postfix relay, $MESSAGES msgs x $RCPTS rcpts"
            read -r acc e2e split dl < <(run_load "postfix-$r" "127.0.0.1:$PFPORT")
            echo "| $r | postfix | $acc | $e2e | $split | $dl | - |" >>"$OUT/table.md"
        fi
    done
done
kill "$RELAY_PID" 2>/dev/null || true
wait "$RELAY_PID" 2>/dev/null || true
grep -c 'bounce msg' "$H/serve.log" | sed 's/^/indimail bounces: /' >>"$OUT/table.md" || true
cat "$OUT/table.md"
log "results in $OUT"
