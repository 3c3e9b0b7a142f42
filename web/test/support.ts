// Shared helpers for the unit tests (compiled to .test-build/test/).
import { fileURLToPath } from "node:url";

import {
  Capabilities,
  ErrorCode,
  LeaveReason,
  ResumeRefusal,
  RoomMode,
  deflate,
  inflate,
  type Address,
  type Clock,
  type Hello,
  type IceCandidate,
  type Member,
  type Message,
  type Resume,
  type WebSocketLike,
} from "../src/index.js";

/** The web/ directory. */
export const webDir = fileURLToPath(new URL("../../", import.meta.url));
/** The repository root. */
export const repoDir = fileURLToPath(new URL("../../../", import.meta.url));

type Json = Record<string, any>;

const CAPS: [number, string][] = [
  [Capabilities.DEFLATE_SDP, "CAPABILITY_DEFLATE_SDP"],
  [Capabilities.ICE_BATCH, "CAPABILITY_ICE_BATCH"],
  [Capabilities.RESUME, "CAPABILITY_RESUME"],
];

const capsToJson = (c: number) => CAPS.filter(([bit]) => c & bit).map(([, n]) => n);
const capsFromJson = (names: string[]) => CAPS.filter(([, n]) => names.includes(n)).reduce((s, [b]) => s | b, 0);

function enumName(prefix: string, e: Record<number, string>, v: number): string {
  return `${prefix}_${e[v]}`;
}
function enumValue(prefix: string, e: Record<string, string | number>, name: string): number {
  const v = e[name.slice(prefix.length + 1)];
  if (typeof v !== "number") throw new Error(`unknown ${prefix} ${name}`);
  return v;
}

// Bytes fields other than SDP (resume tokens) are lowercase hex in the manifest.
const hexOf = (b: Uint8Array): string => Buffer.from(b).toString("hex");
const bytesOfHex = (h: string): Uint8Array => new Uint8Array(Buffer.from(h, "hex"));

const addressToJson = (a: Address): Json => ("peerId" in a ? { peer_id: a.peerId.toString() } : { user: a.user });
const addressFromJson = (j: Json): Address => ("peer_id" in j ? { peerId: BigInt(j.peer_id) } : { user: j.user });

function memberToJson(m: Member): Json {
  const v: Json = { peer_id: m.peerId.toString(), display_name: m.displayName, capabilities: capsToJson(m.capabilities) };
  if (m.user !== undefined) v.user = m.user;
  return v;
}
function memberFromJson(j: Json): Member {
  const m: Member = { peerId: BigInt(j.peer_id), displayName: j.display_name, capabilities: capsFromJson(j.capabilities) };
  if (j.user !== undefined) m.user = j.user;
  return m;
}

function candidateToJson(c: IceCandidate): Json {
  const v: Json = { candidate: c.candidate };
  if (c.sdpMid !== undefined) v.sdp_mid = c.sdpMid;
  if (c.sdpMLineIndex !== undefined) v.sdp_m_line_index = c.sdpMLineIndex;
  if (c.usernameFragment !== undefined) v.username_fragment = c.usernameFragment;
  return v;
}
function candidateFromJson(j: Json): IceCandidate {
  const c: IceCandidate = { candidate: j.candidate };
  if (j.sdp_mid !== undefined) c.sdpMid = j.sdp_mid;
  if (j.sdp_m_line_index !== undefined) c.sdpMLineIndex = j.sdp_m_line_index;
  if (j.username_fragment !== undefined) c.usernameFragment = j.username_fragment;
  return c;
}

const withRoom = (v: Json, room: string | undefined): Json => (room === undefined ? v : { ...v, room });
const withAppData = (v: Json, appData: string | undefined): Json =>
  appData === undefined ? v : { ...v, app_data: appData };

/** The manifest's language-neutral JSON of a message (see tests/golden.rs). */
export function toJson(m: Message): Json {
  const body = ((): Json => {
    switch (m.type) {
      case "hello": {
        const v: Json = {
          protocol_version: m.hello.protocolVersion,
          capabilities: capsToJson(m.hello.capabilities),
          user_agent: m.hello.userAgent,
        };
        if (m.hello.accessToken !== undefined) v.access_token = m.hello.accessToken;
        if (m.hello.resume !== undefined) {
          v.resume_token = hexOf(m.hello.resume.token);
          v.resume_last_seq = m.hello.resume.lastSeq;
        }
        return v;
      }
      case "welcome": {
        const w = m.welcome;
        const l = w.limits;
        const v: Json = {
          peer_id: w.peerId.toString(),
          protocol_version: w.protocolVersion,
          limits: {
            max_message_bytes: l.maxMessageBytes,
            max_frames_per_message: l.maxFramesPerMessage,
            max_sdp_bytes: l.maxSdpBytes,
            rate_per_second: l.ratePerSecond,
            rate_burst: l.rateBurst,
            max_id_bytes: l.maxIdBytes,
            max_room_capacity: l.maxRoomCapacity,
            default_room_capacity: l.defaultRoomCapacity,
            max_payload_bytes: l.maxPayloadBytes,
            max_candidates_per_batch: l.maxCandidatesPerBatch,
            rate_bytes_per_second: l.rateBytesPerSecond,
            rate_bytes_burst: l.rateBytesBurst,
            max_rooms_per_peer: l.maxRoomsPerPeer,
          },
          heartbeat_interval_ms: w.heartbeatIntervalMs,
          heartbeat_timeout_ms: w.heartbeatTimeoutMs,
          ice_servers: w.iceServers.map((s) => ({ urls: s.urls, username: s.username, credential: s.credential })),
          capabilities: capsToJson(w.capabilities),
          sdp_dictionary: w.sdpDictionary,
        };
        const r = w.resume;
        if (r !== undefined) {
          v.resume_token = hexOf(r.token);
          v.resumed = r.resumed;
          if (r.refusal !== undefined) v.resume_refusal = enumName("RESUME_REFUSAL", ResumeRefusal, r.refusal);
          v.resume_last_seq = r.lastSeq;
          v.resume_limits = {
            grace_ms: r.limits.graceMs,
            replay_frames: r.limits.replayFrames,
            replay_bytes: r.limits.replayBytes,
            ack_delay_ms: r.limits.ackDelayMs,
          };
        }
        return v;
      }
      case "ping":
      case "pong":
        return { nonce: m.nonce.toString() };
      case "ack":
        return { seq: m.seq };
      case "join": {
        const v: Json = {
          room: m.join.room,
          mode: enumName("ROOM_MODE", RoomMode, m.join.mode),
          display_name: m.join.displayName,
        };
        if (m.join.capacity !== undefined) v.capacity = m.join.capacity;
        return v;
      }
      case "joined":
        return {
          room: m.joined.room,
          mode: enumName("ROOM_MODE", RoomMode, m.joined.mode),
          capacity: m.joined.capacity,
          members: m.joined.members.map(memberToJson),
          initiator: m.joined.initiator,
        };
      case "peer_joined":
        return { room: m.peerJoined.room, member: memberToJson(m.peerJoined.member), initiator: m.peerJoined.initiator };
      case "peer_left":
        return {
          room: m.peerLeft.room,
          peer_id: m.peerLeft.peerId.toString(),
          reason: enumName("LEAVE_REASON", LeaveReason, m.peerLeft.reason),
        };
      case "room_full":
        return { room: m.room, capacity: m.capacity };
      case "leave":
      case "left":
        return { room: m.room };
      case "login":
        return { name: m.name };
      case "login_result": {
        const v: Json = { name: m.loginResult.name };
        if (m.loginResult.error !== undefined) v.error = enumName("ERROR_CODE", ErrorCode, m.loginResult.error);
        return v;
      }
      case "logout":
        return {};
      case "hang_up":
        return { peer: addressToJson(m.peer) };
      case "offer":
      case "answer": {
        const d = m.description;
        const bytes = d.sdp.deflated ? inflate(d.sdp.bytes, 64 * 1024) : d.sdp.bytes;
        return withAppData(
          withRoom(
            { peer: addressToJson(d.peer), sdp: new TextDecoder().decode(bytes), deflated: d.sdp.deflated },
            d.room,
          ),
          d.appData,
        );
      }
      case "ice":
        return withAppData(
          withRoom(
            {
              peer: addressToJson(m.ice.peer),
              candidates: m.ice.candidates.map(candidateToJson),
              end_of_candidates: m.ice.endOfCandidates,
            },
            m.ice.room,
          ),
          m.ice.appData,
        );
      case "error":
        return {
          code: enumName("ERROR_CODE", ErrorCode, m.error.code),
          message: m.error.message,
          request_seq: m.error.requestSeq,
        };
    }
  })();
  return { type: m.type, ...body };
}

/** The message a manifest entry describes. */
export function fromJson(j: Json): Message {
  const optRoom = (v: object) => {
    const r = j.room === undefined ? v : { ...v, room: j.room };
    return j.app_data === undefined ? r : { ...r, appData: j.app_data };
  };
  switch (j.type as Message["type"]) {
    case "hello": {
      const hello: Hello = {
        protocolVersion: j.protocol_version,
        capabilities: capsFromJson(j.capabilities),
        userAgent: j.user_agent,
      };
      if (j.access_token !== undefined) hello.accessToken = j.access_token;
      if (j.resume_token !== undefined) hello.resume = { token: bytesOfHex(j.resume_token), lastSeq: j.resume_last_seq };
      return { type: "hello", hello };
    }
    case "welcome": {
      const l = j.limits;
      let resume: Resume | undefined;
      if (j.resume_token !== undefined) {
        const rl = j.resume_limits;
        resume = {
          token: bytesOfHex(j.resume_token),
          resumed: j.resumed,
          lastSeq: j.resume_last_seq,
          limits: {
            graceMs: rl.grace_ms,
            replayFrames: rl.replay_frames,
            replayBytes: rl.replay_bytes,
            ackDelayMs: rl.ack_delay_ms,
          },
        };
        if (j.resume_refusal !== undefined) resume.refusal = enumValue("RESUME_REFUSAL", ResumeRefusal, j.resume_refusal);
      }
      return {
        type: "welcome",
        welcome: {
          peerId: BigInt(j.peer_id),
          protocolVersion: j.protocol_version,
          limits: {
            maxMessageBytes: l.max_message_bytes,
            maxFramesPerMessage: l.max_frames_per_message,
            maxSdpBytes: l.max_sdp_bytes,
            ratePerSecond: l.rate_per_second,
            rateBurst: l.rate_burst,
            maxIdBytes: l.max_id_bytes,
            maxRoomCapacity: l.max_room_capacity,
            defaultRoomCapacity: l.default_room_capacity,
            maxPayloadBytes: l.max_payload_bytes,
            maxCandidatesPerBatch: l.max_candidates_per_batch,
            rateBytesPerSecond: l.rate_bytes_per_second,
            rateBytesBurst: l.rate_bytes_burst,
            maxRoomsPerPeer: l.max_rooms_per_peer,
          },
          heartbeatIntervalMs: j.heartbeat_interval_ms,
          heartbeatTimeoutMs: j.heartbeat_timeout_ms,
          iceServers: j.ice_servers,
          capabilities: capsFromJson(j.capabilities),
          sdpDictionary: j.sdp_dictionary,
          ...(resume === undefined ? {} : { resume }),
        },
      };
    }
    case "ping":
      return { type: "ping", nonce: BigInt(j.nonce) };
    case "pong":
      return { type: "pong", nonce: BigInt(j.nonce) };
    case "ack":
      return { type: "ack", seq: j.seq };
    case "join": {
      const join = {
        room: j.room,
        mode: enumValue("ROOM_MODE", RoomMode, j.mode) as RoomMode.PAIR | RoomMode.MESH,
        displayName: j.display_name,
      };
      return { type: "join", join: j.capacity === undefined ? join : { ...join, capacity: j.capacity } };
    }
    case "joined":
      return {
        type: "joined",
        joined: {
          room: j.room,
          mode: enumValue("ROOM_MODE", RoomMode, j.mode),
          capacity: j.capacity,
          members: j.members.map(memberFromJson),
          initiator: j.initiator,
        },
      };
    case "peer_joined":
      return { type: "peer_joined", peerJoined: { room: j.room, member: memberFromJson(j.member), initiator: j.initiator } };
    case "peer_left":
      return {
        type: "peer_left",
        peerLeft: { room: j.room, peerId: BigInt(j.peer_id), reason: enumValue("LEAVE_REASON", LeaveReason, j.reason) },
      };
    case "room_full":
      return { type: "room_full", room: j.room, capacity: j.capacity };
    case "leave":
      return { type: "leave", room: j.room };
    case "left":
      return { type: "left", room: j.room };
    case "login":
      return { type: "login", name: j.name };
    case "login_result":
      return {
        type: "login_result",
        loginResult:
          j.error === undefined ? { name: j.name } : { name: j.name, error: enumValue("ERROR_CODE", ErrorCode, j.error) },
      };
    case "logout":
      return { type: "logout" };
    case "hang_up":
      return { type: "hang_up", peer: addressFromJson(j.peer) };
    case "offer":
    case "answer": {
      const text = new TextEncoder().encode(j.sdp);
      const sdp = j.deflated ? { deflated: true as const, bytes: deflate(text) } : { deflated: false as const, bytes: text };
      return { type: j.type, description: optRoom({ peer: addressFromJson(j.peer), sdp }) as any };
    }
    case "ice":
      return {
        type: "ice",
        ice: optRoom({
          peer: addressFromJson(j.peer),
          candidates: j.candidates.map(candidateFromJson),
          endOfCandidates: j.end_of_candidates,
        }) as any,
      };
    case "error":
      return {
        type: "error",
        error: { code: enumValue("ERROR_CODE", ErrorCode, j.code), message: j.message, requestSeq: j.request_seq },
      };
  }
}

/** A clock whose time moves only when a test says so. */
export class FakeClock implements Clock {
  private time = 1_000_000;
  private nextId = 1;
  private timers = new Map<number, { at: number; fn: () => void }>();

  now(): number {
    return this.time;
  }
  setTimeout(fn: () => void, ms: number): unknown {
    const id = this.nextId++;
    this.timers.set(id, { at: this.time + ms, fn });
    return id;
  }
  clearTimeout(handle: unknown): void {
    this.timers.delete(handle as number);
  }
  /** Pending timers' delays from now, soonest first. */
  pending(): number[] {
    return [...this.timers.values()].map((t) => t.at - this.time).sort((a, b) => a - b);
  }
  /** Moves time forward, firing due timers in order. */
  advance(ms: number): void {
    const end = this.time + ms;
    for (;;) {
      let next: [number, { at: number; fn: () => void }] | undefined;
      for (const entry of this.timers) if (entry[1].at <= end && (!next || entry[1].at < next[1].at)) next = entry;
      if (!next) break;
      this.timers.delete(next[0]);
      this.time = next[1].at;
      next[1].fn();
    }
    this.time = end;
  }
}

/** A WebSocket stand-in that records what the client sends. */
export class FakeSocket implements WebSocketLike {
  binaryType = "blob";
  readyState = 0;
  sent: Uint8Array[] = [];
  closed = false;
  onopen: ((ev: unknown) => void) | null = null;
  onmessage: ((ev: { data: unknown }) => void) | null = null;
  onclose: ((ev: { code: number; reason: string }) => void) | null = null;
  onerror: ((ev: unknown) => void) | null = null;

  constructor(readonly url: string) {}

  send(data: Uint8Array): void {
    this.sent.push(data.slice());
  }
  close(): void {
    this.closed = true;
    this.readyState = 3;
  }
  /** The server accepts the connection. */
  open(): void {
    this.readyState = 1;
    this.onopen?.({});
  }
  /** The server sends one WebSocket message. */
  deliver(bytes: Uint8Array): void {
    const copy = bytes.slice();
    this.onmessage?.({ data: copy.buffer });
  }
  /** The connection drops. */
  drop(): void {
    this.readyState = 3;
    this.onclose?.({ code: 1006, reason: "" });
  }
}
