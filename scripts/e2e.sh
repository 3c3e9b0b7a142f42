#!/usr/bin/env bash
# Runs the browser end-to-end test of the demo page (web/e2e/demo.test.mjs):
# builds the server, installs the web dependencies if needed, and drives
# Debian's chromium against a freshly started server.
#
#   scripts/e2e.sh             debug build (target/debug/switchboard)
#   scripts/e2e.sh --release   release build
#
# Needs chromium at /usr/bin/chromium (apt-get install -y chromium) or
# CHROMIUM_PATH; the test fails, never skips, without it.
set -euo pipefail
cd "$(dirname "$0")/.."

profile=debug
cargo_flags=()
if [[ "${1:-}" == "--release" ]]; then
  profile=release
  cargo_flags=(--release)
fi

cargo build "${cargo_flags[@]}" --bin switchboard
export SWITCHBOARD_BIN="${SWITCHBOARD_BIN:-$PWD/target/$profile/switchboard}"

cd web
if [[ ! -d node_modules/playwright-core ]]; then
  npm install --no-audit --no-fund
fi
npm run e2e
