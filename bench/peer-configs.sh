# Sourced by bench/callgrind.sh, bench/syscalls.sh and bench/cpusplit.sh: the minimal configs of
# wsgate, nginx and HAProxy for the per-operation measurements, all on
# 127.0.0.1:28080 with /ws/ -> 127.0.0.1:29001 (WebSocket, tunnel) and
# /http/ -> 127.0.0.1:29002 (HTTP keep-alive). Access logs off. The peers
# forward the client as wsgate does (bench/forwarding.sh).

# shellcheck source=bench/forwarding.sh
. "$(dirname "${BASH_SOURCE[0]}")/forwarding.sh"

# wsgate_conf FILE
wsgate_conf() {
  cat >"$1" <<EOF
[server]
max_connections = 100000
[log]
access_log = false
[[listener]]
addr = "127.0.0.1:28080"
[upstream.ws]
servers = ["127.0.0.1:29001"]
[upstream.http]
servers = ["127.0.0.1:29002"]
[[route]]
path = "/ws/"
upstream = "ws"
[[route]]
path = "/http/"
upstream = "http"
[[route]]
path = "/echo"
app = "echo"
EOF
}

# nginx_conf FILE PREFIX: one worker process in the foreground (`master_process
# off`, so valgrind and strace see the process that serves); PREFIX names its
# pid, error log and temp paths.
nginx_conf() {
  cat >"$1" <<EOF
master_process off;
daemon off;
worker_processes 1;
pid $2-nginx.pid;
error_log $2-nginx-error.log error;
events { worker_connections 10000; }
http {
  access_log off;
  client_body_temp_path $2-nginx-body;
  proxy_temp_path $2-nginx-proxy;
  map \$http_upgrade \$connection_upgrade { default upgrade; '' close; }
  upstream ws_up { server 127.0.0.1:29001; }
  upstream http_up { server 127.0.0.1:29002; keepalive 128; }
  server {
    listen 127.0.0.1:28080;
    location /ws/ {
      proxy_pass http://ws_up;
      proxy_http_version 1.1;
      $NGINX_FORWARD
      proxy_set_header Upgrade \$http_upgrade;
      proxy_set_header Connection \$connection_upgrade;
    }
    location /http/ {
      proxy_pass http://http_up;
      proxy_http_version 1.1;
      $NGINX_FORWARD
      proxy_set_header Connection "";
    }
  }
}
EOF
}

# haproxy_conf FILE: one thread, WebSocket tunnel after the 101, HTTP keep-alive
# to the backend with connection reuse.
haproxy_conf() {
  cat >"$1" <<EOF
global
  nbthread 1
  maxconn 5000
defaults
  mode http
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  timeout tunnel 60s
  option http-keep-alive
  http-reuse always
frontend f
  bind 127.0.0.1:28080
  use_backend ws_up if { path_beg /ws/ }
  default_backend http_up
backend ws_up
$HAPROXY_FORWARD
  server s1 127.0.0.1:29001
backend http_up
$HAPROXY_FORWARD
  server s1 127.0.0.1:29002
EOF
}

# serve_cmd TARGET DIR PREFIX WSGATE: sets SERVE=(the command serving TARGET)
serve_cmd() {
  case "$1" in
    wsgate) wsgate_conf "$3.toml"; SERVE=("$4" -c "$3.toml") ;;
    nginx) nginx_conf "$3-nginx.conf" "$3"; SERVE=("$(command -v nginx || echo /usr/sbin/nginx)" -p "$2" -c "$3-nginx.conf") ;;
    haproxy) haproxy_conf "$3-haproxy.cfg"; SERVE=("$(command -v haproxy || echo /usr/sbin/haproxy)" -db -f "$3-haproxy.cfg") ;;
    *) echo "unknown target $1 (wsgate | nginx | haproxy)" >&2; return 2 ;;
  esac
}

# The backends every per-operation script runs: wsbench's ws-server (29001) and
# http-server (29002). start_backends [PREFIX...] starts both, under PREFIX
# when given (e.g. `taskset -c 0`), sets WS_UP and HTTP_UP, and has everything
# in PIDS killed when the script exits. Needs WSB.
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
start_backends() {
  trap cleanup EXIT
  "$@" "$WSB" ws-server --listen 127.0.0.1:29001 & WS_UP=$!
  "$@" "$WSB" http-server --listen 127.0.0.1:29002 & HTTP_UP=$!
  PIDS+=("$WS_UP" "$HTTP_UP")
}

# wait_port PORT: until something accepts on 127.0.0.1:PORT (10 s at most)
wait_port() {
  for _ in $(seq 1 200); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.05; done
  echo "port $1 did not open" >&2; return 1
}
