// Builds the demo page into demo-dist/, the folder the server embeds
// (src/server/assets.rs). With --check, builds into a temporary folder and
// fails if the committed demo-dist/ differs from it byte for byte, so the
// page the binary serves is always the page its sources describe.
//
// The output is deterministic: esbuild's version is pinned in package.json,
// no source map, no timestamps, sorted inputs.
import { build } from "esbuild";
import { copyFile, mkdir, mkdtemp, readFile, readdir, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const web = join(dirname(fileURLToPath(import.meta.url)), "..");
const committed = join(web, "demo-dist");
const STATIC = ["index.html", "style.css"];

async function buildInto(out) {
  await mkdir(out, { recursive: true });
  await build({
    entryPoints: [join(web, "demo/app.ts")],
    outfile: join(out, "app.js"),
    bundle: true,
    format: "esm",
    target: "es2022",
    platform: "browser",
    minify: true,
    charset: "utf8",
    legalComments: "eof",
    logLevel: "warning",
    absWorkingDir: web,
  });
  for (const name of STATIC) await copyFile(join(web, "demo", name), join(out, name));
}

if (process.argv.includes("--check")) {
  const tmp = await mkdtemp(join(tmpdir(), "switchboard-demo-"));
  try {
    await buildInto(tmp);
    const fresh = (await readdir(tmp)).sort();
    const have = (await readdir(committed).catch(() => [])).sort();
    const problems = [];
    for (const name of new Set([...fresh, ...have])) {
      if (!fresh.includes(name)) problems.push(`${name}: in demo-dist/ but not built from demo/`);
      else if (!have.includes(name)) problems.push(`${name}: missing from demo-dist/`);
      else if (!(await readFile(join(tmp, name))).equals(await readFile(join(committed, name)))) {
        problems.push(`${name}: differs from a fresh build`);
      }
    }
    if (problems.length > 0) {
      console.error(`demo-dist/ is stale; run \`npm run build-demo\` and commit it:\n  ${problems.join("\n  ")}`);
      process.exit(1);
    }
    console.log(`demo-dist/ matches its sources (${fresh.join(", ")})`);
  } finally {
    await rm(tmp, { recursive: true, force: true });
  }
} else {
  await rm(committed, { recursive: true, force: true });
  await buildInto(committed);
  console.log("built demo-dist/");
}
