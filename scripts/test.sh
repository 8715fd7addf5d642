#!/usr/bin/env bash
# Runs every test on a fresh machine: installs what the tests need when it is
# missing (Debian packages, the browser test's npm packages, the dev
# certificate), checks formatting and lints, runs the test suite, then the
# Autobahn conformance quick set against /echo when ../shared is present.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
[ -x /usr/bin/chromium ] || missing+=(chromium)
command -v nginx >/dev/null 2>&1 || missing+=(nginx)
command -v haproxy >/dev/null 2>&1 || [ -x /usr/sbin/haproxy ] || missing+=(haproxy)
# the ACME test CA and its mock DNS (tests/it/acme.rs)
command -v pebble >/dev/null 2>&1 && command -v pebble-challtestsrv >/dev/null 2>&1 || missing+=(pebble)
command -v wrk >/dev/null 2>&1 || missing+=(wrk)
command -v node >/dev/null 2>&1 || missing+=(nodejs)
command -v npm >/dev/null 2>&1 || missing+=(npm)
if [ ${#missing[@]} -gt 0 ]; then
  echo "== installing ${missing[*]}"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if [ -f tests/browser/package.json ] && [ ! -d tests/browser/node_modules ]; then
  echo "== npm ci (tests/browser)"
  (cd tests/browser && npm ci --no-audit --no-fund --loglevel=error)
fi

# A fresh checkout gains nothing from incremental compilation, and its cache
# is as large as the test binaries: CI disks are small (a run once failed with
# "No space left on device" while linking).
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
df -h . | tail -1 | awk '{print "== disk: " $4 " free"}'

cargo run -q -- gen-cert >/dev/null

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy -q --all-targets -- -D warnings
echo "== cargo test"
RUST_LOG="${RUST_LOG:-warn}" cargo test --all-targets
df -h . | tail -1 | awk '{print "== disk after tests: " $4 " free"}'

if [ -x ../shared/tools/autobahn/run.sh ]; then
  scripts/autobahn.sh --quick
else
  echo "== ../shared not present: Autobahn conformance skipped"
fi

# ---- fuzz smoke run (issue 8, hardening) --------------------------------------
# Each cargo-fuzz target for FUZZ_SECONDS (default 30 s; 4 targets ≈ 2 min plus
# the instrumented build). scripts/fuzz.sh installs cargo-fuzz when missing.
# FUZZ_SECONDS=0 skips it.
if [ "${FUZZ_SECONDS:-30}" != 0 ]; then
  scripts/fuzz.sh "${FUZZ_SECONDS:-30}"
fi
# ---- end fuzz smoke run -------------------------------------------------------

# ---------------------------------------------------------------------------
# Benchmark smoke (issue 10): every bench scenario for about a second against
# wsgate and nginx, debug builds, no assertions on speed; fails only when a
# tool fails, so the suite in bench/ never rots. Full suite: bench/run.sh.
echo "== bench smoke (bench/run.sh --smoke)"
bench/run.sh --smoke

# S6 across nodes (issue 20): 3 nodes over one Redis and over a 3-master Redis
# Cluster, one 0.5 s run each (~6 s); full measurement: bench/s6.sh.
echo "== S6 across nodes smoke (bench/s6.sh --smoke)"
bench/s6.sh --smoke
