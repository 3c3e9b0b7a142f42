import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { test } from "node:test";

import {
  Capabilities,
  RoomMode,
  SignalingClient,
  concatFrames,
  decodeMessage,
  encodeFrame,
  nextSeq,
  type Message,
  type Welcome,
} from "../src/index.js";
import { FakeClock, FakeSocket, repoDir } from "./support.js";

const welcome: Welcome = {
  peerId: 2n ** 60n,
  protocolVersion: 1,
  limits: {
    maxMessageBytes: 131072,
    maxFramesPerMessage: 64,
    maxSdpBytes: 65536,
    ratePerSecond: 50,
    rateBurst: 100,
    maxIdBytes: 64,
    maxRoomCapacity: 16,
    defaultRoomCapacity: 8,
  },
  heartbeatIntervalMs: 15000,
  heartbeatTimeoutMs: 45000,
  iceServers: [],
  capabilities: Capabilities.DEFLATE_SDP | Capabilities.ICE_BATCH,
  sdpDictionary: 1,
};

function setup() {
  const clock = new FakeClock();
  const sockets: FakeSocket[] = [];
  const client = new SignalingClient({
    clock,
    random: () => 0.5,
    accessToken: "tok",
    webSocket: (url) => {
      const s = new FakeSocket(url);
      sockets.push(s);
      return s;
    },
  });
  const sent = (s: FakeSocket) =>
    s.sent.flatMap((bytes) => [...decodeMessage(bytes)].map((d) => (d.ok ? { seq: d.seq, flags: d.flags, message: d.message } : assert.fail(d.error))));
  const serve = (s: FakeSocket, ...messages: Message[]) => s.deliver(concatFrames(messages.map((m, i) => encodeFrame(m, i + 1))));
  return { clock, sockets, client, sent, serve };
}

async function connected() {
  const t = setup();
  const ready = t.client.connect("ws://test/ws");
  const s = t.sockets[0]!;
  s.open();
  t.serve(s, { type: "welcome", welcome });
  assert.deepStrictEqual(await ready, welcome);
  return { ...t, s };
}

test("sends Hello first with seq 1, capabilities and the token; Welcome opens", async () => {
  const { client, s, sent } = await connected();
  const [hello] = sent(s);
  assert.equal(hello!.seq, 1);
  assert.deepStrictEqual(hello!.message, {
    type: "hello",
    hello: { protocolVersion: 1, capabilities: 3, accessToken: "tok", userAgent: "switchboard-web/0.1" },
  });
  assert.equal(client.state, "open");
  assert.equal(client.peerId, 2n ** 60n);
});

test("answers every Ping with a Pong of the same nonce, in one message", async () => {
  const { s, sent, serve } = await connected();
  serve(s, { type: "ping", nonce: 2n ** 64n - 1n }, { type: "ping", nonce: 5n });
  assert.equal(s.sent.length, 2);
  assert.deepStrictEqual(
    sent(s).slice(1).map((f) => [f.seq, f.message]),
    [[2, { type: "pong", nonce: 2n ** 64n - 1n }], [3, { type: "pong", nonce: 5n }]],
  );
});

test("join resolves on Joined; SDP is deflated only for members that can inflate it", async () => {
  const { client, s, sent, serve } = await connected();
  const joined = client.join("room-1", { mode: "mesh", capacity: 4, displayName: "me" });
  assert.deepStrictEqual(sent(s)[1]!.message, {
    type: "join",
    join: { room: "room-1", mode: RoomMode.MESH, capacity: 4, displayName: "me" },
  });
  serve(s, {
    type: "joined",
    joined: {
      room: "room-1",
      mode: RoomMode.MESH,
      capacity: 4,
      initiator: false,
      members: [
        { peerId: 1n, displayName: "a", capabilities: Capabilities.DEFLATE_SDP | Capabilities.ICE_BATCH },
        { peerId: 2n, displayName: "b", capabilities: Capabilities.ICE_BATCH },
      ],
    },
  });
  assert.equal((await joined).members.length, 2);
  const sdp = readFileSync(join(repoDir, "tests/data/sdp/chrome-offer.sdp"), "utf8");
  client.sendOffer({ peerId: 1n }, sdp);
  client.sendOffer({ peerId: 2n }, sdp);
  client.sendAnswer({ peerId: 1n }, "Qz7");
  const [toA, toB, tiny] = sent(s).slice(2);
  assert.equal(toA!.flags, 1);
  assert.equal(toB!.flags, 0);
  assert.equal(tiny!.flags, 0, "a tiny SDP is not worth compressing");
  assert.ok(toA!.message.type === "offer" && toA!.message.description.sdp.bytes.length < sdp.length / 2);
});

test("incoming deflated offers are inflated to text", async () => {
  const { client, s } = await connected();
  const sdp = readFileSync(join(repoDir, "tests/data/sdp/firefox-offer.sdp"), "utf8");
  const golden = new Uint8Array(readFileSync(join(repoDir, "tests/data/golden/offer_deflate.bin")));
  const offers: string[] = [];
  client.on("offer", (e) => offers.push(e.sdp));
  s.deliver(golden);
  assert.equal(offers.length, 1);
  assert.ok(offers[0]!.startsWith("v=0"));
  assert.ok(sdp.length > 0);
});

test("ICE candidates are batched for 20 ms, and end-of-candidates flushes", async () => {
  const { client, s, sent, clock } = await connected();
  const target = { peerId: 9n };
  client.sendIce(target, { candidate: "candidate:1", sdpMid: "0", sdpMLineIndex: 0, usernameFragment: null });
  clock.advance(10);
  client.sendIce(target, { candidate: "candidate:2", sdpMid: "0", sdpMLineIndex: 0 });
  assert.equal(s.sent.length, 1, "nothing sent inside the window");
  clock.advance(10);
  assert.equal(s.sent.length, 2);
  const batch = sent(s)[1]!.message;
  assert.ok(batch.type === "ice");
  assert.deepStrictEqual(batch.ice.candidates.map((c) => c.candidate), ["candidate:1", "candidate:2"]);
  assert.equal(batch.ice.endOfCandidates, false);

  client.sendIce(target, { candidate: "candidate:3" });
  client.sendIce(target, null);
  const end = sent(s)[2]!.message;
  assert.ok(end.type === "ice" && end.ice.endOfCandidates && end.ice.candidates.length === 1);
  clock.advance(100);
  assert.equal(s.sent.length, 3, "the flushed batch's timer does not fire again");

  for (let i = 0; i < 8; i++) client.sendIce(target, { candidate: `candidate:${10 + i}` });
  assert.equal(s.sent.length, 4, "a batch of 8 goes at once");
});

test("reconnects with back-off, a fresh seq, and rejoins its rooms", async () => {
  const { client, s, sockets, clock, serve, sent } = await connected();
  const states: string[] = [];
  client.on("state", (e) => states.push(e.state));
  void client.join("room-1").catch(() => {});
  s.drop();
  assert.equal(client.state, "reconnecting");
  // random() = 0.5 and jitter 0.5: 500 ms * (1 - 0.25).
  assert.deepStrictEqual(clock.pending(), [375]);
  clock.advance(375);
  const s2 = sockets[1]!;
  s2.open();
  serve(s2, { type: "welcome", welcome: { ...welcome, peerId: 77n } });
  const frames = sent(s2);
  assert.deepStrictEqual(frames.map((f) => [f.seq, f.message.type]), [[1, "hello"], [2, "join"]]);
  assert.deepStrictEqual(states, ["reconnecting", "open"]);
  assert.equal(client.peerId, 77n);
});

test("back-off grows while the server stays away, and close() stops it", async () => {
  const { client, s, sockets, clock } = await connected();
  s.drop();
  const delays: number[] = [];
  for (let i = 0; i < 4; i++) {
    delays.push(clock.pending()[0]!);
    clock.advance(delays[i]!);
    sockets[i + 1]!.drop();
  }
  assert.deepStrictEqual(delays, [375, 750, 1500, 3000]);
  client.close();
  assert.deepStrictEqual(clock.pending(), []);
  assert.equal(client.state, "closed");
});

test("a silent connection is dropped after the heartbeat timeout", async () => {
  const { client, s, clock } = await connected();
  clock.advance(45000);
  assert.ok(s.closed);
  assert.equal(client.state, "reconnecting");
});

test("server errors reject the request they answer and are emitted", async () => {
  const { client, s, serve } = await connected();
  const errors: unknown[] = [];
  client.on("error", (e) => errors.push(e));
  const login = client.login("zoë");
  serve(s, { type: "error", error: { code: 12, message: "taken", requestSeq: 2 } });
  await assert.rejects(login, (e: any) => e.code === 12 && e.requestSeq === 2);
  assert.equal(errors.length, 1);
});

test("sequence numbers wrap past zero, which means 'no request'", () => {
  assert.equal(nextSeq(0), 1);
  assert.equal(nextSeq(41), 42);
  assert.equal(nextSeq(0xffffffff), 1);
});

