"""The golden frames of tests/data/golden/: each file decodes to what
manifest.json says, and (plain frames) the manifest encodes to the same bytes."""

from __future__ import annotations

import json
import unittest

from google.protobuf import json_format
from support import REPO

from switchboard_signaling import envelope, frame, sdp

GOLDEN = REPO / "tests/data/golden"


class Golden(unittest.TestCase):
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
                    fields = dict(want["message"])
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
