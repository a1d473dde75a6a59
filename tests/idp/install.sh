#!/usr/bin/env bash
# Installs the OpenID provider the end-to-end tests run on loopback (tests/e2e/oidc_provider.rs,
# through provider.mjs): oidc-provider, pinned by package-lock.json, into node_modules/.
# Idempotent: does nothing when up to date. It runs on the Node 22 that tests/conformance pins
# (oidc-provider 9 supports Node 22 LTS and later; it warns "Unsupported runtime" on Node 20).
set -euo pipefail
cd "$(dirname "$0")"
if [ ! -d node_modules/oidc-provider ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
    npm ci --no-audit --no-fund --loglevel=error
fi
