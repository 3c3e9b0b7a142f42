import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { test } from "node:test";

import {
  Capabilities,
  ErrorCode,
  Flags,
  MessageType,
  RoomMode,
  SignalingClient,
  concatFrames,
  decodeMessage,
  encodeFrame,
  nextSeq,
  writeFrame,
  type Limits,
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
    maxPayloadBytes: 131060,
    maxCandidatesPerBatch: 64,
    rateBytesPerSecond: 262144,
    rateBytesBurst: 1048576,
    maxRoomsPerPeer: 16,
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

/** A client after Hello and a Welcome announcing `limits` over the defaults of `welcome`. */
async function connected(limits: Partial<Limits> = {}) {
  const t = setup();
  const ready = t.client.connect("ws://test/ws");
  const s = t.sockets[0]!;
  s.open();
  const w = { ...welcome, limits: { ...welcome.limits, ...limits } };
  t.serve(s, { type: "welcome", welcome: w });
  assert.deepStrictEqual(await ready, w);
  return { ...t, s };
}

test("sends Hello first with seq 1, capabilities and the token; Welcome opens", async () => {
  const { client, s, sent } = await connected();
  const [hello] = sent(s);
  assert.equal(hello!.seq, 1);
  assert.deepStrictEqual(hello!.message, {
    type: "hello",
    hello: {
      protocolVersion: 1,
      capabilities: Capabilities.DEFLATE_SDP | Capabilities.ICE_BATCH | Capabilities.RESUME,
      accessToken: "tok",
      userAgent: "switchboard-web/0.1",
    },
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


test("an undecodable frame is skipped: the next frames of the message are handled, the connection stays open", async () => {
  const { client, s, sent, sockets } = await connected();
  const errors: unknown[] = [];
  const left: string[] = [];
  client.on("error", (e) => errors.push(e));
  client.on("left", (e) => left.push(e.room));
  s.deliver(
    concatFrames([
      encodeFrame({ type: "left", room: "a" }, 2),
      writeFrame(0x7f, 0, 3, new Uint8Array()), // an unknown type
      writeFrame(0xf0, 0, 4, new Uint8Array()), // the range reserved for server nodes
      // PeerLeft{room: "r", peer_id: 1, reason: 99}: an enum value from a newer server.
      writeFrame(MessageType.PeerLeft, 0, 5, new Uint8Array([0x0a, 1, 0x72, 0x10, 1, 0x18, 99])),
      writeFrame(MessageType.Error, 0, 6, new Uint8Array([0x08, 99])), // Error{code: 99}
      writeFrame(MessageType.Left, 0, 7, new Uint8Array([0x0a, 9, 0x72])), // not protobuf: a cut string
      writeFrame(MessageType.Left, Flags.DEFLATE_SDP, 8, encodeFrame({ type: "left", room: "x" }, 0).subarray(12)),
      encodeFrame({ type: "ping", nonce: 7n }, 9),
      encodeFrame({ type: "left", room: "b" }, 10),
    ]),
  );
  assert.deepStrictEqual(left, ["a", "b"]);
  assert.deepStrictEqual(
    errors.map((e: any) => e.code),
    [
      ErrorCode.UNKNOWN_TYPE,
      ErrorCode.UNKNOWN_TYPE,
      ErrorCode.INVALID_ARGUMENT,
      ErrorCode.INVALID_ARGUMENT,
      ErrorCode.MALFORMED,
      ErrorCode.MALFORMED,
    ],
  );
  assert.deepStrictEqual(sent(s).at(-1)!.message, { type: "pong", nonce: 7n }, "the Ping after them is answered");
  assert.equal(client.state, "open");
  assert.equal(s.closed, false);
  assert.equal(sockets.length, 1, "no reconnect");
});

test("a frame-layer error drops the rest of that message only; the connection stays open", async () => {
  const { client, s, sockets, clock } = await connected();
  const errors: string[] = [];
  const left: string[] = [];
  client.on("error", (e: any) => errors.push(e.detail.kind));
  client.on("left", (e) => left.push(e.room));
  const v2 = encodeFrame({ type: "left", room: "v2" }, 3);
  v2[0] = 2;
  s.deliver(concatFrames([encodeFrame({ type: "left", room: "a" }, 2), v2, encodeFrame({ type: "left", room: "lost" }, 4)]));
  const next = encodeFrame({ type: "left", room: "c" }, 6);
  s.deliver(concatFrames([encodeFrame({ type: "left", room: "b" }, 5), next.subarray(0, next.length - 1)]));
  s.deliver(new Uint8Array([1, 0x94])); // a cut header
  s.onmessage!({ data: "text" });
  s.deliver(encodeFrame({ type: "left", room: "d" }, 7));
  assert.deepStrictEqual(left, ["a", "b", "d"]);
  assert.deepStrictEqual(errors, ["unsupported_version", "truncated", "truncated", "protobuf"]);
  assert.equal(client.state, "open");
  assert.equal(s.closed, false);
  assert.equal(sockets.length, 1);
  assert.deepStrictEqual(clock.pending(), [45000], "only the heartbeat timer runs");
});

test("never more frames or bytes in one WebSocket message than Welcome.limits allow", async () => {
  const { client, s, sent, serve } = await connected({ maxFramesPerMessage: 2, maxMessageBytes: 1024 });
  // What is sent while a message is handled (the Pong, what listeners send)
  // shares WebSocket messages, two frames at most.
  client.on("left", () => {
    for (let i = 1n; i <= 3n; i++) client.hangUp({ peerId: i });
  });
  serve(s, { type: "ping", nonce: 1n }, { type: "left", room: "r" });
  assert.deepStrictEqual(
    s.sent.slice(1).map((m) => [...decodeMessage(m)].length),
    [2, 2],
  );
  assert.deepStrictEqual(
    sent(s).slice(1).map((f) => [f.seq, f.message.type]),
    [[2, "pong"], [3, "hang_up"], [4, "hang_up"], [5, "hang_up"]],
  );

  // A full batch of long candidates is split into frames that each fit.
  const before = s.sent.length;
  for (let i = 0; i < 8; i++) client.sendIce({ peerId: 9n }, { candidate: `candidate:${i} ${"x".repeat(300)}` });
  const batches = s.sent.slice(before);
  assert.ok(batches.length > 1);
  for (const m of batches) assert.ok(m.length <= 1024, `a message of ${m.length} bytes`);
  const ice = sent(s).slice(-batches.length).map((f) => (f.message.type === "ice" ? f.message.ice : assert.fail()));
  assert.equal(ice.flatMap((i) => i.candidates).length, 8);
  assert.ok(ice.every((i) => !i.endOfCandidates));

  // A frame that cannot fit at all is refused, not sent.
  assert.throws(
    () => client.sendOffer({ peerId: 9n }, "v=0\r\n" + "a=x\r\n".repeat(300)),
    (e: any) => e.name === "LimitError" && e.limit === "maxMessageBytes" && e.max === 1024,
  );
  assert.equal(s.sent.length, before + batches.length);
});

test("sends are paced to rate_per_second after a burst of rate_burst (the Hello included)", async () => {
  const { client, s, sent, clock } = await connected({ ratePerSecond: 10, rateBurst: 4 });
  for (let i = 0; i < 8; i++) client.hangUp({ peerId: BigInt(i) });
  assert.equal(s.sent.length, 4, "Hello and 3 HangUps");
  clock.advance(99);
  assert.equal(s.sent.length, 4);
  clock.advance(1);
  assert.equal(s.sent.length, 5, "one more every 100 ms");
  clock.advance(400);
  assert.equal(s.sent.length, 9);
  assert.deepStrictEqual(
    sent(s).map((f) => f.seq),
    [1, 2, 3, 4, 5, 6, 7, 8, 9],
    "in order",
  );
  assert.deepStrictEqual(clock.pending(), [44500], "nothing waits");
});

test("what is over an announced limit is refused locally with a LimitError", async () => {
  const { client, s } = await connected({ maxSdpBytes: 1000, maxIdBytes: 8, maxRoomCapacity: 4 });
  const refused = (limit: keyof Limits, size: number, max: number) => (e: any) =>
    e.name === "LimitError" && e.code === ErrorCode.TOO_LARGE && e.limit === limit && e.size === size && e.max === max;
  assert.throws(() => client.sendOffer({ peerId: 1n }, "x".repeat(1001)), refused("maxSdpBytes", 1001, 1000));
  assert.throws(() => client.sendAnswer({ user: "nine-char" }, "v=0"), refused("maxIdBytes", 9, 8));
  assert.throws(() => client.sendIce({ peerId: 1n }, { candidate: "c" }, { room: "nine-char" }), refused("maxIdBytes", 9, 8));
  assert.throws(() => client.hangUp({ user: "ééééé" }), refused("maxIdBytes", 10, 8));
  await assert.rejects(client.join("nine-char"), refused("maxIdBytes", 9, 8));
  await assert.rejects(client.join("mesh", { mode: "mesh", capacity: 5 }), refused("maxRoomCapacity", 5, 4));
  await assert.rejects(client.login("nine-char"), refused("maxIdBytes", 9, 8));
  assert.equal(s.sent.length, 1, "nothing but the Hello was sent");

  client.sendOffer({ peerId: 1n }, "x".repeat(1000));
  void client.join("eight-ch", { mode: "mesh", capacity: 4 });
  assert.equal(s.sent.length, 3, "exactly at the limits is fine");
});

test("a limit of 0 is not announced: the SDK default applies", async () => {
  const zero = { maxMessageBytes: 0, maxFramesPerMessage: 0, maxSdpBytes: 0, ratePerSecond: 0, rateBurst: 0, maxIdBytes: 0 };
  const { client, s, serve } = await connected({ ...zero, maxRoomCapacity: 0, defaultRoomCapacity: 0 });
  client.sendOffer({ peerId: 1n }, "x".repeat(64 * 1024));
  assert.throws(() => client.sendOffer({ peerId: 1n }, "x".repeat(64 * 1024 + 1)), (e: any) => e.limit === "maxSdpBytes");
  void client.join("x".repeat(64), { mode: "mesh", capacity: 1000 });
  await assert.rejects(client.login("x".repeat(65)), (e: any) => e.limit === "maxIdBytes" && e.max === 64);
  for (let i = 0; i < 100; i++) client.hangUp({ peerId: 1n });
  assert.equal(s.sent.length, 103, "not paced");
  serve(s, ...Array.from({ length: 70 }, (_, i): Message => ({ type: "ping", nonce: BigInt(i) })));
  assert.deepStrictEqual(s.sent.slice(103).map((m) => [...decodeMessage(m)].length), [64], "64 frames are read, 64 answered in one message");
});

test("the decoder adopts the announced message size and frame count", async () => {
  const { client, s } = await connected({ maxFramesPerMessage: 100, maxMessageBytes: 256 * 1024, maxSdpBytes: 200 * 1024 });
  const left: string[] = [];
  client.on("left", (e) => left.push(e.room));
  s.deliver(concatFrames(Array.from({ length: 80 }, (_, i) => encodeFrame({ type: "left", room: `r${i}` }, i + 2))));
  assert.equal(left.length, 80, "more than the default 64 frames");
  const offers: number[] = [];
  client.on("offer", (e) => offers.push(e.sdp.length));
  const sdp = new TextEncoder().encode("x".repeat(150 * 1024));
  s.deliver(encodeFrame({ type: "offer", description: { peer: { peerId: 1n }, sdp: { deflated: false, bytes: sdp } } }, 90));
  assert.deepStrictEqual(offers, [150 * 1024], "a payload over the default 96 KiB");
});
