#!/usr/bin/python3
"""A capture SMTP server for tests, built on aiosmtpd (Debian python3-aiosmtpd).

usage: capture_smtpd.py OUTDIR MODE
  MODE ok        accept everything
  MODE reject    550 every RCPT
  MODE tempfirst 451 the first RCPT of each recipient address, then accept
  MODE gate      accept, but hold each DATA (writing OUTDIR/waiting.<n>) until
                 the file OUTDIR/open exists
Prints "listening on HOST:PORT" when ready; writes each message to OUTDIR/<n>.eml
with the envelope in OUTDIR/<n>.env (sender line, then recipients). Supports STARTTLS
when CERT and KEY environment variables name a PEM certificate and key; PORT picks
the port (default: a free one), HOST the loopback address (default 127.0.0.1).
"""
import asyncio, os, ssl, sys
from aiosmtpd.controller import Controller

outdir, mode = sys.argv[1], sys.argv[2]
seen = set()
count = 0

class Handler:
    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if mode == "reject":
            return "550 5.1.1 no such user here"
        if mode == "tempfirst" and address not in seen:
            seen.add(address)
            return "451 4.3.0 try again later"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        global count
        if mode == "gate":
            waiting = os.path.join(outdir, "waiting.%d" % id(envelope))
            open(waiting, "w").close()
            while not os.path.exists(os.path.join(outdir, "open")):
                await asyncio.sleep(0.05)
        count += 1
        base = os.path.join(outdir, str(count))
        with open(base + ".eml.tmp", "wb") as f:
            f.write(envelope.original_content or envelope.content)
        with open(base + ".env", "w") as f:
            f.write(envelope.mail_from + "\n" + "\n".join(envelope.rcpt_tos) + "\n")
        os.rename(base + ".eml.tmp", base + ".eml")
        return "250 2.0.0 captured"

kwargs = {}
cert, key = os.environ.get("CERT"), os.environ.get("KEY")
if cert and key:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    kwargs["tls_context"] = ctx
import socket
port = int(os.environ.get("PORT", "0"))  # a fixed port (a route written before the peer starts)
host = os.environ.get("HOST", "127.0.0.1")
if port == 0:
    probe = socket.socket()
    probe.bind((host, 0))
    port = probe.getsockname()[1]
    probe.close()
controller = Controller(Handler(), hostname=host, port=port, decode_data=False, **kwargs)
controller.start()
print("listening on %s:%d" % (host, port), flush=True)
try:
    asyncio.get_event_loop().run_until_complete(asyncio.sleep(3600))
except KeyboardInterrupt:
    pass
