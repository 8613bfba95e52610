#!/usr/bin/env bash
# Runs the same SMTP load against Postfix and against `indimail serve` on this machine, in one
# run, alternating the two, several times, and prints each figure's median and the ratio
# indimail/Postfix as a markdown table.
#
#   loadtest/compare.sh [--quick] [--postfix-only | --indimail-only] [--no-ceiling] [--runs N]
#                       [--workloads accept,relay,mailbox,virtual] [--sizes 1024,102400]
#                       [--rcpts 1,10]
#                       [--generators ours,smtp-source]
#                       [--messages M] [--sessions S] [--per-session P] [--users U]
#                       [--half-rate | --half-rate-at R] [--source-pacing spread|burst]
#                       [--no-build] [--tsv FILE] [--out FILE] [--keep]
#                       [--indimail-control NAME=VALUE]...
#
# Workloads (each at every size and recipient count):
#   accept   accept only. Postfix: queue manager disabled (smtpd + cleanup, queue file fsynced
#            before 250). indimail: INDIMAIL_NO_DELIVERY=1 (queue commit, no delivery).
#            Figure: msgs/s seen by the generator. The same load is also sent to Postfix's
#            smtp-sink (stores nothing, replies 250 at once): the ceiling of tool and machine
#            (--no-ceiling leaves it out).
#   relay    accept and relay to an indimail-loadtest sink; the figure is end to end: from the
#            first message sent until the sink has counted every message.
#   mailbox  deliver every message to one virtual user's Maildir (1user@example.com); end to
#            end until every recipient's delivery is logged by the MTA.
#   virtual  deliver to U (default 1000) virtual users' Maildirs ({n}user@example.com); end to
#            end until every recipient's delivery is logged by the MTA.
# Generators (each workload is run with each): `ours` (indimail-loadtest send, which also
# measures latency) and `smtp-source` (Postfix's own; no latency figures; for virtual it runs
# ceil(M/U) processes side by side, each `-N -m U`, so each user gets M/U messages). Both send
# from 127.0.0.1 only, so one accepting shard takes every connection (see RESULTS.md).
# Durability is each MTA's default (both fsync before 250 and on Maildir delivery).
# --half-rate: after each closed-loop run (and its drain), the same instance gets an open-loop
# run at half the rate R it just sustained (end to end, drained, for relay, mailbox and
# virtual; accepted for accept), with the same generator, for about 8 s: latency at half load. Its 250-after-DATA latency is also measured on the wire, independent of both MTAs
# and of the generator: tcpdump captures the run on lo (installed if missing) and
# wire-latency.py takes, per message, the server's first reply after the 354 minus the
# client's last payload segment before it. `ours`: `indimail-loadtest send --rate R/2`; the
# table gives its own data_end p50/p99 and the wire p50/p99 beside them. smtp-source cannot
# pace itself (-w waits whole seconds, and all sessions of one process wake together, see
# source-paced.py): R/2 sessions (`-w 1`, one message a second each) spread over up to 500
# smtp-source processes (one session each up to 500/s; above, small bursts of R/1000 per
# process), started evenly over a ramp (1 s per 250 processes) and measured over the 8 s
# after it; its half-rate p50/p99 are the wire's, and its achieved rate is logged.
# --half-rate-at R offers R msgs/s instead of half the rate just sustained (A/B runs of two
# builds at one load: half of a faster build's rate is a heavier load on this machine).
# --source-pacing burst sends the R/2 sessions from one process instead (bursts of R/2
# messages about once a second), for comparison. smtp-source does not back off: if the
# server stalls, connections pile up, and past indimail's maxdaemons (1000, counted over all
# shards) the 421 kills a whole smtp-source process (its k sessions); the log says so, and
# --indimail-control maxdaemons=4000 lets them queue instead.
# --indimail-control NAME=VALUE writes control/NAME for every indimail instance (for A/B runs
# of a setting, e.g. concurrencylocal=60). The default load is the issue's: 50 sessions.
#
# Needs root (Postfix's master), Debian's postfix (installed if missing by postfix-instance.sh).
set -euo pipefail
# Run as root here: the server stays root instead of refusing (README, "Running as root").
export INDIMAIL_ALLOW_ROOT="${INDIMAIL_ALLOW_ROOT:-1}"

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
DOMAIN=example.com

runs=3 quick=0 only="" out="" keep=0 ceiling=1 half_rate=0 tsv="" build=1
workloads="accept,relay,mailbox,virtual" sizes="1024,102400" rcpts_list="1,10"
messages="" sessions=50 per_session=1 users=1000 im_controls=() generators="ours,smtp-source"
runs_given=0 source_pacing=spread half_rate_at=
while [[ $# -gt 0 ]]; do
    case $1 in
        --quick) quick=1; shift ;;
        --postfix-only) only=postfix; shift ;;
        --indimail-only) only=indimail; shift ;;
        --runs) runs=$2; runs_given=1; shift 2 ;;
        --generators) generators=$2; shift 2 ;;
        --workloads) workloads=$2; shift 2 ;;
        --sizes) sizes=$2; shift 2 ;;
        --rcpts) rcpts_list=$2; shift 2 ;;
        --messages) messages=$2; shift 2 ;;
        --sessions) sessions=$2; shift 2 ;;
        --per-session) per_session=$2; shift 2 ;;
        --users) users=$2; shift 2 ;;
        --out) out=$2; shift 2 ;;
        --keep) keep=1; shift ;;
        --no-ceiling) ceiling=0; shift ;;
        --half-rate) half_rate=1; shift ;;
        --half-rate-at)
            [[ $2 =~ ^[1-9][0-9]*$ ]] || { echo "compare.sh: --half-rate-at wants a rate in msgs/s, got $2" >&2; exit 2; }
            half_rate=1; half_rate_at=$2; shift 2 ;;
        --source-pacing)
            [[ $2 == spread || $2 == burst ]] || { echo "compare.sh: --source-pacing wants spread or burst" >&2; exit 2; }
            source_pacing=$2; shift 2 ;;
        --no-build) build=0; shift ;;
        --tsv) tsv=$2; shift 2 ;;
        --indimail-control)
            [[ $2 == *=* && ${2%%=*} =~ ^[a-z0-9.]+$ ]] || { echo "compare.sh: --indimail-control wants NAME=VALUE, got $2" >&2; exit 2; }
            im_controls+=("$2"); shift 2 ;;
        -h|--help) sed -n '2,52p' "$0"; exit 0 ;;
        *) echo "compare.sh: unknown option $1" >&2; exit 2 ;;
    esac
done
if [[ $quick -eq 1 ]]; then
    # One size, one recipient count, fewer messages: a few minutes in all.
    sizes=${sizes/#1024,102400/1024}; rcpts_list=${rcpts_list/#1,10/1}
    messages=${messages:-2000}
    [[ $runs_given -eq 1 ]] || runs=2
fi
IFS=, read -ra GENS <<< "$generators"
for g in "${GENS[@]}"; do
    [[ $g == ours || $g == smtp-source ]] || { echo "compare.sh: unknown generator $g" >&2; exit 2; }
done
messages=${messages:-10000}
mtas=(postfix indimail)
[[ -n $only ]] && mtas=("$only")
[[ -n $only ]] && ceiling=0

log() { echo "compare: $*" >&2; }
die() { log "$*"; exit 1; }
[[ $(id -u) -eq 0 ]] || die "must run as root (Postfix's master needs it)"
# Postfix is the peer and smtp-sink (same package) the ceiling: install them first if missing.
[[ $only == indimail ]] || "$HERE/postfix-instance.sh" ensure
[[ $ceiling -eq 0 || -x /usr/sbin/smtp-sink ]] || die "/usr/sbin/smtp-sink missing (Debian package postfix); or pass --no-ceiling"
# The half-rate runs are captured on the wire: tcpdump (Debian package tcpdump).
if [[ $half_rate -eq 1 ]] && ! command -v tcpdump >/dev/null; then
    log "installing tcpdump (for --half-rate's wire latency)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q tcpdump >&2 || {
        DEBIAN_FRONTEND=noninteractive apt-get update -q >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q tcpdump >&2
    }
    command -v tcpdump >/dev/null || die "installing tcpdump failed"
fi

# --- build ---------------------------------------------------------------------------------
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
if [[ $build -eq 1 ]]; then
    log "building indimail-loadtest (release) in $CARGO_TARGET_DIR"
    (cd "$ROOT" && cargo build --release -q -p indimail-loadtest) || die "building indimail-loadtest failed"
fi
LT=$CARGO_TARGET_DIR/release/indimail-loadtest
[[ -x $LT ]] || die "$LT missing"
IM=""
if [[ " ${mtas[*]} " == *" indimail "* ]]; then
    if [[ $build -eq 1 ]]; then
        log "building indimail (release)"
        (cd "$ROOT" && cargo build --release -q -p indimail) || die "building indimail failed"
    fi
    IM=$CARGO_TARGET_DIR/release/indimail
    [[ -x $IM ]] || die "$IM missing"
fi

WORK=$(mktemp -d /tmp/indimail-compare.XXXXXX)
# The half-rate runs' captures go to memory (/dev/shm): written to the disk they would compete
# with the MTAs' fsyncs. Deleted once measured (or at exit).
WIRE_DIR=""
if [[ $half_rate -eq 1 ]]; then
    WIRE_DIR=$(mktemp -d "$([[ -d /dev/shm ]] && echo /dev/shm || echo /tmp)/indimail-compare-wire.XXXXXX")
fi
# Postfix daemons run as the postfix user and must be able to reach their directories.
chmod 755 "$WORK"
# Spread WORK's subdirectories over the file system's block groups, as top-level directories
# are (ext4's Orlov allocator): see place_run_dir.
chattr +T "$WORK" 2>/dev/null || true
RESULTS=${tsv:-$WORK/results.tsv}
: > "$RESULTS"
pids=()
cleanup() {
    local p
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    for d in "$WORK"/run-*/postfix; do
        [[ -d $d/conf ]] && "$HERE/postfix-instance.sh" stop "$d" 2>/dev/null || true
    done
    [[ -z $CG_PARENT ]] || rmdir "$CG_PARENT"/indimail-compare-$$-* 2>/dev/null || true
    [[ -z $WIRE_DIR ]] || rm -rf "$WIRE_DIR"
    [[ $keep -eq 1 ]] && log "kept $WORK" || rm -rf "$WORK"
}
trap cleanup EXIT

# Below the kernel's ephemeral range (32768-60999 by default): a port picked inside it can be
# the local port of one of the many client connections of the previous run, and the server's
# bind then fails with EADDRINUSE.
free_port() {
    local p lo
    lo=$(cut -f1 /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || echo 32768)
    while :; do
        p=$((20000 + RANDOM % (lo > 21000 ? lo - 20000 : 1000)))
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

# CPU of everything an MTA runs (exited processes included): each measurement starts the MTA
# in a cgroup of its own and reads its usage in ns; cgroup v1 cpuacct where mounted, else
# cgroup v2. CG is empty when no cgroup can be made (then the /proc process tree is summed).
CG_KIND="" CG_PARENT=""
if [[ -f /sys/fs/cgroup/cpuacct/cpuacct.usage ]]; then
    CG_KIND=v1 CG_PARENT=/sys/fs/cgroup/cpuacct
elif [[ -f /sys/fs/cgroup/cgroup.controllers ]]; then
    CG_KIND=v2 CG_PARENT=/sys/fs/cgroup
elif [[ -f /sys/fs/cgroup/unified/cgroup.controllers ]]; then
    CG_KIND=v2 CG_PARENT=/sys/fs/cgroup/unified
fi
CG=""
cg_new() { # name
    CG=""
    [[ -n $CG_PARENT ]] || return 0
    local d=$CG_PARENT/indimail-compare-$$-$1
    mkdir -p "$d" 2>/dev/null && CG=$d
    return 0
}
cg_ns() {
    case $CG_KIND in
        v1) cat "$CG/cpuacct.usage" ;;
        v2) awk '$1 == "usage_usec" {print $2 * 1000}' "$CG/cpu.stat" ;;
    esac
}
# Runs "$@" inside $CG (when there is one) and waits for it.
in_cg() {
    if [[ -n $CG ]]; then
        sh -c 'echo $$ > "$1/cgroup.procs" && shift && exec "$@"' in_cg "$CG" "$@"
    else
        "$@"
    fi
}
# The same for a server started in the background: `exec_in_cg PROGRAM... &` replaces the
# background subshell, so $! is the server's own pid (stop_mta signals it).
exec_in_cg() {
    [[ -z $CG ]] || echo "$BASHPID" > "$CG/cgroup.procs"
    exec "$@"
}

# CPU ticks (utime+stime+cutime+cstime) of a process and all its live descendants; exited
# children that were waited for are in their parent's cutime/cstime.
tree_ticks() { # pid
    python3 - "$1" <<'PY'
import os, sys
root = int(sys.argv[1])
procs = {}
for p in os.listdir("/proc"):
    if not p.isdigit():
        continue
    try:
        f = open(f"/proc/{p}/stat").read()
    except OSError:
        continue
    rest = f[f.rindex(")") + 2:].split()
    procs[int(p)] = (int(rest[1]), sum(int(x) for x in rest[11:15]))
kids = {}
for p, (pp, _) in procs.items():
    kids.setdefault(pp, []).append(p)
total, todo = 0, [root]
while todo:
    p = todo.pop()
    if p in procs:
        total += procs[p][1]
        todo.extend(kids.get(p, []))
print(total)
PY
}
# Busy ticks of the whole machine (all CPUs), from /proc/stat.
sys_busy() { awk '/^cpu /{print $2+$3+$4+$7+$8+$9}' /proc/stat; }
# Server CPU in ns so far: its cgroup's usage, else its process tree's ticks.
server_ns() { # pid
    if [[ -n $CG ]]; then
        cg_ns
    else
        echo $(( $(tree_ticks "$1") * 1000000000 / $(getconf CLK_TCK) ))
    fi
}
server_pid() { # mta dir
    case $1 in
        postfix) tr -d ' ' < "$2/queue/pid/master.pid" ;;
        *) echo "$MTA_PID" ;;
    esac
}

start_sink() { # dir mta -> sets SINK_PORT, SINK_STATS
    SINK_PORT=$(free_port)
    SINK_STATS=$1/sink-$2.json
    "$LT" sink --listen "127.0.0.1:$SINK_PORT" --stats "$SINK_STATS" >/dev/null 2>"$1/sink-$2.err" &
    SINK_PID=$!; pids+=("$SINK_PID")
    wait_port "$SINK_PORT" || die "sink did not start"
}

# indimail's virtual-user home is built once (1,000 `user add` runs take a while) at a fixed
# path and kept as a template. The directory stores absolute Maildir paths under that fixed
# path, so each run gets a fresh copy of the template in its own directory (see
# place_run_dir) and the fixed path becomes a symbolic link to that copy.
IM_VHOME_LINK=$WORK/indimail-vhome
IM_VTEMPLATE=$WORK/indimail-vhome.template
build_indimail_vhome() { # dir: the run's directory; sets IM_VHOME (the copy)
    if [[ ! -d $IM_VTEMPLATE ]]; then
        log "creating $users indimail users (once)"
        mkdir -p "$IM_VHOME_LINK/control"
        echo "$DOMAIN" > "$IM_VHOME_LINK/control/rcpthosts"
        "$IM" domain add "$DOMAIN" --home "$IM_VHOME_LINK" >>"$WORK/indimail-users.log" 2>&1 \
            || die "indimail domain add failed (see $WORK/indimail-users.log)"
        local n
        for ((n = 1; n <= users; n++)); do
            "$IM" user add "${n}user@$DOMAIN" --password "pw$n" --home "$IM_VHOME_LINK" >>"$WORK/indimail-users.log" 2>&1 \
                || die "indimail user add failed (see $WORK/indimail-users.log)"
        done
        mv "$IM_VHOME_LINK" "$IM_VTEMPLATE"
    fi
    IM_VHOME=$1/indimail-vhome
    cp -a "$IM_VTEMPLATE" "$IM_VHOME"
    rm -f "$IM_VHOME_LINK"
    ln -s "$IM_VHOME" "$IM_VHOME_LINK"
}

start_mta() { # mta workload dir port; sets MTA_HOME (where its Maildirs are), MTA_LOG
    local mta=$1 workload=$2 dir=$3 port=$4
    MTA_HOME=$dir MTA_LOG=$dir.log
    case $mta in
        postfix)
            case $workload in
                accept) in_cg "$HERE/postfix-instance.sh" start --mode accept --domain $DOMAIN "$dir" "$port" ;;
                relay) in_cg "$HERE/postfix-instance.sh" start --mode relay --domain $DOMAIN "$dir" "$port" "127.0.0.1:$SINK_PORT" ;;
                mailbox|virtual) in_cg "$HERE/postfix-instance.sh" start --mode virtual --domain $DOMAIN --users "$users" --user-form '{n}user' "$dir" "$port" ;;
            esac 2>>"$dir.log"
            MTA_LOG=$dir/maillog
            ;;
        smtp-sink)
            # Postfix's own test server: answers 250 at once and stores nothing.
            exec_in_cg /usr/sbin/smtp-sink -u nobody "127.0.0.1:$port" 1024 >>"$dir.log" 2>&1 &
            MTA_PID=$!; pids+=("$MTA_PID")
            wait_port "$port" || die "smtp-sink did not listen on $port (see $dir.log)"
            ;;
        indimail)
            local env=()
            # Postfix exempts mynetworks from its per-client limits; qmail's maxperip (20 by
            # default) would refuse the half-rate run's extra sessions, so lift it alike.
            mkdir -p "$dir/control"
            case $workload in
                accept)
                    mkdir -p "$dir/control"; echo "$DOMAIN" > "$dir/control/rcpthosts"
                    env=(INDIMAIL_NO_DELIVERY=1) ;;
                relay)
                    mkdir -p "$dir/control"; echo "$DOMAIN" > "$dir/control/rcpthosts"
                    # smtproutes is domain:host:port; the domain is not a virtual domain here.
                    echo "$DOMAIN:127.0.0.1:$SINK_PORT" > "$dir/control/smtproutes" ;;
                mailbox|virtual)
                    build_indimail_vhome "$(dirname "$dir")"
                    MTA_HOME=$IM_VHOME ;;
            esac
            echo 0 > "$MTA_HOME/control/maxperip"
            local c
            for c in "${im_controls[@]}"; do echo "${c#*=}" > "$MTA_HOME/control/${c%%=*}"; done
            exec_in_cg env "${env[@]}" "$IM" serve --home "$MTA_HOME" --smtp "127.0.0.1:$port" >>"$dir.log" 2>&1 &
            MTA_PID=$!; pids+=("$MTA_PID")
            local i
            for ((i = 0; i < 300; i++)); do
                grep -q "smtp listening on" "$dir.log" 2>/dev/null && break
                kill -0 "$MTA_PID" 2>/dev/null || die "indimail serve exited (see $dir.log)"
                sleep 0.1
            done
            wait_port "$port" || die "indimail serve did not listen on $port (see $dir.log)"
            ;;
    esac
}

stop_mta() { # mta dir
    case $1 in
        postfix) "$HERE/postfix-instance.sh" stop "$2" 2>>"$2.log" ;;
        indimail|smtp-sink)
            kill -TERM "$MTA_PID" 2>/dev/null || true
            wait "$MTA_PID" 2>/dev/null || true
            ;;
    esac
}

# Waits until everything accepted so far has left (relay) or landed (mailbox, virtual);
# prints the count reached. Counted by one poller: the sink's counters, or the MTA's log lines.
drain() { # mta workload expected
    local mta=$1 workload=$2 expected=$3 pattern='delivery [0-9]+: success'
    [[ $mta == postfix ]] && pattern=' status=sent '
    case $workload in
        relay) python3 "$HERE/drain-wait.py" "$expected" 600 json "$SINK_STATS" messages || true ;;
        mailbox|virtual) python3 "$HERE/drain-wait.py" "$expected" 600 log "$MTA_LOG" "$pattern" || true ;;
        *) echo "$expected" ;;
    esac
}

lat() { # report step field
    json "$1" "d['latency'].get('$2', {}).get('$3', '-')"
}

# Wire capture of a half-rate run: tcpdump on lo, the server's port only, SYNs and segments
# with payload only (bare ACKs and FINs say nothing here). The snap length keeps headers and
# the start of each payload, enough for a pipelined reply group (ours: 250 to MAIL and to
# each RCPT, then 354, in one segment) to show its 354 (wire-latency.py infers a 354 it cannot
# see from the message data that follows it).
wire_start() { # port file snaplen; sets WIRE_PID
    local i
    tcpdump -Z root -i lo -n -s "$3" -B 32768 -w "$2" \
        "tcp port $1 and (tcp[13] & 2 != 0 or ip[2:2] - ((ip[0] & 0xf) << 2) - ((tcp[12] & 0xf0) >> 2) > 0)" \
        2>"$2.err" &
    WIRE_PID=$!; pids+=("$WIRE_PID")
    for ((i = 0; i < 100; i++)); do
        grep -q "listening on" "$2.err" 2>/dev/null && return 0
        kill -0 "$WIRE_PID" 2>/dev/null || die "tcpdump exited (see $2.err)"
        sleep 0.05
    done
    die "tcpdump did not start (see $2.err)"
}
wire_stop() { # file
    # libpcap (TPACKET_V3) hands packets over a block at a time, a block after at most 1 s
    # (tcpdump's timeout): stopped sooner, it loses the last second's packets.
    sleep 1.5
    kill -INT "$WIRE_PID" 2>/dev/null || true
    wait "$WIRE_PID" 2>/dev/null || true
    local dropped
    dropped=$(awk '/dropped by kernel/ {print $1}' "$1.err")
    [[ ${dropped:-0} -eq 0 ]] || log "tcpdump dropped $dropped packets (see $1.err): wire figures miss messages"
}

# Creates directory $1 (under WORK) where creating files is fast, and logs the cost found.
# ext4 without a journal (this machine's) skips every inode freed in the last 30 s to 5 min
# when it allocates one, reading each one's inode-table block: in a block group where
# thousands of files were just deleted (a Postfix run deletes every queue file it delivered)
# each create costs 0.3-0.6 ms instead of 0.03. Which MTA ran before would then decide the
# next one's Maildir rate, so every run, of either MTA, starts in a directory probed to be in
# a clean group: up to 12 tries (siblings land in other groups, see chattr +T above), waiting
# a little between them for the kernel's "recent" window to pass.
place_run_dir() { # dir
    local dir=$1 try cost
    for ((try = 1; try <= 12; try++)); do
        mkdir -p "$dir"
        cost=$(python3 - "$dir/probe" <<'PY'
import os, sys, time
d = sys.argv[1]
os.makedirs(d)
n, t = 200, time.perf_counter()
for i in range(n):
    fd = os.open(f"{d}/{i}", os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    os.write(fd, b"x" * 1024)
    os.close(fd)
print(round((time.perf_counter() - t) / n * 1000, 3))
PY
)
        python3 -c "import sys; sys.exit(0 if $cost <= 0.1 else 1)" && break
        [[ $try -eq 12 ]] && break # no clean group found: run here, the log shows the cost
        # Moved aside, not deleted: deleting would make the next group slow in turn.
        mv "$dir" "$(mktemp -d "$WORK/slow-dir.XXXXXX")"
        [[ $try -ge 4 ]] && sleep 5
    done
    echo "$cost"
}

# The recipients of a workload for our generator: a template and how many users it spans.
rcpt_args() { # workload
    case $1 in
        mailbox) echo --users 1 --rcpt-template "{n}user@$DOMAIN" ;;
        virtual) echo --users "$users" --rcpt-template "{n}user@$DOMAIN" ;;
        *) echo --users "$users" --rcpt-domain "$DOMAIN" ;;
    esac
}

# smtp-source's arguments for one message stream of a workload (the half-rate run; -s, -m
# and -w are source-paced.py's). virtual: -N numbers the recipients ({n}user) per process.
source_args() { # workload size rcpts
    local to="user@$DOMAIN" args=(-f loadtest@loadtest.example.org -M loadtest.example.org -l "$2" -r "$3")
    [[ $per_session -gt 1 ]] && args+=(-d)
    case $1 in
        mailbox) to="1user@$DOMAIN" ;;
        virtual) args+=(-N) ;;
    esac
    echo "${args[@]}" -t "$to"
}

# The closed-loop load of one measurement, from generator $gen; writes $report in
# indimail-loadtest's JSON form (smtp-source: counts, rate and elapsed only, no latency).
generate() { # gen workload port size rcpts report out
    local gen=$1 workload=$2 port=$3 size=$4 rcpts=$5 report=$6 out=$7
    if [[ $gen == ours ]]; then
        # shellcheck disable=SC2046 # rcpt_args prints separate words on purpose
        "$LT" send --quiet --target "127.0.0.1:$port" --messages "$messages" --sessions "$sessions" \
            --per-session "$per_session" --size "$size" --rcpts "$rcpts" $(rcpt_args "$workload") \
            --pipelining --json "$report" >"$out" 2>&1 || die "send failed (see $out)"
        return 0
    fi
    # smtp-source: -l is the body's length (it adds a few header lines); a new connection per
    # message unless --per-session > 1 (then -d: every message of a session on one connection).
    local common=(-f loadtest@loadtest.example.org -M loadtest.example.org -l "$size")
    [[ $per_session -gt 1 ]] && common+=(-d)
    local procs=() n_proc=1 per=$messages to="user@$DOMAIN" extra=() t0 t1 p ok=1
    case $workload in
        mailbox) to="1user@$DOMAIN" ;;
        virtual)
            # -N numbers recipients 1..m per process ({n}user): ceil(M/U) processes of U each.
            n_proc=$(( (messages + users - 1) / users )); per=$users; extra=(-N) ;;
    esac
    [[ $rcpts -gt 1 && $workload != relay && $workload != accept ]] \
        && log "smtp-source numbers recipients itself: $workload with $rcpts recipients sends to ${rcpts}..1 prefixed names"
    t0=$(now)
    local left=$messages i
    for ((i = 0; i < n_proc; i++)); do
        local m=$((left < per ? left : per)) s=$((sessions / n_proc > 0 ? sessions / n_proc : 1))
        left=$((left - m))
        /usr/sbin/smtp-source "${common[@]}" "${extra[@]}" -s "$s" -m "$m" -r "$rcpts" -t "$to" \
            "127.0.0.1:$port" >>"$out" 2>&1 &
        procs+=($!)
    done
    for p in "${procs[@]}"; do wait "$p" || ok=0; done
    t1=$(now)
    [[ $ok -eq 1 ]] || die "smtp-source failed (see $out)"
    python3 - "$report" "$messages" "$rcpts" "$t0" "$t1" <<'PY'
import json, sys
path, m, r, t0, t1 = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5])
el = max(t1 - t0, 1e-6)
json.dump({"messages_accepted": m, "recipients_accepted": m * r, "messages_failed": 0,
           "msgs_per_sec": m / el, "elapsed_s": el, "errors": {}, "latency": {}}, open(path, "w"))
PY
}

# One measurement; appends a row to $RESULTS.
# This kind of machine (a VM) runs at different speeds within the hour, and the guest sees no
# steal time: the same binary can need three times the CPU per message in a slow phase. A
# fixed probe before every run (a million one-byte copies through dd: syscall-bound, like an
# MTA) shows the phase in the log and its range in the table's header; lower is faster.
PROBES=$WORK/speed-probes
speed_probe() {
    local t0 t1
    t0=$(now)
    dd if=/dev/zero of=/dev/null bs=1 count=1000000 2>/dev/null
    t1=$(now)
    python3 -c "print(f'{$t1 - $t0:.3f}')" | tee -a "$PROBES"
}

measure() { # mta workload size rcpts run gen
    local mta=$1 workload=$2 size=$3 rcpts=$4 run=$5 gen=$6
    log "machine speed probe before $mta $workload run $run: $(speed_probe) s"
    local dir=$WORK/run-$workload-$gen-$size-$rcpts-$run-$mta
    local create_ms; create_ms=$(place_run_dir "$dir")
    local port; port=$(free_port)
    [[ $workload == relay ]] && start_sink "$dir" "$mta"
    cg_new "$mta-$workload-$gen-$size-$rcpts-$run"
    start_mta "$mta" "$workload" "$dir/$mta" "$port"
    local spid; spid=$(server_pid "$mta" "$dir/$mta")
    local t0 t1 report=$dir/$mta-report.json c0 c1 b0 b1
    c0=$(server_ns "$spid"); b0=$(sys_busy)
    t0=$(now)
    times > "$dir/times0"
    generate "$gen" "$workload" "$port" "$size" "$rcpts" "$report" "$dir/$mta-send.txt"
    times > "$dir/times1"
    local accepted e2e="-" got expected
    accepted=$(json "$report" "d['messages_accepted']")
    expected=$accepted
    [[ $workload == virtual || $workload == mailbox ]] && expected=$(json "$report" "d['recipients_accepted']")
    got=$(drain "$mta" "$workload" "$expected")
    b1=$(sys_busy); t1=$(now)
    c1=$(server_ns "$spid")
    [[ $got -ge $expected ]] || log "$mta $workload size=$size rcpts=$rcpts: NOT DRAINED: $got of $expected (see $dir)"
    if [[ $workload != accept ]]; then
        e2e=$(python3 -c "print(round($accepted / ($t1 - $t0), 1))")
    fi
    # CPU over the whole measured window (send + drain), in % of one CPU.
    # The generator's own CPU (the shell's children times around the send) over its run time.
    local cpu sysb gen_cpu cpu_us
    cpu=$(python3 -c "print(round(($c1 - $c0) / 1e7 / ($t1 - $t0), 1))")
    cpu_us=$(python3 -c "print(round(($c1 - $c0) / 1e3 / $accepted, 1) if $accepted else '-')")
    sysb=$(python3 -c "print(round(($b1 - $b0) / ($t1 - $t0), 1))")
    gen_cpu=$(python3 - "$dir/times0" "$dir/times1" "$report" <<'PY'
import json, re, sys
def child(path):
    line = open(path).read().splitlines()[1]
    return sum(int(m) * 60 + float(s) for m, s in re.findall(r"(\d+)m([\d.]+)s", line))
el = json.load(open(sys.argv[3]))["elapsed_s"]
print(round(100 * (child(sys.argv[2]) - child(sys.argv[1])) / el, 1) if el > 0 else "-")
PY
)
    local rate failed
    rate=$(json "$report" "round(d['msgs_per_sec'], 1)")
    failed=$(json "$report" "d['messages_failed']")
    [[ $failed -eq 0 ]] || log "$mta $workload: $failed messages failed: $(json "$report" "d['errors']")"

    # Open loop at half the rate just reached, on the same instance, captured on the wire.
    local hr="-" hp50="-" hp99="-" hm99="-" hgot="-" hw50="-" hw99="-" hach="-"
    if [[ $half_rate -eq 1 ]]; then
        local hreport=$dir/$mta-half.json hpcap=$WIRE_DIR/half.pcap hwire=$dir/$mta-half-wire.json
        local hacc hexp hf=0 window=() snap=128 hb0 hb1 hc0 hc1 ht0 ht1 hload hbase=$rate
        # Half of what the server sustains: the drained rate where it delivers (accepting
        # faster than it delivers is not a rate it can keep), the accepted rate for accept.
        [[ $e2e != "-" ]] && hbase=$e2e
        # --half-rate-at R: offer R/s whatever was sustained (two builds compared at one load).
        [[ -n $half_rate_at ]] && hbase=$((half_rate_at * 2))
        [[ $gen == ours ]] && snap=$((128 + 24 * rcpts))
        wire_start "$port" "$hpcap" "$snap"
        hc0=$(server_ns "$spid"); hb0=$(sys_busy); ht0=$(now)
        if [[ $gen == ours ]]; then
            hr=$(python3 -c "print(max(1, round($hbase / 2, 1)))")
            # Long enough (8 s) that start-up transients of either side do not make the p99.
            # shellcheck disable=SC2046 # rcpt_args prints separate words on purpose
            "$LT" send --quiet --target "127.0.0.1:$port" --duration 8 \
                --messages "$(python3 -c "print(int($hr * 8) + 1)")" --rate "$hr" \
                --sessions $((sessions * 2)) --per-session "$per_session" --size "$size" --rcpts "$rcpts" \
                $(rcpt_args "$workload") --pipelining --json "$hreport" >"$dir/$mta-half.txt" 2>&1 \
                || die "send failed (see $dir/$mta-half.txt)"
            hp50=$(lat "$hreport" data_end p50_ms); hp99=$(lat "$hreport" data_end p99_ms)
            hm99=$(lat "$hreport" message p99_ms)
            hacc=$(json "$hreport" "d['messages_accepted']")
            [[ $workload == virtual || $workload == mailbox ]] && hacc=$(json "$hreport" "d['recipients_accepted']")
            hf=$(json "$hreport" "d['messages_failed']")
            [[ $hf -eq 0 ]] || log "$mta $workload half rate: $hf messages failed: $(json "$hreport" "d['errors']")"
        else
            # R/2 sessions of one message a second over up to 500 processes (source-paced.py).
            hr=$(python3 -c "print(max(1, round($hbase / 2)))")
            local sjson=$dir/$mta-half-source.json
            # shellcheck disable=SC2046 # source_args prints separate words on purpose
            python3 "$HERE/source-paced.py" --rate "$hr" --duration 8 --pacing "$source_pacing" \
                --log "$dir/$mta-half.txt" --json "$sjson" -- \
                /usr/sbin/smtp-source $(source_args "$workload" "$size" "$rcpts") "127.0.0.1:$port" \
                || hf=$(json "$sjson" "d['failed']")
            [[ $hf -eq 0 ]] || log "$mta $workload half rate: $hf smtp-source processes failed, e.g. $(grep -m1 fatal "$dir/$mta-half.txt" || true) (see $dir/$mta-half.txt)"
            window=(--since "$(json "$sjson" "d['since']")" --until "$(json "$sjson" "d['until']")")
        fi
        hc1=$(server_ns "$spid"); hb1=$(sys_busy); ht1=$(now)
        # Server and machine CPU over the half-rate run (the machine's includes the generator
        # and tcpdump): near 200% means the latencies are the machine's, not the server's.
        hload="server CPU $(python3 -c "print(round(($hc1 - $hc0) / 1e7 / ($ht1 - $ht0), 1))")%, machine $(python3 -c "print(round(($hb1 - $hb0) / ($ht1 - $ht0), 1))")%"
        wire_stop "$hpcap"
        python3 "$HERE/wire-latency.py" "$hpcap" --port "$port" "${window[@]}" --timeline --json > "$hwire" \
            || die "wire-latency.py failed on $hpcap"
        cp "$hpcap.err" "$dir/$mta-half-tcpdump.txt"
        rm -f "$hpcap" "$hpcap.err"
        hw50=$(json "$hwire" "d['p50_ms'] if d['p50_ms'] is not None else '-'")
        hw99=$(json "$hwire" "d['p99_ms'] if d['p99_ms'] is not None else '-'")
        hach=$(json "$hwire" "d['rate'] if d['rate'] is not None else '-'")
        if [[ $gen == smtp-source ]]; then
            # smtp-source measures nothing itself: its half-rate figures are the wire's.
            hp50=$hw50 hp99=$hw99
            hacc=$(json "$sjson" "d['messages']")
            [[ $hf -eq 0 ]] || hacc=$(json "$hwire" "d['total_messages']")
            [[ $workload == virtual || $workload == mailbox ]] && hacc=$((hacc * rcpts))
            log "$mta $workload half rate (smtp-source, $source_pacing): $(json "$sjson" "d['processes']") processes, $(json "$sjson" "d['sessions']") sessions, offered $hr/s, achieved $hach/s on the wire ($(json "$hwire" "d['messages']") messages in the $(json "$sjson" "round(d['until'] - d['since'], 1)") s window after a $(json "$sjson" "d['ramp_s']") s ramp, last start after $(json "$sjson" "d['spawn_s']") s; generator's count/elapsed $(json "$sjson" "d['gen_rate']")/s); $hload"
        else
            log "$mta $workload half rate (ours): offered $hr/s, achieved $hach/s on the wire; 250 p50/p99 by the tool $hp50/$hp99 ms, on the wire $hw50/$hw99 ms ($(json "$hwire" "d['total_messages']") messages on the wire, $(json "$hreport" "d['messages_accepted']") by the tool); $hload"
        fi
        hexp=$((expected + hacc))
        hgot=$(drain "$mta" "$workload" "$hexp")
        [[ $hgot -ge $hexp ]] || log "$mta $workload half rate: NOT DRAINED: $hgot of $hexp (see $dir)"
    fi

    stop_mta "$mta" "$dir/$mta"
    [[ -z $CG ]] || rmdir "$CG" 2>/dev/null || true
    if [[ $workload == relay ]]; then kill -TERM "$SINK_PID" 2>/dev/null || true; wait "$SINK_PID" 2>/dev/null || true; fi
    printf '%s\t' "$workload" "$size" "$rcpts" "$mta" "$run" "$rate" \
        "$(lat "$report" message p50_ms)" "$(lat "$report" message p99_ms)" \
        "$(lat "$report" data_end p50_ms)" "$(lat "$report" data_end p99_ms)" \
        "$e2e" "$expected" "$got" "$failed" "$cpu" "$sysb" "$hr" "$hp50" "$hp99" "$hm99" "$hgot" >> "$RESULTS"
    printf '%s\t' "$gen_cpu" "$gen" >> "$RESULTS"
    printf '%s\t' "$cpu_us" "$hw50" "$hw99" >> "$RESULTS"
    printf '%s\n' "$hach" >> "$RESULTS"
    log "$workload ($gen) size=$size rcpts=$rcpts run=$run $mta: file create $create_ms ms, accept $rate msgs/s, 250 p50/p99 $(lat "$report" data_end p50_ms)/$(lat "$report" data_end p99_ms) ms, end-to-end $e2e msgs/s ($got of $expected), server CPU $cpu% = $cpu_us µs/msg, generator $gen_cpu%, machine $sysb%$([[ $half_rate -eq 1 ]] && echo ", half rate $hr/s (achieved $hach/s): 250 p50/p99 $hp50/$hp99 ms, on the wire $hw50/$hw99 ms")"
    # Nothing is deleted before exit: see place_run_dir.
    return 0
}

IFS=, read -ra W <<< "$workloads"
IFS=, read -ra S <<< "$sizes"
IFS=, read -ra R <<< "$rcpts_list"
log "workloads ${W[*]}, generators ${GENS[*]}, sizes ${S[*]}, rcpts ${R[*]}, $messages messages, $sessions sessions, $runs runs, MTAs ${mtas[*]}$([[ $ceiling -eq 1 ]] && echo ' (+ smtp-sink on accept)')"
log "load average: $(cut -d' ' -f1-3 /proc/loadavg)"
for workload in "${W[@]}"; do
    for size in "${S[@]}"; do
        for rcpts in "${R[@]}"; do
            for ((run = 1; run <= runs; run++)); do
                # Alternate which MTA goes first so drift on the machine hits both alike.
                order=("${mtas[@]}")
                if (( run % 2 == 0 && ${#mtas[@]} == 2 )); then order=("${mtas[1]}" "${mtas[0]}"); fi
                [[ $workload == accept && $ceiling -eq 1 ]] && order+=(smtp-sink)
                for gen in "${GENS[@]}"; do
                    for mta in "${order[@]}"; do
                        measure "$mta" "$workload" "$size" "$rcpts" "$run" "$gen"
                    done
                done
            done
        done
    done
done
log "load average: $(cut -d' ' -f1-3 /proc/loadavg)"

# --- table ---------------------------------------------------------------------------------
table=$(python3 "$HERE/table.py" "$RESULTS")
probe_range=$(sort -n "$PROBES" 2>/dev/null | sed -n '1p;$p' | paste -sd- -)
header="Medians of $runs runs; generators ${GENS[*]}; server CPU from $([[ -n $CG_KIND ]] && echo "cgroup $CG_KIND" || echo /proc); $messages messages per run, $sessions sessions, $per_session per connection, pipelining; $(nproc) CPUs; load average at end $(cut -d' ' -f1-3 /proc/loadavg); machine speed probe before each run ${probe_range:--} s (lower is faster); $(date -u '+%Y-%m-%d %H:%M UTC')."
printf '%s\n\n%s\n' "$header" "$table"
if [[ -n $out ]]; then
    printf '%s\n\n%s\n' "$header" "$table" > "$out"
    log "wrote $out"
fi
