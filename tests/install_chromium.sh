#!/bin/sh
# Idempotent: make a headless Chromium available for the report test (tests/test_report.py).
# Exits 0 when chromium is already installed or was installed; non-zero only when it cannot be
# installed here (no root, no apt, no network) — the test then skips and says so.
set -e
for b in chromium chromium-browser google-chrome; do
    if command -v "$b" >/dev/null 2>&1; then
        exit 0
    fi
done
if ! command -v apt-get >/dev/null 2>&1; then
    echo "install_chromium.sh: no apt-get here; install Chromium by hand" >&2
    exit 1
fi
SUDO=""
if [ "$(id -u)" != "0" ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        SUDO="sudo -n"
    else
        echo "install_chromium.sh: not root and no passwordless sudo; cannot install chromium" >&2
        exit 1
    fi
fi
$SUDO apt-get update -qq >/dev/null
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
command -v chromium >/dev/null 2>&1
