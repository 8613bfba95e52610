#!/usr/bin/env python3
"""Medians of compare.sh's results (a TSV, one row per run) as a markdown table.

    python3 loadtest/table.py results.tsv [more.tsv ...]

Columns of the TSV: workload size rcpts mta run rate msg_p50 msg_p99 end_p50 end_p99 e2e
expected got failed server_cpu_pct machine_cpu_pct half_rate half_end_p50 half_end_p99
half_msg_p99 half_got generator_cpu_pct [generator server_cpu_us_per_msg [half_wire_p50
half_wire_p99 half_achieved]]. "-" means not measured. Rows without a generator column come
from `ours` (indimail-loadtest send); rows of each generator make their own lines of the table.
half_wire_* are the half-rate run's 250 latencies measured on the wire (wire-latency.py),
half_achieved its rate on the wire. smtp-source measures no latency itself: its rows carry the
wire's figures in half_end_p50/half_end_p99 too, and the table labels them so.
"""
import collections
import statistics
import sys

FIELDS = ["rate", "msg_p50", "msg_p99", "end_p50", "end_p99", "e2e", "expected", "got",
          "failed", "cpu", "sys", "half_rate", "half_end_p50", "half_end_p99", "half_msg_p99",
          "half_got", "gen"]
# After the generator (column 22) and server CPU µs per message (23).
EXTRA_FIELDS = ["half_wire_p50", "half_wire_p99", "half_achieved"]
NOT_SOURCE = lambda w, g: g != "smtp-source"
# Labels of figures that smtp-source's rows take from the wire.
SOURCE_LABELS = {"half_end_p50": "half-rate run: 250 p50 ms (on the wire)",
                 "half_end_p99": "half-rate run: 250 p99 ms (on the wire)"}
FIGURES = [
    ("rate", "accepted msgs/s", None),
    ("e2e", "end-to-end msgs/s (drained)", lambda w, g: w != "accept"),
    ("end_p50", "250 after data p50 ms", None),
    ("end_p99", "250 after data p99 ms", None),
    ("msg_p99", "whole message p99 ms", None),
    ("cpu", "server CPU % of one core", None),
    ("cpu_per_msg", "server CPU µs per message", None),
    ("gen", "load generator CPU % of one core", None),
    ("sys", "machine CPU % (200 = both cores)", None),
    ("half_rate", "half-rate run: offered msgs/s", None),
    ("half_achieved", "half-rate run: achieved msgs/s (on the wire)", None),
    ("half_end_p50", "half-rate run: 250 p50 ms", None),
    ("half_end_p99", "half-rate run: 250 p99 ms", None),
    ("half_wire_p50", "half-rate run: 250 p50 ms on the wire", NOT_SOURCE),
    ("half_wire_p99", "half-rate run: 250 p99 ms on the wire", NOT_SOURCE),
    ("half_msg_p99", "half-rate run: whole message p99 ms", None),
]
LOWER_IS_BETTER = {"end_p50", "end_p99", "msg_p99", "cpu", "sys", "half_end_p50",
                   "half_end_p99", "half_msg_p99", "gen", "cpu_per_msg", "half_wire_p50",
                   "half_wire_p99"}


def main():
    data = collections.defaultdict(list)
    order = []
    problems = []
    for path in sys.argv[1:]:
        for line in open(path):
            if not line.strip():
                continue
            cols = line.rstrip("\n").split("\t")
            w, size, rcpts, mta, run = cols[:5]
            vals = dict(zip(FIELDS, cols[5:]))
            vals.update(zip(EXTRA_FIELDS, cols[24:]))
            gen = cols[22] if len(cols) > 22 else "ours"
            if gen == "smtp-source":
                # smtp-source measures no latency (its rows carry zeros there).
                for f in ("msg_p50", "msg_p99", "end_p50", "end_p99"):
                    vals[f] = "-"
            key = (w, int(size), int(rcpts), gen)
            if key not in order:
                order.append(key)
            for f, v in vals.items():
                if v not in ("-", ""):
                    data[key + (mta, f)].append(float(v))
            # Server CPU time per message: CPU over the window (send + drain) divided by the
            # messages that went through in it.
            through = vals.get("e2e", "-") if w != "accept" else vals.get("rate", "-")
            if len(cols) > 23 and cols[23] not in ("-", ""):
                # Measured: the server's CPU (its cgroup) over the messages accepted.
                data[key + (mta, "cpu_per_msg")].append(float(cols[23]))
            elif through not in ("-", "") and float(through) > 0 and vals.get("cpu", "-") != "-":
                data[key + (mta, "cpu_per_msg")].append(
                    float(vals["cpu"]) / 100 / float(through) * 1e6)
            if vals.get("got", "-") != "-" and float(vals["got"]) < float(vals["expected"]):
                problems.append(f"{w} ({gen}) {size} B x{rcpts} {mta} run {run}: drained "
                                f"{vals['got']} of {vals['expected']}")
            if vals.get("failed", "0") not in ("0", "-"):
                problems.append(f"{w} ({gen}) {size} B x{rcpts} {mta} run {run}: {vals['failed']} "
                                "messages failed")

    def med(k):
        v = data.get(k)
        return statistics.median(v) if v else None

    def fmt(x):
        if x is None:
            return "-"
        return f"{x:,.0f}" if x >= 100 else f"{x:.2f}" if x < 10 else f"{x:.1f}"

    print("| workload | size | rcpts | figure | Postfix | indimail | smtp-sink | indimail/Postfix |"
          " indimail/smtp-sink |")
    print("|---|---:|---:|---|---:|---:|---:|---:|---:|")
    for key in order:
        w, size, rcpts, gen = key
        for fig, label, cond in FIGURES:
            if cond and not cond(w, gen):
                continue
            if gen == "smtp-source":
                label = SOURCE_LABELS.get(fig, label)
            p, i, s = (med(key + (m, fig)) for m in ("postfix", "indimail", "smtp-sink"))
            if p is None and i is None and s is None:
                continue
            ratio = f"{i / p:.2f}" if p and i is not None else "-"
            sratio = f"{i / s:.2f}" if s and i is not None and fig == "rate" else "-"
            size_s = f"{size // 1024} KiB" if size % 1024 == 0 else str(size)
            print(f"| {w} ({gen}) | {size_s} | {rcpts} | {label} | {fmt(p)} | {fmt(i)} | {fmt(s)} |"
                  f" {ratio} | {sratio} |")
    if problems:
        print()
        for p in problems:
            print(f"- **{p}**")


main()
