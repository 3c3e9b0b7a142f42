"""What the Python tests share: the repository, and the switchboard binary
started on port 0 for a test class."""

from __future__ import annotations

import os
import pathlib
import re
import subprocess
import unittest

REPO = pathlib.Path(__file__).resolve().parents[2]


def start_server() -> tuple[subprocess.Popen, str]:
    """The binary on port 0; the port it got is read from its "listening" line."""
    binary = os.environ.get("SWITCHBOARD_BIN", str(REPO / "target/debug/switchboard"))
    if not os.path.exists(binary):
        raise RuntimeError(f"no switchboard binary at {binary}: run cargo build (or set SWITCHBOARD_BIN)")
    env = dict(os.environ, RUST_LOG="warn,switchboard::listen=info", NO_COLOR="1")
    child = subprocess.Popen([binary, "--listen", "127.0.0.1:0"], stdout=subprocess.PIPE, env=env, text=True)
    seen = ""
    for line in child.stdout:
        seen += line
        m = re.search(r"switchboard::listen: listening addr=(\S+)", line)
        if m:
            return child, f"ws://{m.group(1)}/ws"
    raise RuntimeError(f"switchboard exited without listening: {seen}")


def stop_server(child: subprocess.Popen) -> None:
    child.kill()
    child.wait()
    child.stdout.close()


class ServerTestCase(unittest.IsolatedAsyncioTestCase):
    """A test class with one live server: `self.url`."""

    @classmethod
    def setUpClass(cls):
        cls.server, cls.url = start_server()

    @classmethod
    def tearDownClass(cls):
        stop_server(cls.server)
