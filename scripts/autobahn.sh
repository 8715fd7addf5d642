#!/usr/bin/env bash
# Runs the Autobahn|Testsuite fuzzingclient against wsgate's echo app.
#   scripts/autobahn.sh            all 517 cases (release build)
#   scripts/autobahn.sh --quick    cases 1-7 and 10 (debug build is fast enough)
# Exit status is run.sh's: 0 iff no case FAILED and none is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=../shared/tools/autobahn/run.sh
[ -x "$RUN" ] || { echo "autobahn.sh: $RUN not found (needs ../shared)" >&2; exit 2; }

if [ "${1:-}" = "--quick" ]; then
  cargo build -q; BIN=target/debug/wsgate; ARGS=(--quick)
else
  cargo build -q --release; BIN=target/release/wsgate; ARGS=()
fi
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
CONF=$(mktemp /tmp/wsgate-autobahn.XXXXXX.toml)
cat >"$CONF" <<TOML
[[listener]]
addr = "127.0.0.1:$PORT"
[[route]]
path = "/echo"
app = "echo"
[app.echo]
max_message_size = "16MiB"
compression = true
TOML
RUST_LOG=warn "$BIN" -c "$CONF" &
PID=$!
trap 'kill $PID 2>/dev/null; rm -f "$CONF"' EXIT
for _ in $(seq 100); do (echo >/dev/tcp/127.0.0.1/$PORT) 2>/dev/null && break; sleep 0.1; done
echo "== Autobahn ${ARGS[*]:-full} against ws://127.0.0.1:$PORT/echo"
"$RUN" "${ARGS[@]}" -q -a wsgate -o "target/autobahn${ARGS[*]:+-quick}" "ws://127.0.0.1:$PORT/echo" | grep -v "close-handshake remarks"
