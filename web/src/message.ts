/**
 * Validated protocol messages: the SDK's view of every v1 message, mirroring
 * `src/protocol/message.rs`. Only `codec.ts` converts between these and the
 * generated protobuf types.
 */
import { ErrorCode, LeaveReason, ResumeRefusal, RoomMode } from "./gen/switchboard/v1/signal_pb.js";

export { ErrorCode, LeaveReason, ResumeRefusal, RoomMode };

/** Protocol version spoken by this SDK. */
export const PROTOCOL_VERSION = 1;
/** Longest room id or user name, in bytes of UTF-8. */
export const MAX_ID_BYTES = 64;
/** Longest display name, in bytes. */
export const MAX_DISPLAY_NAME_BYTES = 128;
/** Longest ICE candidate line, in bytes. */
export const MAX_CANDIDATE_BYTES = 1024;
/** Longest access token, in bytes. */
export const MAX_TOKEN_BYTES = 4096;
/** Longest free-text field (error message, user agent), in bytes. */
export const MAX_TEXT_BYTES = 1024;
/** Longest `appData` beside a signal, in bytes. */
export const MAX_APP_DATA_BYTES = 1024;
/** Most members a Joined may list. */
export const MAX_MEMBERS = 1024;
/** Most ICE servers a Welcome may list. */
export const MAX_ICE_SERVERS = 16;
/** Longest resume token accepted, in bytes. */
export const MAX_RESUME_TOKEN_BYTES = 64;

/** Optional client features, as a bit set (same bits as the Rust crate). */
export const Capabilities = {
  NONE: 0,
  DEFLATE_SDP: 1 << 0,
  ICE_BATCH: 1 << 1,
  RESUME: 1 << 2,
} as const;
/** A set of `Capabilities` bits. */
export type Capabilities = number;

/** The other end of a call or negotiation: a room peer or a logged-in user. */
export type Address = { peerId: bigint } | { user: string };

/** An SDP body as sent on the wire. */
export type Sdp = { deflated: false; bytes: Uint8Array } | { deflated: true; bytes: Uint8Array };

export interface Hello {
  protocolVersion: number;
  capabilities: Capabilities;
  accessToken?: string;
  userAgent: string;
  /** The session to resume (PROTOCOL.md section 11a). */
  resume?: ResumeRequest;
}

/** `Hello`'s request to resume a session. */
export interface ResumeRequest {
  /** The token of the session's last `Welcome`. */
  token: Uint8Array;
  /** The highest sequence number of the server's frames the client has processed. */
  lastSeq: number;
}

/** The limits of session resume, announced in `Welcome`. */
export interface ResumeLimits {
  /** How long a dropped session waits for its client. */
  graceMs: number;
  /** Most frames each side keeps unacknowledged. */
  replayFrames: number;
  /** Most payload bytes each side keeps unacknowledged. */
  replayBytes: number;
  /** Longest wait before acknowledging. */
  ackDelayMs: number;
}

/** What `Welcome` says of session resume, when `CAPABILITY_RESUME` is granted. */
export interface Resume {
  /** The token to resume this session with (only the latest is valid). */
  token: Uint8Array;
  /** Whether this `Welcome` continues the session `Hello` named. */
  resumed: boolean;
  /** Why a resume that was asked for did not happen. */
  refusal?: ResumeRefusal;
  /** On a resume: the highest sequence number of the client's frames the server has processed. */
  lastSeq: number;
  limits: ResumeLimits;
}

export interface IceServer {
  urls: string[];
  username: string;
  credential: string;
}

export interface Limits {
  maxMessageBytes: number;
  maxFramesPerMessage: number;
  maxSdpBytes: number;
  ratePerSecond: number;
  rateBurst: number;
  maxIdBytes: number;
  maxRoomCapacity: number;
  defaultRoomCapacity: number;
  /** Largest frame payload accepted, in bytes. */
  maxPayloadBytes: number;
  /** Most candidates in one `IceCandidates`. */
  maxCandidatesPerBatch: number;
  /** Sustained bytes per second and burst before `RATE_LIMITED`. */
  rateBytesPerSecond: number;
  rateBytesBurst: number;
  /** Most rooms one connection may be in. */
  maxRoomsPerPeer: number;
}

export interface Welcome {
  peerId: bigint;
  protocolVersion: number;
  limits: Limits;
  heartbeatIntervalMs: number;
  heartbeatTimeoutMs: number;
  iceServers: IceServer[];
  capabilities: Capabilities;
  sdpDictionary: number;
  /** Session resume, when granted. */
  resume?: Resume;
}

export interface Member {
  peerId: bigint;
  displayName: string;
  user?: string;
  capabilities: Capabilities;
}

export interface Join {
  room: string;
  /** An unspecified mode on the wire means pair. */
  mode: RoomMode.PAIR | RoomMode.MESH;
  /** Capacity asked for when this join creates a mesh room. */
  capacity?: number;
  displayName: string;
}

export interface Joined {
  room: string;
  mode: RoomMode;
  capacity: number;
  /** The other members, in join order. */
  members: Member[];
  /** Pair rooms: the receiver creates the offer. */
  initiator: boolean;
}

export interface PeerJoined {
  room: string;
  member: Member;
  initiator: boolean;
}

export interface PeerLeft {
  room: string;
  peerId: bigint;
  reason: LeaveReason;
}

export interface LoginResult {
  name: string;
  /** Absent on success, else why it failed. */
  error?: ErrorCode;
}

export interface SessionDescription {
  /** Target (from a client) or sender (from the server). */
  peer: Address;
  sdp: Sdp;
  room?: string;
  /** Application data relayed unchanged (seed 000 pages put `{"seq","timestamp"}` here). */
  appData?: string;
}

/** One ICE candidate, as in `RTCIceCandidateInit`. */
export interface IceCandidate {
  candidate: string;
  sdpMid?: string;
  sdpMLineIndex?: number;
  usernameFragment?: string;
}

export interface IceCandidates {
  peer: Address;
  candidates: IceCandidate[];
  endOfCandidates: boolean;
  room?: string;
  /** Application data relayed unchanged. */
  appData?: string;
}

export interface ErrorMessage {
  code: ErrorCode;
  message: string;
  requestSeq: number;
}

/** Every message of protocol v1, in both directions. */
export type Message =
  | { type: "hello"; hello: Hello }
  | { type: "welcome"; welcome: Welcome }
  | { type: "ping"; nonce: bigint }
  | { type: "pong"; nonce: bigint }
  | { type: "ack"; seq: number }
  | { type: "join"; join: Join }
  | { type: "joined"; joined: Joined }
  | { type: "peer_joined"; peerJoined: PeerJoined }
  | { type: "peer_left"; peerLeft: PeerLeft }
  | { type: "room_full"; room: string; capacity: number }
  | { type: "leave"; room: string }
  | { type: "left"; room: string }
  | { type: "login"; name: string }
  | { type: "login_result"; loginResult: LoginResult }
  | { type: "logout" }
  | { type: "hang_up"; peer: Address }
  | { type: "offer"; description: SessionDescription }
  | { type: "answer"; description: SessionDescription }
  | { type: "ice"; ice: IceCandidates }
  | { type: "error"; error: ErrorMessage };

/** A `Message`'s `type` tag. */
export type MessageKind = Message["type"];

/** Whether two addresses name the same end. */
export function sameAddress(a: Address, b: Address): boolean {
  if ("peerId" in a) return "peerId" in b && a.peerId === b.peerId;
  return "user" in b && a.user === b.user;
}

/** A string key for an address, for maps. */
export function addressKey(a: Address): string {
  return "peerId" in a ? `peer:${a.peerId}` : `user:${a.user}`;
}
