/**
 * The frame layer: a 12-byte header in front of each protobuf payload, and
 * several frames to one WebSocket message. Mirrors `crates/protocol/src/frame.rs`.
 *
 * ```text
 * offset  size  field
 * 0       1     version      (1)
 * 1       1     type         (MessageType)
 * 2       1     flags        (bit 0: DEFLATE_SDP; other bits must be 0)
 * 3       1     reserved     (sent as 0, ignored)
 * 4       4     seq          (u32, big-endian, per sender)
 * 8       4     length       (u32, big-endian, payload bytes)
 * 12      len   payload      (protobuf)
 * ```
 */
import { DecodeError } from "./errors.js";

/** Length of the fixed frame header. */
export const HEADER_LEN = 12;
/** The frame-format version this SDK reads and writes. */
export const VERSION = 1;

/** Type bytes of protocol v1. */
export const MessageType = {
  Hello: 0x01,
  Ping: 0x02,
  Pong: 0x03,
  Ack: 0x04,
  Join: 0x10,
  Leave: 0x11,
  Login: 0x20,
  Logout: 0x21,
  HangUp: 0x22,
  Offer: 0x30,
  Answer: 0x31,
  Ice: 0x32,
  Welcome: 0x81,
  Joined: 0x90,
  PeerJoined: 0x91,
  PeerLeft: 0x92,
  RoomFull: 0x93,
  Left: 0x94,
  LoginResult: 0xa0,
  Error: 0xe0,
} as const;
export type MessageType = (typeof MessageType)[keyof typeof MessageType];

const KNOWN_TYPES = new Set<number>(Object.values(MessageType));

/** Whether this version knows type byte `b`. */
export function isKnownType(b: number): b is MessageType {
  return KNOWN_TYPES.has(b);
}

/** Frame flag bits. */
export const Flags = {
  /** The payload's `sdp` field is raw deflate with the preset dictionary. */
  DEFLATE_SDP: 0x01,
  /** Bits this version defines. */
  KNOWN: 0x01,
} as const;

/** A decoded frame header. */
export interface Header {
  /** Raw type byte (may be unknown to this version). */
  type: number;
  flags: number;
  seq: number;
  /** Payload length in bytes. */
  len: number;
}

/** One frame cut out of a WebSocket message; the payload is a view. */
export interface RawFrame {
  header: Header;
  payload: Uint8Array;
}

/**
 * Parses a header from the front of `buf`. Throws `incomplete` when `buf` is
 * shorter than a header and `unsupported_version` for a version other than 1.
 */
export function parseHeader(buf: Uint8Array): Header {
  if (buf.length < HEADER_LEN) {
    throw new DecodeError({ kind: "incomplete", needed: HEADER_LEN - buf.length });
  }
  if (buf[0] !== VERSION) {
    throw new DecodeError({ kind: "unsupported_version", version: buf[0]! });
  }
  const view = new DataView(buf.buffer, buf.byteOffset, HEADER_LEN);
  return { type: buf[1]!, flags: buf[2]!, seq: view.getUint32(4), len: view.getUint32(8) };
}

/**
 * Cuts the next frame off the front of `buf`, returning it and the rest.
 * The declared length is checked against `maxPayload` before the payload is
 * touched; a short buffer is `incomplete` (with how many bytes are missing).
 */
export function splitFrame(buf: Uint8Array, maxPayload: number): [RawFrame, Uint8Array] {
  const header = parseHeader(buf);
  if (header.len > maxPayload) {
    throw new DecodeError({ kind: "too_large", size: header.len, max: maxPayload });
  }
  const total = HEADER_LEN + header.len;
  if (buf.length < total) {
    throw new DecodeError({ kind: "incomplete", needed: total - buf.length });
  }
  return [{ header, payload: buf.subarray(HEADER_LEN, total) }, buf.subarray(total)];
}

/**
 * The frames of one complete WebSocket message. A trailing partial frame is
 * `truncated`. Iteration stops after the first error (yielded, not thrown),
 * since the rest of the message cannot be trusted.
 */
export function* frames(
  message: Uint8Array,
  maxPayload: number,
  maxFrames: number,
): Generator<RawFrame | DecodeError> {
  let rest = message;
  let seen = 0;
  while (rest.length > 0) {
    if (seen === maxFrames) {
      yield new DecodeError({ kind: "too_many_frames", max: maxFrames });
      return;
    }
    seen++;
    try {
      const [frame, next] = splitFrame(rest, maxPayload);
      rest = next;
      yield frame;
    } catch (e) {
      if (e instanceof DecodeError && e.detail.kind === "incomplete") {
        yield new DecodeError({ kind: "truncated" });
      } else if (e instanceof DecodeError) {
        yield e;
      } else {
        throw e;
      }
      return;
    }
  }
}

/** Writes one frame (header and payload) into a new buffer. */
export function writeFrame(type: number, flags: number, seq: number, payload: Uint8Array): Uint8Array {
  const out = new Uint8Array(HEADER_LEN + payload.length);
  const view = new DataView(out.buffer);
  out[0] = VERSION;
  out[1] = type;
  out[2] = flags;
  out[3] = 0;
  view.setUint32(4, seq >>> 0);
  view.setUint32(8, payload.length);
  out.set(payload, HEADER_LEN);
  return out;
}

/** Joins frames into the bytes of one WebSocket message. */
export function concatFrames(parts: readonly Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}
