// The scripted exchanges of tests/conformance/ (see its README), run with
// this SDK's framing and protobuf-es bindings against a live switchboard
// binary: SWITCHBOARD_BIN, or the repository's target/debug/switchboard
// (scripts/test.sh builds it first). Needs Node's WebSocket (Node 22, or
// Node 20 with --experimental-websocket, which `npm test` passes).
import assert from "node:assert/strict";
import { spawn, type ChildProcess } from "node:child_process";
import { existsSync, readFileSync } from "node:fs";
import { join, resolve } from "node:path";
import { after, before, test } from "node:test";

import { fromBinary, fromJson, toBinary, toJson, type DescMessage, type JsonValue } from "@bufbuild/protobuf";

import { frames, MessageType, writeFrame } from "../src/frame.js";
import * as pb from "../src/gen/switchboard/v1/signal_pb.js";
import { repoDir } from "./support.js";

type Json = any; // eslint-disable-line @typescript-eslint/no-explicit-any

const SCHEMAS: Record<string, [number, DescMessage]> = {
  hello: [MessageType.Hello, pb.HelloSchema],
  ping: [MessageType.Ping, pb.PingSchema],
  pong: [MessageType.Pong, pb.PongSchema],
  ack: [MessageType.Ack, pb.AckSchema],
  join: [MessageType.Join, pb.JoinSchema],
  leave: [MessageType.Leave, pb.LeaveSchema],
  login: [MessageType.Login, pb.LoginSchema],
  logout: [MessageType.Logout, pb.LogoutSchema],
  hang_up: [MessageType.HangUp, pb.HangUpSchema],
  offer: [MessageType.Offer, pb.SessionDescriptionSchema],
  answer: [MessageType.Answer, pb.SessionDescriptionSchema],
  ice: [MessageType.Ice, pb.IceCandidatesSchema],
  welcome: [MessageType.Welcome, pb.WelcomeSchema],
  joined: [MessageType.Joined, pb.JoinedSchema],
  peer_joined: [MessageType.PeerJoined, pb.PeerJoinedSchema],
  peer_left: [MessageType.PeerLeft, pb.PeerLeftSchema],
  room_full: [MessageType.RoomFull, pb.RoomFullSchema],
  left: [MessageType.Left, pb.LeftSchema],
  login_result: [MessageType.LoginResult, pb.LoginResultSchema],
  error: [MessageType.Error, pb.ErrorSchema],
};

/** An envelope as one binary frame. */
function encodeEnvelope(e: Json): Uint8Array {
  const entry = SCHEMAS[e.type];
  assert.ok(entry, `unknown type ${e.type}`);
  const [type, schema] = entry;
  const payload = toBinary(schema, fromJson(schema, (e.body ?? {}) as JsonValue));
  return writeFrame(type, e.flags ?? 0, e.seq ?? 0, payload);
}

/** Each frame of a binary message as an envelope. */
function decodeMessage(data: Uint8Array): Json[] {
  const out: Json[] = [];
  for (const f of frames(data, 1 << 20, 1 << 10)) {
    if (f instanceof Error) throw f;
    const h = f.header;
    const entry = Object.entries(SCHEMAS).find(([, [type]]) => type === h.type);
    assert.ok(entry, `unknown type byte ${h.type}`);
    const [name, [, schema]] = entry;
    out.push({ type: name, seq: h.seq, flags: h.flags, body: toJson(schema, fromBinary(schema, f.payload)) });
  }
  return out;
}

function matches(want: Json, got: Json): boolean {
  if (Array.isArray(want)) {
    return Array.isArray(got) && want.length === got.length && want.every((w, i) => matches(w, got[i]));
  }
  if (want !== null && typeof want === "object") {
    return got !== null && typeof got === "object" && Object.entries(want).every(([k, v]) => k in got && matches(v, got[k]));
  }
  return want === got;
}

class Client {
  pending: Json[] = [];
  waiters: (() => void)[] = [];
  constructor(readonly ws: WebSocket) {
    ws.binaryType = "arraybuffer";
    ws.onmessage = (ev) => {
      if (typeof ev.data === "string") return;
      this.pending.push(...decodeMessage(new Uint8Array(ev.data as ArrayBuffer)));
      this.waiters.splice(0).forEach((w) => w());
    };
    // The end of the connection reads as `{close: code}`.
    ws.onclose = (ev) => {
      this.pending.push({ close: ev.code });
      this.waiters.splice(0).forEach((w) => w());
    };
  }
  async next(): Promise<Json> {
    const deadline = Date.now() + 5000;
    for (;;) {
      const v = this.pending.shift();
      if (v?.type === "ping") {
        this.ws.send(encodeEnvelope({ type: "pong", body: { nonce: v.body.nonce } }));
        continue;
      }
      if (v) return v;
      if (Date.now() > deadline) throw new Error("no frame within 5 s");
      await new Promise<void>((ok) => {
        this.waiters.push(ok);
        setTimeout(ok, 100);
      });
    }
  }
}

/** The switchboard binary on port 0 with `args` and `env` added; the port it
 * got is read from its "listening" line (target switchboard::listen): no port
 * is picked here for it to race for. */
async function startServer(args: string[] = [], env: Record<string, string> = {}): Promise<{ child: ChildProcess; url: string }> {
  assert.equal(typeof WebSocket, "function", "this Node has no WebSocket: use Node 22, or Node 20 with --experimental-websocket");
  const bin = process.env.SWITCHBOARD_BIN ? resolve(process.env.SWITCHBOARD_BIN) : join(repoDir, "target/debug/switchboard");
  assert.ok(existsSync(bin), `no switchboard binary at ${bin}: run cargo build --bin switchboard (or set SWITCHBOARD_BIN)`);
  const child = spawn(bin, ["--listen", "127.0.0.1:0", ...args], {
    stdio: ["ignore", "pipe", "inherit"],
    env: { ...process.env, RUST_LOG: "warn,switchboard::listen=info", NO_COLOR: "1", ...env },
  });
  const addr = await new Promise<string>((ok, fail) => {
    let seen = "";
    const timer = setTimeout(() => fail(new Error(`switchboard did not log that it listens within 20 s: ${seen}`)), 20_000);
    child.on("exit", (code) => fail(new Error(`switchboard exited at start-up (${code}): ${seen}`)));
    child.stdout!.on("data", (chunk: Buffer) => {
      seen += chunk.toString();
      const m = /switchboard::listen: listening addr=(\S+)/.exec(seen);
      if (m) {
        clearTimeout(timer);
        ok(m[1]!);
      }
    });
  });
  child.stdout!.resume();
  return { child, url: `ws://${addr}/ws` };
}

/** Stops a server and waits until it has exited. */
async function stopServer(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise((ok) => child.once("exit", ok));
  child.kill();
  await exited;
}

// The exchanges without a server profile share one server.
let shared: { child: ChildProcess; url: string } | undefined;

before(async () => {
  shared = await startServer();
});

after(async () => {
  if (shared) await stopServer(shared.child);
});

const vectors = JSON.parse(readFileSync(join(repoDir, "tests/conformance/exchanges.json"), "utf8"));

for (const [n, exchange] of (vectors.exchanges as Json[]).entries()) {
  test(`conformance: ${exchange.name}`, async () => {
    // An exchange that names a server profile gets a server of its own,
    // started with the profile's flags and environment.
    let own: { child: ChildProcess; url: string } | undefined;
    if (exchange.server !== undefined) {
      const profile = vectors.servers?.[exchange.server];
      assert.ok(profile, `no server profile ${exchange.server}`);
      own = await startServer(profile.args ?? [], profile.env ?? {});
    }
    const url = (own ?? shared)!.url;
    const tag = `${n}-ts-${process.pid}`;
    const names = new Map<string, string>();
    const clients = new Map<string, Client>();
    const substitute = (v: Json): Json => {
      if (typeof v === "string" && v.startsWith("$")) {
        if (names.has(v)) return names.get(v);
        if (v === "$room") return `conf-${tag}`;
        if (v === "$long-room-id") return "r".repeat(65);
        if (v.startsWith("$user-")) return `${v.slice(6)}-${tag}`;
        throw new Error(`unknown placeholder ${v}`);
      }
      if (Array.isArray(v)) return v.map(substitute);
      if (v !== null && typeof v === "object") return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, substitute(x)]));
      return v;
    };
    const client = async (name: string, first?: Json): Promise<Client> => {
      let c = clients.get(name);
      if (!c) {
        const ws = new WebSocket(url);
        await new Promise((ok, fail) => {
          ws.onopen = ok;
          ws.onerror = fail;
        });
        c = new Client(ws);
        ws.send(encodeEnvelope(substitute(first ?? { type: "hello", body: { protocolVersion: 1 } })));
        clients.set(name, c);
      }
      return c;
    };
    try {
      for (const [i, step] of (exchange.steps as Json[]).entries()) {
        const at = `step ${i} (${step.client})`;
        if (step.hello) {
          assert.ok(!clients.has(step.client), `${at}: hello must come first`);
          await client(step.client, step.hello);
          continue;
        }
        const c = await client(step.client);
        if (step.send) {
          c.ws.send(encodeEnvelope(substitute(step.send)));
          continue;
        }
        if (step.sendHex !== undefined) {
          const bytes = Buffer.from((step.sendHex as string).replace(/\s/g, ""), "hex");
          c.ws.send(Buffer.concat(Array(step.times ?? 1).fill(bytes)));
          continue;
        }
        if (step.expectClose !== undefined) {
          const got = await c.next();
          assert.deepEqual(got, { close: step.expectClose }, `${at}: wanted the close ${step.expectClose}`);
          continue;
        }
        const got = await c.next();
        if (got.type === "welcome") names.set(`$${step.client}`, got.body.peerId);
        const want = substitute(step.expect);
        assert.ok(matches(want, got), `${at}: wanted ${JSON.stringify(want)}, got ${JSON.stringify(got)}`);
        for (const path of (step.absent ?? []) as string[]) {
          const value = path.split(".").reduce((o: Json, k) => (o == null ? undefined : o[k]), got);
          assert.equal(value, undefined, `${at}: ${path} should be absent in ${JSON.stringify(got)}`);
        }
      }
    } finally {
      for (const c of clients.values()) c.ws.close();
      if (own) await stopServer(own.child);
    }
  });
}
