#!/usr/bin/env bash
# Instructions per operation of wsgate under one load, counted by
# valgrind --tool=callgrind: exact for the same binary and input, whatever
# else the machine is doing (the timed suite in run.sh is not). User space
# only: the kernel's share (most of S1's) is not counted.
#
#   bench/callgrind.sh S4 [WSGATE]   HTTP keep-alive proxy: instructions per request (wrk -c100)
#   bench/callgrind.sh S5 [WSGATE]   new proxied WebSockets: per connection (connect, upgrade, close)
#   bench/callgrind.sh S2 [WSGATE]   in-process echo app: per echoed 32-byte message (100 conns, depth 1)
#   bench/callgrind.sh S1 [WSGATE]   byte splice: per echoed 32-byte message (100 conns, depth 1)
#   bench/callgrind.sh GRPC [WSGATE] HTTP/2 proxy: per gRPC unary call to an h2c upstream (tonic,
#                                    16 in flight over 2 connections, as bench/grpc.sh)
#
# DEPTH=8 (S1, S2): each connection keeps that many messages in flight, as
# run.sh's depth-8 case (the echo app then answers a batch per read).
# SIZE=16384 (S1, S2): the messages' size in bytes (32 unless told).
#
# VARIANT=limit (S4): the route has a generous `[limit]` (1e6/s per ip, never
# reached), so every request pays the rate-limit check; VARIANT=auth (S4): the
# route has `auth` (HS256) and wrk sends a token minted by `wsgate token`.
# VARIANT=logged (S4, S5): the access log on, written to the log file as
# run.sh's logged cases write theirs (one line per request or connection).
# VARIANT=wss (S5): the connections over TLS 1.3 to a TLS listener (a full
# handshake each); VARIANT=wss-resume (S5): the same, the client resuming its
# sessions with tickets (issue 21; the load's JSON, with its resumed count, is
# kept beside the callgrind file).
#
# TARGET=nginx | TARGET=haproxy (S4, S5): the same load against nginx's worker
# (`master_process off`, one process) or HAProxy (`-db`, nbthread 1) under
# valgrind instead, configured as in run.sh: the peers' instructions per
# operation, counted the same way. TARGET=fastwebsockets (S2): the loadgen's
# fastwebsockets echo server (run.sh's S2 peer) under valgrind instead.
#
# WSGATE defaults to target/release/wsgate (built here); PRELOAD=/path/lib.so
# runs it with that allocator preloaded (allocator A/B on one binary). Output: one line
# "SCEN ops=N instructions=M per_op=K" and the callgrind file in
# bench/results/callgrind/, for `callgrind_annotate --inclusive=yes FILE`.
# Ports 28080 and 29001-29002, as run.sh (GRPC: 29005 too); a few seconds of load under valgrind.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
SCEN=${1:?usage: bench/callgrind.sh S1|S2|S4|S5|GRPC [WSGATE]}
WSGATE=${2:-}
command -v valgrind >/dev/null || { echo "valgrind is needed (apt-get install valgrind)" >&2; exit 1; }
[ "$SCEN" != S4 ] || command -v wrk >/dev/null || { echo "wrk is needed (apt-get install wrk)" >&2; exit 1; }

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
if [ -z "$WSGATE" ]; then
  cargo build -q --release --bin wsgate
  WSGATE="$CARGO_TARGET_DIR/release/wsgate"
fi
CARGO_TARGET_DIR="$CARGO_TARGET_DIR/loadgen" cargo build -q --release --manifest-path bench/loadgen/Cargo.toml
WSB="$CARGO_TARGET_DIR/loadgen/release/wsbench"

OUT="$ROOT/bench/results/callgrind"
mkdir -p "$OUT"
STAMP="$SCEN${SIZE:+-$SIZE}${VARIANT:+-$VARIANT}${TARGET:+-$TARGET}-$(date -u +%Y%m%dT%H%M%SZ)"
# shellcheck source=bench/peer-configs.sh
. bench/peer-configs.sh
wsgate_conf "$OUT/$STAMP.toml"

case "${VARIANT:-}" in
  "") ;;
  limit)
    sed -i 's|^upstream = "http"$|upstream = "http"\nlimits = ["generous"]|' "$OUT/$STAMP.toml"
    printf '[limit.generous]\nrate = "1000000/s"\nburst = 1000000\nkey = "ip"\n' >>"$OUT/$STAMP.toml" ;;
  auth)
    sed -i 's|^upstream = "http"$|upstream = "http"\nauth = "bench"|' "$OUT/$STAMP.toml"
    printf '[auth.bench]\nhmac_secret = "base64:%s"\n' "$(head -c 32 /dev/urandom | base64 -w0)" >>"$OUT/$STAMP.toml"
    TOKEN=$("$WSGATE" token -c "$OUT/$STAMP.toml" --auth bench --sub bench --ttl 1h) ;;
  wss|wss-resume)
    [ "$SCEN" = S5 ] || { echo "VARIANT=$VARIANT is for S5" >&2; exit 2; }
    [ -f certs/localhost.crt ] || "$WSGATE" gen-cert >/dev/null
    printf '[[listener]]\naddr = "127.0.0.1:28443"\n[listener.tls]\ncert = "%s"\nkey = "%s"\n' \
      "$ROOT/certs/localhost.crt" "$ROOT/certs/localhost.key" >>"$OUT/$STAMP.toml" ;;
  logged)
    sed -i 's/^access_log = false/access_log = true/' "$OUT/$STAMP.toml"
    LOG_FILTER=warn,access=info ;;
  *) echo "unknown VARIANT $VARIANT (limit | auth | wss | wss-resume | logged)" >&2; exit 2 ;;
esac
WRK_HEADER=()
[ -z "${TOKEN:-}" ] || WRK_HEADER=(-H "Authorization: Bearer $TOKEN")

PORT=28080
if [ "${TARGET:-wsgate}" = wsgate ]; then
  SERVE=("$WSGATE" -c "$OUT/$STAMP.toml")   # the variant edits above stay
elif [ "$TARGET" = fastwebsockets ]; then
  [ "$SCEN" = S2 ] || { echo "TARGET=fastwebsockets is for S2" >&2; exit 2; }
  SERVE=("$WSB" fws-server --listen 127.0.0.1:29003)
  PORT=29003
else
  serve_cmd "$TARGET" "$OUT" "$OUT/$STAMP" "$WSGATE"
fi

if [ "$SCEN" = GRPC ]; then
  printf '[upstream.grpc]\nservers = ["127.0.0.1:29005"]\nprotocol = "h2c"\n[[route]]\npath = "/t.Echo/"\nupstream = "grpc"\n' >>"$OUT/$STAMP.toml"
fi
start_backends
if [ "$SCEN" = GRPC ]; then
  [ "${TARGET:-wsgate}" = wsgate ] || { echo "GRPC is measured for wsgate only" >&2; exit 2; }
  "$WSB" grpc-server --listen 127.0.0.1:29005 &
  PIDS+=("$!")
  wait_port 29005
fi
RUST_LOG=${LOG_FILTER:-warn} LD_PRELOAD=${PRELOAD:-} valgrind --tool=callgrind --instr-atstart=no \
  --callgrind-out-file="$OUT/$STAMP.out" "${SERVE[@]}" >"$OUT/$STAMP.log" 2>&1 &
VG=$!
PIDS+=("$VG")
for _ in $(seq 1 300); do
  (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break
  sleep 0.1
done

# load SECONDS: prints the operation count
load() {
  case "$SCEN" in
    S4) wrk -t1 -c100 -d"${1}s" "${WRK_HEADER[@]}" http://127.0.0.1:28080/http/ | awk '$2 == "requests" && $3 == "in" {print $1}' ;;
    S5)
      local url=ws://127.0.0.1:28080/ws/ resume=0
      case "${VARIANT:-}" in
        wss) url=wss://127.0.0.1:28443/ws/ ;;
        wss-resume) url=wss://127.0.0.1:28443/ws/ resume=1 ;;
      esac
      "$WSB" connrate --url "$url" --concurrency 8 --duration "$1" --resume "$resume" |
        tee -a "$OUT/$STAMP.load.json" | python3 -c 'import json,sys; print(json.load(sys.stdin)["conns"])' ;;
    S2|S1)
      url=ws://127.0.0.1:28080/echo
      [ "$SCEN" = S1 ] && url=ws://127.0.0.1:28080/ws/
      [ "$PORT" = 29003 ] && url=ws://127.0.0.1:29003/
      "$WSB" echo --url "$url" --conns 100 --size "${SIZE:-32}" --depth "${DEPTH:-1}" --duration "$1" |
        python3 -c 'import json,sys; d=json.load(sys.stdin); print(d["msgs"])' ;;
    GRPC)
      "$WSB" grpc --url http://127.0.0.1:28080 --conns 2 --concurrency 16 --duration "$1" |
        python3 -c 'import json,sys; print(json.load(sys.stdin)["calls"])' ;;
    *) echo "unknown scenario $SCEN" >&2; exit 2 ;;
  esac
}

load 2 >/dev/null            # warm-up: pools filled, buffers grown, code paged in
callgrind_control -i on "$VG" >/dev/null
n=$(load 5)
callgrind_control -d "$VG" >/dev/null
callgrind_control -i off "$VG" >/dev/null
file=$(ls -t "$OUT/$STAMP.out"* | grep -v '\.out$' | head -1)
total=$(callgrind_annotate "$file" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1}')
echo "$SCEN${VARIANT:+ ($VARIANT)}${DEPTH:+ depth $DEPTH}${SIZE:+ size $SIZE} ${TARGET:-wsgate} ops=$n instructions=$total per_op=$((total / n)) file=${file#"$ROOT"/}"
