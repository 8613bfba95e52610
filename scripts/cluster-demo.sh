#!/usr/bin/env bash
# The loopback cluster of issue 11, by hand: one private MariaDB, a relay (127.0.0.2, with
# the IMAP proxy) and two mailstores (127.0.0.3, 127.0.0.4) running `indimail serve`, a
# Dovecot per mailstore, and a "legacy" SMTP server (127.0.0.5) for a user not yet
# migrated. Mail to every user goes through the relay and is read back through the proxy;
# a mailstore is stopped and restarted; a user is moved between stores. The scenario and
# its checks are engine/indimail/tests/cluster_scenario.rs; this runs it with its output
# (including how long the move took to be seen) shown.
# Needs the test dependencies (scripts/install-test-deps.sh).
set -euo pipefail
# Run as root here: the server stays root instead of refusing (README, "Running as root").
export INDIMAIL_ALLOW_ROOT="${INDIMAIL_ALLOW_ROOT:-1}"
cd "$(dirname "$0")/.."
exec cargo test -p indimail --test cluster_scenario -- --nocapture "$@"
