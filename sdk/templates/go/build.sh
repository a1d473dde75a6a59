#!/bin/sh
# Builds {{name}}.wasm from this folder's .go files with the Go SDK that go.mod's `replace`
# names (or $PORTCULLIS_POLICY_GO). Usage: ./build.sh [-o OUT]  (default ./{{name}}.wasm; a
# relative OUT is relative to where you run it). Prints the path it wrote. The first build
# installs the pinned toolchain (see the SDK's `build`), a few minutes, once.
set -eu
here="$(cd "$(dirname "$0")" && pwd)"
sdk="${PORTCULLIS_POLICY_GO:-$(sed -n 's/^replace portcullis\.dev\/policy => //p' "$here/go.mod")}"
case "$sdk" in /*) ;; ?*) sdk="$here/$sdk" ;; *) echo "build.sh: go.mod has no replace for portcullis.dev/policy; set PORTCULLIS_POLICY_GO" >&2; exit 2 ;; esac
[ -x "$sdk/build" ] || { echo "build.sh: $sdk/build not found (the Go SDK: portcullis/sdk/go)" >&2; exit 2; }
out="{{name}}.wasm"
if [ "${1:-}" = "-o" ] && [ -n "${2:-}" ]; then out="$2"; elif [ "${1:-}" = "-o" ]; then echo "build.sh: -o needs a value" >&2; exit 2; fi
case "$out" in /*) ;; *) out="$(pwd)/$out" ;; esac
exec "$sdk/build" "$here" -o "$out"
