#!/usr/bin/env bash
# Interleaved A/B of two wsgate builds on S2 (echo app), pinned: server core 0, load core 1.
# usage: ab2.sh OLD NEW ROUNDS DEPTH
set -uo pipefail
cd "$(dirname "$0")/../../.."
WSB=target/loadgen/release/wsbench
. bench/peer-configs.sh
OUT=/tmp/ab2; mkdir -p $OUT
wsgate_conf $OUT/w.toml
for r in $(seq 1 $3); do
  for b in old new; do
    bin=$1; [ $b = new ] && bin=$2
    RUST_LOG=warn taskset -c 0 $bin -c $OUT/w.toml > $OUT/w.log 2>&1 & GW=$!
    wait_port 28080
    taskset -c 1 $WSB echo --url ws://127.0.0.1:28080/echo --conns 100 --size 32 --depth $4 --duration 1 >/dev/null
    o=$(taskset -c 1 $WSB echo --url ws://127.0.0.1:28080/echo --conns 100 --size 32 --depth $4 --duration 3 --src-ips 20 --pid $GW)
    kill $GW; wait $GW 2>/dev/null
    echo "$r $b $(echo "$o" | python3 -c 'import json,sys; d=json.load(sys.stdin); print(d["msgs_per_s"], d["cpu_us"], d["p99_us"])')"
  done
done
