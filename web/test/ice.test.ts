import assert from "node:assert/strict";
import { test } from "node:test";

import { IceBatcher, backoffCeiling, backoffDelay, DEFAULT_BACKOFF } from "../src/index.js";

const c = (n: number) => ({ candidate: `candidate:${n} 1 udp 1 192.0.2.1 ${5000 + n} typ host` });

test("a batch goes when its window (from the first candidate) expires", () => {
  const b = new IceBatcher();
  assert.equal(b.push(c(1), 0), undefined);
  assert.equal(b.deadline(), 20);
  assert.equal(b.push(c(2), 15), undefined);
  assert.equal(b.deadline(), 20, "a later candidate does not move the window");
  assert.equal(b.poll(19), undefined);
  assert.deepStrictEqual(b.poll(20), { candidates: [c(1), c(2)], endOfCandidates: false });
  assert.equal(b.deadline(), undefined);
});

test("a full batch of 8 goes at once", () => {
  const b = new IceBatcher();
  for (let i = 0; i < 7; i++) assert.equal(b.push(c(i), i), undefined);
  assert.equal(b.push(c(7), 7)?.candidates.length, 8);
  assert.equal(b.size, 0);
});

test("end-of-candidates flushes with the marker, or alone", () => {
  const b = new IceBatcher();
  b.push(c(1), 0);
  assert.deepStrictEqual(b.endOfCandidates(), { candidates: [c(1)], endOfCandidates: true });
  assert.deepStrictEqual(b.endOfCandidates(), { candidates: [], endOfCandidates: true });
});

test("a late caller's candidate rides along with the expired batch", () => {
  const b = new IceBatcher();
  b.push(c(1), 0);
  assert.deepStrictEqual(b.push(c(2), 25)?.candidates, [c(1), c(2)]);
});

test("maxBatch 0 behaves like 1", () => {
  const b = new IceBatcher({ windowMs: 20, maxBatch: 0 });
  assert.equal(b.push(c(1), 0)?.candidates.length, 1);
});

test("backoff grows exponentially to the cap, with jitter inside the bounds", () => {
  assert.deepStrictEqual([0, 1, 2, 3].map((a) => backoffCeiling(a)), [500, 1000, 2000, 4000]);
  assert.equal(backoffCeiling(30), DEFAULT_BACKOFF.maxMs);
  for (let attempt = 0; attempt < 20; attempt++) {
    const ceiling = backoffCeiling(attempt);
    for (const r of [0, 0.25, 0.5, 0.999999]) {
      const d = backoffDelay(attempt, DEFAULT_BACKOFF, () => r);
      assert.ok(d <= ceiling && d >= ceiling * (1 - DEFAULT_BACKOFF.jitter), `attempt ${attempt} r ${r}: ${d}`);
    }
  }
  assert.equal(backoffDelay(3, { ...DEFAULT_BACKOFF, jitter: 0 }, Math.random), 4000);
});
