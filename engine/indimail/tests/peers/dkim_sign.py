#!/usr/bin/python3
"""Signs a message with dkimpy (Debian python3-dkim), an independent signer.

Usage: dkim_sign.py <private-key.pem> <selector> <domain> <message-file>
Writes the signed message (DKIM-Signature prepended) to stdout.
"""
import sys

import dkim

key, selector, domain, path = sys.argv[1:5]
with open(path, "rb") as f:
    msg = f.read()
with open(key, "rb") as f:
    pem = f.read()
sig = dkim.sign(
    msg,
    selector.encode(),
    domain.encode(),
    pem,
    canonicalize=(b"relaxed", b"relaxed"),
    include_headers=[b"from", b"to", b"subject", b"message-id"],
)
sys.stdout.buffer.write(sig + msg)
