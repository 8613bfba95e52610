#!/usr/bin/env python3
"""SMTP "250 after DATA" latency measured on the wire, from a pcap file.

    python3 loadtest/wire-latency.py FILE.pcap --port PORT [--since T] [--until T] [--json]
        [--timeline]
    python3 loadtest/wire-latency.py --self-test

Independent of both the MTA and the load generator: it reads what tcpdump saw, e.g.
`tcpdump -i lo -s 128 -w FILE 'tcp port PORT'` (PORT = the server's port). Per TCP connection
(a client SYN starts a new one, so reused client ports are fine) it follows the server's
replies (segments from PORT whose payload starts with three digits; every reply line of a
segment is looked at, so pipelined reply groups such as "250 ..\\r\\n250 ..\\r\\n354 .." count)
and the client's payload segments. After a 354 reply, the next reply is the end-of-data
reply; its latency is its time minus the time of the last client payload segment before it
(the end of the message on the wire). 2xx replies are counted as messages, others as
rejected. --since/--until (epoch seconds) keep only messages whose end of data is in
[since, until). Prints count, p50, p90, p99 and max in ms (nearest rank), and the rate of
those messages ((n - 1) / time from the first to the last 250); --json prints one object.
--timeline adds, per second of the capture, the messages that ended their data in it and
their p50/p99/max (to see stalls); with --json as "timeline": [[second, n, p50, p99, max]].

Only what was captured can be seen: with a small snap length a long reply group may hide
its 354. Then the client's next payload is not a command (it is the message, which starts
with headers): the 354 is inferred from that (counted as inferred_354). Link types: EN10MB
(tcpdump -i lo), NULL and LOOP (BSD loopback), LINUX_SLL and LINUX_SLL2 (-i any), RAW; IPv4
and IPv6. Classic pcap only (microsecond or nanosecond, either byte order), not pcapng.
No third-party modules.
"""
import json
import math
import os
import struct
import sys
import tempfile

LINKTYPE_NULL, LINKTYPE_EN10MB, LINKTYPE_RAW, LINKTYPE_LOOP = 0, 1, 101, 108
LINKTYPE_LINUX_SLL, LINKTYPE_LINUX_SLL2 = 113, 276
LINKTYPE_IPV4, LINKTYPE_IPV6 = 228, 229
# DLT_RAW is 12 or 14 on some systems' pcap files.
RAW_TYPES = {LINKTYPE_RAW, 12, 14, LINKTYPE_IPV4, LINKTYPE_IPV6}


def read_pcap(path):
    """Yields (linktype, ts, data, orig_len) for each record of a classic pcap file."""
    with open(path, "rb") as f:
        head = f.read(24)
        if len(head) < 24:
            raise ValueError(f"{path}: not a pcap file (too short)")
        magic = head[:4]
        if magic == b"\x0a\x0d\x0d\x0a":
            raise ValueError(f"{path}: pcapng is not supported (tcpdump -w writes pcap)")
        table = {b"\xd4\xc3\xb2\xa1": ("<", 1e-6), b"\xa1\xb2\xc3\xd4": (">", 1e-6),
                 b"\x4d\x3c\xb2\xa1": ("<", 1e-9), b"\xa1\xb2\x3c\x4d": (">", 1e-9)}
        if magic not in table:
            raise ValueError(f"{path}: not a pcap file (magic {magic.hex()})")
        end, scale = table[magic]
        linktype = struct.unpack(end + "I", head[20:24])[0] & 0x0FFFFFFF
        rec = struct.Struct(end + "IIII")
        while True:
            h = f.read(16)
            if len(h) < 16:
                return
            sec, frac, incl, orig = rec.unpack(h)
            data = f.read(incl)
            if len(data) < incl:
                return  # cut short (tcpdump killed mid-write)
            yield linktype, sec + frac * scale, data, orig


def network_layer(linktype, data):
    """(ip_version, offset) of the IP header in a link-layer frame, or None."""
    if linktype == LINKTYPE_EN10MB:
        off, etype = 14, struct.unpack("!H", data[12:14])[0] if len(data) >= 14 else 0
        while etype in (0x8100, 0x88A8) and len(data) >= off + 4:
            etype = struct.unpack("!H", data[off + 2:off + 4])[0]
            off += 4
        return {0x0800: (4, off), 0x86DD: (6, off)}.get(etype)
    if linktype in (LINKTYPE_NULL, LINKTYPE_LOOP):
        if len(data) < 4:
            return None
        fam = struct.unpack("!I" if linktype == LINKTYPE_LOOP else "=I", data[:4])[0]
        if linktype == LINKTYPE_NULL and fam > 0xFFFF:
            fam = struct.unpack("<I" if sys.byteorder == "big" else ">I", data[:4])[0]
        if fam == 2:
            return (4, 4)
        if fam in (10, 24, 28, 30):
            return (6, 4)
        return None
    if linktype == LINKTYPE_LINUX_SLL:
        etype = struct.unpack("!H", data[14:16])[0] if len(data) >= 16 else 0
        return {0x0800: (4, 16), 0x86DD: (6, 16)}.get(etype)
    if linktype == LINKTYPE_LINUX_SLL2:
        etype = struct.unpack("!H", data[0:2])[0] if len(data) >= 20 else 0
        return {0x0800: (4, 20), 0x86DD: (6, 20)}.get(etype)
    if linktype in RAW_TYPES:
        if not data:
            return None
        return {4: (4, 0), 6: (6, 0)}.get(data[0] >> 4)
    raise ValueError(f"unsupported link type {linktype}")


def tcp_segment(linktype, data):
    """(src, sport, dst, dport, flags, payload_len, visible_payload) or None."""
    nl = network_layer(linktype, data)
    if nl is None:
        return None
    ver, off = nl
    if ver == 4:
        if len(data) < off + 20:
            return None
        ihl = (data[off] & 0x0F) * 4
        total, proto = struct.unpack("!H", data[off + 2:off + 4])[0], data[off + 9]
        frag = struct.unpack("!H", data[off + 6:off + 8])[0] & 0x1FFF
        if proto != 6 or frag:
            return None
        src, dst = data[off + 12:off + 16], data[off + 16:off + 20]
        tcp, ip_payload = off + ihl, total - ihl
    else:
        if len(data) < off + 40:
            return None
        plen, nh = struct.unpack("!H", data[off + 4:off + 6])[0], data[off + 6]
        if nh != 6:
            return None
        src, dst = data[off + 8:off + 24], data[off + 24:off + 40]
        tcp, ip_payload = off + 40, plen
    if len(data) < tcp + 14:
        return None
    sport, dport = struct.unpack("!HH", data[tcp:tcp + 4])
    doff, flags = (data[tcp + 12] >> 4) * 4, data[tcp + 13]
    payload_len = max(0, ip_payload - doff)
    visible = data[tcp + doff:tcp + doff + payload_len]
    return src, sport, dst, dport, flags, payload_len, visible


def reply_lines(visible):
    """The reply lines of a server segment's visible payload (the last may be cut short)."""
    return [ln for ln in visible.split(b"\r\n") if ln]


VERBS = {b"HELO", b"EHLO", b"LHLO", b"MAIL", b"RCPT", b"DATA", b"BDAT", b"RSET", b"NOOP",
         b"QUIT", b"VRFY", b"EXPN", b"HELP", b"STAR", b"AUTH", b"ETRN", b"ATRN", b"XCLI",
         b"XFOR", b"TURN"}


def is_command(visible):
    """Whether a client payload starts with an SMTP command (else it is message data)."""
    return visible[:4].upper() in VERBS


def is_code(line, code=None):
    ok = len(line) >= 3 and line[:3].isdigit() and (len(line) == 3 or line[3:4] in b" -")
    return ok and (code is None or line[:3] == code)


def analyse(path, port, since=None, until=None):
    conns = {}
    # Latency (s), reply time and end of data of each selected 2xx end-of-data reply.
    lat, ends, sents = [], [], []
    first = None
    total = rejected = inferred = packets = connections = negative = 0
    linktype = None
    for linktype, ts, data, _orig in read_pcap(path):
        packets += 1
        if first is None:
            first = ts
        seg = tcp_segment(linktype, data)
        if seg is None:
            continue
        src, sport, dst, dport, flags, plen, visible = seg
        if dport == port and sport != port:
            key, from_server = (src, sport, dst), False
        elif sport == port and dport != port:
            key, from_server = (dst, dport, src), True
        else:
            continue
        if not from_server and flags & 0x02 and not flags & 0x10:  # client SYN: a new connection
            conns[key] = {"in_data": False, "last_client": None, "cut": False}
            connections += 1
            continue
        st = conns.get(key)
        if st is None:  # connection open before the capture began
            st = conns[key] = {"in_data": False, "last_client": None, "cut": False}
        if plen == 0:
            continue
        if not from_server:
            if st["cut"] and not st["in_data"] and visible and not is_command(visible):
                # Message data after a reply cut short by the snap length: its 354 was in the
                # part not captured.
                st["in_data"], st["last_client"] = True, None
                inferred += 1
            st["cut"] = False
            if st["in_data"]:
                st["last_client"] = ts
            continue
        if not is_code(visible):
            continue
        lines = reply_lines(visible)
        if st["in_data"] and st["last_client"] is not None:
            # The end-of-data reply: the first reply after the message's data.
            st["in_data"] = False
            sent = st["last_client"]
            total += 1 if lines[0][:1] == b"2" else 0
            if lines[0][:1] != b"2":
                rejected += 1
            elif (since is None or sent >= since) and (until is None or sent < until):
                if ts < sent:
                    negative += 1
                lat.append(max(0.0, ts - sent))
                ends.append(ts)
                sents.append(sent)
            lines = lines[1:]
        if any(is_code(ln, b"354") for ln in lines):
            st["in_data"], st["last_client"] = True, None
        st["cut"] = len(visible) < plen
    seconds = {}
    for v, sent in zip(lat, sents):
        seconds.setdefault(int(sent - first), []).append(v)
    timeline = []
    for sec in sorted(seconds):
        v = sorted(seconds[sec])
        timeline.append([sec, len(v)] + [round(x * 1000, 3) for x in
                                         (percentile(v, 50), percentile(v, 99), v[-1])])
    return summarize(lat, ends, {
        "timeline": timeline, "total_messages": total, "rejected": rejected, "connections": connections,
        "open_in_data": sum(1 for s in conns.values() if s["in_data"]),
        "inferred_354": inferred, "negative": negative, "packets": packets,
        "linktype": linktype})


def percentile(sorted_vals, p):
    if not sorted_vals:
        return None
    return sorted_vals[max(0, math.ceil(p / 100 * len(sorted_vals)) - 1)]


def summarize(lat, ends, extra):
    s = sorted(lat)
    ms = lambda v: None if v is None else round(v * 1000, 3)
    out = {"messages": len(s), "p50_ms": ms(percentile(s, 50)), "p90_ms": ms(percentile(s, 90)),
           "p99_ms": ms(percentile(s, 99)), "max_ms": ms(s[-1] if s else None),
           "mean_ms": ms(sum(s) / len(s) if s else None)}
    span = max(ends) - min(ends) if len(ends) > 1 else 0
    out["span_s"] = round(span, 3)
    out["rate"] = round((len(ends) - 1) / span, 1) if span > 0 else None
    out.update(extra)
    return out


# --- self-test: synthetic captures with known latencies --------------------------------------

def _frame(linktype, ver, src, dst, sport, dport, flags, payload, snap):
    tcp = struct.pack("!HHIIBBHHH", sport, dport, 1, 1, 5 << 4, flags, 65535, 0, 0) + payload
    if ver == 4:
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 0, 0x4000, 64, 6, 0, src, dst)
        etype, fam = 0x0800, 2
    else:
        ip = struct.pack("!IHBB16s16s", 0x60000000, len(tcp), 6, 64, src, dst)
        etype, fam = 0x86DD, 10
    pkt = ip + tcp
    if linktype == LINKTYPE_EN10MB:
        frame = b"\0" * 12 + struct.pack("!H", etype) + pkt
    elif linktype == LINKTYPE_NULL:
        frame = struct.pack("=I", fam) + pkt
    elif linktype == LINKTYPE_LINUX_SLL:
        frame = struct.pack("!HHH8sH", 0, 772, 6, b"\0" * 8, etype) + pkt
    elif linktype == LINKTYPE_LINUX_SLL2:
        frame = struct.pack("!HHIHBB8s", etype, 0, 1, 772, 0, 6, b"\0" * 8) + pkt
    else:
        frame = pkt
    return frame[:snap], len(frame)


def _write(path, linktype, records, snap, nanos=False, big=False):
    end = ">" if big else "<"
    magic = 0xA1B23C4D if nanos else 0xA1B2C3D4
    with open(path, "wb") as f:
        f.write(struct.pack(end + "IHHiIII", magic, 2, 4, 0, 0, snap, linktype))
        for ts, (data, orig) in records:
            sec = int(ts)
            frac = round((ts - sec) * (1e9 if nanos else 1e6))
            f.write(struct.pack(end + "IIII", sec, frac, len(data), orig) + data)


def self_test():
    port = 2525
    syn, ack, psh = 0x02, 0x10, 0x18
    expected = []  # (end of data, latency ms, pipelined) of each 2xx end-of-data reply

    def session(t, ver, cport, pipelined, lat_ms, reject_second=False):
        """Records of one connection starting at t; appends its 2xx latencies to expected."""
        if ver == 4:
            c, s = bytes([127, 0, 0, 1]), bytes([127, 0, 0, 1])
        else:
            c, s = b"\0" * 15 + b"\1", b"\0" * 15 + b"\1"
        recs = []

        def cl(dt, payload=b"", flags=psh):
            recs.append((t + dt, ("c", c, s, cport, port, flags, payload)))

        def sv(dt, payload=b"", flags=psh):
            recs.append((t + dt, ("s", s, c, port, cport, flags, payload)))
        cl(0, b"", syn)
        sv(0.0001, b"", syn | ack)
        cl(0.0002, b"", ack)
        sv(0.001, b"220 mx ESMTP\r\n")
        cl(0.002, b"EHLO x\r\n")
        sv(0.003, b"250-mx\r\n250 PIPELINING\r\n")
        at = 0.004
        for i, lms in enumerate(lat_ms):
            if pipelined:
                cl(at, b"MAIL FROM:<a@b>\r\nRCPT TO:<u@example.com>\r\nDATA\r\n")
                sv(at + 0.0005, b"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n354 End data with <CR><LF>.<CR><LF>\r\n")
            else:
                cl(at, b"MAIL FROM:<a@b>\r\n")
                sv(at + 0.0002, b"250 2.1.0 Ok\r\n")
                cl(at + 0.0003, b"RCPT TO:<u@example.com>\r\n")
                sv(at + 0.0004, b"250 2.1.5 Ok\r\n")
                cl(at + 0.0005, b"DATA\r\n")
                sv(at + 0.0006, b"354 End data\r\n")
            cl(at + 0.0007, b"From: a\r\nTo: u\r\n\r\n" + b"X" * 1000)
            sv(at + 0.0008, b"", ack)  # a bare ACK is not a reply
            cl(at + 0.0009, b"X" * 500 + b"\r\n.\r\n")  # the end of data
            rejected = reject_second and i == 1
            sv(at + 0.0009 + lms / 1000, b"451 4.3.0 try again\r\n" if rejected else
               b"250 2.0.0 Ok: queued as X\r\n")
            if not rejected:
                expected.append((t + at + 0.0009, lms, pipelined))
            at += 0.0009 + lms / 1000 + 0.001
        cl(at, b"QUIT\r\n")
        sv(at + 0.0001, b"221 bye\r\n")
        return recs

    recs = []
    recs += session(1000.0, 4, 40000, False, [3.0])
    recs += session(1000.0005, 4, 40001, True, [1.5, 7.0, 2.0], reject_second=True)
    recs += session(1000.01, 4, 40000, False, [12.0])  # the same client port again: new SYN
    recs += session(1000.02, 6, 40002, True, [0.5])
    recs += session(1000.03, 4, 40003, False, [4.0, 9.0])
    recs.sort(key=lambda r: r[0])
    want = sorted(e[1] for e in expected)
    ok = True

    def check(name, got, exp):
        nonlocal ok
        if got != exp:
            ok = False
            print(f"self-test FAIL {name}: got {got!r}, expected {exp!r}")

    def rounded(v):
        return None if v is None else round(v, 3)

    with tempfile.TemporaryDirectory() as d:
        for lt in (LINKTYPE_EN10MB, LINKTYPE_NULL, LINKTYPE_LINUX_SLL, LINKTYPE_LINUX_SLL2,
                   LINKTYPE_RAW):
            for nanos, big in ((False, False), (True, True)):
                path = os.path.join(d, f"t{lt}.pcap")
                frames = [(ts, _frame(lt, 6 if len(r[1]) == 16 else 4, r[1], r[2], r[3], r[4],
                                      r[5], r[6], 65535)) for ts, r in recs]
                _write(path, lt, frames, 65535, nanos=nanos, big=big)
                res = analyse(path, port)
                tag = f"linktype {lt}{' ns' if nanos else ''}{' be' if big else ''}"
                check(f"{tag} count", res["messages"], len(want))
                check(f"{tag} rejected", res["rejected"], 1)
                check(f"{tag} connections", res["connections"], 5)
                check(f"{tag} p50", rounded(res["p50_ms"]), rounded(percentile(want, 50)))
                check(f"{tag} p99", rounded(res["p99_ms"]), max(want))
                check(f"{tag} max", rounded(res["max_ms"]), max(want))
                check(f"{tag} inferred", res["inferred_354"], 0)
                check(f"{tag} open", res["open_in_data"], 0)
        # Window: only the messages whose data ended at or after t = 1000.01.
        path = os.path.join(d, "w.pcap")
        frames = [(ts, _frame(LINKTYPE_EN10MB, 6 if len(r[1]) == 16 else 4, r[1], r[2], r[3],
                              r[4], r[5], r[6], 65535)) for ts, r in recs]
        _write(path, LINKTYPE_EN10MB, frames, 65535)
        res = analyse(path, port, since=1000.01, until=1000.025)
        inside = [e[1] for e in expected if 1000.01 <= e[0] < 1000.025]
        check("window count", res["messages"], len(inside))
        check("window has the reused port's message", 12.0 in inside, True)
        check("window max", rounded(res["max_ms"]), max(inside))
        # Snap length 80 (26 bytes of IPv4 payload, 6 of IPv6): the pipelined reply groups'
        # 354s are cut off; the message data that follows gives them away.
        frames = [(ts, _frame(LINKTYPE_EN10MB, 6 if len(r[1]) == 16 else 4, r[1], r[2], r[3],
                              r[4], r[5], r[6], 80)) for ts, r in recs]
        _write(path, LINKTYPE_EN10MB, frames, 80)
        res = analyse(path, port)
        check("cut: count", res["messages"], len(want))
        check("cut: p99", rounded(res["p99_ms"]), max(want))
        check("cut: inferred", res["inferred_354"], sum(1 for e in expected if e[2]) + 1)
    # Percentiles are nearest rank.
    check("nearest rank", [percentile(list(range(1, 101)), p) for p in (50, 90, 99, 100)],
          [50, 90, 99, 100])
    print("self-test ok" if ok else "self-test FAILED")
    return 0 if ok else 1


def main(argv):
    args, opts = [], {"--port": None, "--since": None, "--until": None}
    as_json = timeline = False
    it = iter(argv)
    for a in it:
        if a == "--self-test":
            return self_test()
        if a == "--json":
            as_json = True
        elif a == "--timeline":
            timeline = True
        elif a in opts:
            opts[a] = next(it, None)
        elif a in ("-h", "--help"):
            print(__doc__)
            return 0
        else:
            args.append(a)
    if len(args) != 1 or opts["--port"] is None:
        print("usage: wire-latency.py FILE.pcap --port PORT [--since T] [--until T] [--json]"
              " | --self-test", file=sys.stderr)
        return 2
    since = float(opts["--since"]) if opts["--since"] else None
    until = float(opts["--until"]) if opts["--until"] else None
    res = analyse(args[0], int(opts["--port"]), since, until)
    if not timeline:
        del res["timeline"]
    if as_json:
        print(json.dumps(res))
    else:
        f = lambda v: "-" if v is None else f"{v:.3f}"
        print(f"messages {res['messages']} (of {res['total_messages']} in the capture, "
              f"{res['rejected']} rejected), rate {res['rate']}/s, 250 after data ms: "
              f"p50 {f(res['p50_ms'])} p90 {f(res['p90_ms'])} p99 {f(res['p99_ms'])} "
              f"max {f(res['max_ms'])}; {res['connections']} connections, "
              f"{res['inferred_354']} 354s inferred (cut by the snap length)")
        for sec, n, p50, p99, mx in res.get("timeline", []):
            print(f"  second {sec:4d}: {n:6d} messages, p50 {p50:.3f} p99 {p99:.3f} max {mx:.3f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
