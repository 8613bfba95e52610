#!/usr/bin/python3
"""Verifies a message's DKIM signature with dkimpy (Debian python3-dkim).

usage: dkim_verify.py MESSAGE_FILE NAME TXT_RECORD
The public key is answered for NAME (e.g. default._domainkey.example.org.)
from TXT_RECORD instead of DNS. Prints "pass" and exits 0, or "fail" and 1.
"""
import sys
import dkim

msg = open(sys.argv[1], "rb").read()
name, record = sys.argv[2].rstrip(".") + ".", sys.argv[3].encode()

def dnsfunc(q, timeout=5):
    q = q.decode() if isinstance(q, bytes) else q
    return record if q.rstrip(".") + "." == name else None

ok = dkim.verify(msg, dnsfunc=dnsfunc)
print("pass" if ok else "fail")
sys.exit(0 if ok else 1)
