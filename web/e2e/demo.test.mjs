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
import { connect as tcpConnect, createServer as createTcpServer } from "node:net";
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
const GRACE_MS = 3000;

let server;
let serverLog = "";
let browser;
let base;
let serverPort;

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

/** A new page (its own browser context) on the demo, with `?name=`; `via`: the demo's origin (default: the server). */
async function openPage(name, query = {}, via = base) {
  const context = await browser.newContext({ viewport: { width: 1200, height: 860 } });
  const page = await context.newPage();
  page.lines = [];
  page.on("console", (m) => page.lines.push(`[console.${m.type()}] ${m.text()}`));
  page.on("pageerror", (e) => page.lines.push(`[pageerror] ${e.message}`));
  const params = new URLSearchParams({ name, ...query });
  await page.goto(`${via}/?${params}`);
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

/**
 * A TCP proxy to the server. A page loaded through it talks to the server
 * through it, WebSocket included; `cut()` resets every connection through
 * it at once, so both ends see the connection die without a close frame, as
 * on a network change. New connections go through, unless `blocked`.
 */
async function startProxy() {
  const sockets = new Set();
  const proxy = createTcpServer((down) => {
    if (control.blocked) {
      down.on("error", () => {});
      down.resetAndDestroy();
      return;
    }
    const up = tcpConnect(serverPort, "127.0.0.1");
    for (const s of [down, up]) {
      sockets.add(s);
      s.on("error", () => {});
      s.on("close", () => {
        sockets.delete(s);
        down.destroy();
        up.destroy();
      });
    }
    down.pipe(up);
    up.pipe(down);
  });
  await new Promise((ok) => proxy.listen(0, "127.0.0.1", ok));
  const control = {
    blocked: false,
    origin: `http://127.0.0.1:${proxy.address().port}`,
    cut() {
      for (const s of [...sockets]) s.resetAndDestroy();
    },
    close() {
      this.cut();
      proxy.close();
    },
  };
  return control;
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
  // A short resume grace, so that the test of a session that outlives it does not wait 30 s.
  server = spawn(BIN, ["--listen", "127.0.0.1:0", "--ice-server", "stun:127.0.0.1:9", "--resume-grace-ms", String(GRACE_MS)], {
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
    serverPort = Number(listening[1]);
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

  test("a connection cut mid-call is resumed: the call goes on, chat and signaling keep working", async () => {
    const proxy = await startProxy();
    try {
      const ann = await openPage("Ann", {}, proxy.origin);
      const bob = await openPage("Bob");
      await joinRoom(ann, "resume-1", "pair");
      await until("Ann to be in the room", () => state(ann, (s) => s.room === "resume-1"));
      await joinRoom(bob, "resume-1", "pair");
      await connected(ann, 1, "Ann");
      await connected(bob, 1, "Bob");
      for (const [who, page] of [["Ann", ann], ["Bob", bob]]) {
        await until(`${who}'s chat channel to open`, () => state(page, (s) => s.peers[0]?.channel === "open"));
      }
      const peerId = await state(ann, (s) => s.peerId);

      proxy.cut();
      const after = await until("Ann to reconnect", () =>
        state(ann, (s) => s.reconnects.length > 0 && s.server === "open" && s),
      );
      assert.deepEqual(after.reconnects, ["resumed"], after.log.join("\n"));
      assert.equal(after.peerId, peerId, "the same session");
      assert.equal(await ann.textContent("#server-state"), "Reconnected — your call continued.");
      await ann.screenshot({ path: join(SHOTS, "resumed.png") });

      // The call never stopped, and Bob heard of no departure.
      await connected(ann, 1, "Ann");
      await connected(bob, 1, "Bob");
      const bobLog = await state(bob, (s) => s.log);
      assert.ok(!bobLog.some((l) => /^Ann left/.test(l)), bobLog.join("\n"));

      await ann.fill("#chat-input", "still here");
      await ann.click("#chat-send");
      await until("Bob to receive Ann's chat", () => state(bob, (s) => s.chat.some((c) => c.text === "still here")));
      await bob.fill("#chat-input", "me too");
      await bob.click("#chat-send");
      await until("Ann to receive Bob's chat", () => state(ann, (s) => s.chat.some((c) => c.text === "me too")));

      // Signaling goes on over the resumed session: Bob leaves, Ann hears it.
      await bob.click("#hangup");
      await until("Ann to see Bob leave", () =>
        state(ann, (s) => s.peers.length === 0 && s.log.some((l) => /^Bob left room resume-1/.test(l))),
      );
      await closePage(ann);
      await closePage(bob);
    } finally {
      proxy.close();
    }
  });

  test("a connection away longer than the resume grace starts fresh: the page rejoins and calls again", async () => {
    const proxy = await startProxy();
    try {
      const ann = await openPage("Ann", {}, proxy.origin);
      const bob = await openPage("Bob");
      await joinRoom(ann, "fresh-1", "pair");
      await until("Ann to be in the room", () => state(ann, (s) => s.room === "fresh-1"));
      await joinRoom(bob, "fresh-1", "pair");
      await connected(ann, 1, "Ann");
      await connected(bob, 1, "Bob");
      const peerId = await state(ann, (s) => s.peerId);

      proxy.blocked = true;
      proxy.cut();
      await until("Ann to notice the drop", () => state(ann, (s) => s.server === "reconnecting"));
      // The server gives the session up after the grace: Bob hears Ann time out.
      await until("Bob to see Ann time out", () =>
        state(bob, (s) => s.peers.length === 0 && s.log.some((l) => /^Ann left room fresh-1 \(stopped answering\)/.test(l))),
        GRACE_MS + 10_000,
      );
      proxy.blocked = false;
      const after = await until("Ann to reconnect", () =>
        state(ann, (s) => s.reconnects.length > 0 && s.server === "open" && s),
        30_000,
      );
      assert.deepEqual(after.reconnects, ["fresh"], after.log.join("\n"));
      assert.notEqual(after.peerId, peerId, "a new session");
      assert.equal(await ann.textContent("#server-state"), "Reconnected — rejoining.");

      // The page joins the room again and calls Bob anew.
      await connected(ann, 1, "Ann");
      await connected(bob, 1, "Bob");
      await until("the new chat channels to open", async () =>
        (await state(ann, (s) => s.peers[0]?.channel === "open")) && state(bob, (s) => s.peers[0]?.channel === "open"),
      );
      await ann.fill("#chat-input", "back again");
      await ann.click("#chat-send");
      await until("Bob to receive Ann's chat", () => state(bob, (s) => s.chat.some((c) => c.text === "back again")));
      await ann.screenshot({ path: join(SHOTS, "started-fresh.png") });
      await closePage(ann);
      await closePage(bob);
    } finally {
      proxy.close();
    }
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
