#!/bin/sh
# Builds {{name}}.wasm from policy.py, the helper portcullis.py and the contract in wit/.
# Usage: ./build.sh [-o OUT]   (OUT is relative to where you run it; default ./{{name}}.wasm)
set -eu
here="$(cd "$(dirname "$0")" && pwd)"
out="{{name}}.wasm"
if [ "${1:-}" = "-o" ] && [ -n "${2:-}" ]; then out="$2"; fi
case "$out" in /*) ;; *) out="$(pwd)/$out" ;; esac
componentize="${COMPONENTIZE_PY:-componentize-py}"
(cd "$here" && "$componentize" -d wit -w plugin componentize -p . policy -o "$out") >&2
echo "$out"
