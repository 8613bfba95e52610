#!/usr/bin/env bash
# IMAP/POP3 proxy cost (issue 6): logins per second and bytes per second of a large FETCH
# through `indimail serve`'s IMAP/POP3 proxies, against connecting to the Dovecot behind
# them directly, in the same run, alternating, RUNS times. Prints a markdown table of
# medians with the ratio proxy / direct.
#
# Usage: loadtest/proxy-cost.sh [OUTDIR]
# Env: BIN (dir holding release `indimail` and `proxy-bench`; default
#      $CARGO_TARGET_DIR/release), RUNS (3), SESSIONS (8 concurrent clients for logins),
#      DURATION (10 s per measurement), SIZE_MB (10: the FETCHed message), FETCH_SESSIONS (1).
# Build first: cargo build --release -p indimail -p indimail-loadtest
#
# Setup: one private Dovecot on 127.0.0.1 ephemeral ports (its own config dir; Debian
# defaults for login processes), passdb passwd-file holding the same SHA-256-crypt hash as
# the indimail user, so a direct login costs Dovecot one password check and a proxied login
# costs the proxy's check plus Dovecot's (the proxy logs in with the user's password,
# LEGACY_SERVER=1 so the name is the plain address). The proxies verify against the
# embedded SQLite store and write the relay and lastauth rows of every login.
set -euo pipefail
# Run as root here: the server stays root instead of refusing (README, "Running as root").
export INDIMAIL_ALLOW_ROOT="${INDIMAIL_ALLOW_ROOT:-1}"

BIN=${BIN:-${CARGO_TARGET_DIR:-target}/release}
RUNS=${RUNS:-3}
SESSIONS=${SESSIONS:-8}
DURATION=${DURATION:-10}
SIZE_MB=${SIZE_MB:-10}
FETCH_SESSIONS=${FETCH_SESSIONS:-1}
OUT=${1:-$(mktemp -d /tmp/proxycost-out.XXXXXX)}
mkdir -p "$OUT"
D=$(mktemp -d /tmp/proxycost.XXXXXX)
chmod 755 "$D"
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    rm -rf "$D"
}
trap cleanup EXIT INT TERM

log() { echo "[$(date +%T)] $*" >&2; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
for b in indimail proxy-bench; do
    [ -x "$BIN/$b" ] || { echo "missing $BIN/$b: cargo build --release -p indimail -p indimail-loadtest" >&2; exit 1; }
done
[ -x /usr/sbin/dovecot ] || { echo "dovecot missing (scripts/install-test-deps.sh)" >&2; exit 1; }

USER_ADDR=bench@example.com
PASS=Bench-Pw-1

# ---- indimail home with one user ----
H=$D/home
"$BIN/indimail" init --home "$H" >/dev/null
"$BIN/indimail" domain add example.com --home "$H" >/dev/null
"$BIN/indimail" user add "$USER_ADDR" --password "$PASS" --home "$H" >/dev/null
HASH=$("$BIN/indimail" user info "$USER_ADDR" --home "$H" | sed -n 's/^passwd: //p')

# ---- Dovecot ----
if [ "$(id -u)" = 0 ]; then
    MAILUSER=nobody
else
    MAILUSER=$(id -un)
fi
MUID=$(id -u "$MAILUSER")
MGID=$(id -g "$MAILUSER")
LOGIN_USER=$(getent passwd dovenull >/dev/null && echo dovenull || echo nobody)
INTERNAL_USER=$(getent passwd dovecot >/dev/null && echo dovecot || echo nobody)
IMAP=$(free_port)
POP3=$(free_port)
mkdir -p "$D/mail/bench/Maildir"/{cur,new,tmp}
python3 - "$D/mail/bench/Maildir/cur/1700000000.M1P1.bench:2,S" "$SIZE_MB" <<'EOF'
import sys
path, mb = sys.argv[1], int(sys.argv[2])
line = ("x" * 76 + "\n").encode()
with open(path, "wb") as f:
    f.write(b"From: a@example.org\nTo: bench@example.com\nSubject: big\n\n")
    f.write(line * (mb * 1000 * 1000 // len(line)))
EOF
chown -R "$MUID:$MGID" "$D/mail"
echo "$USER_ADDR:{CRYPT}$HASH" >"$D/passwd"
chmod 644 "$D/passwd"
cat >"$D/dovecot.conf" <<EOF
base_dir = $D/run
state_dir = $D/state
log_path = $D/dovecot.log
listen = 127.0.0.1
protocols = imap pop3
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
default_login_user = $LOGIN_USER
default_internal_user = $INTERNAL_USER
first_valid_uid = 1
mail_location = maildir:~/Maildir
pop3_uidl_format = %08Xu%08Xv
passdb {
  driver = passwd-file
  args = $D/passwd
}
userdb {
  driver = static
  args = uid=$MUID gid=$MGID home=$D/mail/%n
}
service imap-login {
  inet_listener imap {
    address = 127.0.0.1
    port = $IMAP
  }
  inet_listener imaps {
    port = 0
  }
}
service pop3-login {
  inet_listener pop3 {
    address = 127.0.0.1
    port = $POP3
  }
  inet_listener pop3s {
    port = 0
  }
}
EOF
/usr/sbin/dovecot -F -c "$D/dovecot.conf" </dev/null >/dev/null 2>"$OUT/dovecot.stderr" &
PIDS+=($!)
for _ in $(seq 1 200); do
    (exec 3<>/dev/tcp/127.0.0.1/$IMAP) 2>/dev/null && (exec 3<>/dev/tcp/127.0.0.1/$POP3) 2>/dev/null && break
    sleep 0.05
done
log "dovecot imap 127.0.0.1:$IMAP pop3 127.0.0.1:$POP3 (mail uid $MAILUSER)"

# ---- indimail serve with the proxies ----
IMAP_BACKEND=127.0.0.1:$IMAP POP3_BACKEND=127.0.0.1:$POP3 LEGACY_SERVER=1 \
    "$BIN/indimail" serve --home "$H" --smtp 127.0.0.1:0 --imap-proxy 127.0.0.1:0 \
    --pop3-proxy 127.0.0.1:0 >"$OUT/serve.out" 2>"$OUT/serve.log" &
PIDS+=($!)
for _ in $(seq 1 200); do
    grep -q '^pop3-proxy listening on' "$OUT/serve.out" 2>/dev/null && break
    sleep 0.05
done
PIMAP=$(sed -n 's/^imap-proxy listening on //p' "$OUT/serve.out")
PPOP3=$(sed -n 's/^pop3-proxy listening on //p' "$OUT/serve.out")
[ -n "$PIMAP" ] && [ -n "$PPOP3" ] || { cat "$OUT/serve.log" >&2; exit 1; }
log "proxies imap $PIMAP pop3 $PPOP3"

bench() { # $1 name, then proxy-bench args
    local name=$1
    shift
    "$BIN/proxy-bench" "$@" --user "$USER_ADDR" --pass "$PASS" --duration "$DURATION" >>"$OUT/$name.jsonl"
}

for run in $(seq 1 "$RUNS"); do
    log "run $run/$RUNS"
    for via in direct proxy; do
        if [ $via = direct ]; then I=127.0.0.1:$IMAP P=127.0.0.1:$POP3; else I=$PIMAP P=$PPOP3; fi
        bench "imap-logins-$via" logins --proto imap --target "$I" --sessions "$SESSIONS"
        bench "pop3-logins-$via" logins --proto pop3 --target "$P" --sessions "$SESSIONS"
        bench "imap-fetch-$via" fetch --proto imap --target "$I" --sessions "$FETCH_SESSIONS"
    done
done

python3 - "$OUT" "$RUNS" <<'EOF'
import json, statistics, sys
out, runs = sys.argv[1], int(sys.argv[2])
def load(name):
    with open(f"{out}/{name}.jsonl") as f:
        return [json.loads(l) for l in f if l.strip()]
print("| measurement | direct to Dovecot | through the proxy | proxy / direct |")
print("|---|---|---|---|")
for name, key, unit in [("imap-logins", "per_sec", "logins/s"),
                        ("pop3-logins", "per_sec", "logins/s"),
                        ("imap-fetch", "mbytes_per_sec", "MB/s")]:
    d = load(f"{name}-direct"); p = load(f"{name}-proxy")
    md = statistics.median(r[key] for r in d); mp = statistics.median(r[key] for r in p)
    rng = lambda rs: f"{min(r[key] for r in rs):.1f}–{max(r[key] for r in rs):.1f}"
    lat = lambda rs: statistics.median(r["p50_ms"] for r in rs)
    errs = sum(r["errors"] for r in d + p)
    print(f"| {name} ({unit}) | {md:.1f} [{rng(d)}], p50 {lat(d):.2f} ms | {mp:.1f} [{rng(p)}], p50 {lat(p):.2f} ms | {mp / md:.2f} |"
          + (f" errors={errs}" if errs else ""))
EOF
log "raw results in $OUT"
