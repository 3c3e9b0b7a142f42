import assert from "node:assert/strict";
import { test } from "node:test";

import { Outbox, encodeFrame, frames, packFrames } from "../src/index.js";

const frame = (seq: number) => encodeFrame({ type: "pong", nonce: 1n }, seq); // 14 bytes

const seqs = (messages: Uint8Array[]) =>
  messages.map((m) => [...frames(m, 1024, 64)].map((f) => (f instanceof Error ? assert.fail(f) : f.header.seq)));

test("packFrames keeps order and both the frame count and the byte limit", () => {
  const six = [1, 2, 3, 4, 5, 6].map(frame);
  assert.deepStrictEqual(seqs(packFrames(six, 4, 1024)), [[1, 2, 3, 4], [5, 6]]);
  assert.deepStrictEqual(seqs(packFrames(six, 64, 30)), [[1, 2], [3, 4], [5, 6]]);
  assert.deepStrictEqual(seqs(packFrames(six, 64, 13)), [[1], [2], [3], [4], [5], [6]], "an oversized frame goes alone");
  assert.deepStrictEqual(packFrames([], 4, 1024), []);
});

test("the outbox lets a burst go, then one frame per 1/rate, the Hello paid for", () => {
  const box = new Outbox();
  box.push(frame(1));
  assert.deepStrictEqual(seqs(box.take(0)), [[1]], "unpaced before Welcome");
  box.adopt({ maxMessageBytes: 1024, maxFramesPerMessage: 2, ratePerSecond: 4, rateBurst: 4 }, 0);
  for (let seq = 2; seq <= 8; seq++) box.push(frame(seq));
  assert.deepStrictEqual(seqs(box.take(0)), [[2, 3], [4]]);
  assert.equal(box.deadline(), 250);
  assert.deepStrictEqual(box.take(249), []);
  assert.deepStrictEqual(seqs(box.take(250)), [[5]]);
  assert.deepStrictEqual(seqs(box.take(1000)), [[6, 7], [8]], "what accrued goes together, packed");
  assert.equal(box.deadline(), undefined);
  for (let seq = 9; seq <= 14; seq++) box.push(frame(seq));
  assert.deepStrictEqual(seqs(box.take(60_000)), [[9, 10], [11, 12]], "a long pause refills up to the burst only");
  assert.equal(box.size, 2);
});
