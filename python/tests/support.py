"""What the Python tests share: the repository, and the switchboard binary
started on port 0 (or a given address) for a test class or one test."""

from __future__ import annotations

import os
import pathlib
import re
import subprocess
import threading
import unittest
from typing import Mapping, Sequence

REPO = pathlib.Path(__file__).resolve().parents[2]


def start_server(
    args: Sequence[str] = (), env: Mapping[str, str] = {}, listen: str = "127.0.0.1:0"
) -> tuple[subprocess.Popen, str]:
    """The binary with `args` and `env` added, on port 0 unless `listen`
    says otherwise; the port it got is read from its "listening" line."""
    binary = os.environ.get("SWITCHBOARD_BIN", str(REPO / "target/debug/switchboard"))
    if not os.path.exists(binary):
        raise RuntimeError(f"no switchboard binary at {binary}: run cargo build (or set SWITCHBOARD_BIN)")
    full_env = dict(os.environ, RUST_LOG="warn,switchboard::listen=info", NO_COLOR="1", **env)
    child = subprocess.Popen(
        [binary, "--listen", listen, *args], stdout=subprocess.PIPE, env=full_env, text=True
    )
    seen = ""
    for line in child.stdout:
        seen += line
        m = re.search(r"switchboard::listen: listening addr=(\S+)", line)
        if m:
            # Read on, so that the server never blocks on a full pipe.
            child.drain = threading.Thread(target=child.stdout.read, daemon=True)
            child.drain.start()
            return child, f"ws://{m.group(1)}/ws"
    child.wait()
    raise RuntimeError(f"switchboard exited without listening: {seen}")


def stop_server(child: subprocess.Popen) -> None:
    child.kill()
    child.wait()
    if hasattr(child, "drain"):
        child.drain.join()
    child.stdout.close()


class ServerTestCase(unittest.IsolatedAsyncioTestCase):
    """A test class with one live server: `self.url`."""

    @classmethod
    def setUpClass(cls):
        cls.server, cls.url = start_server()

    @classmethod
    def tearDownClass(cls):
        stop_server(cls.server)
