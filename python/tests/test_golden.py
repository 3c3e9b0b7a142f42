"""The golden frames of tests/data/golden/: each file decodes to what
manifest.json says, and (plain frames) the manifest encodes to the same bytes."""

from __future__ import annotations

import json
import pathlib
import unittest
import zlib

from google.protobuf import json_format

from switchboard_signaling import envelope, frame

REPO = pathlib.Path(__file__).resolve().parents[2]
GOLDEN = REPO / "tests/data/golden"
DICTIONARY = (REPO / "crates/protocol/src/sdp_dictionary_v1.txt").read_bytes()


def inflate(data: bytes) -> bytes:
    d = zlib.decompressobj(wbits=-15, zdict=DICTIONARY)
    out = d.decompress(data) + d.flush()
    assert d.eof and not d.unused_data, "not exactly one raw DEFLATE stream"
    return out


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
                    sdp = fields.pop("sdp", None)
                    if sdp is not None:
                        wire = body.sdp
                        plain = inflate(wire) if f.flags & frame.DEFLATE_SDP else wire
                        self.assertEqual(plain.decode(), sdp)
                        body.ClearField("sdp")
                    self.assertEqual(body, json_format.ParseDict(fields, message()))
                    if sdp is not None:
                        body.sdp = wire
                    encoded += frame.encode(type_, f.flags, f.seq, body.SerializeToString())
                    if not f.flags & frame.DEFLATE_SDP:
                        expected = json_format.ParseDict(fields, message())
                        if sdp is not None:
                            expected.sdp = sdp.encode()
                        self.assertEqual(expected.SerializeToString(), f.payload)
                self.assertEqual(encoded, data)


if __name__ == "__main__":
    unittest.main()
