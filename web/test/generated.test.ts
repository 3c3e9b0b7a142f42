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
