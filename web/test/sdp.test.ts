import assert from "node:assert/strict";
import { readFileSync, readdirSync } from "node:fs";
import { join } from "node:path";
import { test } from "node:test";

import { SdpError, deflate, deflateIfSmaller, dictionary, inflate } from "../src/index.js";
import { repoDir } from "./support.js";

const MAX = 64 * 1024;
const sdpDir = join(repoDir, "tests/data/sdp");
const samples = readdirSync(sdpDir)
  .filter((n) => n.endsWith(".sdp"))
  .sort()
  .map((n) => [n, new Uint8Array(readFileSync(join(sdpDir, n)))] as const);

const kind = (k: string) => (e: unknown) => e instanceof SdpError && e.detail.kind === k;

test("the dictionary equals the server's file byte for byte", () => {
  const rust = readFileSync(join(repoDir, "crates/protocol/src/sdp_dictionary_v1.txt"));
  assert.ok(Buffer.from(dictionary()).equals(rust));
});

test("browser samples round-trip and shrink by more than half", () => {
  assert.ok(samples.length >= 5);
  for (const [name, sdp] of samples) {
    const c = deflate(sdp);
    assert.deepStrictEqual(inflate(c, MAX), sdp, name);
    assert.ok(c.length * 2 < sdp.length, `${name}: ${sdp.length} -> ${c.length}`);
    assert.deepStrictEqual(deflateIfSmaller(sdp), c);
  }
});

test("tiny input is not worth compressing; empty input round-trips", () => {
  assert.equal(deflateIfSmaller(new TextEncoder().encode("x")), undefined);
  assert.deepStrictEqual(inflate(deflate(new Uint8Array()), 0), new Uint8Array());
});

test("the limit is exact, and a deflate bomb stops at it", () => {
  const [, sdp] = samples[0]!;
  const c = deflate(sdp);
  assert.deepStrictEqual(inflate(c, sdp.length), sdp);
  assert.throws(() => inflate(c, sdp.length - 1), kind("too_large"));
  const bomb = deflate(new Uint8Array(10 * 1024 * 1024));
  assert.ok(bomb.length < 20 * 1024);
  assert.throws(() => inflate(bomb, MAX), kind("too_large"));
});

test("truncated, trailing and corrupt input are told apart", () => {
  const [, sdp] = samples[0]!;
  const c = deflate(sdp);
  for (let cut = 0; cut < c.length; cut += Math.max(1, Math.floor(c.length / 40))) {
    assert.throws(() => inflate(c.subarray(0, cut), MAX), kind("truncated"), `cut ${cut}`);
  }
  const trailing = new Uint8Array([...c, 0, 1, 2, 3, 4, 5, 6, 7]);
  assert.throws(() => inflate(trailing, MAX), (e) => e instanceof SdpError && e.detail.kind === "trailing_data" && e.detail.extra === 8);
  assert.throws(() => inflate(new Uint8Array(64).fill(0xff), MAX), kind("corrupt"));
  assert.throws(() => inflate(new Uint8Array([0x01, 0x05, 0x00, 0x00, 0x00]), MAX), kind("corrupt"));
});
