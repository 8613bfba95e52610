#!/usr/bin/python3
"""A scripted On-Demand Mail Relay client (RFC 2645) for tests.

usage: odmr_client.py HOST PORT USER PASSWORD DOMAINS [REJECT]
       (ODMR_TLS=1 in the environment: STARTTLS first, so the turned session runs under TLS)

Connects with Python's smtplib, checks the ODMR EHLO (AUTH and ATRN offered), that ATRN and
MAIL are refused before AUTH, authenticates with AUTH PLAIN, asks `ATRN DOMAINS` (`-` = no
argument), and when the server answers 250, acts as the SMTP server on the same connection
(RFC 2645 section 4.3): sends a 220 greeting and receives every message, refusing RCPT of the
address REJECT (if given) with 550. Prints one line per event:

  ATRN <code> <text>                    the reply to ATRN
  MSG <from> <rcpt,rcpt,...> <subject>  a message received
  QUIT                                  the server ended the session

Exits non-zero (with a reason on stderr) when the server does not follow the RFC.
"""
import os
import smtplib
import ssl
import sys

host, port, user, password, domains = sys.argv[1:6]
reject = sys.argv[6] if len(sys.argv) > 6 else None


def fail(why):
    print("odmr_client: " + why, file=sys.stderr, flush=True)
    sys.exit(1)


s = smtplib.SMTP(host, int(port), timeout=30)
if os.environ.get("ODMR_TLS") == "1":
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    s.ehlo("customer.example")
    code, text = s.starttls(context=ctx)
    if code != 220:
        fail("STARTTLS: %d %r" % (code, text))
code, text = s.ehlo("customer.example")
if code != 250:
    fail("EHLO: %d %r" % (code, text))
if not s.has_extn("atrn") or not s.has_extn("auth"):
    fail("EHLO does not offer AUTH and ATRN: %r" % text)
if s.has_extn("pipelining") or s.has_extn("size"):
    fail("ODMR EHLO offers mail extensions: %r" % text)

code, text = s.docmd("ATRN", "node.example")
if code != 530:
    fail("ATRN before AUTH: %d %r" % (code, text))
code, text = s.docmd("MAIL", "FROM:<a@b.example>")
if code != 502:
    fail("MAIL on ODMR: %d %r" % (code, text))

s.user, s.password = user, password
code, text = s.auth("PLAIN", s.auth_plain)
if code != 235:
    fail("AUTH: %d %r" % (code, text))

code, text = s.docmd("ATRN", "" if domains == "-" else domains)
print("ATRN %d %s" % (code, text.decode()), flush=True)
if code != 250:
    s.quit()
    sys.exit(0)

# The connection is turned around: we are the server now.
sock, rfile = s.sock, s.file


def send(line):
    sock.sendall(line.encode() + b"\r\n")


def command():
    line = rfile.readline()
    if not line:
        fail("server closed the connection without QUIT")
    return line.decode().rstrip("\r\n")


send("220 customer.example ESMTP ready")
sender, rcpts = None, []
while True:
    line = command()
    verb = line.split(" ", 1)[0].upper()
    if verb in ("EHLO", "HELO"):
        send("250-customer.example\r\n250-8BITMIME\r\n250 HELP" if verb == "EHLO" else "250 customer.example")
    elif verb == "MAIL":
        sender, rcpts = line[10:].split(">")[0].lstrip("<"), []
        send("250 2.1.0 ok")
    elif verb == "RCPT":
        addr = line[8:].split(">")[0].lstrip("<")
        if addr == reject:
            send("550 5.1.1 no such user here")
        else:
            rcpts.append(addr)
            send("250 2.1.5 ok")
    elif verb == "DATA":
        if sender is None or not rcpts:
            fail("DATA without MAIL or accepted RCPT")
        send("354 go ahead")
        body = []
        while True:
            l = rfile.readline()
            if not l:
                fail("connection closed in DATA")
            if l == b".\r\n":
                break
            if not l.endswith(b"\r\n"):
                fail("bare LF in DATA: %r" % l)
            body.append(l[1:] if l.startswith(b".") else l)
        subject = "-"
        for l in body:
            if l.lower().startswith(b"subject:"):
                subject = l[8:].strip().decode()
                break
        print("MSG %s %s %s" % (sender, ",".join(rcpts), subject), flush=True)
        send("250 2.0.0 received")
        sender, rcpts = None, []
    elif verb == "RSET":
        sender, rcpts = None, []
        send("250 2.0.0 ok")
    elif verb == "QUIT":
        send("221 2.0.0 bye")
        print("QUIT", flush=True)
        break
    else:
        send("502 5.5.1 not implemented")
sock.close()
