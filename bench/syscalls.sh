#!/usr/bin/env bash
# Syscalls per operation of each proxy under the same load (issue 19): S4
# (HTTP keep-alive, per request) and S5 (new proxied WebSocket, per
# connection), for wsgate, nginx (one worker) and HAProxy (nbthread 1), each
# configured as bench/callgrind.sh configures it. `strace -c -f` is attached
# to the serving process for the whole load: it slows the load, but the counts
# per operation stay what the proxy does for one operation. As in run.sh, the
# proxy and the backends run on SERVER_CPU (0) and the load on LOAD_CPU (1):
# unpinned, wsgate's runtime starts a worker per core, and the counts would
# include their wake-ups of each other, which the benchmark never sees.
#
#   bench/syscalls.sh [WSGATE]     -> bench/results/syscalls/<stamp>/summary.txt
#
# Ports 28080 and 29001-29002, as bench/callgrind.sh; ~10 s of load per case.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
command -v strace >/dev/null || { echo "strace is needed (apt-get install strace)" >&2; exit 1; }
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
WSGATE=${1:-}
if [ -z "$WSGATE" ]; then
  cargo build -q --release --bin wsgate
  WSGATE="$CARGO_TARGET_DIR/release/wsgate"
fi
CARGO_TARGET_DIR="$CARGO_TARGET_DIR/loadgen" cargo build -q --release --manifest-path bench/loadgen/Cargo.toml
WSB="$CARGO_TARGET_DIR/loadgen/release/wsbench"
OUT="$ROOT/bench/results/syscalls/$(date -u +%Y%m%dT%H%M%SZ)"
mkdir -p "$OUT"
ulimit -n "$(ulimit -Hn)"
SERVER_CPU=${SERVER_CPU:-0} LOAD_CPU=${LOAD_CPU:-1}

# shellcheck source=bench/peer-configs.sh
. bench/peer-configs.sh

start_backends taskset -c "$SERVER_CPU"

load() {
  case "$1" in
    S4) taskset -c "$LOAD_CPU" wrk -t1 -c100 -d5s http://127.0.0.1:28080/http/ | awk '$2 == "requests" && $3 == "in" {print $1}' ;;
    S5) taskset -c "$LOAD_CPU" "$WSB" connrate --url ws://127.0.0.1:28080/ws/ --concurrency 8 --duration 5 |
          python3 -c 'import json,sys; print(json.load(sys.stdin)["conns"])' ;;
  esac
}

for target in wsgate nginx haproxy; do
  serve_cmd "$target" "$OUT" "$OUT/$target" "$WSGATE"
  RUST_LOG=warn taskset -c "$SERVER_CPU" "${SERVE[@]}" >"$OUT/$target.log" 2>&1 &
  pid=$!
  wait_port 28080
  for scen in S4 S5; do
    load "$scen" >/dev/null                 # warm-up: pools filled
    strace -c -f -p "$pid" -o "$OUT/$target-$scen.strace" & st=$!
    sleep 0.5                               # strace attached (it prints nothing until detached)
    n=$(load "$scen")
    kill -INT "$st"; wait "$st" 2>/dev/null || true
    {
      echo "== $target $scen: $n operations; syscalls per operation"
      awk -v n="$n" '$NF ~ /^[a-z_0-9]+$/ && $4 ~ /^[0-9]+$/ && $NF != "total" { printf "  %-16s %7.2f\n", $NF, $4 / n; t += $4 }
        END { printf "  %-16s %7.2f\n", "all", t / n }' "$OUT/$target-$scen.strace" | sort -k2 -n -r
    } | tee -a "$OUT/summary.txt"
  done
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
done
echo "== summary: $OUT/summary.txt"
