#!/usr/bin/env bash
set -u
WSB=/work/wt-bench/target/loadgen/release/wsbench
GW=/work/main/target/release/wsgate
cat > /tmp/ib.toml <<'T'
[log]
access_log = false
[[listener]]
addr = "127.0.0.1:28181"
[upstream.plain]
servers = ["127.0.0.1:29101"]
[upstream.insp]
servers = ["127.0.0.1:29101"]
ws_inspect = true
[[route]]
path = "/plain"
upstream = "plain"
[[route]]
path = "/insp"
upstream = "insp"
[[route]]
path = "/echo"
app = "echo"
[app.echo]
compression = false
T
taskset -c 0 $WSB ws-server --listen 127.0.0.1:29101 > /dev/null 2>&1 &
UP=$!
RUST_LOG=warn taskset -c 0 $GW -c /tmp/ib.toml > /dev/null 2>&1 &
G=$!
for _ in $(seq 100); do (echo > /dev/tcp/127.0.0.1/28181) 2>/dev/null && break; sleep 0.1; done
for run in 1 2 3; do
  for name in plain insp; do
    echo "S1 $name 100c 32B d1 run $run $(taskset -c 1 $WSB echo --url ws://127.0.0.1:28181/$name --conns 100 --size 32 --depth 1 --duration 3 --pid $G)"
  done
  echo "S2 echo-app 100c 32B d8 run $run $(taskset -c 1 $WSB echo --url ws://127.0.0.1:28181/echo --conns 100 --size 32 --depth 8 --duration 3 --pid $G)"
  echo "S2 direct 100c 32B d8 run $run $(taskset -c 1 $WSB echo --url ws://127.0.0.1:29101/ --conns 100 --size 32 --depth 8 --duration 3 --pid $UP)"
done
kill $G $UP
