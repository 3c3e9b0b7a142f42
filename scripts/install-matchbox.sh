#!/usr/bin/env bash
# Installs matchbox_server, the peer that benches/compare.sh compares with
# and tests/load_smoke.rs runs the load generator's matchbox dialect
# against, at a pinned version into target/compare-tools (git-ignored),
# once: built from crates.io with the versions its own Cargo.lock names
# (about two minutes on two cores). Prints "<binary> <version>".
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION=0.15.0
TOOLS=target/compare-tools
if ! grep -qs "^\"matchbox_server $VERSION " "$TOOLS/.crates.toml" || ! [ -x "$TOOLS/bin/matchbox_server" ]; then
    echo "installing matchbox_server $VERSION into $TOOLS" >&2
    cargo install --locked --quiet --root "$TOOLS" matchbox_server --version "$VERSION"
fi
echo "$TOOLS/bin/matchbox_server $VERSION"
