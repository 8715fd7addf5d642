# Sourced by bench/run.sh and bench/peer-configs.sh: how nginx and HAProxy tell
# the backend who the client is, configured as their users do (nginx's
# documented `$proxy_add_x_forwarded_for`, HAProxy's `option forwardfor`), with
# the protocol and the original host as well. wsgate always sends these three
# fields (spec section 3 for tunnels, the HTTP proxy alike), so with them every
# proxy hands the backend the same request; without them wsgate alone did the
# work of three more fields per request, and the backend that of parsing them.
# shellcheck disable=SC2016 # nginx's variables, expanded by nginx
NGINX_FORWARD='proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
      proxy_set_header X-Forwarded-Proto $scheme;
      proxy_set_header X-Forwarded-Host $http_host;'
HAPROXY_FORWARD='  option forwardfor
  http-request set-header X-Forwarded-Proto https if { ssl_fc }
  http-request set-header X-Forwarded-Proto http if !{ ssl_fc }
  http-request set-header X-Forwarded-Host %[req.hdr(host)]'
