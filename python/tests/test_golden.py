"""The golden frames of tests/data/golden/: each file decodes to what
manifest.json says, and (plain frames) the manifest encodes to the same bytes."""

from __future__ import annotations

import base64
import json
import unittest

from google.protobuf import json_format
from support import REPO

from switchboard_signaling import envelope, frame, sdp

GOLDEN = REPO / "tests/data/golden"

# Bytes fields the manifest writes as lowercase hex (README.md); the proto3
# JSON mapping that json_format parses wants base64.
HEX_FIELDS = ("resume_token",)


def proto_json(fields: dict) -> dict:
    """A manifest message's fields in the proto3 JSON mapping."""
    out = dict(fields)
    for name in HEX_FIELDS:
        if name in out:
            raw = bytes.fromhex(out[name])
            assert raw.hex() == out[name], f"{name} is not lowercase hex"
            out[name] = base64.b64encode(raw).decode()
    return out


class Golden(unittest.TestCase):
    def test_the_manifest_covers_every_message_type_and_session_resume(self):
        manifest = json.loads((GOLDEN / "manifest.json").read_text())
        messages = [fr["message"] for f in manifest["files"] for fr in f["frames"]]
        self.assertEqual(set(envelope.TYPES) - {m["type"] for m in messages}, set())
        welcomes = [m for m in messages if m["type"] == "welcome"]
        self.assertTrue(any(m["type"] == "hello" and "resume_token" in m for m in messages))
        self.assertTrue(any("resume_token" in m and not m["resumed"] and "resume_refusal" not in m for m in welcomes))
        self.assertTrue(any(m.get("resumed") for m in welcomes))
        self.assertTrue(any("resume_refusal" in m for m in welcomes))

    def test_every_file_decodes_to_the_manifest_and_plain_frames_encode_back(self):
        manifest = json.loads((GOLDEN / "manifest.json").read_text())
        self.assertGreaterEqual(len(manifest["files"]), 20)
        for entry in manifest["files"]:
            with self.subTest(entry["file"]):
                data = (GOLDEN / entry["file"]).read_bytes()
                got = list(frame.split(data))
                self.assertEqual(len(got), len(entry["frames"]))
                encoded = b""
                for f, want in zip(got, entry["frames"]):
                    fields = proto_json(want["message"])
                    name = fields.pop("type")
                    fields.pop("deflated", None)
                    type_, message = envelope.TYPES[name]
                    self.assertEqual((f.type, f.flags, f.seq), (type_, want["flags"], want["seq"]))
                    body = message.FromString(f.payload)
                    text = fields.pop("sdp", None)
                    if text is not None:
                        wire = body.sdp
                        plain = sdp.inflate(wire) if f.flags & frame.DEFLATE_SDP else wire.decode()
                        self.assertEqual(plain, text)
                        body.ClearField("sdp")
                    self.assertEqual(body, json_format.ParseDict(fields, message()))
                    if text is not None:
                        body.sdp = wire
                    encoded += frame.encode(type_, f.flags, f.seq, body.SerializeToString())
                    if not f.flags & frame.DEFLATE_SDP:
                        expected = json_format.ParseDict(fields, message())
                        if text is not None:
                            expected.sdp = text.encode()
                        self.assertEqual(expected.SerializeToString(), f.payload)
                self.assertEqual(encoded, data)


if __name__ == "__main__":
    unittest.main()
