#!/usr/bin/env python3
"""Checks that each workspace crate's `rust-version` is its real minimum.

Only one toolchain can be installed here, so the minimum is checked from
two sides without building on an older compiler:

- from below: every crate's declared `rust-version` must be at least the
  highest `rust-version` declared by any package it builds (normal and build
  dependencies, as locked in Cargo.lock, for the host's target). A lower
  declaration is a lie that a user of an older compiler finds out the hard
  way;
- our own code: clippy's `incompatible_msrv` lint (on by default; CI runs
  clippy with warnings denied) refuses any standard-library item newer than
  the declared `rust-version`.

A declaration above the dependencies' is reported (it may be needed by a
language feature, which only a build on that compiler could prove).

Usage: scripts/check-msrv.py   (needs cargo on PATH)
"""

import json
import subprocess
import sys


def version(v):
    parts = [int(p) for p in (v or "0").split(".")]
    return tuple(parts + [0] * (3 - len(parts)))


def show(v):
    return ".".join(str(p) for p in v[:2]) if v[2] == 0 else ".".join(map(str, v))


def main():
    meta = json.loads(
        subprocess.check_output(
            ["cargo", "metadata", "--format-version", "1", "--locked", "--filter-platform",
             subprocess.check_output(["rustc", "-vV"], text=True).split("host: ")[1].split()[0]]
        )
    )
    packages = {p["id"]: p for p in meta["packages"]}
    nodes = {n["id"]: n for n in meta["resolve"]["nodes"]}
    members = set(meta["workspace_members"])
    failed = False
    for member in sorted(members, key=lambda m: packages[m]["name"]):
        pkg = packages[member]
        declared = version(pkg.get("rust_version"))
        # Every package built for this crate (not its dev-dependencies,
        # which a user of the crate never builds).
        seen, todo, highest, culprit = set(), [member], (0, 0, 0), None
        while todo:
            node = nodes[todo.pop()]
            for dep in node["deps"]:
                kinds = {k["kind"] for k in dep["dep_kinds"]}
                if node["id"] == member and kinds == {"dev"}:
                    continue
                if kinds == {"dev"}:
                    continue
                if dep["pkg"] in seen:
                    continue
                seen.add(dep["pkg"])
                todo.append(dep["pkg"])
                if dep["pkg"] in members:
                    continue
                need = version(packages[dep["pkg"]].get("rust_version"))
                if need > highest:
                    highest, culprit = need, packages[dep["pkg"]]
        name = pkg["name"]
        if culprit is None:
            print(f"{name}: rust-version {show(declared)} (no dependency declares one)")
            continue
        why = f"{culprit['name']} {culprit['version']} needs {show(highest)}"
        if declared < highest:
            print(f"FAIL {name}: rust-version {show(declared)} is below its dependencies' ({why})")
            failed = True
        elif declared > highest:
            print(f"{name}: rust-version {show(declared)}, above its dependencies' ({why}): "
                  "Cargo.toml should say which language feature needs it")
        else:
            print(f"{name}: rust-version {show(declared)} ({why})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
