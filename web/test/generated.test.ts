// The committed protobuf-es code matches ../proto (regenerated into a
// temporary directory with buf and compared file by file).
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { join } from "node:path";
import { test } from "node:test";

import { webDir } from "./support.js";

test("src/gen matches a fresh `buf generate` of ../proto", () => {
  const r = spawnSync(process.execPath, [join(webDir, "scripts/generate.mjs"), "--check"], { cwd: webDir, encoding: "utf8" });
  assert.equal(r.status, 0, r.stdout + r.stderr);
});

test("the SDK's type table and flags are the schema's", async () => {
  const pb = await import("../src/gen/switchboard/v1/signal_pb.js");
  const { MessageType, Flags } = await import("../src/frame.js");
  const screaming = (s: string) => s.replace(/([a-z])([A-Z])/g, "$1_$2").toUpperCase();
  const sdk = Object.entries(MessageType).map(([name, byte]): [string, number] => [`MESSAGE_TYPE_${screaming(name)}`, byte]);
  const schema = pb.MessageTypeSchema.values
    .filter((v) => v.number !== 0)
    .map((v): [string, number] => [v.name, v.number]);
  assert.deepEqual(new Map(sdk), new Map(schema));
  assert.equal(pb.FrameFlag.DEFLATE_SDP, Flags.DEFLATE_SDP);
});
