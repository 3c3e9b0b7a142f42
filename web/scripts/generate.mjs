// Runs `buf generate` (protobuf-es) over ../proto.
//
//   node scripts/generate.mjs          regenerates src/gen/
//   node scripts/generate.mjs --check  generates into a temporary directory
//                                      and fails if src/gen/ differs from it
import { spawnSync } from "node:child_process";
import { mkdtempSync, readdirSync, readFileSync, rmSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, relative, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const web = resolve(dirname(fileURLToPath(import.meta.url)), "..");
const bin = join(web, "node_modules", ".bin");
const check = process.argv.includes("--check");

function buf(output) {
  const result = spawnSync(
    join(bin, "buf"),
    ["generate", "--template", "buf.gen.yaml", "--output", output],
    {
      cwd: web,
      stdio: "inherit",
      // buf finds the local protoc-gen-es plugin on PATH.
      env: { ...process.env, PATH: `${bin}:${process.env.PATH}` },
    },
  );
  if (result.status !== 0) {
    console.error(`buf generate failed (${result.error ?? `exit ${result.status}`})`);
    process.exit(1);
  }
}

function files(dir) {
  const out = new Map();
  const walk = (d) => {
    for (const name of readdirSync(d)) {
      const path = join(d, name);
      if (statSync(path).isDirectory()) walk(path);
      else out.set(relative(dir, path), readFileSync(path));
    }
  };
  try {
    walk(dir);
  } catch (e) {
    if (e.code !== "ENOENT") throw e;
  }
  return out;
}

const committed = join(web, "src", "gen");
if (!check) {
  rmSync(committed, { recursive: true, force: true });
  buf(web);
  console.log(`generated ${[...files(committed).keys()].join(", ")}`);
  process.exit(0);
}

const scratch = mkdtempSync(join(tmpdir(), "switchboard-gen-"));
try {
  buf(scratch);
  const fresh = files(join(scratch, "src", "gen"));
  const old = files(committed);
  const differ = [];
  for (const [name, bytes] of fresh) {
    if (!old.has(name)) differ.push(`missing: src/gen/${name}`);
    else if (!old.get(name).equals(bytes)) differ.push(`stale:   src/gen/${name}`);
  }
  for (const name of old.keys()) {
    if (!fresh.has(name)) differ.push(`extra:   src/gen/${name}`);
  }
  if (differ.length > 0) {
    console.error(differ.join("\n"));
    console.error("src/gen/ does not match ../proto; run `npm run generate`");
    process.exit(1);
  }
  console.log(`src/gen/ matches ../proto (${fresh.size} files)`);
} finally {
  rmSync(scratch, { recursive: true, force: true });
}
