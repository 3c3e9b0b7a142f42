"""Runs the language-neutral scripted exchanges of tests/conformance/ against
a live switchboard binary, over binary frames (see the README there)."""

from __future__ import annotations

import asyncio
import json
import os
import unittest

import websockets
from support import REPO, ServerTestCase, start_server, stop_server

from switchboard_signaling import envelope, frame

VECTORS = json.loads((REPO / "tests/conformance/exchanges.json").read_text())


def matches(want, got) -> bool:
    if isinstance(want, dict):
        return isinstance(got, dict) and all(k in got and matches(v, got[k]) for k, v in want.items())
    if isinstance(want, list):
        return isinstance(got, list) and len(want) == len(got) and all(map(matches, want, got))
    return want == got


class Client:
    def __init__(self, ws):
        self.ws = ws
        self.pending: list[dict] = []

    async def next(self) -> dict:
        """The next frame as an envelope, or {"close": code} at the end."""
        while True:
            while self.pending:
                v = self.pending.pop(0)
                if v["type"] == "ping":
                    await self.ws.send(envelope.to_frame({"type": "pong", "body": {"nonce": v["body"].get("nonce", "0")}}))
                    continue
                return v
            try:
                data = await asyncio.wait_for(self.ws.recv(), 5)
            except websockets.ConnectionClosed as closed:
                return {"close": closed.rcvd.code if closed.rcvd else None}
            if isinstance(data, bytes):
                self.pending += [envelope.from_frame(f) for f in frame.split(data, 1 << 20, 1 << 10)]


class Exchanges(ServerTestCase):
    async def test_every_exchange(self):
        self.assertGreaterEqual(len(VECTORS["exchanges"]), 10)
        for n, exchange in enumerate(VECTORS["exchanges"]):
            with self.subTest(exchange["name"]):
                if "server" not in exchange:
                    await self.run_exchange(n, exchange, self.url)
                    continue
                # A server of its own, started with the profile's flags.
                profile = VECTORS["servers"][exchange["server"]]
                server, url = start_server(profile.get("args", []), profile.get("env", {}))
                try:
                    await self.run_exchange(n, exchange, url)
                finally:
                    stop_server(server)

    async def run_exchange(self, n: int, exchange: dict, url: str):
        tag = f"{n}-py-{os.getpid()}"
        names: dict[str, str] = {}
        clients: dict[str, Client] = {}

        def substitute(v):
            if isinstance(v, str) and v.startswith("$"):
                if v in names:
                    return names[v]
                if v == "$room":
                    return f"conf-{tag}"
                if v == "$long-room-id":
                    return "r" * 65
                if v.startswith("$user-"):
                    return f"{v[6:]}-{tag}"
                raise KeyError(f"unknown placeholder {v}")
            if isinstance(v, list):
                return [substitute(x) for x in v]
            if isinstance(v, dict):
                return {k: substitute(x) for k, x in v.items()}
            return v

        async def client(name: str, first=None) -> Client:
            if name not in clients:
                ws = await websockets.connect(url, max_size=None)
                await ws.send(envelope.to_frame(substitute(first or {"type": "hello", "body": {"protocolVersion": 1}})))
                clients[name] = Client(ws)
            return clients[name]

        try:
            for i, step in enumerate(exchange["steps"]):
                at = f"{exchange['name']}, step {i} ({step['client']})"
                if "hello" in step:
                    self.assertNotIn(step["client"], clients, f"{at}: hello must come first")
                    await client(step["client"], step["hello"])
                    continue
                c = await client(step["client"])
                if "send" in step:
                    await c.ws.send(envelope.to_frame(substitute(step["send"])))
                elif "sendHex" in step:
                    await c.ws.send(bytes.fromhex(step["sendHex"].replace(" ", "")) * step.get("times", 1))
                elif "expectClose" in step:
                    got = await c.next()
                    self.assertEqual(got, {"close": step["expectClose"]}, at)
                else:
                    got = await c.next()
                    if got["type"] == "welcome":
                        names[f"${step['client']}"] = got["body"]["peerId"]
                    want = substitute(step["expect"])
                    self.assertTrue(matches(want, got), f"{at}: wanted {want}, got {got}")
                    for path in step.get("absent", []):
                        value = got
                        for key in path.split("."):
                            value = value.get(key) if isinstance(value, dict) else None
                        self.assertIsNone(value, f"{at}: {path} should be absent in {got}")
        finally:
            for c in clients.values():
                await c.ws.close()


class Matcher(unittest.TestCase):
    def test_the_matcher_refuses_what_differs(self):
        want = {"type": "joined", "body": {"members": [{"peerId": "1"}]}}
        self.assertTrue(matches(want, {"type": "joined", "seq": 3, "body": {"members": [{"peerId": "1", "x": 1}]}}))
        self.assertFalse(matches(want, {"type": "joined", "body": {"members": []}}))
        self.assertFalse(matches(want, {"type": "joined", "body": {"members": [{"peerId": "2"}]}}))
        self.assertFalse(matches(want, {"type": "left"}))


if __name__ == "__main__":
    unittest.main()
