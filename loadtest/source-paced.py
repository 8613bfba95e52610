#!/usr/bin/env python3
"""Open-loop load at about R messages/s from Postfix's smtp-source, which cannot pace itself.

    python3 loadtest/source-paced.py --rate R --duration D [--pacing spread|burst]
        [--spawn-rate S] [--max-procs P] [--log FILE] [--json FILE] -- /usr/sbin/smtp-source ARGS... HOST:PORT

smtp-source's only pacing is -w N (or -R N): after a session's QUIT (or, with -d, after its
250) the session waits until a timer of N *whole seconds* goes off (Postfix's event loop keeps
time in seconds, from time()), then connects again. The timers of all sessions of one process
go off in the same event-loop pass, so `-s R -w 1` does not give R evenly spaced messages a
second but a burst of R connections (opened one after the other) about once a second.

--pacing spread (the default): the R sessions are spread over P = min(R, --max-procs, default
500) processes (`-s k -w 1`, k = R/P sessions each, one message a second per session),
started evenly over a ramp of W = ceil(P / S) seconds (S spawns/s, default 250: starting one
smtp-source costs ~2.5 ms of CPU). A process's timers are "1 s after its sessions' last
QUIT", so each process sends a burst of k messages about every 1 s + their time, and the P
processes keep the phases they started with: arrivals spread over each second in bursts of
k (1 up to R = 500/s, 9 at 4,400/s). One session per process costs ~0.35 ms of CPU per
message and a process start per 1/s of rate, several ~0.15-0.2 ms per message. Each process
sends for about W + D seconds from the first start; the window to measure is
[start + W, start + W + D) (it starts later if the last process started late).
--pacing burst: what `-s R -w 1` gives (one process, R sessions: a burst of R connections,
opened one after the other, about once a second), for comparison; the window skips the first
burst: [start + 1, start + 1 + D).

ARGS must not contain -s, -m or -w. Writes a JSON summary: processes, sessions, messages
(planned), failed (processes that exited non-zero), t0, since, until (epoch seconds: the window
to measure, e.g. wire-latency.py --since/--until), elapsed_s, gen_rate (messages over the time
from the first start to the last exit less the 1 s each process waits after its last message).
"""
import argparse
import json
import math
import os
import sys
import time


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rate", type=float, required=True)
    ap.add_argument("--duration", type=float, default=8)
    ap.add_argument("--pacing", choices=("spread", "burst"), default="spread")
    ap.add_argument("--spawn-rate", type=float, default=250)
    ap.add_argument("--max-procs", type=int, default=500)
    ap.add_argument("--log", default=os.devnull)
    ap.add_argument("--json")
    ap.add_argument("cmd", nargs=argparse.REMAINDER)
    a = ap.parse_args()
    cmd = a.cmd[1:] if a.cmd[:1] == ["--"] else a.cmd
    if not cmd or any(x in ("-s", "-m", "-w", "-R") for x in cmd[1:]):
        ap.error("give the smtp-source command after --, without -s, -m, -w or -R")
    n = max(1, round(a.rate))
    log = os.open(a.log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    actions = [(os.POSIX_SPAWN_DUP2, log, 1), (os.POSIX_SPAWN_DUP2, log, 2)]

    def spawn(args):
        return os.posix_spawn(cmd[0], [cmd[0]] + args + cmd[1:], os.environ, file_actions=actions)

    pids = []
    t0 = time.time()
    if a.pacing == "burst":
        ramp = 1.0
        planned = n * math.ceil(1 + a.duration)
        pids.append(spawn(["-s", str(n), "-w", "1", "-m", str(planned)]))
        sessions = n
    else:
        procs = max(1, min(n, a.max_procs))
        ramp = float(max(1, math.ceil(procs / a.spawn_rate)))
        planned = 0
        for i in range(procs):
            k = n // procs + (1 if i < n % procs else 0)  # this process's sessions
            offset = ramp * i / procs
            delay = t0 + offset - time.time()
            if delay > 0:
                time.sleep(delay)
            # From the actual start (spawning may fall behind on a busy machine), so that
            # every process stops at about the same time.
            m = k * max(1, math.ceil(ramp + a.duration - (time.time() - t0)))
            planned += m
            pids.append(spawn(["-s", str(k), "-w", "1", "-m", str(m)]))
        sessions = n
    spawned = time.time()
    failed = 0
    for pid in pids:
        _, status = os.waitpid(pid, 0)
        failed += 0 if os.waitstatus_to_exitcode(status) == 0 else 1
    t1 = time.time()
    active = max(1e-6, t1 - 1.0 - t0)
    # The window starts when every process runs (after the ramp, or after the last start if
    # that was late) and ends when the processes were meant to stop.
    since = max(t0 + ramp, spawned)
    res = {"pacing": a.pacing, "processes": len(pids), "sessions": sessions,
           "messages": planned, "failed": failed, "t0": t0, "since": since,
           "until": max(since + 1, t0 + ramp + a.duration), "ramp_s": ramp,
           "spawn_s": round(spawned - t0, 3), "elapsed_s": round(t1 - t0, 3),
           "gen_rate": round(planned / active, 1)}
    out = json.dumps(res)
    if a.json:
        with open(a.json, "w") as f:
            f.write(out + "\n")
    else:
        print(out)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
