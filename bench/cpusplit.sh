#!/usr/bin/env bash
# Where each proxy's CPU per operation goes, user space against kernel, and the
# backend's share of the same core (issue 19): S4 (HTTP keep-alive, per
# request: wrk -t1 -c100), S5 (new proxied WebSockets, per connection:
# wsbench connrate, 32 in flight, as run.sh) and S1 (proxied WebSocket echo,
# per message, 100 connections: S1-32-1 is 32 B at depth 1, S1-16384-8
# 16 KiB at depth 8, any SIZE-DEPTH), for wsgate, nginx (one worker)
# and HAProxy (nbthread 1), configured as bench/callgrind.sh configures them.
# Proxy and backend share SERVER_CPU (0), the load runs on LOAD_CPU (1), as in
# run.sh. ROUNDS (3) rounds, the three proxies interleaved in each; medians.
#
# It also prints, for each peer, the best ratio to that peer any proxy could
# reach that does the peer's kernel work (same syscalls and packets) in no
# user time at all: (peer's user + kernel + backend) / (peer's kernel +
# backend), the backend being on the same core. A target above that bound
# cannot be met by user-space work alone on this topology.
#
#   bench/cpusplit.sh [WSGATE]     -> bench/results/cpusplit/<stamp>/summary.txt
#
# SCENS ("S4 S5") picks the scenarios; TARGETS ("wsgate nginx haproxy") the
# proxies, where LABEL=PATH is a wsgate binary under a label of its own, for
# an interleaved A/B of two builds (TARGETS="old=/tmp/a new=/tmp/b haproxy").
#
# Times come from /proc/PID/stat (100 Hz ticks) over DUR (5) seconds per case.
# Ports 28080 and 29001-29002, as bench/callgrind.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
WSGATE=${1:-}
if [ -z "$WSGATE" ]; then
  cargo build -q --release --bin wsgate
  WSGATE="$CARGO_TARGET_DIR/release/wsgate"
fi
command -v wrk >/dev/null || { echo "wrk is needed (apt-get install wrk)" >&2; exit 1; }
CARGO_TARGET_DIR="$CARGO_TARGET_DIR/loadgen" cargo build -q --release --manifest-path bench/loadgen/Cargo.toml
WSB="$CARGO_TARGET_DIR/loadgen/release/wsbench"
ROUNDS=${ROUNDS:-3} DUR=${DUR:-5}
SERVER_CPU=${SERVER_CPU:-0} LOAD_CPU=${LOAD_CPU:-1}
OUT="$ROOT/bench/results/cpusplit/$(date -u +%Y%m%dT%H%M%SZ)"
mkdir -p "$OUT"
ulimit -n "$(ulimit -Hn)"

# shellcheck source=bench/peer-configs.sh
. bench/peer-configs.sh

start_backends taskset -c "$SERVER_CPU"

# user and system ticks of a process, all its threads
ticks() { awk '{ sub(/.*\) /, ""); print $12, $13 }' "/proc/$1/stat"; }

# load SCEN SECONDS: prints the operation count
load() {
  case "$1" in
    S4) taskset -c "$LOAD_CPU" wrk -t1 -c100 -d"${2}s" http://127.0.0.1:28080/http/ |
      awk '$2 == "requests" && $3 == "in" {print $1}' ;;
    S5) taskset -c "$LOAD_CPU" "$WSB" connrate --url ws://127.0.0.1:28080/ws/ --concurrency 32 \
      --duration "$2" --src-ips 100 | python3 -c 'import json,sys; print(json.load(sys.stdin)["conns"])' ;;
    S1-*) local size depth
      IFS=- read -r _ size depth <<<"$1"
      taskset -c "$LOAD_CPU" "$WSB" echo --url ws://127.0.0.1:28080/ws/ --conns 100 --size "$size" \
        --depth "$depth" --duration "$2" --src-ips 20 | python3 -c 'import json,sys; print(json.load(sys.stdin)["msgs"])' ;;
  esac
}

# measure SCEN TARGET ROUND: one line "SCEN TARGET ROUND ops user_ticks sys_ticks backend_ticks"
measure() {
  local scen=$1 target=$2 round=$3 backend pid n u0 s0 u1 s1 bu0 bs0 bu1 bs1
  backend=$WS_UP; [ "$scen" = S4 ] && backend=$HTTP_UP
  local kind=$target bin=$WSGATE
  case "$target" in *=*) kind=wsgate bin=${target#*=} target=${target%%=*} ;; esac
  serve_cmd "$kind" "$OUT" "$OUT/$target" "$bin"
  RUST_LOG=warn taskset -c "$SERVER_CPU" "${SERVE[@]}" >>"$OUT/$target.log" 2>&1 &
  pid=$!
  wait_port 28080
  load "$scen" 1 >/dev/null # warm-up: pools filled, code paged in
  read -r u0 s0 < <(ticks "$pid")
  read -r bu0 bs0 < <(ticks "$backend")
  n=$(load "$scen" "$DUR")
  read -r u1 s1 < <(ticks "$pid")
  read -r bu1 bs1 < <(ticks "$backend")
  kill "$pid"
  wait "$pid" 2>/dev/null || true
  echo "$scen $target $round $n $((u1 - u0)) $((s1 - s0)) $((bu1 - bu0 + bs1 - bs0))" | tee -a "$OUT/raw.txt"
}

for scen in ${SCENS:-S4 S5}; do
  for round in $(seq 1 "$ROUNDS"); do
    for target in ${TARGETS:-wsgate nginx haproxy}; do
      measure "$scen" "$target" "$round"
    done
  done
done

python3 - "$OUT/raw.txt" "$DUR" <<'PY' | tee "$OUT/summary.txt"
import statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
tick_us = 1e6 / 100
dur = float(sys.argv[2])
per = {}
for scen, target, _round, n, u, s, b in rows:
    n = int(n)
    per.setdefault((scen, target), []).append(
        (n, int(u) * tick_us / n, int(s) * tick_us / n, int(b) * tick_us / n))
unit = {"S4": "request", "S5": "connection"}
for scen in dict.fromkeys(s for (s, _) in per):
    print(f"{scen}: CPU per {unit.get(scen, 'message')}, µs (median of rounds; min-max)")
    print(f"  {'proxy':8} {'ops/s':>8} {'user':>14} {'kernel':>16} {'backend':>8}")
    med = {}
    for target in dict.fromkeys(t for (s, t) in per if s == scen):
        r = per.get((scen, target))
        if not r:
            continue
        col = lambda i: [x[i] for x in r]
        m = [statistics.median(col(i)) for i in range(4)]
        med[target] = m
        rng = lambda i: f"{min(col(i)):.1f}-{max(col(i)):.1f}"
        print(f"  {target:8} {m[0] / dur:8.0f} {m[1]:5.1f} ({rng(1):>9}) {m[2]:6.1f} ({rng(2):>11}) {m[3]:8.1f}")
    for peer in ("nginx", "haproxy"):
        if peer in med:
            _, u, k, b = med[peer]
            print(f"  bound against {peer}: {(u + k + b) / (k + b):.2f}x "
                  f"(no user time, {peer}'s kernel time, the backend on the same core)")
PY
