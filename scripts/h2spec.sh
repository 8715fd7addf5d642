#!/usr/bin/env bash
# Runs h2spec 2.6.0 (summerwind/h2spec, 146 cases) against wsgate, four ways:
#   h2c-proxy   plain listener, prior-knowledge HTTP/2, route proxied to a local upstream
#   h2c-self    plain listener, route wsgate answers itself (static files)
#   tls-proxy   TLS listener (ALPN h2), proxied route
#   tls-self    TLS listener (ALPN h2), static-files route
# and prints pass/fail counts per combination, then the failing case ids.
#
# h2spec: an `h2spec` on PATH (or in $H2SPEC), or built here from its source
# tree in $H2SPEC_SRC (a checkout of the v2.6.0 tag) with Debian's Go:
#   apt-get install -y golang golang-github-fatih-color-dev \
#     golang-github-spf13-cobra-dev golang-github-spf13-pflag-dev \
#     golang-golang-x-net-dev golang-golang-x-sys-dev \
#     golang-github-mattn-go-colorable-dev golang-github-mattn-go-isatty-dev \
#     golang-github-inconshreveable-mousetrap-dev
# (GO111MODULE=off, dependencies from /usr/share/gocode; no module proxy.)
#
#   scripts/h2spec.sh                 all four combinations
#   scripts/h2spec.sh h2c-self ...    only these
#   scripts/h2spec.sh h2c-404 tls-404    extra: path "/" (no route: wsgate's own 404)
#   H2SPEC_ARGS="-v" scripts/h2spec.sh   extra h2spec flags (e.g. a case id: "http2/8.1")
#   H2SPEC_RUNS=10 scripts/h2spec.sh     run each combination 10 times (some cases
#                                        are timing-dependent: docs/conformance.md)
# Reports (JUnit XML and text) go to $CARGO_TARGET_DIR/h2spec/ (default target/).
# Exit status: 0 iff every case passed in every combination run.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
OUT=$TARGET/h2spec
mkdir -p "$OUT"
TMP=$(mktemp -d /tmp/wsgate-h2spec.XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$TMP"
}
trap cleanup EXIT

# --- h2spec -----------------------------------------------------------------
H2SPEC=${H2SPEC:-}
if [ -z "$H2SPEC" ] && [ -n "${H2SPEC_SRC:-}" ]; then
  [ -f "$H2SPEC_SRC/cmd/h2spec/h2spec.go" ] || { echo "h2spec.sh: H2SPEC_SRC=$H2SPEC_SRC is not an h2spec source tree" >&2; exit 2; }
  command -v go >/dev/null || { echo "h2spec.sh: go not found (apt-get install golang and the golang-*-dev packages listed in this script)" >&2; exit 2; }
  GP=$TMP/gopath
  mkdir -p "$GP/src/github.com/summerwind"
  cp -r "$H2SPEC_SRC" "$GP/src/github.com/summerwind/h2spec"
  echo "== building h2spec from $H2SPEC_SRC"
  (cd "$GP/src/github.com/summerwind/h2spec" &&
    GO111MODULE=off GOFLAGS= GOPATH="$GP:/usr/share/gocode" GOCACHE="$OUT/gocache" \
      go build -ldflags "-X main.VERSION=2.6.0 -X main.COMMIT=src" -o "$OUT/h2spec" ./cmd/h2spec)
  H2SPEC=$OUT/h2spec
fi
if [ -z "$H2SPEC" ]; then
  H2SPEC=$(command -v h2spec || true)
fi
[ -n "$H2SPEC" ] && [ -x "$H2SPEC" ] || { echo "h2spec.sh: no h2spec (put it on PATH, or set H2SPEC_SRC to its source)" >&2; exit 2; }
"$H2SPEC" --version | head -1

# --- wsgate and its upstream --------------------------------------------------
cargo build -q
BIN=$TARGET/debug/wsgate

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 100); do (echo >/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.1; done; echo "h2spec.sh: nothing listens on $1" >&2; exit 2; }

UP_PORT=$(free_port); H2C_PORT=$(free_port); TLS_PORT=$(free_port)
mkdir -p "$TMP/www" "$TMP/up" "$TMP/certs"
echo "static, answered by wsgate" >"$TMP/www/index.html"
echo "proxied, answered by the upstream" >"$TMP/up/index.html"
"$BIN" gen-cert --out "$TMP/certs" --host localhost --host 127.0.0.1 >/dev/null

# Upstream: python's http.server (HTTP/1.0, GET/HEAD; other methods get 501).
python3 -m http.server --bind 127.0.0.1 --directory "$TMP/up" "$UP_PORT" >"$TMP/upstream.log" 2>&1 &
PIDS+=($!)

cat >"$TMP/wsgate.toml" <<TOML
[server]
header_timeout = "10s"

[log]
access_log = false

[[listener]]
addr = "127.0.0.1:$H2C_PORT"

[[listener]]
addr = "127.0.0.1:$TLS_PORT"
[listener.tls]
cert = "$TMP/certs/localhost.crt"
key = "$TMP/certs/localhost.key"

[upstream.up]
servers = ["127.0.0.1:$UP_PORT"]

[[route]]
path = "/proxy/"
upstream = "up"
strip_prefix = true

[[route]]
path = "/self/"
root = "$TMP/www"
TOML
"$BIN" -c "$TMP/wsgate.toml" check >/dev/null
RUST_LOG=${RUST_LOG:-warn} "$BIN" -c "$TMP/wsgate.toml" >"$OUT/wsgate.log" 2>&1 &
PIDS+=($!)
wait_port "$UP_PORT"; wait_port "$H2C_PORT"; wait_port "$TLS_PORT"

# --- runs ----------------------------------------------------------------------
COMBOS=("$@")
[ ${#COMBOS[@]} -gt 0 ] || COMBOS=(h2c-proxy h2c-self tls-proxy tls-self)
declare -A SUMMARY FAILED
status=0
for c in "${COMBOS[@]}"; do
  case $c in
    h2c-proxy) args=(-p "$H2C_PORT" -P /proxy/) ;;
    h2c-self)  args=(-p "$H2C_PORT" -P /self/) ;;
    h2c-404)   args=(-p "$H2C_PORT" -P /) ;;
    tls-404)   args=(-p "$TLS_PORT" -t -k -P /) ;;
    tls-proxy) args=(-p "$TLS_PORT" -t -k -P /proxy/) ;;
    tls-self)  args=(-p "$TLS_PORT" -t -k -P /self/) ;;
    *) echo "h2spec.sh: unknown combination $c" >&2; exit 2 ;;
  esac
  runs=${H2SPEC_RUNS:-1}
  echo "== h2spec $c ($runs run(s))"
  SUMMARY[$c]=""; FAILED[$c]=""
  for r in $(seq "$runs"); do
    rep=$OUT/$c.txt; [ "$runs" = 1 ] || rep=$OUT/$c.$r.txt
    # shellcheck disable=SC2086
    "$H2SPEC" -h 127.0.0.1 "${args[@]}" -o 3 -j "${rep%.txt}.xml" ${H2SPEC_ARGS:-} >"$rep" 2>&1 || true
    line=$(grep -E '^[0-9]+ tests, ' "$rep" | tail -1 || true)
    [ -n "$line" ] || line="no summary (see $rep)"
    # Failing case ids ("http2/6.9.1/3"), from the text report's "Failures:" part.
    ids=$(awk '/^Failures:/{f=1} f' "$rep" | python3 -c '
import re, sys
top, sec, out = "", "", []
for line in sys.stdin:
    if line.startswith("Generic"): top = "generic"
    elif line.startswith("Hypertext"): top = "http2"
    elif line.startswith("HPACK"): top = "hpack"
    t = re.match(r"^\s*(\d+(?:\.\d+)*)\. ", line)
    x = re.match(r"^\s*\S\s(\d+):", line)
    if t: sec = t.group(1)
    if x: out.append("%s/%s/%s" % (top, sec, x.group(1)))
print(" ".join(out))
')
    echo "   run $r: $line${ids:+  [$ids]}"
    if [ "$runs" = 1 ]; then SUMMARY[$c]=$line
    else SUMMARY[$c]+="${SUMMARY[$c]:+ }$(sed -E 's/^([0-9]+) tests, ([0-9]+) passed.*/\2\/\1/' <<<"$line")"; fi
    FAILED[$c]+="${ids:+$ids }"
    grep -qE ' 0 failed' <<<"$line" || status=1
  done
  # Failing ids with how many runs each failed in.
  # (`grep` finds nothing when every run passed: not an error under pipefail.)
  FAILED[$c]=$({ tr ' ' '\n' <<<"${FAILED[$c]}" | grep . || true; } | sort | uniq -c | awk '{printf "%s%s(%d/'"$runs"')", (NR>1?" ":""), $2, $1}')
done

echo
echo "== summary (h2spec 2.6.0; reports in $OUT)"
for c in "${COMBOS[@]}"; do
  printf '%-10s %s\n' "$c" "${SUMMARY[$c]}${H2SPEC_RUNS:+ (passed/tests per run)}"
  [ -z "${FAILED[$c]}" ] || printf '%-10s failed: %s\n' "" "${FAILED[$c]}"
done
exit $status
