#!/usr/bin/env bash
# Installs the real third-party MCP servers the end-to-end tests run behind the gateway
# (tests/e2e/real_servers.rs), and the official Python MCP SDK the cluster test drives
# (tests/e2e/cluster_clients.rs): npm packages from package-lock.json into node_modules/, and
# the PyPI packages pinned in requirements.txt into a virtualenv, .venv/. Idempotent: does
# nothing when both are up to date. Needs Node.js >= 20 with npm, and Python >= 3.10.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cd "$here"
if [ ! -d node_modules/@modelcontextprotocol/server-everything ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
    npm ci --no-audit --no-fund --loglevel=error
fi
if [ ! -x .venv/bin/mcp-server-time ] || [ requirements.txt -nt .venv/installed ]; then
    python3 -m venv .venv
    .venv/bin/pip install --quiet --disable-pip-version-check -r requirements.txt
    touch .venv/installed
fi
