#!/usr/bin/env python3
"""Holds N idle SMTP sessions open against a server (each has read the 220 greeting and sent
EHLO), then prints the server's resident memory before and after, per session.

    loadtest/idle-sessions.py --target 127.0.0.1:2525 --pid PID [--sessions 10000]

Needs `ulimit -n` above N (the script raises its soft limit to the hard limit). Client sockets
are spread over source addresses 127.0.0.x so no single address runs out of ephemeral ports and
MAXPERIP (per client IP) is not hit: run the server with MAXPERIP=0 or a tcp.smtp rule.
"""
import argparse, resource, socket, sys, time

def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--target", required=True)
    ap.add_argument("--pid", type=int, required=True)
    ap.add_argument("--sessions", type=int, default=10000)
    a = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    host, port = a.target.rsplit(":", 1)
    port = int(port)
    time.sleep(0.5)
    before = rss_kib(a.pid)
    socks = []
    t0 = time.time()
    for i in range(a.sessions):
        s = socket.socket()
        s.bind((f"127.0.{1 + i // 250 % 200}.{1 + i % 250}", 0))
        s.connect((host, port))
        socks.append(s)
    # Read every greeting, then say EHLO and read its reply: the sessions are then idle
    # between commands, the state a real idle client leaves them in.
    for s in socks:
        s.settimeout(30)
        if not s.recv(4096).startswith(b"220"):
            sys.exit("no greeting")
        s.sendall(b"EHLO idle.example\r\n")
    for s in socks:
        buf = b""
        while b"\r\n250 " not in buf and not buf.startswith(b"250 "):
            chunk = s.recv(4096)
            if not chunk:
                sys.exit("closed during EHLO")
            buf += chunk
    took = time.time() - t0
    time.sleep(2)
    after = rss_kib(a.pid)
    per = (after - before) / a.sessions
    print(f"{a.sessions} idle sessions opened in {took:.1f} s; server RSS {before} KiB -> {after} KiB; "
          f"{per:.1f} KiB per session")
    for s in socks:
        s.close()

main()
