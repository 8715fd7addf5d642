#!/usr/bin/env bash
# One Redis shard's ceiling for wsgate's room messages (issue 20 sizing): the
# chat's own publish script (PUBLISH_ROOM, read from
# src/cluster/redis_bus/scripts.rs at run time, so it never drifts) run by
# redis-benchmark as fast as one redis-server on one core takes it, with
# SUBSCRIBERS redis-cli processes subscribed to the room's channel (the
# wsgate nodes holding members). Two servers: a plain one (`PUBLISH`, the
# single-Redis and Sentinel modes) and a one-node cluster owning every slot
# (`SPUBLISH`, a Redis Cluster shard). Redis on cpu 0, the benchmark and the
# subscribers on cpu 1 (taskset).
#
#   bench/redis-ceiling.sh                  3 runs x 5 s each, -c 3 (three nodes' connections), pipelines 1 and 16
#   options: --runs N --duration S --subscribers 3 --pipelines "1 16"
#
# One room (`{c}`): redis-benchmark draws every `__rand_int__` of a command
# independently, so rooms cannot be varied while keeping a room's keys and
# channel under one hash tag; one room's rate is also the most one shard can
# give a single hot room.
#
# Reports room messages/s, the server's CPU (INFO cpu) as a share of a core
# and CPU µs per message. Ports 28710 (plain), 28711 (cluster, bus 28721:
# below the ephemeral range, where a client's TIME_WAIT socket would abort redis).
# Output: bench/results/redis-ceiling-<UTC>/results.jsonl and summary.md.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
RUNS=3 DUR=5 SUBS=3 PIPES="1 16"
while [ $# -gt 0 ]; do
  case "$1" in
    --runs) RUNS=$2; shift ;;
    --duration) DUR=$2; shift ;;
    --subscribers) SUBS=$2; shift ;;
    --pipelines) PIPES=$2; shift ;;
    *) echo "redis-ceiling.sh: unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
missing=()
for t in redis-server redis-cli redis-benchmark taskset python3 timeout; do
  command -v "$t" >/dev/null 2>&1 || missing+=("$t")
done
[ ${#missing[@]} -eq 0 ] || { echo "redis-ceiling.sh: missing ${missing[*]} (apt-get install redis-server redis-tools)" >&2; exit 1; }
SERVER_CPU=${SERVER_CPU:-0} LOAD_CPU=${LOAD_CPU:-1}
[ "$(nproc)" -ge 2 ] || LOAD_CPU=$SERVER_CPU
OUT="$ROOT/bench/results/redis-ceiling-$(date -u +%Y%m%dT%H%M%SZ)"
mkdir -p "$OUT"

# The script exactly as wsgate sends it.
SCRIPT=$(python3 - "$ROOT/src/cluster/redis_bus/scripts.rs" <<'PY'
import re, sys
src = open(sys.argv[1]).read()
m = re.search(r'pub\(super\) const PUBLISH_ROOM: &str = r#"(.*?)"#;', src, re.S)
if not m:
    sys.exit("PUBLISH_ROOM not found in scripts.rs")
print(m.group(1), end="")
PY
)

PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
}
trap cleanup EXIT
until_ok() {
  local secs=$1 what=$2; shift 2
  local end=$((SECONDS + secs))
  until "$@" >/dev/null 2>&1; do
    [ "$SECONDS" -lt "$end" ] || { echo "redis-ceiling.sh: $what not within ${secs}s" >&2; return 1; }
    sleep 0.05
  done
}
pong() { [ "$(redis-cli -p "$1" PING 2>/dev/null)" = PONG ]; }
cluster_ok() { redis-cli -p "$1" CLUSTER INFO 2>/dev/null | grep -q '^cluster_state:ok'; }

mkdir -p "$OUT/plain" "$OUT/cluster"
taskset -c "$SERVER_CPU" redis-server --port 28710 --bind 127.0.0.1 --save "" --appendonly no \
  --dir "$OUT/plain" --logfile "$OUT/plain/redis.log" &
PIDS+=($!)
taskset -c "$SERVER_CPU" redis-server --port 28711 --bind 127.0.0.1 --save "" --appendonly no \
  --cluster-enabled yes --cluster-port 28721 --cluster-config-file "$OUT/cluster/nodes.conf" \
  --dir "$OUT/cluster" --logfile "$OUT/cluster/redis.log" &
PIDS+=($!)
until_ok 10 "redis on 28710" pong 28710
until_ok 10 "redis on 28711" pong 28711
redis-cli -p 28711 CLUSTER ADDSLOTSRANGE 0 16383 >/dev/null
until_ok 10 "cluster_state:ok on 28711" cluster_ok 28711

RESULTS="$OUT/results.jsonl"
echo "== PUBLISH_ROOM on one core: one room, $SUBS subscribers, 3 client connections, pipelines $PIPES; $RUNS runs x ${DUR}s"
for run in $(seq 1 "$RUNS"); do
  for pipe in $PIPES; do
    for mode in plain cluster; do
      port=28710 pub=PUBLISH sub=SUBSCRIBE
      [ "$mode" = cluster ] && port=28711 pub=SPUBLISH sub=SSUBSCRIBE
      sha=$(redis-cli -p "$port" SCRIPT LOAD "$SCRIPT")
      # Subscribers: SUBS connections on the room's channel (the nodes holding
      # members), their output discarded.
      ch='wsgate:room:{c}:events'
      subs=()
      for _ in $(seq 1 "$SUBS"); do
        taskset -c "$LOAD_CPU" timeout $((DUR + 30)) redis-cli -p "$port" "$sub" "$ch" >/dev/null &
        subs+=($!)
      done
      PIDS+=("${subs[@]}")
      numsub() {
        local what=NUMSUB
        [ "$mode" = cluster ] && what=SHARDNUMSUB
        [ "$(redis-cli -p "$port" PUBSUB "$what" "$ch" | sed -n 2p)" -ge "$SUBS" ]
      }
      until_ok 20 "$SUBS subscriptions on $port" numsub
      redis-cli -p "$port" CONFIG RESETSTAT >/dev/null
      cpu0=$(redis-cli -p "$port" INFO cpu | awk -F: '/^used_cpu_(sys|user):/ {s += $2} END {printf "%.6f", s}')
      t0=$(date +%s.%N)
      # closed loop for DUR seconds (timeout ends it); the window is the
      # Redis counters read around it
      taskset -c "$LOAD_CPU" timeout "$DUR" redis-benchmark -p "$port" -c 3 -P "$pipe" \
        -n 1000000000 -q --threads 1 \
        EVALSHA "$sha" 3 'wsgate:room:{c}:id' 'wsgate:room:{c}:history' 'wsgate:room:{c}:epoch' \
        '{"type":"msg","room":"c","from":"u1","text":"00000000000000000123","id":' ',"ts":1764750000000}' \
        100 'wsgate:room:{c}:events' '{"k":"msg","o":"n1","m":' 'e1' 0 0 "$pub" >/dev/null 2>&1 || true
      cpu1=$(redis-cli -p "$port" INFO cpu | awk -F: '/^used_cpu_(sys|user):/ {s += $2} END {printf "%.6f", s}')
      t1=$(date +%s.%N)
      stats=$(redis-cli -p "$port" INFO commandstats | tr -d '\r')
      for p in "${subs[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
      python3 - "$mode" "$pipe" "$run" "$cpu0" "$cpu1" "$t0" "$t1" "$SUBS" "$stats" >>"$RESULTS" <<'PY'
import json, sys
mode, pipe, run, c0, c1, t0, t1, subs, stats = sys.argv[1:]
calls = {}
for line in stats.splitlines():
    if line.startswith("cmdstat_"):
        name, rest = line[8:].split(":", 1)
        calls[name] = int(dict(kv.split("=") for kv in rest.split(","))["calls"])
msgs = calls.get("publish", 0) + calls.get("spublish", 0)
secs = float(t1) - float(t0)
cpu = float(c1) - float(c0)
print(json.dumps({"mode": mode, "pipeline": int(pipe), "run": int(run), "subscribers": int(subs),
                  "msgs": msgs, "secs": round(secs, 3), "msgs_per_s": round(msgs / secs), "cpu_share": round(cpu / secs, 3),
                  "cpu_us_per_msg": round(cpu * 1e6 / max(msgs, 1), 2), "evalsha": calls.get("evalsha", 0)}))
PY
      tail -1 "$RESULTS"
    done
  done
done

python3 - "$RESULTS" >"$OUT/summary.md" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
def cell(v, f):
    m = statistics.median(v)
    return f.format(m) if len(v) == 1 else f"{f.format(m)} ({f.format(min(v))}–{f.format(max(v))})"
print("| server | pipeline | room msgs/s | Redis CPU (share of a core) | CPU µs / msg | msgs/s at one full core |")
print("|---|---|---|---|---|---|")
for pipe in sorted({r["pipeline"] for r in rows}):
    for mode in ("plain", "cluster"):
        rs = [r for r in rows if r["mode"] == mode and r["pipeline"] == pipe]
        if not rs:
            continue
        label = "plain (`PUBLISH`)" if mode == "plain" else "cluster shard (`SPUBLISH`)"
        print(f"| {label} | {pipe} | {cell([r['msgs_per_s'] for r in rs], '{:,.0f}')} | "
              f"{cell([r['cpu_share'] for r in rs], '{:.2f}')} | {cell([r['cpu_us_per_msg'] for r in rs], '{:.1f}')} | "
              f"{cell([1e6 / r['cpu_us_per_msg'] for r in rs], '{:,.0f}')} |")
PY
cat "$OUT/summary.md"
