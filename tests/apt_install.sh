#!/bin/sh
# Idempotent: make a system program some tests need available, from Debian's package.
#   sh tests/apt_install.sh PACKAGE PROGRAM [PROGRAM ...]
# A PROGRAM is a command name or a path glob (/usr/lib/postgresql/*/bin/initdb). Exits 0 when
# one of them is already there or the package was installed; non-zero only when it cannot be
# installed here (no root, no apt, no network): the tests that need it then skip and say why.
set -e
pkg="$1"
shift
have() {
    for p in "$@"; do
        command -v "$p" >/dev/null 2>&1 && return 0
        for f in $p; do [ -x "$f" ] && return 0; done
    done
    return 1
}
have "$@" && exit 0
if ! command -v apt-get >/dev/null 2>&1; then
    echo "apt_install.sh: no apt-get here; install $pkg by hand" >&2
    exit 1
fi
SUDO=""
if [ "$(id -u)" != "0" ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        SUDO="sudo -n"
    else
        echo "apt_install.sh: not root and no passwordless sudo; cannot install $pkg" >&2
        exit 1
    fi
fi
$SUDO apt-get update -qq >/dev/null
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "$pkg" >/dev/null
have "$@"
