// Session resume (PROTOCOL.md section 11a) in the SDK: numbering across
// connections, held frames, acknowledgements both ways, resuming or
// starting fresh after a drop. The server is played by hand over FakeSocket.
import assert from "node:assert/strict";
import { test } from "node:test";

import {
  Capabilities,
  ErrorCode,
  MessageType,
  Outbox,
  ResumeRefusal,
  ResumeSession,
  RoomMode,
  SignalingClient,
  concatFrames,
  decodeMessage,
  encodeFrame,
  frames,
  seqAtOrBefore,
  type ClientOptions,
  type Message,
  type ResumeLimits,
  type Welcome,
} from "../src/index.js";
import { FakeClock, FakeSocket } from "./support.js";

const LIMITS: ResumeLimits = { graceMs: 30_000, replayFrames: 8, replayBytes: 4096, ackDelayMs: 200 };

function welcome(token: number, extra: Partial<NonNullable<Welcome["resume"]>> = {}, peerId = 42n): Welcome {
  return {
    peerId,
    protocolVersion: 1,
    limits: {
      maxMessageBytes: 131072,
      maxFramesPerMessage: 64,
      maxSdpBytes: 65536,
      ratePerSecond: 0,
      rateBurst: 0,
      maxIdBytes: 64,
      maxRoomCapacity: 16,
      defaultRoomCapacity: 8,
      maxPayloadBytes: 131060,
      maxCandidatesPerBatch: 64,
      rateBytesPerSecond: 0,
      rateBytesBurst: 0,
      maxRoomsPerPeer: 16,
    },
    heartbeatIntervalMs: 15000,
    heartbeatTimeoutMs: 45000,
    iceServers: [],
    capabilities: Capabilities.DEFLATE_SDP | Capabilities.ICE_BATCH | Capabilities.RESUME,
    sdpDictionary: 1,
    resume: { token: new Uint8Array(32).fill(token), resumed: false, lastSeq: 0, limits: LIMITS, ...extra },
  };
}

interface Sent {
  seq: number;
  message: Message;
}

/** The frames of each WebSocket message `s` was sent, from message `from` on. */
function messages(s: FakeSocket, from = 0): Sent[][] {
  return s.sent.slice(from).map((bytes) =>
    [...decodeMessage(bytes)].map((d) => (d.ok ? { seq: d.seq, message: d.message } : assert.fail(d.error))),
  );
}

function summary(frames: Sent[]): (string | number)[][] {
  return frames.map((f) => [f.seq, f.message.type === "ack" ? `ack ${f.message.seq}` : f.message.type]);
}

/** A client whose first connection got a Welcome granting resume (token 1, server seq 1). */
function connected(options: ClientOptions = {}) {
  const clock = new FakeClock();
  const sockets: FakeSocket[] = [];
  const client = new SignalingClient({
    clock,
    random: () => 0.5,
    webSocket: (url) => {
      const s = new FakeSocket(url);
      sockets.push(s);
      return s;
    },
    ...options,
  });
  const events: string[] = [];
  client.on("resumed", (e) => events.push(`resumed ${e.resent}`));
  client.on("startedFresh", (e) => events.push(`fresh ${e.refusal ?? "-"}`));
  void client.connect("ws://test/ws");
  const s = sockets[0]!;
  s.open();
  /** Sends `messages` from the server as one WebSocket message, numbered from `seq` (0 stays 0). */
  const serve = (socket: FakeSocket, seq: number, ...ms: Message[]) =>
    socket.deliver(concatFrames(ms.map((m, i) => encodeFrame(m, seq === 0 ? 0 : seq + i))));
  serve(s, 1, { type: "welcome", welcome: welcome(1) });
  assert.equal(client.state, "open");
  /** Drops the current socket and opens the next one after the back-off. */
  const reconnect = () => {
    const n = sockets.length;
    sockets.at(-1)!.drop();
    while (sockets.length === n) clock.advance(clock.pending()[0]!);
    const next = sockets.at(-1)!;
    next.open();
    return next;
  };
  return { clock, sockets, client, s, serve, events, reconnect };
}

const hang = (n: bigint) => ({ peerId: n });

test("Hello asks for CAPABILITY_RESUME unless resume is off", () => {
  for (const [resume, caps] of [
    [undefined, 7],
    [false, 3],
  ] as const) {
    const sockets: FakeSocket[] = [];
    const client = new SignalingClient({
      clock: new FakeClock(),
      resume,
      webSocket: (url) => (sockets.push(new FakeSocket(url)), sockets.at(-1)!),
    });
    void client.connect("ws://x").catch(() => {});
    sockets[0]!.open();
    const [hello] = messages(sockets[0]!)[0]!;
    assert.ok(hello!.message.type === "hello");
    assert.equal(hello!.message.hello.capabilities, caps);
    assert.equal(hello!.message.hello.resume, undefined);
    client.close();
  }
});

test("the client acknowledges within ack_delay_ms, with Ack outside the numbering, once", () => {
  const { clock, s, serve } = connected();
  serve(s, 2, { type: "left", room: "a" }, { type: "left", room: "b" });
  assert.equal(s.sent.length, 1, "nothing yet");
  clock.advance(199);
  assert.equal(s.sent.length, 1);
  clock.advance(1);
  assert.deepStrictEqual(messages(s, 1).map(summary), [[[0, "ack 3"]]]);
  clock.advance(1000);
  assert.equal(s.sent.length, 2, "nothing new to acknowledge");
  // A server Ack (seq 0) is not a frame to acknowledge.
  serve(s, 0, { type: "ack", seq: 1 });
  clock.advance(1000);
  assert.equal(s.sent.length, 2);
});

test("an owed Ack rides in the same WebSocket message as the next frames sent", () => {
  const { clock, client, s, serve } = connected();
  serve(s, 2, { type: "left", room: "a" }, { type: "ping", nonce: 5n });
  // The Pong goes out with the Ack in front of it.
  assert.deepStrictEqual(messages(s, 1).map(summary), [[[0, "ack 3"], [2, "pong"]]]);
  serve(s, 4, { type: "left", room: "b" });
  client.hangUp(hang(1n));
  assert.deepStrictEqual(messages(s, 2).map(summary), [[[0, "ack 4"], [3, "hang_up"]]]);
  assert.deepStrictEqual(clock.pending(), [45000], "no Ack timer left: only the heartbeat");
});

test("frames are held until the server acknowledges them, within resume_limits", () => {
  const { client, s, serve } = connected();
  const r = (client as unknown as { resume: ResumeSession }).resume;
  for (let i = 1n; i <= 5n; i++) client.hangUp(hang(i));
  assert.deepStrictEqual(r.heldSeqs(), [2, 3, 4, 5, 6], "not the Hello (#1)");
  serve(s, 0, { type: "ack", seq: 4 });
  assert.deepStrictEqual(r.heldSeqs(), [5, 6]);
  assert.ok(r.resumable);
  // Over 8 frames the oldest go, and the session cannot resume...
  for (let i = 0n; i < 8n; i++) client.hangUp(hang(i));
  assert.equal(r.heldFrames, 8);
  assert.ok(!r.resumable);
  // ...until the server acknowledges what was dropped after all.
  serve(s, 0, { type: "ack", seq: 7 });
  assert.ok(r.resumable);
  assert.deepStrictEqual(r.heldSeqs(), [8, 9, 10, 11, 12, 13, 14]);
});

test("a drop resumes: same session, held frames sent again with their numbers, no rejoin", async () => {
  const { clock, client, s, serve, events, reconnect, sockets } = connected();
  const states: string[] = [];
  client.on("state", (e) => states.push(e.state));
  const joined = client.join("room-1");
  serve(s, 2, {
    type: "joined",
    joined: { room: "room-1", mode: RoomMode.PAIR, capacity: 2, members: [], initiator: false },
  });
  assert.equal((await joined).room, "room-1");
  serve(s, 3, {
    type: "peer_joined",
    peerJoined: { room: "room-1", member: { peerId: 7n, displayName: "b", capabilities: 3 }, initiator: false },
  });
  // The Join's Ack piggybacks on the first offer; the server acknowledges #2 only.
  client.sendOffer(hang(7n), "v=0 one");
  serve(s, 0, { type: "ack", seq: 2 });
  client.sendOffer(hang(7n), "v=0 two");
  const s2 = reconnect();
  assert.ok(!s.closed, "no close frame: it would end the session");
  const [hello] = messages(s2)[0]!;
  assert.ok(hello!.message.type === "hello");
  assert.deepStrictEqual(hello!.message.hello.resume, { token: new Uint8Array(32).fill(1), lastSeq: 3 });
  assert.equal(hello!.seq, 5, "the Hello continues the numbering");
  assert.equal(client.members("room-1").length, 1, "members are kept while reconnecting");

  // A frame sent while reconnecting is held, not thrown, and goes out after the resume.
  client.hangUp(hang(9n));
  assert.equal(s2.sent.length, 1, "nothing but the Hello before Welcome");

  // The server had processed #3 (the first offer) and replays its frame #4.
  serve(s2, 0, { type: "welcome", welcome: welcome(2, { resumed: true, lastSeq: 3 }) });
  serve(s2, 4, { type: "left", room: "other" });
  const after = messages(s2, 1);
  assert.deepStrictEqual(after.map(summary), [[[4, "offer"], [6, "hang_up"]]], "original numbers, in order");
  const offer = after[0]![0]!.message;
  assert.ok(offer.type === "offer" && new TextDecoder().decode(offer.description.sdp.bytes) === "v=0 two");
  assert.deepStrictEqual(events, ["resumed 2"]);
  assert.deepStrictEqual(states, ["reconnecting", "open"]);
  assert.equal(client.peerId, 42n);
  clock.advance(200);
  assert.deepStrictEqual(messages(s2, 2).map(summary), [[[0, "ack 4"]]], "the replayed frame is acknowledged; no rejoin");

  // New frames continue the numbering; the next resume names the new token.
  client.hangUp(hang(10n));
  assert.equal(messages(s2).flat().at(-1)!.seq, 7);
  const s3 = reconnect();
  const h3 = messages(s3)[0]![0]!.message;
  assert.ok(h3.type === "hello");
  assert.deepStrictEqual(h3.hello.resume, { token: new Uint8Array(32).fill(2), lastSeq: 4 });
  assert.equal(sockets.length, 3);
});

test("frames the server processed before the drop are not handled twice", () => {
  const { client, s, serve, reconnect } = connected();
  const left: string[] = [];
  client.on("left", (e) => left.push(e.room));
  serve(s, 2, { type: "left", room: "a" });
  const s2 = reconnect();
  serve(s2, 0, { type: "welcome", welcome: welcome(2, { resumed: true, lastSeq: 1 }) });
  serve(s2, 2, { type: "left", room: "a" }, { type: "left", room: "b" });
  assert.deepStrictEqual(left, ["a", "b"]);
});

test("a refused resume starts fresh: the refusal is told, rooms and name restored, held frames dropped", async () => {
  const { client, s, serve, events, reconnect } = connected();
  const joined = client.join("room-1");
  serve(s, 2, {
    type: "joined",
    joined: { room: "room-1", mode: RoomMode.PAIR, capacity: 2, members: [], initiator: false },
  });
  await joined;
  const login = client.login("zoë");
  client.hangUp(hang(3n));
  const s2 = reconnect();
  const stillPending = client.leave("room-2");
  serve(s2, 1, {
    type: "welcome",
    welcome: welcome(3, { resumed: false, refusal: ResumeRefusal.EXPIRED }, 99n),
  });
  await assert.rejects(login, (e: any) => e.code === ErrorCode.UNSPECIFIED);
  await assert.rejects(stillPending);
  assert.deepStrictEqual(events, [`fresh ${ResumeRefusal.EXPIRED}`]);
  assert.equal(client.peerId, 99n);
  assert.deepStrictEqual(
    messages(s2, 1).map(summary),
    [[[0, "ack 1"], [7, "join"], [8, "login"]]],
    "the new Welcome acknowledged, room and name restored; nothing of the old session sent again",
  );
  // The fresh session is resumable with its own token and numbering of the server's frames.
  serve(s2, 2, { type: "left", room: "x" });
  const s3 = reconnect();
  const h = messages(s3)[0]![0]!.message;
  assert.ok(h.type === "hello");
  assert.deepStrictEqual(h.hello.resume, { token: new Uint8Array(32).fill(3), lastSeq: 2 });
});

test("a session that dropped unacknowledged frames reconnects without asking to resume", () => {
  const { client, s, events, reconnect, serve } = connected();
  for (let i = 0n; i < 9n; i++) client.hangUp(hang(i));
  const s2 = reconnect();
  assert.ok(s.closed || s.readyState === 3);
  const h = messages(s2)[0]![0]!;
  assert.ok(h.message.type === "hello");
  assert.equal(h.message.hello.resume, undefined);
  assert.equal(h.seq, 1, "a new session numbers from 1");
  serve(s2, 1, { type: "welcome", welcome: welcome(4, {}, 100n) });
  assert.deepStrictEqual(events, ["fresh -"]);
});

test("a server without resume: nothing held, nothing acknowledged, reconnects start fresh", () => {
  const clock = new FakeClock();
  const sockets: FakeSocket[] = [];
  const client = new SignalingClient({ clock, random: () => 0.5, webSocket: (u) => (sockets.push(new FakeSocket(u)), sockets.at(-1)!) });
  const events: string[] = [];
  client.on("startedFresh", (e) => events.push(`fresh ${e.refusal ?? "-"}`));
  void client.connect("ws://x");
  sockets[0]!.open();
  const { resume: _, ...plain } = welcome(1);
  const w: Welcome = { ...plain, capabilities: Capabilities.DEFLATE_SDP | Capabilities.ICE_BATCH };
  sockets[0]!.deliver(encodeFrame({ type: "welcome", welcome: w }, 1));
  sockets[0]!.deliver(encodeFrame({ type: "left", room: "a" }, 2));
  clock.advance(1000);
  assert.equal(sockets[0]!.sent.length, 1, "no Ack");
  sockets[0]!.drop();
  assert.throws(() => client.hangUp(hang(1n)), /not connected/);
  clock.advance(375);
  sockets[1]!.open();
  const h = messages(sockets[1]!)[0]![0]!;
  assert.ok(h.message.type === "hello" && h.message.hello.resume === undefined && h.seq === 1);
  sockets[1]!.deliver(encodeFrame({ type: "welcome", welcome: w }, 1));
  assert.deepStrictEqual(events, ["fresh -"]);
});

test("a heartbeat timeout leaves the dead socket to the server; it is closed after the next Welcome", () => {
  const { clock, s, sockets, serve, events } = connected();
  clock.advance(45000);
  assert.equal(s.closed, false, "a close frame would end the session");
  clock.advance(375);
  const s2 = sockets[1]!;
  s2.open();
  assert.equal(s.closed, false);
  serve(s2, 0, { type: "welcome", welcome: welcome(2, { resumed: true, lastSeq: 1 }) });
  assert.ok(s.closed);
  assert.deepStrictEqual(events, ["resumed 0"]);
});

test("serial-number order wraps past 2^32, and holding and trimming follow it", () => {
  assert.ok(seqAtOrBefore(0xffffffff, 1));
  assert.ok(!seqAtOrBefore(1, 0xffffffff));
  assert.ok(seqAtOrBefore(5, 5));
  const r = new ResumeSession();
  r.token = new Uint8Array([1]);
  r.adopt({ graceMs: 0, replayFrames: 0, replayBytes: 0, ackDelayMs: 0 });
  assert.equal(r.ackDelayMs, 200, "0 means the default");
  for (const seq of [0xfffffffe, 0xffffffff, 1, 2]) r.hold(seq, new Uint8Array([seq & 0xff]), 10);
  r.acknowledged(0xffffffff);
  assert.deepStrictEqual(r.heldSeqs(), [1, 2]);
  assert.ok(r.received(0xffffffff));
  assert.ok(r.received(1), "1 follows 0xffffffff");
  assert.ok(!r.received(0xffffffff), "a duplicate");
  assert.ok(r.received(0), "seq 0 is outside the numbering");
  assert.equal(r.lastReceived, 1);
});

test("the outbox keeps one Ack, the latest, in front of the queue", () => {
  const box = new Outbox();
  box.push(encodeFrame({ type: "pong", nonce: 1n }, 7));
  box.ack(encodeFrame({ type: "ack", seq: 3 }, 0));
  box.ack(encodeFrame({ type: "ack", seq: 4 }, 0));
  assert.equal(box.size, 2);
  const [message] = box.take(0);
  const got = [...frames(message!, 1024, 64)].map((f) => (f instanceof Error ? assert.fail(f) : [f.header.type, f.header.seq]));
  assert.deepStrictEqual(got, [
    [MessageType.Ack, 0],
    [MessageType.Pong, 7],
  ]);
});

test("ICE candidates trickled during a drop are held and go out after the resume", () => {
  const { clock, client, serve, reconnect } = connected();
  client.sendIce(hang(7n), { candidate: "candidate:1" });
  const s2 = reconnect();
  client.sendIce(hang(7n), { candidate: "candidate:2" });
  clock.advance(20);
  assert.equal(s2.sent.length, 1, "only the Hello before the Welcome");
  serve(s2, 0, { type: "welcome", welcome: welcome(2, { resumed: true, lastSeq: 1 }) });
  const ice = messages(s2, 1).flat().map((f) => f.message);
  assert.deepStrictEqual(
    ice.map((m) => (m.type === "ice" ? m.ice.candidates.map((c) => c.candidate) : m.type)),
    [["candidate:1"], ["candidate:2"]],
    "the batch due during the back-off, then the next one, in order",
  );
});

test("without resume, a batch due while disconnected is reported, not thrown", () => {
  const { clock, client } = connected({ resume: false });
  const errors: string[] = [];
  client.on("error", (e) => errors.push(e.message));
  client.sendIce(hang(7n), { candidate: "candidate:1" });
  (client as unknown as { socket: FakeSocket }).socket.readyState = 3;
  clock.advance(20);
  assert.equal(errors.length, 1);
  assert.match(errors[0]!, /not connected/);
});
