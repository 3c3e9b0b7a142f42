// End-to-end test of the demo page in a real browser: Debian's chromium,
// driven by playwright-core, with a fake camera and microphone, against a
// freshly started switchboard binary.
//
//   SWITCHBOARD_BIN  the server binary (default: target/debug/switchboard of the repository)
//   CHROMIUM_PATH    the browser (default: /usr/bin/chromium)
//
// Screenshots go to e2e/screenshots/.
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { createHash, randomBytes } from "node:crypto";
import { existsSync } from "node:fs";
import { mkdir, readFile } from "node:fs/promises";
import { createServer as createHttpServer } from "node:http";
import { dirname, join, resolve } from "node:path";
import { after, before, describe, test } from "node:test";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

const here = dirname(fileURLToPath(import.meta.url));
const repo = resolve(here, "../..");
// A relative SWITCHBOARD_BIN is relative to where the test was started.
const BIN = process.env.SWITCHBOARD_BIN
  ? resolve(process.env.SWITCHBOARD_BIN)
  : resolve(repo, "target/debug/switchboard");
const CHROMIUM = process.env.CHROMIUM_PATH ?? "/usr/bin/chromium";
const SHOTS = join(here, "screenshots");

let server;
let serverLog = "";
let browser;
let base;

/** Calls `probe` until it returns something truthy; fails with `what` after `ms`. */
async function until(what, probe, ms = 30_000) {
  const deadline = Date.now() + ms;
  let last;
  for (;;) {
    try {
      last = await probe();
      if (last) return last;
    } catch (e) {
      last = e;
    }
    if (Date.now() > deadline) {
      throw new Error(`timed out after ${ms} ms waiting for ${what}; last value: ${JSON.stringify(last, replacer)}`);
    }
    await new Promise((r) => setTimeout(r, 150));
  }
}

function replacer(_key, value) {
  if (value instanceof Error) return value.message;
  return typeof value === "bigint" ? value.toString() : value;
}

const opened = [];

/** A new page (its own browser context) on the demo, with `?name=`. */
async function openPage(name, query = {}) {
  const context = await browser.newContext({ viewport: { width: 1200, height: 860 } });
  const page = await context.newPage();
  page.lines = [];
  page.on("console", (m) => page.lines.push(`[console.${m.type()}] ${m.text()}`));
  page.on("pageerror", (e) => page.lines.push(`[pageerror] ${e.message}`));
  const params = new URLSearchParams({ name, ...query });
  await page.goto(`${base}/?${params}`);
  await until(`${name} to reach the server`, () => state(page, (s) => s.server === "open"));
  opened.push({ name, page });
  return page;
}

/** Evaluates `fn` over the page's `window.__switchboard` state (peers() flattened in). */
function state(page, fn) {
  return page
    .evaluate(() => {
      const s = window.__switchboard;
      return { ...s, peers: s.peers() };
    })
    .then(fn);
}

function framesDecoded(page) {
  return page.evaluate(() => window.__switchboard.framesDecoded());
}

async function joinRoom(page, room, mode) {
  await page.fill("#room", room);
  await page.selectOption("#mode", mode);
  await page.click("#join");
}

/** Waits until `page` has `n` peers, all with RTCPeerConnection `connected`. */
function connected(page, n, who) {
  return until(`${who}: ${n} connected peer(s)`, () =>
    state(page, (s) => s.peers.length === n && s.peers.every((p) => p.pc === "connected") && s.peers),
  );
}

async function closePage(page) {
  await page.context().close();
  const i = opened.findIndex((o) => o.page === page);
  if (i >= 0) opened.splice(i, 1);
}

before(async () => {
  if (!existsSync(CHROMIUM)) {
    throw new Error(
      `Chromium not found at ${CHROMIUM}. Install it (apt-get install -y chromium) or set CHROMIUM_PATH.`,
    );
  }
  if (!existsSync(BIN)) {
    throw new Error(`switchboard binary not found at ${BIN}. Build it (cargo build) or set SWITCHBOARD_BIN.`);
  }
  await mkdir(SHOTS, { recursive: true });
  // The default STUN server is out of reach in CI; a loopback URL that nobody
  // answers keeps the page's ICE configuration real but harmless, and host
  // candidates connect the pages on this machine.
  // Port 0: the port the server got is read from its "listening" line
  // (target switchboard::listen), so no port is picked here for it to race for.
  server = spawn(BIN, ["--listen", "127.0.0.1:0", "--ice-server", "stun:127.0.0.1:9"], {
    stdio: ["ignore", "pipe", "pipe"],
    env: { ...process.env, RUST_LOG: `${process.env.RUST_LOG ?? "info"},switchboard::listen=info`, NO_COLOR: "1" },
  });
  server.stdout.on("data", (d) => (serverLog += d));
  server.stderr.on("data", (d) => (serverLog += d));
  const exited = new Promise((r) => server.once("exit", (code) => r(code)));
  await until("the server's /healthz", async () => {
    if (server.exitCode !== null) throw new Error(`server exited with ${await exited}:\n${serverLog}`);
    const listening = /switchboard::listen: listening addr=127\.0\.0\.1:(\d+)/.exec(serverLog);
    if (!listening) return false;
    base = `http://localhost:${listening[1]}`;
    const res = await fetch(`${base}/healthz`);
    return res.ok;
  }, 20_000);
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: [
      "--headless",
      "--no-sandbox",
      "--disable-gpu",
      "--disable-background-networking",
      "--use-fake-ui-for-media-stream",
      "--use-fake-device-for-media-stream",
    ],
  });
});

after(async () => {
  for (const { name, page } of opened) {
    // Left open by a failed test: show what the page saw.
    const log = await state(page, (s) => s.log).catch(() => []);
    if (page.lines.length > 0 || log.length > 0) {
      console.log(`--- ${name}\n${[...log, ...page.lines].join("\n")}`);
    }
  }
  await browser?.close();
  server?.kill("SIGTERM");
});

describe("demo page", () => {
  test("serves the embedded page and its assets", async () => {
    for (const [path, type] of [
      ["/", "text/html"],
      ["/app.js", "text/javascript"],
      ["/style.css", "text/css"],
    ]) {
      const res = await fetch(base + path);
      assert.equal(res.status, 200, path);
      assert.match(res.headers.get("content-type"), new RegExp(`^${type}`), path);
    }
  });

  test("1:1 room: connects, decodes video, carries chat and a 1 MiB file, shows the peer leaving", async () => {
    const ann = await openPage("Ann");
    const bob = await openPage("Bob");
    await joinRoom(ann, "pair-1", "pair");
    await until("Ann to be in the room", () => state(ann, (s) => s.room === "pair-1"));
    await joinRoom(bob, "pair-1", "pair");
    await connected(ann, 1, "Ann");
    await connected(bob, 1, "Bob");

    for (const [who, page] of [["Ann", ann], ["Bob", bob]]) {
      await until(`${who} to decode remote video frames`, async () => {
        const frames = await framesDecoded(page);
        return Object.values(frames).every((n) => n > 0) && Object.keys(frames).length === 1;
      });
    }
    await until("Bob's chat channel to open", () => state(bob, (s) => s.peers[0].channel === "open"));

    await ann.fill("#chat-input", "hello from Ann ✓");
    await ann.click("#chat-send");
    const chat = await until("Bob to receive the chat", () => state(bob, (s) => s.chat.length > 0 && s.chat));
    assert.deepEqual(chat, [{ from: "Ann", text: "hello from Ann ✓" }]);

    const file = randomBytes(1024 * 1024);
    const sha256 = createHash("sha256").update(file).digest("hex");
    await ann.setInputFiles("#file-input", { name: "random.bin", mimeType: "application/octet-stream", buffer: file });
    await ann.click("#file-send");
    const files = await until("Bob to receive the file", () => state(bob, (s) => s.files.length > 0 && s.files), 60_000);
    assert.deepEqual(files, [{ from: "Ann", name: "random.bin", size: file.length, sha256, intact: true }]);

    await bob.screenshot({ path: join(SHOTS, "call.png") });
    await ann.screenshot({ path: join(SHOTS, "call-sender.png") });

    // Mute and camera toggles switch the local tracks off and on again.
    await bob.click("#mute");
    await bob.click("#camera");
    assert.deepEqual(await bob.evaluate(() => window.__switchboard.local()), { audio: [false], video: [false] });
    assert.equal(await bob.getAttribute("#mute", "aria-pressed"), "true");
    await bob.click("#mute");
    await bob.click("#camera");
    assert.deepEqual(await bob.evaluate(() => window.__switchboard.local()), { audio: [true], video: [true] });

    await closePage(ann);
    await until("Bob to see Ann leave", () =>
      state(bob, (s) => s.peers.length === 0 && s.log.some((l) => /^Ann left room pair-1/.test(l))),
    );
    await bob.screenshot({ path: join(SHOTS, "call-left.png") });
    await closePage(bob);
  });

  test("seed 001 page: a tutorial's front-end, only its URL changed, calls an SDK page", async () => {
    const ann = await openPage("Ann");
    await joinRoom(ann, "compat-1", "pair");
    await until("Ann to be in the room", () => state(ann, (s) => s.room === "compat-1"));

    // The tutorial's page, served by a web server of its own (as its
    // Express server served it), pointed at switchboard's /compat/pair.
    const html = await readFile(join(here, "seed001/index.html"), "utf8");
    const web = createHttpServer((_req, res) => res.writeHead(200, { "content-type": "text/html" }).end(html));
    await new Promise((ok) => web.listen(0, "127.0.0.1", ok));
    const webPort = web.address().port;
    const context = await browser.newContext();
    const seed = await context.newPage();
    seed.lines = [];
    seed.on("console", (m) => seed.lines.push(`[console.${m.type()}] ${m.text()}`));
    seed.on("pageerror", (e) => seed.lines.push(`[pageerror] ${e.message}`));
    const wsUrl = `${base.replace("http", "ws")}/compat/pair`;
    await seed.goto(`http://localhost:${webPort}/?room=compat-1&server=${encodeURIComponent(wsUrl)}`);
    opened.push({ name: "seed001", page: seed });

    const seedState = () => seed.evaluate(() => window.__seed);
    await until("the seed page to reach connected", async () => {
      const s = await seedState();
      return s.pc === "connected" && s;
    });
    await connected(ann, 1, "Ann");
    const log = (await seedState()).log;
    assert.ok(log.includes("joined room compat-1, peers=1"), log.join("\n"));
    assert.ok(log.includes("ready"), log.join("\n"));

    await closePage(ann);
    await until("the seed page to hear peer-left", async () => (await seedState()).pc === "closed");
    await closePage(seed);
    web.close();
  });

  test("mesh room: three pages connect pairwise and see a member leave", async () => {
    const names = ["Cleo", "Dan", "Eve"];
    const pages = [];
    for (const name of names) {
      const page = await openPage(name);
      await joinRoom(page, "mesh-1", "mesh");
      await until(`${name} to be in the room`, () => state(page, (s) => s.room === "mesh-1"));
      pages.push(page);
    }
    for (const [i, page] of pages.entries()) {
      const peers = await connected(page, 2, names[i]);
      assert.deepEqual(
        peers.map((p) => p.label).sort(),
        names.filter((n) => n !== names[i]),
      );
    }
    for (const [i, page] of pages.entries()) {
      await until(`${names[i]} to decode video from both others`, async () => {
        const frames = Object.values(await framesDecoded(page));
        return frames.length === 2 && frames.every((n) => n > 0);
      });
    }
    await pages[0].screenshot({ path: join(SHOTS, "mesh.png") });

    await closePage(pages[2]);
    for (const i of [0, 1]) {
      await until(`${names[i]} to see Eve leave`, () =>
        state(pages[i], (s) => s.peers.length === 1 && s.log.some((l) => /^Eve left room mesh-1/.test(l))),
      );
    }
    await closePage(pages[0]);
    await closePage(pages[1]);
  });

  test("call by name: one call accepted, another declined", async () => {
    const login = async (page, name) => {
      await page.fill("#login-name", name);
      await page.click("#login");
      await until(`${name} to log in`, () => state(page, (s) => s.user === name));
    };
    const call = async (page, name) => {
      await page.fill("#callee", name);
      await page.click("#call");
    };
    const fay = await openPage("fay");
    const gus = await openPage("gus");
    const hal = await openPage("hal");
    await login(fay, "fay");
    await login(gus, "gus");
    await login(hal, "hal");

    await call(fay, "gus");
    await until("gus to see fay calling", () => state(gus, (s) => s.incoming === "fay"));
    assert.equal(await gus.textContent("#incoming-from"), "fay");
    await gus.screenshot({ path: join(SHOTS, "incoming.png") });
    await gus.click("#accept");
    await connected(fay, 1, "fay");
    await connected(gus, 1, "gus");
    await until("fay to see the call accepted", () => state(fay, (s) => s.log.includes("gus accepted the call.")));

    await call(hal, "gus");
    await until("gus to see hal calling", () => state(gus, (s) => s.incoming === "hal"));
    await gus.click("#decline");
    await until("hal to see the decline", () =>
      state(hal, (s) => s.peers.length === 0 && s.log.includes("gus declined the call.")),
    );
    // gus's first call goes on.
    await connected(gus, 1, "gus");

    await fay.click("#hangup");
    await until("gus to see fay hang up", () => state(gus, (s) => s.peers.length === 0 && s.log.includes("fay hung up.")));
    for (const page of [fay, gus, hal]) await closePage(page);
  });
});
