#!/usr/bin/env python3
"""Waits until an MTA has finished N deliveries and prints the count reached.

    drain-wait.py TARGET TIMEOUT_S log FILE REGEX
    drain-wait.py TARGET TIMEOUT_S json FILE KEY

`log`: counts the lines of FILE matching REGEX (the MTA's own log: indimail's
`delivery N: success`, Postfix's `status=sent`), reading only what was
appended since the last look. `json`: reads KEY of the small JSON file FILE
(the loadtest sink's counters). One process polls every 0.1 s for the whole
wait, so draining costs neither MTA a `find` over every Maildir nor a process
start per poll. Exit status 1 when TIMEOUT_S passed first.
"""
import json
import re
import sys
import time


def main():
    target, timeout, kind, path, what = int(sys.argv[1]), float(sys.argv[2]), *sys.argv[3:6]
    deadline = time.monotonic() + timeout
    count, offset, tail = 0, 0, b""
    pattern = re.compile(what.encode()) if kind == "log" else None
    while True:
        if kind == "log":
            try:
                with open(path, "rb") as f:
                    f.seek(offset)
                    chunk = f.read()
            except OSError:
                chunk = b""
            offset += len(chunk)
            lines = (tail + chunk).split(b"\n")
            tail = lines.pop()  # a line still being written
            count += sum(1 for line in lines if pattern.search(line))
        else:
            try:
                with open(path) as f:
                    count = int(json.load(f)[what])
            except (OSError, ValueError, KeyError):
                pass
        if count >= target:
            break
        if time.monotonic() >= deadline:
            print(f"drain-wait: timed out at {count} of {target}", file=sys.stderr)
            print(count)
            sys.exit(1)
        time.sleep(0.1)
    print(count)


main()
