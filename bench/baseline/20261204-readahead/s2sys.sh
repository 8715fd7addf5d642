#!/usr/bin/env bash
# strace -c of wsgate's echo app vs the raw echo at S2 depth 8, pinned.
set -euo pipefail
cd "$(dirname "$0")/../../.."
WSB=target/loadgen/release/wsbench
WSGATE=${1:-target/release/wsgate}
. bench/peer-configs.sh
OUT=/tmp/s2sys; mkdir -p $OUT
wsgate_conf $OUT/w.toml
taskset -c 0 $WSB ws-server --listen 127.0.0.1:29001 & UP=$!
RUST_LOG=warn taskset -c 0 $WSGATE -c $OUT/w.toml > $OUT/w.log 2>&1 & GW=$!
trap 'kill $UP $GW 2>/dev/null' EXIT
wait_port 28080; wait_port 29001
for t in "gw $GW ws://127.0.0.1:28080/echo" "direct $UP ws://127.0.0.1:29001/"; do
  set -- $t
  taskset -c 1 $WSB echo --url $3 --conns 100 --size 32 --depth 8 --duration 1 >/dev/null
  strace -c -f -p $2 -o $OUT/$1.strace & ST=$!
  sleep 0.5
  n=$(taskset -c 1 $WSB echo --url $3 --conns 100 --size 32 --depth 8 --duration 4 | python3 -c 'import json,sys; print(json.load(sys.stdin)["msgs"])')
  kill -INT $ST; wait $ST || true
  echo "== $1 msgs=$n"
  awk -v n=$n 'NR>2 && $4 ~ /^[0-9]+$/ {printf "%-16s %8.4f\n", $NF, $4/n}' $OUT/$1.strace | sort -k2 -nr | head -8
done
