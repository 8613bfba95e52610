#!/usr/bin/env bash
# Installs, from Debian's packages, what the test suite needs when it is
# missing: Postfix's smtp-sink/smtp-source (package postfix), swaks (with
# Perl's TLS modules),
# fusepy and fusermount (the failing FUSE file system of faults.rs),
# MariaDB's server binaries (the tests start private instances; the system
# service is never started or used), Dovecot, Python's aiosmtpd, and
# dnsmasq's binary (package dnsmasq-base: a private DNS server for DNSBL/SPF
# tests; no service).
# Never starts a system service and never touches port 25.
set -euo pipefail

need=()
[ -x /usr/bin/swaks ] || need+=(swaks)
# swaks --tls / --tls-on-connect need Perl's TLS modules (only Recommends of swaks).
perl -MNet::SSLeay -MIO::Socket::SSL -e1 >/dev/null 2>&1 || need+=(libnet-ssleay-perl libio-socket-ssl-perl)
{ [ -x /usr/sbin/smtp-sink ] && [ -x /usr/sbin/smtp-source ]; } || need+=(postfix)
{ command -v mariadbd >/dev/null 2>&1 || [ -x /usr/sbin/mariadbd ]; } || need+=(mariadb-server)
command -v mariadb-install-db >/dev/null 2>&1 || need+=(mariadb-server)
# The mariadb client: mysql_e2e writes rows as an operator would.
command -v mariadb >/dev/null 2>&1 || need+=(mariadb-client)
# man: cli_tools renders every generated manual page with `man -l`.
command -v man >/dev/null 2>&1 || need+=(man-db)
# Dovecot: each protocol binary a test starts, not only the master (a machine
# with dovecot-imapd but without dovecot-pop3d failed the POP3 tests).
[ -x /usr/sbin/dovecot ] || need+=(dovecot-core)
[ -x /usr/lib/dovecot/imap ] || need+=(dovecot-imapd)
[ -x /usr/lib/dovecot/pop3 ] || need+=(dovecot-pop3d)
[ -x /usr/lib/dovecot/checkpassword-reply ] || need+=(dovecot-core)
/usr/bin/python3 -c 'import aiosmtpd' >/dev/null 2>&1 || need+=(python3-aiosmtpd)
[ -x /usr/bin/openssl ] || need+=(openssl)
[ -x /usr/sbin/dnsmasq ] || need+=(dnsmasq-base)
# dkimpy (+ PyNaCl for ed25519): the independent DKIM verifier of msgproc_e2e.
/usr/bin/python3 -c 'import dkim, nacl' >/dev/null 2>&1 || need+=(python3-dkim python3-nacl)
# clamd (virus scanning over INSTREAM; the test writes its own signature
# database and starts clamd itself) and bogofilter (spam tagging).
[ -x /usr/sbin/clamd ] || need+=(clamav-daemon clamav)
[ -x /usr/bin/bogofilter ] || need+=(bogofilter)
# altermime: the MIME-aware disclaimer filter run through FILTERARGS.
[ -x /usr/bin/altermime ] || need+=(altermime)
# faults.rs loop-mounts a small ext4 to fill its queue's disk (as root).
[ -x /sbin/mkfs.ext4 ] || need+=(e2fsprogs)
[ -x /bin/mount ] || need+=(mount)
# faults.rs mounts a passthrough FUSE file system whose flushes and writes
# fail on demand (tests/peers/failfs.py: fusepy, and fusermount with libfuse2).
/usr/bin/python3 -c 'import fusepy' >/dev/null 2>&1 || need+=(python3-fusepy)
[ -x /bin/fusermount ] || need+=(fuse)

if [ ${#need[@]} -eq 0 ]; then
  echo "install-test-deps: everything present"
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  echo "install-test-deps: need root to install: ${need[*]}" >&2
  exit 1
fi
echo "install-test-deps: installing ${need[*]}"
# Keep package scripts from starting services (postfix on :25, mariadb on :3306).
policy=/usr/sbin/policy-rc.d
made_policy=0
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' > "$policy"; chmod +x "$policy"; made_policy=1
fi
trap '[ "$made_policy" = 1 ] && rm -f "$policy"' EXIT
echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
echo "install-test-deps: done"
