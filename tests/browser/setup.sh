#!/bin/sh
# Prepares the browser test (tests/it/chat_browser.rs): the system Chromium
# (Debian package `chromium`, installed when missing) and playwright-core from
# package-lock.json. playwright-core never downloads a browser of its own.
set -eu
cd "$(dirname "$0")"
if [ ! -x /usr/bin/chromium ]; then
    echo "installing chromium (Debian package)..."
    if [ "$(id -u)" -eq 0 ]; then SUDO=""; else SUDO="sudo"; fi
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq chromium
fi
command -v node >/dev/null || { echo "node is required (Debian: apt-get install nodejs npm)" >&2; exit 1; }
PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund
