#!/usr/bin/env bash
# Profiles wsgate under the S1 (splice) and S2 (echo app) loads: syscalls per
# message from /proc/PID/io (exact, immune to noise) and a `perf record`
# cpu-clock profile (top symbols). Run after bench/run.sh, which builds the
# binaries and writes the config:   bench/profile.sh bench/results/<run>
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=${1:?usage: bench/profile.sh bench/results/<run>}
OUT="$RUN/profile"
mkdir -p "$OUT"
WSGATE=${WSGATE:-target/release/wsgate}
WSB=target/loadgen/release/wsbench
ulimit -n "$(ulimit -Hn)"

taskset -c 0 "$WSB" ws-server --listen 127.0.0.1:29001 & UP=$!
RUST_LOG=warn taskset -c 0 "$WSGATE" -c "$RUN/wsgate.toml" >"$OUT/wsgate.log" 2>&1 & GW=$!
trap 'kill $UP $GW 2>/dev/null || true' EXIT
sleep 1

msgs_of() { sed 's/.*"msgs_per_s":\([0-9]*\).*/\1/' <<<"$1"; }

# name url depth pid
for t in "splice-d1 ws://127.0.0.1:28080/ws/ 1 $GW" "splice-d8 ws://127.0.0.1:28080/ws/ 8 $GW" \
  "echo-app-d1 ws://127.0.0.1:28080/echo 1 $GW" "echo-app-d8 ws://127.0.0.1:28080/echo 8 $GW" \
  "direct-d8 ws://127.0.0.1:29001/ 8 $UP"; do
  read -r name url depth pid <<<"$t"
  load() { taskset -c 1 "$WSB" echo --url "$url" --conns 100 --size 32 --depth "$depth" --duration 3 --pid "$pid"; }
  # 1. syscalls per message: strace attached for the whole load (slows it; the
  #    per-message counts stay exact)
  strace -c -f -p "$pid" -o "$OUT/$name.strace" & ST=$!
  sleep 0.5
  res=$(load)
  kill -INT $ST; wait $ST 2>/dev/null || true
  n=$(( $(msgs_of "$res") * 3 ))
  echo "== $name ($n messages under strace): syscalls per message" | tee -a "$OUT/syscalls.txt"
  awk -v n="$n" '$NF ~ /^(read|write|writev|readv|recvfrom|sendto|sendmsg|recvmsg|epoll_wait|futex)$/ {
      calls = (NF == 6 ? $4 : $4); printf "  %-11s %.3f\n", $NF, calls / n }' "$OUT/$name.strace" | tee -a "$OUT/syscalls.txt"
  # 2. where the CPU goes (wsgate only)
  if [ "$pid" = "$GW" ]; then
    res=$(load & sleep 1; perf record -q -F 499 -e cpu-clock -g -p "$GW" -o "$OUT/$name.perf" -- sleep 1.5 >/dev/null 2>&1 || true; wait)
    echo "  unprofiled-ish run: $res" >>"$OUT/syscalls.txt"
    perf report -i "$OUT/$name.perf" --no-children --sort symbol --stdio 2>/dev/null |
      grep -E '^ +[0-9]' | head -25 >"$OUT/$name.top.txt" || true
  fi
done
