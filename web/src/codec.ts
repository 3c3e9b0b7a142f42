/**
 * Bytes in, validated `Message`s out, and back; mirrors `decode`/`encode` in
 * `crates/protocol/src/lib.rs`. The only module that touches generated protobuf
 * types. Pure: no sockets, no timers.
 */
import { create, fromBinary, toBinary, type DescMessage, type MessageShape } from "@bufbuild/protobuf";

import { DecodeError, type FieldError } from "./errors.js";
import { Flags, MessageType, frames, isKnownType, writeFrame, type RawFrame } from "./frame.js";
import * as pb from "./gen/switchboard/v1/signal_pb.js";
import {
  Capabilities,
  ErrorCode,
  MAX_APP_DATA_BYTES,
  MAX_CANDIDATE_BYTES,
  MAX_DISPLAY_NAME_BYTES,
  MAX_ICE_SERVERS,
  MAX_ID_BYTES,
  MAX_MEMBERS,
  MAX_RESUME_TOKEN_BYTES,
  MAX_TEXT_BYTES,
  MAX_TOKEN_BYTES,
  ResumeRefusal,
  RoomMode,
  type Address,
  type Hello,
  type IceCandidate,
  type IceCandidates,
  type Member,
  type Message,
  type Resume,
  type SessionDescription,
} from "./message.js";

/** Size limits the decoder enforces; same defaults as Rust's `CodecLimits`. */
export interface CodecLimits {
  /** Largest frame payload, in bytes. */
  maxPayload: number;
  /** Most frames in one WebSocket message. */
  maxFrames: number;
  /** Largest SDP on the wire, and largest inflated SDP, in bytes. */
  maxSdp: number;
  /** Most candidates in one ICE batch. */
  maxCandidates: number;
}

export const DEFAULT_LIMITS: Readonly<CodecLimits> = Object.freeze({
  maxPayload: 96 * 1024,
  maxFrames: 64,
  maxSdp: 64 * 1024,
  maxCandidates: 64,
});

const utf8 = new TextEncoder();
const strictUtf8 = new TextDecoder("utf-8", { fatal: true });

function byteLength(s: string): number {
  return utf8.encode(s).length;
}

// ------------------------------------------------------------ validation

/**
 * Checks a room id or user name as the server does: non-empty, at most 64
 * bytes, no control characters, no leading or trailing whitespace.
 */
export function checkId(field: string, s: string): string {
  if (s.length === 0) throw DecodeError.field({ kind: "id", field, reason: "empty" });
  if (byteLength(s) > MAX_ID_BYTES) throw DecodeError.field({ kind: "id", field, reason: "too_long" });
  // eslint-disable-next-line no-control-regex
  if (/[\u0000-\u001f\u007f-\u009f]/.test(s) || s.trim() !== s) {
    throw DecodeError.field({ kind: "id", field, reason: "bad_characters" });
  }
  return s;
}

function optRoom(field: string, s: string): string | undefined {
  return s === "" ? undefined : checkId(field, s);
}

function bounded(field: string, s: string, max: number): string {
  const len = byteLength(s);
  if (len > max) throw DecodeError.field({ kind: "too_long", field, len, max });
  return s;
}

function boundedOpt(field: string, s: string | undefined, max: number): string | undefined {
  return s === undefined ? undefined : bounded(field, s, max);
}

function known<E extends number>(field: string, e: object, value: number): E {
  if (typeof (e as Record<number, unknown>)[value] !== "string") {
    throw DecodeError.field({ kind: "unknown_enum", field, value });
  }
  return value as E;
}

function tooMany(field: string, count: number, max: number): void {
  if (count > max) throw DecodeError.field({ kind: "too_many", field, count, max });
}

function capabilitiesFromWire(values: readonly number[]): Capabilities {
  // Unknown capabilities are ignored: a newer peer may offer more.
  let set = 0;
  for (const v of values) {
    if (v === pb.Capability.DEFLATE_SDP) set |= Capabilities.DEFLATE_SDP;
    else if (v === pb.Capability.ICE_BATCH) set |= Capabilities.ICE_BATCH;
    else if (v === pb.Capability.RESUME) set |= Capabilities.RESUME;
  }
  return set;
}

function capabilitiesToWire(set: Capabilities): pb.Capability[] {
  const out: pb.Capability[] = [];
  if (set & Capabilities.DEFLATE_SDP) out.push(pb.Capability.DEFLATE_SDP);
  if (set & Capabilities.ICE_BATCH) out.push(pb.Capability.ICE_BATCH);
  if (set & Capabilities.RESUME) out.push(pb.Capability.RESUME);
  return out;
}

function address(field: string, a: pb.Address | undefined): Address {
  switch (a?.kind.case) {
    case "peerId":
      return { peerId: a.kind.value };
    case "user":
      return { user: checkId(field, a.kind.value) };
    default:
      throw DecodeError.field({ kind: "missing", field });
  }
}

function addressToWire(a: Address): pb.Address {
  return create(pb.AddressSchema, {
    kind: "peerId" in a ? { case: "peerId", value: a.peerId } : { case: "user", value: a.user },
  });
}

function member(m: pb.Member): Member {
  const out: Member = {
    peerId: m.peerId,
    displayName: bounded("display_name", m.displayName, MAX_DISPLAY_NAME_BYTES),
    capabilities: capabilitiesFromWire(m.capabilities),
  };
  if (m.user !== "") out.user = checkId("member.user", m.user);
  return out;
}

function memberToWire(m: Member): pb.Member {
  return create(pb.MemberSchema, {
    peerId: m.peerId,
    displayName: m.displayName,
    user: m.user ?? "",
    capabilities: capabilitiesToWire(m.capabilities),
  });
}

function candidate(c: pb.IceCandidate): IceCandidate {
  const out: IceCandidate = { candidate: bounded("candidate", c.candidate, MAX_CANDIDATE_BYTES) };
  const mid = boundedOpt("sdp_mid", c.sdpMid, MAX_ID_BYTES);
  if (mid !== undefined) out.sdpMid = mid;
  if (c.sdpMLineIndex !== undefined) out.sdpMLineIndex = c.sdpMLineIndex;
  const ufrag = boundedOpt("username_fragment", c.usernameFragment, MAX_ID_BYTES);
  if (ufrag !== undefined) out.usernameFragment = ufrag;
  return out;
}

function sessionDescription(d: pb.SessionDescription, deflated: boolean, maxSdp: number): SessionDescription {
  const peer = address("peer", d.peer);
  if (d.sdp.length > maxSdp) {
    throw DecodeError.field({ kind: "too_long", field: "sdp", len: d.sdp.length, max: maxSdp });
  }
  if (!deflated) {
    try {
      strictUtf8.decode(d.sdp);
    } catch {
      throw DecodeError.field({ kind: "sdp_not_utf8" });
    }
  }
  const out: SessionDescription = { peer, sdp: { deflated, bytes: d.sdp } };
  const room = optRoom("room", d.room);
  if (room !== undefined) out.room = room;
  if (d.appData !== "") out.appData = bounded("app_data", d.appData, MAX_APP_DATA_BYTES);
  return out;
}

function iceCandidates(i: pb.IceCandidates, maxCandidates: number): IceCandidates {
  tooMany("candidates", i.candidates.length, maxCandidates);
  const out: IceCandidates = {
    peer: address("peer", i.peer),
    candidates: i.candidates.map(candidate),
    endOfCandidates: i.endOfCandidates,
  };
  const room = optRoom("room", i.room);
  if (room !== undefined) out.room = room;
  if (i.appData !== "") out.appData = bounded("app_data", i.appData, MAX_APP_DATA_BYTES);
  return out;
}

function resumeFromWire(w: pb.Welcome): Resume {
  const l = w.resumeLimits;
  const resume: Resume = {
    token: w.resumeToken,
    resumed: w.resumed,
    lastSeq: w.resumeLastSeq,
    limits: {
      graceMs: l?.graceMs ?? 0,
      replayFrames: l?.replayFrames ?? 0,
      replayBytes: l?.replayBytes ?? 0,
      ackDelayMs: l?.ackDelayMs ?? 0,
    },
  };
  if (w.resumeRefusal !== ResumeRefusal.UNSPECIFIED) {
    // An unknown reason from a newer server is still a refusal.
    resume.refusal =
      typeof ResumeRefusal[w.resumeRefusal] === "string" ? w.resumeRefusal : ResumeRefusal.UNKNOWN_TOKEN;
  }
  return resume;
}

// ------------------------------------------------------------ decode

function parse<Desc extends DescMessage>(schema: Desc, payload: Uint8Array): MessageShape<Desc> {
  try {
    return fromBinary(schema, payload);
  } catch (e) {
    throw new DecodeError({ kind: "protobuf", detail: e instanceof Error ? e.message : String(e) });
  }
}

/**
 * Counts top-level occurrences of field `number` without decoding, so that a
 * repeated field's size is checked before one object per entry is built.
 */
function countField(payload: Uint8Array, number: number): number {
  let at = 0;
  let count = 0;
  const varint = (): number => {
    let value = 0;
    let scale = 1;
    for (let i = 0; i < 10; i++) {
      if (at >= payload.length) throw new DecodeError({ kind: "protobuf", detail: "truncated varint" });
      const b = payload[at++]!;
      value += (b & 0x7f) * scale;
      scale *= 128;
      if (b < 0x80) return value;
    }
    throw new DecodeError({ kind: "protobuf", detail: "varint too long" });
  };
  while (at < payload.length) {
    const key = varint();
    const tag = Math.floor(key / 8);
    const wire = key % 8;
    if (tag === number) count++;
    switch (wire) {
      case 0:
        varint();
        break;
      case 1:
        at += 8;
        break;
      case 2: {
        const len = varint();
        at += len;
        break;
      }
      case 5:
        at += 4;
        break;
      default:
        throw new DecodeError({ kind: "protobuf", detail: `unsupported wire type ${wire}` });
    }
    if (at > payload.length) throw new DecodeError({ kind: "protobuf", detail: "truncated field" });
  }
  return count;
}

/**
 * Decodes one frame into a validated message. Unknown types throw
 * `unknown_type`; a caller may skip such a frame and go on.
 */
export function decodeFrame(frame: RawFrame, limits: CodecLimits = DEFAULT_LIMITS): Message {
  const { type, flags } = frame.header;
  if (!isKnownType(type)) throw new DecodeError({ kind: "unknown_type", type });
  const sdpAllowed = type === MessageType.Offer || type === MessageType.Answer;
  if ((flags & ~Flags.KNOWN) !== 0 || ((flags & Flags.DEFLATE_SDP) !== 0 && !sdpAllowed)) {
    throw new DecodeError({ kind: "bad_flags", type, flags });
  }
  const p = frame.payload;
  if (p.length > limits.maxPayload) {
    throw new DecodeError({ kind: "too_large", size: p.length, max: limits.maxPayload });
  }
  const deflated = (flags & Flags.DEFLATE_SDP) !== 0;
  switch (type) {
    case MessageType.Hello: {
      const h = parse(pb.HelloSchema, p);
      const hello: Hello = {
        protocolVersion: h.protocolVersion,
        capabilities: capabilitiesFromWire(h.capabilities),
        userAgent: bounded("user_agent", h.userAgent, MAX_TEXT_BYTES),
      };
      if (h.accessToken !== "") hello.accessToken = bounded("access_token", h.accessToken, MAX_TOKEN_BYTES);
      if (h.resumeToken.length > 0) {
        if (h.resumeToken.length > MAX_RESUME_TOKEN_BYTES) {
          throw DecodeError.field({
            kind: "too_long",
            field: "resume_token",
            len: h.resumeToken.length,
            max: MAX_RESUME_TOKEN_BYTES,
          });
        }
        hello.resume = { token: h.resumeToken, lastSeq: h.resumeLastSeq };
      }
      return { type: "hello", hello };
    }
    case MessageType.Welcome: {
      const w = parse(pb.WelcomeSchema, p);
      tooMany("ice_servers", w.iceServers.length, MAX_ICE_SERVERS);
      if (w.limits === undefined) throw DecodeError.field({ kind: "missing", field: "limits" });
      const { $typeName: _, ...limits } = w.limits;
      return {
        type: "welcome",
        welcome: {
          peerId: w.peerId,
          protocolVersion: w.protocolVersion,
          limits,
          heartbeatIntervalMs: w.heartbeatIntervalMs,
          heartbeatTimeoutMs: w.heartbeatTimeoutMs,
          iceServers: w.iceServers.map((s) => ({ urls: s.urls, username: s.username, credential: s.credential })),
          capabilities: capabilitiesFromWire(w.capabilities),
          sdpDictionary: w.sdpDictionary,
          ...(w.resumeToken.length > 0 ? { resume: resumeFromWire(w) } : {}),
        },
      };
    }
    case MessageType.Ping:
      return { type: "ping", nonce: parse(pb.PingSchema, p).nonce };
    case MessageType.Pong:
      return { type: "pong", nonce: parse(pb.PongSchema, p).nonce };
    case MessageType.Ack:
      return { type: "ack", seq: parse(pb.AckSchema, p).seq };
    case MessageType.Join: {
      const j = parse(pb.JoinSchema, p);
      const mode = known<RoomMode>("mode", RoomMode, j.mode);
      const join = {
        room: checkId("room", j.room),
        mode: mode === RoomMode.MESH ? RoomMode.MESH : RoomMode.PAIR,
        displayName: bounded("display_name", j.displayName, MAX_DISPLAY_NAME_BYTES),
      } as const;
      return { type: "join", join: j.capacity !== 0 ? { ...join, capacity: j.capacity } : join };
    }
    case MessageType.Joined: {
      tooMany("members", countField(p, 4), MAX_MEMBERS);
      const j = parse(pb.JoinedSchema, p);
      return {
        type: "joined",
        joined: {
          room: checkId("room", j.room),
          mode: known("mode", RoomMode, j.mode),
          capacity: j.capacity,
          members: j.members.map(member),
          initiator: j.initiator,
        },
      };
    }
    case MessageType.PeerJoined: {
      const j = parse(pb.PeerJoinedSchema, p);
      const room = checkId("room", j.room);
      if (j.member === undefined) throw DecodeError.field({ kind: "missing", field: "member" });
      return { type: "peer_joined", peerJoined: { room, member: member(j.member), initiator: j.initiator } };
    }
    case MessageType.PeerLeft: {
      const l = parse(pb.PeerLeftSchema, p);
      return {
        type: "peer_left",
        peerLeft: {
          room: checkId("room", l.room),
          peerId: l.peerId,
          reason: known("reason", pb.LeaveReason, l.reason),
        },
      };
    }
    case MessageType.RoomFull: {
      const r = parse(pb.RoomFullSchema, p);
      return { type: "room_full", room: checkId("room", r.room), capacity: r.capacity };
    }
    case MessageType.Leave:
      return { type: "leave", room: checkId("room", parse(pb.LeaveSchema, p).room) };
    case MessageType.Left:
      return { type: "left", room: checkId("room", parse(pb.LeftSchema, p).room) };
    case MessageType.Login:
      return { type: "login", name: checkId("name", parse(pb.LoginSchema, p).name) };
    case MessageType.LoginResult: {
      const l = parse(pb.LoginResultSchema, p);
      const code = known<ErrorCode>("error", ErrorCode, l.error);
      const name = checkId("name", l.name);
      if (l.success) return { type: "login_result", loginResult: { name } };
      const error = code === ErrorCode.UNSPECIFIED ? ErrorCode.INTERNAL : code;
      return { type: "login_result", loginResult: { name, error } };
    }
    case MessageType.Logout:
      parse(pb.LogoutSchema, p);
      return { type: "logout" };
    case MessageType.HangUp:
      return { type: "hang_up", peer: address("peer", parse(pb.HangUpSchema, p).peer) };
    case MessageType.Offer:
      return {
        type: "offer",
        description: sessionDescription(parse(pb.SessionDescriptionSchema, p), deflated, limits.maxSdp),
      };
    case MessageType.Answer:
      return {
        type: "answer",
        description: sessionDescription(parse(pb.SessionDescriptionSchema, p), deflated, limits.maxSdp),
      };
    case MessageType.Ice:
      tooMany("candidates", countField(p, 3), limits.maxCandidates);
      return { type: "ice", ice: iceCandidates(parse(pb.IceCandidatesSchema, p), limits.maxCandidates) };
    case MessageType.Error: {
      const e = parse(pb.ErrorSchema, p);
      return {
        type: "error",
        error: {
          code: known("code", ErrorCode, e.code),
          message: bounded("message", e.message, MAX_TEXT_BYTES),
          requestSeq: e.requestSeq,
        },
      };
    }
  }
}

/** One decoded frame of a WebSocket message. */
export type Decoded =
  | { ok: true; seq: number; flags: number; message: Message }
  | { ok: false; seq?: number; error: DecodeError };

/**
 * Decodes every frame of one WebSocket message. A frame that fails to decode
 * is reported and skipped when frame boundaries are intact (an unknown type,
 * a bad field); a framing error ends the message.
 */
export function* decodeMessage(message: Uint8Array, limits: CodecLimits = DEFAULT_LIMITS): Generator<Decoded> {
  for (const frame of frames(message, limits.maxPayload, limits.maxFrames)) {
    if (frame instanceof DecodeError) {
      yield { ok: false, error: frame };
      continue;
    }
    try {
      yield { ok: true, seq: frame.header.seq, flags: frame.header.flags, message: decodeFrame(frame, limits) };
    } catch (e) {
      if (!(e instanceof DecodeError)) throw e;
      yield { ok: false, seq: frame.header.seq, error: e };
    }
  }
}

// ------------------------------------------------------------ encode

/** A message encoded once, ready to be framed with any sequence number. */
export interface Encoded {
  type: MessageType;
  flags: number;
  payload: Uint8Array;
}

function bin<Desc extends DescMessage>(schema: Desc, init: Parameters<typeof create<Desc>>[1]): Uint8Array {
  return toBinary(schema, create(schema, init));
}

function descriptionToWire(d: SessionDescription): Uint8Array {
  return bin(pb.SessionDescriptionSchema, { peer: addressToWire(d.peer), sdp: d.sdp.bytes, room: d.room ?? "", appData: d.appData ?? "" });
}

/** Encodes a message's payload and picks its type and flags. */
export function encode(msg: Message): Encoded {
  const e = (type: MessageType, payload: Uint8Array, flags = 0): Encoded => ({ type, flags, payload });
  switch (msg.type) {
    case "hello":
      return e(
        MessageType.Hello,
        bin(pb.HelloSchema, {
          protocolVersion: msg.hello.protocolVersion,
          capabilities: capabilitiesToWire(msg.hello.capabilities),
          accessToken: msg.hello.accessToken ?? "",
          userAgent: msg.hello.userAgent,
          resumeToken: msg.hello.resume?.token ?? new Uint8Array(0),
          resumeLastSeq: msg.hello.resume?.lastSeq ?? 0,
        }),
      );
    case "welcome": {
      const w = msg.welcome;
      return e(
        MessageType.Welcome,
        bin(pb.WelcomeSchema, {
          peerId: w.peerId,
          protocolVersion: w.protocolVersion,
          limits: create(pb.LimitsSchema, w.limits),
          heartbeatIntervalMs: w.heartbeatIntervalMs,
          heartbeatTimeoutMs: w.heartbeatTimeoutMs,
          iceServers: w.iceServers.map((s) => create(pb.IceServerSchema, s)),
          capabilities: capabilitiesToWire(w.capabilities),
          sdpDictionary: w.sdpDictionary,
          resumeToken: w.resume?.token ?? new Uint8Array(0),
          resumed: w.resume?.resumed ?? false,
          resumeRefusal: w.resume?.refusal ?? ResumeRefusal.UNSPECIFIED,
          resumeLastSeq: w.resume?.lastSeq ?? 0,
          resumeLimits: w.resume ? create(pb.ResumeLimitsSchema, w.resume.limits) : undefined,
        }),
      );
    }
    case "ping":
      return e(MessageType.Ping, bin(pb.PingSchema, { nonce: msg.nonce }));
    case "pong":
      return e(MessageType.Pong, bin(pb.PongSchema, { nonce: msg.nonce }));
    case "ack":
      return e(MessageType.Ack, bin(pb.AckSchema, { seq: msg.seq }));
    case "join":
      return e(
        MessageType.Join,
        bin(pb.JoinSchema, {
          room: msg.join.room,
          mode: msg.join.mode,
          capacity: msg.join.capacity ?? 0,
          displayName: msg.join.displayName,
        }),
      );
    case "joined":
      return e(
        MessageType.Joined,
        bin(pb.JoinedSchema, {
          room: msg.joined.room,
          mode: msg.joined.mode,
          capacity: msg.joined.capacity,
          members: msg.joined.members.map(memberToWire),
          initiator: msg.joined.initiator,
        }),
      );
    case "peer_joined":
      return e(
        MessageType.PeerJoined,
        bin(pb.PeerJoinedSchema, {
          room: msg.peerJoined.room,
          member: memberToWire(msg.peerJoined.member),
          initiator: msg.peerJoined.initiator,
        }),
      );
    case "peer_left":
      return e(MessageType.PeerLeft, bin(pb.PeerLeftSchema, msg.peerLeft));
    case "room_full":
      return e(MessageType.RoomFull, bin(pb.RoomFullSchema, { room: msg.room, capacity: msg.capacity }));
    case "leave":
      return e(MessageType.Leave, bin(pb.LeaveSchema, { room: msg.room }));
    case "left":
      return e(MessageType.Left, bin(pb.LeftSchema, { room: msg.room }));
    case "login":
      return e(MessageType.Login, bin(pb.LoginSchema, { name: msg.name }));
    case "login_result":
      return e(
        MessageType.LoginResult,
        bin(pb.LoginResultSchema, {
          name: msg.loginResult.name,
          success: msg.loginResult.error === undefined,
          error: msg.loginResult.error ?? ErrorCode.UNSPECIFIED,
        }),
      );
    case "logout":
      return e(MessageType.Logout, new Uint8Array(0));
    case "hang_up":
      return e(MessageType.HangUp, bin(pb.HangUpSchema, { peer: addressToWire(msg.peer) }));
    case "offer":
    case "answer":
      return e(
        msg.type === "offer" ? MessageType.Offer : MessageType.Answer,
        descriptionToWire(msg.description),
        msg.description.sdp.deflated ? Flags.DEFLATE_SDP : 0,
      );
    case "ice":
      return e(
        MessageType.Ice,
        bin(pb.IceCandidatesSchema, {
          peer: addressToWire(msg.ice.peer),
          candidates: msg.ice.candidates.map((c) => create(pb.IceCandidateSchema, c)),
          endOfCandidates: msg.ice.endOfCandidates,
          room: msg.ice.room ?? "",
          appData: msg.ice.appData ?? "",
        }),
      );
    case "error":
      return e(MessageType.Error, bin(pb.ErrorSchema, msg.error));
  }
}

/** Encodes `msg` as one frame numbered `seq`. */
export function encodeFrame(msg: Message, seq: number): Uint8Array {
  const { type, flags, payload } = encode(msg);
  return writeFrame(type, flags, seq, payload);
}

export type { FieldError };
