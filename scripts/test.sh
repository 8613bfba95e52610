#!/usr/bin/env bash
# The full test suite: installs missing test dependencies (Debian packages),
# then runs every test of the workspace. Tests that need MariaDB, Postfix's
# tools, swaks or Dovecot start their own private instances on ephemeral
# loopback ports; when a tool is missing they fail, they never skip.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-test-deps.sh
cargo fmt --all -- --check
# The suite runs each end-to-end scenario on both I/O drivers (io_uring and
# epoll) inside the tests themselves.
cargo test --workspace --no-fail-fast -- --test-threads="${TEST_THREADS:-2}"
