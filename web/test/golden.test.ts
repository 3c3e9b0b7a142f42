// The golden frames in tests/data/golden, written by the Rust encoder
// (tests/golden.rs): the SDK must decode each file to the manifest's message
// and encode the manifest's message to the same bytes.
import assert from "node:assert/strict";
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { test } from "node:test";

import { concatFrames, decodeMessage, deflate, encodeFrame, inflate } from "../src/index.js";
import { fromJson, repoDir, toJson } from "./support.js";

const dir = join(repoDir, "tests/data/golden");
const manifest = JSON.parse(readFileSync(join(dir, "manifest.json"), "utf8")) as {
  files: { file: string; description: string; frames: { seq: number; flags: number; message: any }[] }[];
};

test("manifest covers every message type the SDK sends or receives", () => {
  const types = new Set(manifest.files.flatMap((f) => f.frames.map((fr) => fr.message.type)));
  for (const t of ["hello", "welcome", "join", "joined", "peer_joined", "peer_left", "room_full", "leave", "left",
    "login", "login_result", "logout", "hang_up", "offer", "answer", "ice", "ping", "pong", "ack", "error"]) {
    assert.ok(types.has(t), `no golden file for ${t}`);
  }
  // Session resume: a resuming Hello, and a Welcome granting, continuing and refusing a session.
  const messages = manifest.files.flatMap((f) => f.frames.map((fr) => fr.message));
  assert.ok(messages.some((m) => m.type === "hello" && m.resume_token !== undefined), "no resuming Hello");
  assert.ok(messages.some((m) => m.type === "welcome" && m.resume_token !== undefined && !m.resumed && !m.resume_refusal),
    "no Welcome granting resume");
  assert.ok(messages.some((m) => m.type === "welcome" && m.resumed === true), "no resumed Welcome");
  assert.ok(messages.some((m) => m.type === "welcome" && m.resume_refusal !== undefined), "no refused resume");
  assert.ok(manifest.files.some((f) => f.frames.length > 1), "no multi-frame golden file");
});

for (const entry of manifest.files) {
  test(`golden ${entry.file}: decodes to the manifest`, () => {
    const bytes = new Uint8Array(readFileSync(join(dir, entry.file)));
    const decoded = [...decodeMessage(bytes)].map((d) => {
      if (!d.ok) throw d.error;
      return { seq: d.seq, flags: d.flags, message: toJson(d.message) };
    });
    assert.deepStrictEqual(decoded, entry.frames);
  });

  test(`golden ${entry.file}: the manifest encodes to the same bytes`, () => {
    const bytes = new Uint8Array(readFileSync(join(dir, entry.file)));
    // zlib-rs (the server's deflate) and pako pick different but equally
    // valid DEFLATE encodings, so a deflated SDP is framed with the server's
    // compressed bytes; everything around them must match byte for byte.
    const golden = [...decodeMessage(bytes)];
    const encoded = concatFrames(
      entry.frames.map((f, i) => {
        const m = fromJson(f.message);
        const g = golden[i];
        if ((m.type === "offer" || m.type === "answer") && m.description.sdp.deflated && g?.ok) {
          const gm = g.message;
          if (gm.type === m.type) m.description.sdp = gm.description.sdp;
        }
        return encodeFrame(m, f.seq);
      }),
    );
    assert.deepStrictEqual(Buffer.from(encoded).toString("hex"), Buffer.from(bytes).toString("hex"));
  });
}

// The other direction of SDP interop: what pako writes, the server inflates.
// tests/golden.rs inflates this file with the Rust decoder.
test("pako's deflate of the golden SDP is the committed sdp_deflate_pako.raw", () => {
  const sdp = new Uint8Array(readFileSync(join(repoDir, "tests/data/sdp/chrome-offer-audio.sdp")));
  const ours = deflate(sdp);
  const path = join(dir, "sdp_deflate_pako.raw");
  if (process.env.SWITCHBOARD_WRITE_GOLDEN === "1") writeFileSync(path, ours);
  assert.deepStrictEqual(Buffer.from(ours).toString("hex"), readFileSync(path).toString("hex"));
  assert.deepStrictEqual(inflate(ours, 64 * 1024), sdp);
});
