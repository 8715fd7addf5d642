#!/usr/bin/env bash
# S6 across nodes (issue 20 item 6): chat fan-out through 2–3 wsgate nodes that
# share rooms through (a) one redis-server and (b) a 3-master Redis Cluster
# (sharded pub/sub, no replicas). Both setups run side by side for the whole
# script; every rate step runs the two in turn (single, cluster, single, …) so
# the machine's drift hits both alike.
#
#   bench/s6.sh                          full: rates 1000..16000 room msgs/s, 3 runs x 5 s
#   bench/s6.sh --rates "2000 4000" --runs 5 --duration 5 --rooms 30 --members 6 --nodes 3
#   bench/s6.sh --smoke                  ~6 s: one low rate, 0.5 s per mode, debug builds (scripts/test.sh)
#   options: --bound-ms 50 (p99 delivery latency bound), --modes "single cluster"
#   env:     WSGATE=path/to/wsgate (default: target/release/wsgate, built here)
#
# Load (wsbench chat-nodes): ROOMS rooms of MEMBERS members; member j of room r
# on node (r + j) % NODES, so every room spans the nodes; member 0 of each room
# sends, rooms in turn, at a total RATE room messages/s (open loop). Each run
# measures, over its send phase only: messages delivered/s, delivery latency
# (p50/p99/max, and p99 of cross-node deliveries), the wsgate nodes' CPU, and per
# Redis its CPU (INFO cpu: used_cpu_sys + used_cpu_user) and INFO commandstats
# (CONFIG RESETSTAT at the start of the send phase).
#
# Ports (127.0.0.1 only): Redis 28700 (single), 28701–28703 (cluster; bus ports
# 28711–28713, set with --cluster-port: the default port + 10000 falls in the
# kernel's ephemeral range, where a client socket left in TIME_WAIT by an earlier
# load makes redis-server abort); wsgate nodes 28610+i (single) and 28620+i (cluster), their admin
# listeners 28640+i / 28650+i. Every process is started here and killed by PID.
# Output: bench/results/s6-<UTC>/results.jsonl and summary.md (bench/s6_report.py).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

SMOKE=0 RUNS=3 DUR=5 NODES=3 ROOMS=30 MEMBERS=6 BOUND_MS=50
RATES="1000 2000 4000 8000 16000" MODES="single cluster"
while [ $# -gt 0 ]; do
  case "$1" in
    --smoke) SMOKE=1 ;;
    --runs) RUNS=$2; shift ;;
    --duration) DUR=$2; shift ;;
    --rates) RATES=$2; shift ;;
    --rooms) ROOMS=$2; shift ;;
    --members) MEMBERS=$2; shift ;;
    --nodes) NODES=$2; shift ;;
    --bound-ms) BOUND_MS=$2; shift ;;
    --modes) MODES=$2; shift ;;
    *) echo "s6.sh: unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
[ "$NODES" -ge 1 ] && [ "$NODES" -le 3 ] || { echo "s6.sh: --nodes 1..3" >&2; exit 2; }
if [ "$SMOKE" = 1 ]; then
  RUNS=1 DUR=0.5 RATES=200 ROOMS=6 MEMBERS=3
  OUT="$ROOT/bench/results/s6-smoke"
else
  OUT="$ROOT/bench/results/s6-$(date -u +%Y%m%dT%H%M%SZ)"
fi

missing=()
for t in redis-server redis-cli curl python3 cargo; do
  command -v "$t" >/dev/null 2>&1 || missing+=("$t")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "s6.sh: missing ${missing[*]} (apt-get install redis-server curl python3)" >&2
  exit 1
fi

rm -rf "$OUT" && mkdir -p "$OUT"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
LOADGEN_TARGET="$CARGO_TARGET_DIR/loadgen"
if [ "$SMOKE" = 1 ]; then
  [ -n "${WSGATE:-}" ] || cargo build -q --bin wsgate
  CARGO_TARGET_DIR="$LOADGEN_TARGET" cargo build -q --manifest-path bench/loadgen/Cargo.toml
  WSGATE="${WSGATE:-$CARGO_TARGET_DIR/debug/wsgate}"
  WSB="$LOADGEN_TARGET/debug/wsbench"
else
  [ -n "${WSGATE:-}" ] || cargo build -q --release --bin wsgate
  CARGO_TARGET_DIR="$LOADGEN_TARGET" cargo build -q --release --manifest-path bench/loadgen/Cargo.toml
  WSGATE="${WSGATE:-$CARGO_TARGET_DIR/release/wsgate}"
  WSB="$LOADGEN_TARGET/release/wsbench"
fi
[ -x "$WSGATE" ] || { echo "s6.sh: no wsgate binary at $WSGATE" >&2; exit 1; }
ulimit -n "$(ulimit -Hn)"

PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
}
trap cleanup EXIT

# until SECONDS WHAT COMMAND...: polls COMMAND every 50 ms until it succeeds,
# failing loudly after SECONDS.
until_ok() {
  local secs=$1 what=$2; shift 2
  local end=$((SECONDS + secs))
  until "$@" >/dev/null 2>&1; do
    if [ "$SECONDS" -ge "$end" ]; then
      echo "s6.sh: $what not within ${secs}s" >&2
      return 1
    fi
    sleep 0.05
  done
}
pong() { [ "$(redis-cli -p "$1" PING 2>/dev/null)" = PONG ]; }
cluster_ok() { redis-cli -p "$1" CLUSTER INFO 2>/dev/null | grep -q '^cluster_state:ok'; }
ready() { curl -fsS -o /dev/null "http://127.0.0.1:$1/readyz"; }

redis_start() { # PORT DIR [extra args]
  local port=$1 dir=$2; shift 2
  mkdir -p "$dir"
  redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no --dir "$dir" \
    --logfile "$dir/redis.log" "$@" &
  PIDS+=($!)
}

# ---------------------------------------------------------------- Redis
echo "== Redis: single on 28700, cluster on 28701-28703 (3 masters, no replicas)"
redis_start 28700 "$OUT/redis-single"
for p in 28701 28702 28703; do
  redis_start "$p" "$OUT/redis-$p" --cluster-enabled yes --cluster-port $((p + 10)) \
    --cluster-config-file "$OUT/redis-$p/nodes.conf"
done
redis_up() { # PORT DIR: waits for PING; on failure shows the server's log
  until_ok 10 "redis on $1 answering PING" pong "$1" ||
    { tail -n 5 "$2/redis.log" >&2; return 1; }
}
redis_up 28700 "$OUT/redis-single"
for p in 28701 28702 28703; do redis_up "$p" "$OUT/redis-$p"; done
redis-cli --cluster create 127.0.0.1:28701 127.0.0.1:28702 127.0.0.1:28703 \
  --cluster-replicas 0 --cluster-yes >"$OUT/cluster-create.log" 2>&1 ||
  { cat "$OUT/cluster-create.log" >&2; exit 1; }
for p in 28701 28702 28703; do until_ok 20 "cluster_state:ok on $p" cluster_ok "$p"; done

# ---------------------------------------------------------------- wsgate nodes
# node_conf MODE I: node I of the single- or cluster-backed set
node_conf() {
  local mode=$1 i=$2 base=28610 admin=28640 backend='redis = "redis://127.0.0.1:28700"'
  if [ "$mode" = cluster ]; then
    base=28620 admin=28650
    backend='redis_cluster = ["redis://127.0.0.1:28701", "redis://127.0.0.1:28702", "redis://127.0.0.1:28703"]'
  fi
  cat <<EOF
# Generated by bench/s6.sh: wsgate node $i of the $mode-Redis set.
[server]
node_id = "$mode$i"
max_connections = 100000
[log]
access_log = false
[admin]
addr = "127.0.0.1:$((admin + i))"
[[listener]]
addr = "127.0.0.1:$((base + i))"
[[route]]
path = "/chat"
app = "chat"
[app.chat]
send_queue = 4096
history = 100
[cluster]
$backend
heartbeat = "2s"
EOF
}

declare -A URLS NODE_PIDS REDIS_ADDRS
REDIS_ADDRS[single]=127.0.0.1:28700
REDIS_ADDRS[cluster]=127.0.0.1:28701,127.0.0.1:28702,127.0.0.1:28703
for mode in $MODES; do
  urls=() pids=()
  for i in $(seq 0 $((NODES - 1))); do
    node_conf "$mode" "$i" >"$OUT/wsgate-$mode$i.toml"
    RUST_LOG=warn "$WSGATE" -c "$OUT/wsgate-$mode$i.toml" >>"$OUT/wsgate-$mode$i.log" 2>&1 &
    PIDS+=($!) pids+=($!)
    base=28610; [ "$mode" = cluster ] && base=28620
    urls+=("ws://127.0.0.1:$((base + i))/chat/ws")
  done
  for i in $(seq 0 $((NODES - 1))); do
    admin=28640; [ "$mode" = cluster ] && admin=28650
    until_ok 30 "wsgate $mode$i ready (/readyz)" ready $((admin + i))
  done
  URLS[$mode]=$(IFS=,; echo "${urls[*]}")
  NODE_PIDS[$mode]=$(IFS=,; echo "${pids[*]}")
done

# ---------------------------------------------------------------- runs
RESULTS="$OUT/results.jsonl"
FAILS=0
echo "== $NODES nodes, $ROOMS rooms x $MEMBERS members, rates: $RATES room msgs/s; $RUNS runs x ${DUR}s; p99 bound ${BOUND_MS} ms"
step=0
for rate in $RATES; do
  over=0
  for run in $(seq 1 "$RUNS"); do
    for mode in $MODES; do
      step=$((step + 1))
      # a fresh user/room prefix per run: no history or membership carried over
      if out=$("$WSB" chat-nodes --urls "${URLS[$mode]}" --rooms "$ROOMS" --members "$MEMBERS" \
        --rate "$rate" --duration "$DUR" --prefix "x$step" --src-ips 20 \
        --redis "${REDIS_ADDRS[$mode]}" --pid "${NODE_PIDS[$mode]}" 2>>"$OUT/errors.log"); then
        echo "{\"mode\":\"$mode\",\"rate\":$rate,\"run\":$run,\"r\":$out}" >>"$RESULTS"
        # prints the run's line; exit 3: over the bound
        st=0; python3 bench/s6_report.py --line "$out" "$mode" "$run" "$BOUND_MS" || st=$?
        case $st in 0) ;; 3) over=$((over + 1)) ;; *) exit 1 ;; esac
      else
        FAILS=$((FAILS + 1))
        echo "  FAILED: $mode rate $rate run $run (see $OUT/errors.log)" >&2
      fi
    done
  done
  # every run of every mode over the bound: higher rates would be too
  if [ "$over" -ge $((RUNS * $(wc -w <<<"$MODES"))) ]; then
    echo "== every run over the bound at $rate/s: stopping"
    break
  fi
done

{
  echo "date=$(date -u '+%Y-%m-%d %H:%M UTC')"
  echo "cores=$(nproc)"
  echo "redis=$(redis-server --version | sed 's/.*v=\([^ ]*\).*/\1/')"
  echo "wsgate=$(git rev-parse --short HEAD)$(git diff --quiet -- src Cargo.toml || echo '+dirty') ($(basename "$(dirname "$WSGATE")") build)"
  echo "nodes=$NODES rooms=$ROOMS members=$MEMBERS runs=$RUNS duration=$DUR bound_ms=$BOUND_MS"
  echo "load=$(cut -d' ' -f1-3 /proc/loadavg)"
} >"$OUT/meta.env"
[ -s "$RESULTS" ] || { echo "s6.sh: no run succeeded (see $OUT/errors.log)" >&2; exit 1; }
python3 bench/s6_report.py "$OUT" >"$OUT/summary.md"
cat "$OUT/summary.md"
if [ "$FAILS" -gt 0 ]; then
  echo "== $FAILS run(s) failed; see $OUT/errors.log" >&2
  exit 1
fi
