#!/usr/bin/env bash
# The crates show the layers: the protocol crate builds no tokio, and the
# client crate none of the server's dependencies (hyper, governor, the
# allocator, clap). A Rust client that depends on switchboard-client alone
# stays small; this fails if a dependency leaks into a lower layer.
set -euo pipefail
cd "$(dirname "$0")/.."
fail=0
deps() { cargo tree -p "$1" -e normal --prefix none | awk '{print $1}' | sort -u; }
if deps switchboard-protocol | grep -Ex 'tokio|tokio-.*|hyper|mio'; then
    echo "switchboard-protocol must not depend on an I/O runtime" >&2
    fail=1
fi
if deps switchboard-client | grep -Ex 'hyper|hyper-util|governor|tikv-jemallocator|clap|switchboard'; then
    echo "switchboard-client must not depend on the server's crates" >&2
    fail=1
fi
exit "$fail"
