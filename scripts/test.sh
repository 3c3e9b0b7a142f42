#!/usr/bin/env bash
# Runs every test of switchboard: the offline check of the deployment files,
# Rust unit, integration, golden, fuzz-corpus, TURN, Prometheus tests, the
# Python package's tests, the browser SDK's tests, and the end-to-end test in a real Chromium. Installs the system packages the tests need when run as root
# (coturn for the TURN test, chromium for the browser test, prometheus for
# the metrics test, redis-server for the cluster test, haproxy to check the
# cluster's load balancer configuration); otherwise says
# which to install and stops.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v turnserver >/dev/null 2>&1 || need+=(coturn)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v prometheus >/dev/null 2>&1 || need+=(prometheus)
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
command -v haproxy >/dev/null 2>&1 || need+=(haproxy)
if ((${#need[@]})); then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "==> installing ${need[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
    else
        echo "missing system packages: ${need[*]} (install them: sudo apt-get install ${need[*]})" >&2
        exit 1
    fi
fi

echo "==> crate layers"
scripts/check-layers.sh

echo "==> minimum Rust versions (rust-version against the dependencies; clippy's incompatible_msrv checks our own code)"
scripts/check-msrv.py

echo "==> deployment files (offline: Kubernetes, workflow and compose schemas, promtool, haproxy -c)"
# The validators are PyPI packages; they are installed once into a
# virtual environment under target/ (git-ignored).
tools=target/deploy-tools
if ! [ -x "$tools/bin/kubernetes-validate" ] || ! [ -x "$tools/bin/check-jsonschema" ]; then
    python3 -m venv "$tools"
    "$tools/bin/pip" install -q --disable-pip-version-check \
        kubernetes-validate==1.37.0 check-jsonschema==0.39.0 PyYAML==6.0.4
fi
PATH="$PWD/$tools/bin:$PATH" scripts/check-deploy.sh

echo "==> matchbox_server (tests/load_smoke.rs runs the load generator's matchbox dialect against it)"
scripts/install-matchbox.sh >/dev/null

echo "==> cargo test"
cargo test --workspace --all-targets
cargo test --workspace --doc

cargo build --bin switchboard

echo "==> Python package (bindings generated from proto/ when it is built) and the conformance vectors in Python"
# Into a virtual environment under target/ (git-ignored): the runtime
# dependencies pinned, then the package itself, rebuilt every run so its
# bindings follow proto/.
py=target/python-venv
[ -x "$py/bin/python" ] || python3 -m venv "$py"
"$py/bin/pip" install -q --disable-pip-version-check protobuf==7.36.2 websockets==17.4
"$py/bin/pip" install -q --disable-pip-version-check --force-reinstall --no-deps ./python
SWITCHBOARD_BIN="$PWD/target/debug/switchboard" \
    "$py/bin/python" -m unittest discover -s python/tests -t python/tests -v

echo "==> browser SDK and end-to-end tests"
cd web
# 'npm install', not 'npm ci': the registry this project builds from lacks
# @bufbuild/buf's binaries for other platforms, so the lock file cannot list
# them and 'npm ci' refuses it. With the lock file present, install still
# takes the locked versions.
npm install --no-audit --no-fund
npm test
SWITCHBOARD_BIN="$PWD/../target/debug/switchboard" npm run e2e
