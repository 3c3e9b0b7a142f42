#!/usr/bin/env bash
# Checks the deployment files offline: no cluster, no Docker engine, no
# network. Every validator bundles its schemas.
#
#   deploy/kubernetes/*.yaml      kubernetes-validate --strict against the
#                                 Kubernetes schemas ($KUBE_VERSIONS), plus
#                                 cross-checks (probes, grace periods, ports,
#                                 ConfigMap/Secret keys, TOML keys and env
#                                 names the server knows, kustomization)
#   .github/workflows/ci.yml      check-jsonschema, builtin GitHub workflow
#                                 schema (and a timeout on every job)
#   deploy/docker-compose.yml     check-jsonschema, builtin compose-spec
#                                 schema, plus files and values it refers to
#   deploy/cluster/               the same for docker-compose.yml; haproxy -c
#                                 on haproxy.cfg, whose servers must be the
#                                 compose file's nodes, checked on /readyz
#   deploy/grafana/*.json         parses; every panel has PromQL naming known
#                                 switchboard_ metrics; promtool parses it all
#   deploy/prometheus.yml         promtool check config (and its rule files)
#
# Tools come from PATH: python3 (3.11+, with PyYAML), kubernetes-validate,
# check-jsonschema (pip install kubernetes-validate check-jsonschema PyYAML),
# promtool (apt-get install prometheus) and haproxy (apt-get install
# haproxy). kubectl, when present, also renders the kustomization and that
# output is validated too.
set -euo pipefail
cd "$(dirname "$0")/.."

KUBE_VERSIONS=${KUBE_VERSIONS:-"1.29.0 1.33.0"}

missing=()
need() { command -v "$1" >/dev/null 2>&1 || missing+=("$1 ($2)"); }
need python3 "Python 3.11 or later"
need kubernetes-validate "pip install kubernetes-validate"
need check-jsonschema "pip install check-jsonschema"
need promtool "apt-get install prometheus"
need haproxy "apt-get install haproxy"
if ((${#missing[@]})); then
    printf 'check-deploy: missing tool: %s\n' "${missing[@]}" >&2
    echo "check-deploy: e.g. python3 -m venv /tmp/deploy-tools && /tmp/deploy-tools/bin/pip install kubernetes-validate check-jsonschema PyYAML && PATH=/tmp/deploy-tools/bin:\$PATH $0" >&2
    exit 1
fi
if ! python3 -c 'import sys, yaml; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    echo "check-deploy: $(command -v python3) must be Python 3.11+ with PyYAML (pip install PyYAML)" >&2
    exit 1
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
failed=0
fail() { echo "FAIL: $*" >&2; failed=1; }

# kubernetes-validate exits 0 on a kind it has no schema for (a typo in
# `kind`, a CRD) and only warns: count warnings as failures.
kube_validate() {
    local version=$1 out
    shift
    if out=$(kubernetes-validate -k "$version" --strict "$@" 2>&1); then
        printf '%s\n' "$out"
        if grep -q '^WARN' <<<"$out"; then
            fail "kubernetes-validate warned (unknown kind or apiVersion?) for Kubernetes $version"
        fi
    else
        printf '%s\n' "$out"
        fail "kubernetes-validate: manifests invalid for Kubernetes $version"
    fi
}

echo "==> Kubernetes manifests against the Kubernetes schemas"
manifests=()
for f in deploy/kubernetes/*.yaml; do
    [ "$(basename "$f")" = kustomization.yaml ] || manifests+=("$f")
done
((${#manifests[@]})) || fail "no manifests in deploy/kubernetes"
for v in $KUBE_VERSIONS; do
    kube_validate "$v" "${manifests[@]}"
done
if command -v kubectl >/dev/null 2>&1; then
    echo "==> kubectl kustomize deploy/kubernetes (rendered, then validated)"
    if kubectl kustomize deploy/kubernetes >"$tmp/rendered.yaml" 2>"$tmp/kustomize.err"; then
        for v in $KUBE_VERSIONS; do
            kube_validate "$v" "$tmp/rendered.yaml"
        done
    else
        cat "$tmp/kustomize.err" >&2
        fail "kubectl kustomize deploy/kubernetes failed"
    fi
else
    echo "(kubectl not on PATH: the kustomization is checked by the cross-checks only)"
fi

echo "==> .github/workflows/ci.yml against the GitHub workflow schema"
check-jsonschema --builtin-schema vendor.github-workflows .github/workflows/ci.yml ||
    fail ".github/workflows/ci.yml does not match the GitHub workflow schema"
check-jsonschema --builtin-schema custom.github-workflows-require-timeout .github/workflows/ci.yml ||
    fail ".github/workflows/ci.yml: every job needs timeout-minutes"

echo "==> deploy/docker-compose.yml against the compose specification"
check-jsonschema --builtin-schema vendor.compose-spec deploy/docker-compose.yml ||
    fail "deploy/docker-compose.yml does not match the compose specification"

echo "==> deploy/cluster/docker-compose.yml against the compose specification"
check-jsonschema --builtin-schema vendor.compose-spec deploy/cluster/docker-compose.yml ||
    fail "deploy/cluster/docker-compose.yml does not match the compose specification"

# The node names (node1...) resolve inside compose only: -dr lets a server
# whose address does not resolve pass (haproxy.cfg also says init-addr none).
echo "==> deploy/cluster/haproxy.cfg (haproxy -c)"
haproxy -c -dr -f deploy/cluster/haproxy.cfg || fail "haproxy -c: deploy/cluster/haproxy.cfg is invalid"

echo "==> deploy/prometheus.yml (promtool check config, with its rule files)"
promtool check config deploy/prometheus.yml || fail "promtool check config deploy/prometheus.yml"

echo "==> cross-checks: Kubernetes, compose, Grafana, Prometheus"
if ! python3 - "$tmp" <<'PY'; then
import json
import pathlib
import re
import sys
import tomllib

import yaml

tmp = pathlib.Path(sys.argv[1])
errors = []


def err(where, msg):
    errors.append(f"{where}: {msg}")


# The metrics the server exports (docs/OPERATING.md, src/metrics.rs).
PLAIN = {
    "switchboard_connections",
    "switchboard_sessions",
    "switchboard_connection_attempts_total",
    "switchboard_frames_received_total",
    "switchboard_frames_sent_total",
    "switchboard_received_bytes_total",
    "switchboard_sent_bytes_total",
    "switchboard_errors_sent_total",
    "switchboard_closes_total",
    "switchboard_drops_total",
    "switchboard_sdp_bytes_total",
    "switchboard_rooms",
    "switchboard_room_members",
    "switchboard_users",
}
HISTOGRAMS = {
    "switchboard_relay_latency_seconds",
    "switchboard_outbox_depth_frames",
    "switchboard_handshake_duration_seconds",
}
KNOWN_SERIES = PLAIN | {h + s for h in HISTOGRAMS for s in ("_bucket", "_sum", "_count")}
METRIC_RE = re.compile(r"\bswitchboard_[a-z0-9_]+")

# What the server accepts, read from its source: the environment variables
# (string literals "SWITCHBOARD_...") and the TOML keys (fields of
# `struct Config` in src/config.rs, less the #[serde(skip)] secrets).
src = "\n".join(p.read_text() for p in sorted(pathlib.Path("src").rglob("*.rs")))
ENV_KNOWN = set(re.findall(r'"(SWITCHBOARD_[A-Z0-9_]+)"', src))
config_rs = pathlib.Path("src/config.rs").read_text()
m = re.search(r"pub struct Config \{(.*?)\n\}", config_rs, re.S)
TOML_KEYS, TOML_SECRETS = set(), set()
if not m:
    err("src/config.rs", "no `pub struct Config { ... }` found: update scripts/check-deploy.sh")
else:
    skip = False
    for line in m.group(1).splitlines():
        s = line.strip()
        if s.startswith("#[serde(") and "skip" in s:
            skip = True
        f = re.match(r"pub (\w+):", s)
        if f:
            (TOML_SECRETS if skip else TOML_KEYS).add(f.group(1))
            skip = False
if not ENV_KNOWN:
    err("src", "no SWITCHBOARD_* variables found: update scripts/check-deploy.sh")


def check_env_names(where, names):
    for name in names:
        if name.startswith("SWITCHBOARD_") and name not in ENV_KNOWN:
            err(where, f"environment variable {name} is not read by the server (src/)")


def load_docs(path):
    try:
        return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    except yaml.YAMLError as e:
        err(str(path), f"not YAML: {e}")
        return []


def duration_seconds(text):
    """A compose duration ("10s", "1m30s", "500ms") in seconds."""
    parts = re.findall(r"(\d+(?:\.\d+)?)(us|ms|s|m|h)", str(text))
    if not parts or "".join(n + u for n, u in parts) != str(text):
        return None
    scale = {"us": 1e-6, "ms": 1e-3, "s": 1, "m": 60, "h": 3600}
    return sum(float(n) * scale[u] for n, u in parts)


def port_of(addr):
    return int(str(addr).rsplit(":", 1)[1])


def runtime_image():
    froms = re.findall(r"^FROM\s+(\S+)", pathlib.Path("Dockerfile").read_text(), re.M)
    return froms[-1] if froms else ""


RUNTIME = runtime_image()
# What a debian:*-slim runtime image has: coreutils, bash, grep; no curl/wget.
IMAGE_HAS_SHELL_TOOLS = RUNTIME.startswith(("debian:", "ubuntu:"))

# ---------------------------------------------------------------- Kubernetes
kdir = pathlib.Path("deploy/kubernetes")
objects = {}
for path in sorted(kdir.glob("*.yaml")):
    if path.name == "kustomization.yaml":
        continue
    for doc in load_docs(path):
        if "metadata" in doc and "namespace" in doc["metadata"]:
            err(str(path), f"{doc['kind']}/{doc['metadata'].get('name')} names a namespace; the manifests are namespace-agnostic")
        objects[(doc.get("kind"), doc.get("metadata", {}).get("name"))] = (path, doc)

kust_path = kdir / "kustomization.yaml"
if not kust_path.exists():
    err(str(kust_path), "missing")
else:
    kust_text = kust_path.read_text()
    kust = yaml.safe_load(kust_text) or {}
    for res in kust.get("resources", []):
        if not (kdir / res).exists():
            err(str(kust_path), f"lists {res}, which does not exist")
    for path in kdir.glob("*.yaml"):
        if path.name != "kustomization.yaml" and path.name not in kust_text:
            err(str(kust_path), f"neither lists nor mentions {path.name}")
    if "secret.example.yaml" in kust.get("resources", []):
        err(str(kust_path), "must not apply secret.example.yaml (placeholder values)")

cm_path, cm = objects.get(("ConfigMap", "switchboard-config"), (None, None))
toml_conf = {}
if cm is None:
    err(str(kdir), "no ConfigMap switchboard-config")
else:
    text = cm.get("data", {}).get("switchboard.toml")
    if text is None:
        err(str(cm_path), "no switchboard.toml key")
    else:
        try:
            toml_conf = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            err(str(cm_path), f"switchboard.toml is not TOML: {e}")
        for key in toml_conf:
            if key in TOML_SECRETS:
                err(str(cm_path), f"switchboard.toml sets the secret {key}; secrets come from the Secret")
            elif TOML_KEYS and key not in TOML_KEYS:
                err(str(cm_path), f"switchboard.toml key {key} is not a server option (src/config.rs refuses unknown keys)")

dep_path, dep = objects.get(("Deployment", "switchboard"), (None, None))
secret_example = (kdir / "secret.example.yaml").read_text() if (kdir / "secret.example.yaml").exists() else ""
if dep is None:
    err(str(kdir), "no Deployment switchboard")
else:
    where = str(dep_path)
    pod = dep["spec"]["template"]
    spec = pod["spec"]
    labels = pod["metadata"].get("labels", {})
    if dep["spec"]["selector"].get("matchLabels", {}).items() - labels.items():
        err(where, "selector does not match the pod labels")
    cs = [c for c in spec["containers"] if c["name"] == "switchboard"]
    if not cs:
        err(where, "no container named switchboard")
    else:
        c = cs[0]
        ports = {p.get("name"): p["containerPort"] for p in c.get("ports", [])}
        env = {e["name"]: e for e in c.get("env", [])}
        check_env_names(where, env)
        for name, e in env.items():
            ref = e.get("valueFrom", {})
            if "configMapKeyRef" in ref:
                r = ref["configMapKeyRef"]
                if r["name"] != "switchboard-config" or cm is None or r["key"] not in cm.get("data", {}):
                    err(where, f"{name} refers to a ConfigMap key that configmap.yaml lacks: {r['name']}/{r['key']}")
            if "secretKeyRef" in ref:
                r = ref["secretKeyRef"]
                if r["name"] != "switchboard-secrets" or r["key"] not in secret_example:
                    err(where, f"{name} refers to {r['name']}/{r['key']}, which secret.example.yaml does not show")
        for want in ("SWITCHBOARD_JWT_SECRET", "SWITCHBOARD_TURN_SECRET", "SWITCHBOARD_ADMIN_TOKEN"):
            if want not in env and want + "_FILE" not in env:
                err(where, f"no {want} from the Secret")
        if env.get("SWITCHBOARD_CONFIG", {}).get("value", "").rsplit("/", 1)[0] not in {
            vm["mountPath"] for vm in c.get("volumeMounts", [])
        }:
            err(where, "SWITCHBOARD_CONFIG is not in a mounted volume")
        for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
            get = c.get(probe, {}).get("httpGet", {})
            if get.get("path") != path:
                err(where, f"{probe} must GET {path}")
            if get.get("port") not in ports and get.get("port") not in ports.values():
                err(where, f"{probe} port {get.get('port')} is not a container port")
        if toml_conf.get("listen") and ports.get("http") != port_of(toml_conf["listen"]):
            err(where, f"port http {ports.get('http')} is not the listen port of switchboard.toml")
        ann = pod["metadata"].get("annotations", {})
        if ann.get("prometheus.io/scrape") != "true":
            err(where, "pod lacks prometheus.io/scrape: \"true\"")
        mport = ann.get("prometheus.io/port")
        if mport is None or int(mport) not in ports.values():
            err(where, f"prometheus.io/port {mport} is not a container port")
        elif "metrics_listen" in toml_conf and int(mport) != port_of(toml_conf["metrics_listen"]):
            err(where, f"prometheus.io/port {mport} is not metrics_listen of switchboard.toml")
        elif "metrics_listen" not in toml_conf and ports.get("http") != int(mport):
            err(where, "without metrics_listen the metrics are on the http port")
        if ann.get("prometheus.io/path", "/metrics") != toml_conf.get("metrics_path", "/metrics"):
            err(where, "prometheus.io/path is not the server's metrics_path")
        # Grace: preStop sleep + shutdown_grace + a second for close
        # handshakes must fit in terminationGracePeriodSeconds.
        pre = c.get("lifecycle", {}).get("preStop", {})
        pre_s = 0
        if "exec" in pre:
            cmd = pre["exec"]["command"]
            if not IMAGE_HAS_SHELL_TOOLS:
                err(where, f"preStop runs {cmd[0]}, which the runtime image {RUNTIME} may not have")
            if cmd[0] in ("sleep", "/bin/sleep", "/usr/bin/sleep"):
                pre_s = float(cmd[1])
        elif "sleep" in pre:
            pre_s = float(pre["sleep"]["seconds"])
        grace_s = toml_conf.get("shutdown_grace", 5000) / 1000
        tgps = spec.get("terminationGracePeriodSeconds", 30)
        if tgps <= pre_s + grace_s + 1:
            err(where, f"terminationGracePeriodSeconds {tgps} <= preStop {pre_s}s + shutdown_grace {grace_s}s + 1s")
        psc, csc = spec.get("securityContext", {}), c.get("securityContext", {})
        if not (psc.get("runAsNonRoot") or csc.get("runAsNonRoot")):
            err(where, "runAsNonRoot is not set")
        uid = csc.get("runAsUser", psc.get("runAsUser"))
        if not isinstance(uid, int) or uid == 0:
            err(where, "runAsUser must be a non-zero number (the image names its USER, so runAsNonRoot needs it)")
        if csc.get("readOnlyRootFilesystem") is not True:
            err(where, "readOnlyRootFilesystem must be true")
        if csc.get("allowPrivilegeEscalation") is not False:
            err(where, "allowPrivilegeEscalation must be false")
        res = c.get("resources", {})
        if not res.get("requests", {}).get("cpu"):
            err(where, "no CPU request (the HPA scales on CPU utilization of the request)")
        if spec.get("enableServiceLinks") is not False:
            err(where, "enableServiceLinks must be false: a Service named switchboard would inject SWITCHBOARD_* variables")

    for (kind, name), (path, doc) in objects.items():
        sel = None
        if kind == "Service" and doc["spec"].get("selector", {}).get("app.kubernetes.io/component") == "signaling":
            sel = doc["spec"]["selector"]
            for p in doc["spec"]["ports"]:
                if cs and isinstance(p.get("targetPort"), str) and p["targetPort"] not in ports:
                    err(str(path), f"targetPort {p['targetPort']} is not a container port")
        elif kind == "PodDisruptionBudget":
            sel = doc["spec"]["selector"]["matchLabels"]
        elif kind == "HorizontalPodAutoscaler":
            ref = doc["spec"]["scaleTargetRef"]
            if (ref["kind"], ref["name"]) != ("Deployment", "switchboard"):
                err(str(path), "does not scale the switchboard Deployment")
        if sel is not None and sel.items() - labels.items():
            err(str(path), f"{kind}/{name} selector matches no switchboard pod")

# ------------------------------------------------------------------- compose
cpath = pathlib.Path("deploy/docker-compose.yml")
docs = load_docs(cpath)
compose = docs[0] if docs else {}
services = compose.get("services", {})
sb = services.get("switchboard")
metrics_port = None
if sb is None:
    err(str(cpath), "no service switchboard")
else:
    build = sb.get("build", {})
    ctx = (cpath.parent / build.get("context", ".")).resolve()
    if not (ctx / build.get("dockerfile", "Dockerfile")).is_file():
        err(str(cpath), f"build: no {build.get('dockerfile', 'Dockerfile')} in {ctx}")
    env = sb.get("environment", {})
    if isinstance(env, list):
        env = dict(e.split("=", 1) for e in env)
    check_env_names(str(cpath), env)
    if env.get("SWITCHBOARD_LOG_FORMAT") != "json":
        err(str(cpath), "SWITCHBOARD_LOG_FORMAT should be json")
    published = {str(p).split(":")[-1] for p in sb.get("ports", [])}
    listen_port = port_of(env.get("SWITCHBOARD_LISTEN", "0.0.0.0:8080"))
    if str(listen_port) not in published:
        err(str(cpath), f"port {listen_port} is not published")
    if "SWITCHBOARD_METRICS_LISTEN" in env:
        metrics_port = port_of(env["SWITCHBOARD_METRICS_LISTEN"])
        if str(metrics_port) not in published:
            err(str(cpath), f"metrics port {metrics_port} is not published")
    grace = int(env.get("SWITCHBOARD_SHUTDOWN_GRACE_MS", 5000)) / 1000
    stop = duration_seconds(sb.get("stop_grace_period", "10s"))
    if stop is None or stop <= grace + 1:
        err(str(cpath), f"stop_grace_period {sb.get('stop_grace_period')} must exceed the shutdown grace {grace}s + 1s")
    hc = sb.get("healthcheck", {})
    test = hc.get("test", [])
    if isinstance(test, str):
        test = ["CMD-SHELL", test]
    if test and not hc.get("disable"):
        if "/healthz" not in " ".join(test):
            err(str(cpath), "the healthcheck does not ask /healthz")
        if IMAGE_HAS_SHELL_TOOLS and len(test) > 1 and test[0] == "CMD" and test[1] in ("curl", "wget"):
            err(str(cpath), f"the healthcheck runs {test[1]}, which {RUNTIME} does not have")
        if not IMAGE_HAS_SHELL_TOOLS:
            err(str(cpath), f"the healthcheck runs a program; check that {RUNTIME} has it")
for name, svc in services.items():
    for vol in svc.get("volumes", []):
        host = vol.split(":", 1)[0] if isinstance(vol, str) else vol.get("source", "")
        if host.startswith((".", "/")) and not (cpath.parent / host).exists():
            err(str(cpath), f"service {name} mounts {host}, which does not exist")
    if name != "switchboard":
        for e in (svc.get("environment") or {}):
            if "SWITCHBOARD" in str(e):
                err(str(cpath), f"service {name} sets {e}")

# ----------------------------------------------------------- cluster compose
# Nodes = the services that set SWITCHBOARD_REDIS_URL. Each must point at a
# Redis service of the file, be checked on /readyz (what HAProxy asks) and
# be listed in haproxy.cfg's backend with its listen port; and every server
# of haproxy.cfg must be such a node.
ccpath = pathlib.Path("deploy/cluster/docker-compose.yml")
cdocs = load_docs(ccpath)
cservices = (cdocs[0] if cdocs else {}).get("services", {})
nodes = {}
for name, svc in cservices.items():
    where = f"{ccpath} service {name}"
    env = svc.get("environment") or {}
    if isinstance(env, list):
        env = dict(e.split("=", 1) for e in env)
    for vol in svc.get("volumes", []):
        host = vol.split(":", 1)[0] if isinstance(vol, str) else vol.get("source", "")
        if host.startswith((".", "/")) and not (ccpath.parent / host).exists():
            err(where, f"mounts {host}, which does not exist")
    if "SWITCHBOARD_REDIS_URL" not in env:
        if any("SWITCHBOARD" in str(e) for e in env):
            err(where, "sets SWITCHBOARD_* variables but is no node (no SWITCHBOARD_REDIS_URL)")
        continue
    nodes[name] = port_of(env.get("SWITCHBOARD_LISTEN", "0.0.0.0:8080"))
    check_env_names(where, env)
    build = svc.get("build", {})
    ctx = (ccpath.parent / build.get("context", ".")).resolve()
    if not (ctx / build.get("dockerfile", "Dockerfile")).is_file():
        err(where, f"build: no {build.get('dockerfile', 'Dockerfile')} in {ctx}")
    m = re.fullmatch(r"redis://([^:/]+):(\d+)(/\d*)?", str(env["SWITCHBOARD_REDIS_URL"]))
    if not m:
        err(where, f"SWITCHBOARD_REDIS_URL {env['SWITCHBOARD_REDIS_URL']} is not redis://SERVICE:PORT")
    elif m.group(1) not in cservices:
        err(where, f"SWITCHBOARD_REDIS_URL names {m.group(1)}, which is no service of the file")
    elif m.group(1) not in (svc.get("depends_on") or {}):
        err(where, f"does not depend on {m.group(1)}")
    if env.get("SWITCHBOARD_LOG_FORMAT") != "json":
        err(where, "SWITCHBOARD_LOG_FORMAT should be json")
    grace = int(env.get("SWITCHBOARD_SHUTDOWN_GRACE_MS", 5000)) / 1000
    stop = duration_seconds(svc.get("stop_grace_period", "10s"))
    if stop is None or stop <= grace + 1:
        err(where, f"stop_grace_period {svc.get('stop_grace_period')} must exceed the shutdown grace {grace}s + 1s")
    test = svc.get("healthcheck", {}).get("test", [])
    if isinstance(test, str):
        test = ["CMD-SHELL", test]
    if "/readyz" not in " ".join(test):
        err(where, "the healthcheck does not ask /readyz")
    if len(test) > 1 and test[0] == "CMD" and test[1] in ("curl", "wget"):
        err(where, f"the healthcheck runs {test[1]}, which {RUNTIME} does not have")
    for key, want in (("read_only", True), ("cap_drop", ["ALL"])):
        if svc.get(key) != want:
            err(where, f"{key} should be {want}")
if len(nodes) < 2:
    err(str(ccpath), f"{len(nodes)} node(s) (services with SWITCHBOARD_REDIS_URL); a cluster needs two or more")

hpath = ccpath.parent / "haproxy.cfg"
hcfg = hpath.read_text() if hpath.exists() else ""
if not hcfg:
    err(str(hpath), "missing or empty")
hmounted = any(
    str(v).split(":", 1)[0] in ("./haproxy.cfg", "haproxy.cfg") for svc in cservices.values() for v in svc.get("volumes", [])
)
if hcfg and not hmounted:
    err(str(ccpath), "no service mounts ./haproxy.cfg")
hlines = [l.split("#", 1)[0].split() for l in hcfg.splitlines()]
hlines = [l for l in hlines if l]
servers = {}
for l in hlines:
    if l[0] == "server" and len(l) >= 3:
        host, _, port = l[2].rpartition(":")
        servers[host] = int(port) if port.isdigit() else None
for host, port in servers.items():
    if host not in nodes:
        err(str(hpath), f"server {host} is not a node of {ccpath.name}")
    elif port != nodes[host]:
        err(str(hpath), f"server {host} port {port} is not the node's listen port {nodes[host]}")
for name in nodes:
    if name not in servers:
        err(str(hpath), f"node {name} is not a server of the backend")
if hcfg:
    words = [" ".join(l) for l in hlines]
    for want in ("mode tcp", "option httpchk GET /readyz", "balance leastconn"):
        if want not in words:
            err(str(hpath), f"no `{want}`")
    if not any(w.startswith("timeout tunnel ") for w in words):
        err(str(hpath), "no `timeout tunnel` (WebSockets would be cut at the client/server timeout)")
    if any("on-marked-down shutdown-sessions" in w for w in words):
        err(str(hpath), "on-marked-down shutdown-sessions would cut every client when Redis is unreachable")
    maxconn = [int(l[1]) for l in hlines if l[0] == "maxconn" and len(l) > 1 and l[1].isdigit()]
    lb = next((svc for svc in cservices.values() if hmounted and any("haproxy.cfg" in str(v) for v in svc.get("volumes", []))), {})
    nofile = lb.get("ulimits", {}).get("nofile", {})
    nofile = nofile.get("soft") if isinstance(nofile, dict) else nofile
    if maxconn and isinstance(nofile, int) and nofile < 2 * max(maxconn) + 1000:
        err(str(ccpath), f"the load balancer's nofile {nofile} is too small for maxconn {max(maxconn)} (2 per connection)")

# ---------------------------------------------------------------- Prometheus
ppath = pathlib.Path("deploy/prometheus.yml")
prom = (load_docs(ppath) or [{}])[0]
targets = [t for job in prom.get("scrape_configs", []) for sc in job.get("static_configs", []) for t in sc.get("targets", [])]
if metrics_port is not None and f"switchboard:{metrics_port}" not in targets:
    err(str(ppath), f"does not scrape switchboard:{metrics_port} (the compose metrics port)")

rules = {"groups": []}


def check_exprs(where, exprs, need_metric=True):
    for label, expr in exprs:
        if not isinstance(expr, str) or not expr.strip():
            err(where, f"{label}: empty expr")
            continue
        names = set(METRIC_RE.findall(expr))
        if not names and need_metric:
            err(where, f"{label}: expr names no switchboard_ metric: {expr}")
        for n in sorted(names - KNOWN_SERIES):
            err(where, f"{label}: unknown metric {n}")
        for h in HISTOGRAMS:
            if re.search(rf"\b{h}\b(?!_)", expr):
                err(where, f"{label}: histogram {h} is queried as _bucket, _sum or _count")


for rule_file in prom.get("rule_files", []):
    rpath = ppath.parent / rule_file
    rdoc = (load_docs(rpath) or [{}])[0] if rpath.exists() else {}
    check_exprs(str(rpath), [
        (r.get("alert") or r.get("record"), r.get("expr")) for g in rdoc.get("groups", []) for r in g.get("rules", [])
    ], need_metric=False)

# ------------------------------------------------------------------- Grafana
for gpath in sorted(pathlib.Path("deploy/grafana").glob("*.json")):
    where = str(gpath)
    try:
        dash = json.loads(gpath.read_text())
    except json.JSONDecodeError as e:
        err(where, f"not JSON: {e}")
        continue
    if not any(i.get("name") == "DS_PROMETHEUS" and i.get("type") == "datasource" for i in dash.get("__inputs", [])):
        err(where, "no DS_PROMETHEUS datasource input")
    if not isinstance(dash.get("schemaVersion"), int) or dash["schemaVersion"] < 36:
        err(where, f"schemaVersion {dash.get('schemaVersion')} is older than 36")
    panels = []
    for p in dash.get("panels", []):
        panels.append(p)
        panels.extend(p.get("panels", []))  # collapsed rows
    if not panels:
        err(where, "no panels")
    ids = [p.get("id") for p in panels]
    if len(ids) != len(set(ids)):
        err(where, "panel ids are not unique")
    group = {"name": gpath.stem, "rules": []}
    for p in panels:
        if p.get("type") == "row":
            continue
        label = f"panel {p.get('id')} {p.get('title')!r}"
        if p.get("datasource", {}).get("uid") != "${DS_PROMETHEUS}":
            err(where, f"{label}: datasource is not ${{DS_PROMETHEUS}}")
        if not p.get("gridPos"):
            err(where, f"{label}: no gridPos")
        targets = p.get("targets", [])
        if not targets:
            err(where, f"{label}: no targets")
        check_exprs(where, [(f"{label} {t.get('refId')}", t.get("expr")) for t in targets])
        for t in targets:
            expr = t.get("expr") or ""
            # Grafana's variables, as promtool cannot parse them.
            expr = re.sub(r"\$__(rate_)?interval|\$__range", "5m", expr)
            expr = re.sub(r"\$\{?\w+\}?", ".*", expr)
            group["rules"].append({"record": f"dashboard:panel_{p.get('id')}:{t.get('refId')}", "expr": expr})
    rules["groups"].append(group)
(tmp / "dashboard-rules.yml").write_text(yaml.safe_dump(rules, sort_keys=False))

for e in errors:
    print("FAIL:", e, file=sys.stderr)
print(f"{len(objects)} Kubernetes objects, {len(services)} + {len(cservices)} compose services "
      f"({len(nodes)} cluster nodes, {len(servers)} HAProxy servers), "
      f"{sum(len(g['rules']) for g in rules['groups'])} dashboard queries: "
      f"{'ok' if not errors else str(len(errors)) + ' problem(s)'}")
sys.exit(1 if errors else 0)
PY
    fail "cross-checks"
fi

echo "==> Grafana PromQL (promtool check rules on the dashboard's queries)"
if [ -s "$tmp/dashboard-rules.yml" ]; then
    promtool check rules "$tmp/dashboard-rules.yml" || fail "a dashboard query is not valid PromQL"
else
    fail "no dashboard queries to check"
fi

if ((failed)); then
    echo "check-deploy: FAILED" >&2
    exit 1
fi
echo "check-deploy: all deployment files OK"
