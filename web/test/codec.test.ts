import assert from "node:assert/strict";
import { test } from "node:test";

import {
  DecodeError,
  ErrorCode,
  Flags,
  HEADER_LEN,
  MessageType,
  ResumeRefusal,
  RoomMode,
  concatFrames,
  decodeFrame,
  decodeMessage,
  encodeFrame,
  frames,
  parseHeader,
  splitFrame,
  writeFrame,
  type Message,
} from "../src/index.js";

const samples: Message[] = [
  { type: "ping", nonce: 2n ** 64n - 1n },
  { type: "pong", nonce: 0n },
  { type: "join", join: { room: "r", mode: RoomMode.MESH, capacity: 3, displayName: "" } },
  { type: "leave", room: "r" },
  { type: "login", name: "zoë" },
  { type: "logout" },
  { type: "hang_up", peer: { peerId: 7n } },
  {
    type: "ice",
    ice: { peer: { user: "a" }, candidates: [{ candidate: "candidate:1", sdpMLineIndex: 0 }], endOfCandidates: true },
  },
  {
    type: "answer",
    description: { peer: { peerId: 1n }, sdp: { deflated: false, bytes: new TextEncoder().encode("v=0\r\n") } },
  },
];

function decodeOne(bytes: Uint8Array): { seq: number; message: Message } {
  const all = [...decodeMessage(bytes)];
  assert.equal(all.length, 1);
  const d = all[0]!;
  if (!d.ok) throw d.error;
  return d;
}

function decodeError(bytes: Uint8Array): DecodeError {
  const d = [...decodeMessage(bytes)].find((x) => !x.ok);
  assert.ok(d && !d.ok, "expected an error");
  return d.error;
}

test("every sample message round-trips through a frame", () => {
  for (const [i, m] of samples.entries()) {
    const { seq, message } = decodeOne(encodeFrame(m, i + 1));
    assert.equal(seq, i + 1);
    assert.deepStrictEqual(message, m);
  }
});

test("several frames in one message decode in order", () => {
  const bytes = concatFrames(samples.map((m, i) => encodeFrame(m, 100 + i)));
  const decoded = [...decodeMessage(bytes)];
  assert.deepStrictEqual(
    decoded.map((d) => (d.ok ? [d.seq, d.message] : d.error)),
    samples.map((m, i) => [100 + i, m]),
  );
});

test("header layout is version, type, flags, reserved, seq BE, len BE", () => {
  const bytes = writeFrame(MessageType.Offer, Flags.DEFLATE_SDP, 0x01020304, new Uint8Array([9, 9]));
  assert.deepStrictEqual([...bytes], [1, 0x30, 1, 0, 1, 2, 3, 4, 0, 0, 0, 2, 9, 9]);
  assert.deepStrictEqual(parseHeader(bytes), { type: 0x30, flags: 1, seq: 0x01020304, len: 2 });
});

test("short header is incomplete, a cut message is truncated", () => {
  assert.throws(() => parseHeader(new Uint8Array(5)), (e: DecodeError) => e.detail.kind === "incomplete" && e.detail.needed === 7);
  const frame = encodeFrame({ type: "leave", room: "room" }, 1);
  assert.throws(
    () => splitFrame(frame.subarray(0, frame.length - 1), 1024),
    (e: DecodeError) => e.detail.kind === "incomplete" && e.detail.needed === 1,
  );
  for (const cut of [1, HEADER_LEN, frame.length - 1]) {
    const e = decodeError(frame.subarray(0, cut));
    assert.equal(e.detail.kind, "truncated");
    assert.equal(e.code, ErrorCode.MALFORMED);
  }
});

test("limits: payload size and frame count", () => {
  const big = writeFrame(MessageType.Ping, 0, 1, new Uint8Array(200));
  const e = decodeError(new Uint8Array(big));
  assert.ok(e instanceof DecodeError);
  const limited = [...decodeMessage(big, { maxPayload: 100, maxFrames: 64, maxSdp: 1024, maxCandidates: 8 })];
  assert.deepStrictEqual(limited.map((d) => !d.ok && d.error.detail), [{ kind: "too_large", size: 200, max: 100 }]);
  assert.equal(!limited[0]!.ok && limited[0]!.error.code, ErrorCode.TOO_LARGE);

  const three = concatFrames([1, 2, 3].map((s) => encodeFrame({ type: "pong", nonce: 1n }, s)));
  const out = [...frames(three, 1024, 2)];
  assert.equal(out.length, 3);
  assert.ok(out[2] instanceof DecodeError && out[2].detail.kind === "too_many_frames");
});

test("unknown type is reported and skipped; the next frame still decodes", () => {
  const bytes = concatFrames([writeFrame(0x7f, 0, 1, new Uint8Array()), encodeFrame({ type: "logout" }, 2)]);
  const out = [...decodeMessage(bytes)];
  assert.equal(!out[0]!.ok && out[0]!.error.detail.kind, "unknown_type");
  assert.equal(!out[0]!.ok && out[0]!.error.code, ErrorCode.UNKNOWN_TYPE);
  assert.ok(out[1]!.ok);
});

test("bad version, bad flags, bad protobuf, bad fields map to the Rust error codes", () => {
  const v2 = encodeFrame({ type: "logout" }, 1);
  v2[0] = 2;
  assert.equal(decodeError(v2).code, ErrorCode.UNSUPPORTED_VERSION);
  assert.equal(decodeError(writeFrame(MessageType.Ping, Flags.DEFLATE_SDP, 1, new Uint8Array())).code, ErrorCode.MALFORMED);
  assert.equal(decodeError(writeFrame(MessageType.Ping, 0x80, 1, new Uint8Array())).detail.kind, "bad_flags");
  assert.equal(decodeError(writeFrame(MessageType.Ping, 0, 1, new Uint8Array([0x08]))).detail.kind, "protobuf");
  // Leave with an empty room id.
  const empty = decodeError(writeFrame(MessageType.Leave, 0, 1, new Uint8Array()));
  assert.deepStrictEqual(empty.detail, { kind: "field", error: { kind: "id", field: "room", reason: "empty" } });
  assert.equal(empty.code, ErrorCode.INVALID_ARGUMENT);
  // HangUp without an address.
  assert.equal(decodeError(writeFrame(MessageType.HangUp, 0, 1, new Uint8Array())).code, ErrorCode.INVALID_ARGUMENT);
  // A room id of 65 bytes.
  // Over-long is TOO_LARGE, ids included.
  assert.equal(decodeError(encodeFrame({ type: "leave", room: "x".repeat(65) }, 1)).code, ErrorCode.TOO_LARGE);
  // Plain SDP that is not UTF-8.
  const bad = encodeFrame(
    { type: "offer", description: { peer: { peerId: 1n }, sdp: { deflated: false, bytes: new Uint8Array([0xff, 0xfe]) } } },
    1,
  );
  assert.equal(decodeError(bad).code, ErrorCode.MALFORMED);
  // Too many candidates.
  const many = encodeFrame(
    { type: "ice", ice: { peer: { peerId: 1n }, candidates: Array(65).fill({ candidate: "c" }), endOfCandidates: false } },
    1,
  );
  assert.equal(decodeError(many).code, ErrorCode.TOO_LARGE);
});

test("join with an unspecified mode means pair; capacity 0 means default", () => {
  const { message } = decodeOne(writeFrame(MessageType.Join, 0, 1, new Uint8Array([0x0a, 0x01, 0x72])));
  assert.deepStrictEqual(message, { type: "join", join: { room: "r", mode: RoomMode.PAIR, displayName: "" } });
  assert.throws(() =>
    decodeFrame({ header: { type: MessageType.Join, flags: 0, seq: 1, len: 5 }, payload: new Uint8Array([0x0a, 0x01, 0x72, 0x10, 0x09]) }),
  );
});

test("Hello's and Welcome's session-resume fields round-trip; an unknown refusal is still a refusal", () => {
  const hello: Message = {
    type: "hello",
    hello: {
      protocolVersion: 1,
      capabilities: 7,
      userAgent: "t",
      resume: { token: new Uint8Array([1, 2, 3]), lastSeq: 0xfffffffe },
    },
  };
  assert.deepStrictEqual(decodeOne(encodeFrame(hello, 9)).message, hello);
  const welcome: Message = {
    type: "welcome",
    welcome: {
      peerId: 5n,
      protocolVersion: 1,
      limits: {
        maxMessageBytes: 1,
        maxFramesPerMessage: 2,
        maxSdpBytes: 3,
        ratePerSecond: 4,
        rateBurst: 5,
        maxIdBytes: 6,
        maxRoomCapacity: 7,
        defaultRoomCapacity: 8,
        maxPayloadBytes: 9,
        maxCandidatesPerBatch: 10,
        rateBytesPerSecond: 11,
        rateBytesBurst: 12,
        maxRoomsPerPeer: 13,
      },
      heartbeatIntervalMs: 1,
      heartbeatTimeoutMs: 2,
      iceServers: [],
      capabilities: 7,
      sdpDictionary: 1,
      resume: {
        token: new Uint8Array(32).fill(7),
        resumed: false,
        refusal: ResumeRefusal.EXPIRED,
        lastSeq: 0,
        limits: { graceMs: 30000, replayFrames: 256, replayBytes: 262144, ackDelayMs: 200 },
      },
    },
  };
  assert.deepStrictEqual(decodeOne(encodeFrame(welcome, 0)).message, welcome);
  const { resume: _, ...plain } = (welcome as { welcome: object }).welcome as Record<string, unknown>;
  assert.deepStrictEqual(decodeOne(encodeFrame({ type: "welcome", welcome: plain } as unknown as Message, 1)).message, {
    type: "welcome",
    welcome: plain,
  });
  // Welcome{resume_token: [1], resume_refusal: 99}: a reason from a newer server.
  const payload = encodeFrame(welcome, 1).subarray(HEADER_LEN);
  const extra = new Uint8Array([...payload, 0x58, 99]); // field 11, varint 99 (the last value wins)
  const decoded = decodeOne(writeFrame(MessageType.Welcome, 0, 1, extra)).message;
  assert.ok(decoded.type === "welcome");
  assert.equal(decoded.welcome.resume?.refusal, ResumeRefusal.UNKNOWN_TOKEN);
  // An over-long resume token in a Hello is refused.
  const long = encodeFrame({ ...hello, hello: { ...(hello as any).hello, resume: { token: new Uint8Array(65), lastSeq: 1 } } }, 1);
  assert.equal(decodeError(long).code, ErrorCode.TOO_LARGE);
});
