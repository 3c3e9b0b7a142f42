import { ErrorCode } from "./gen/switchboard/v1/signal_pb.js";
import type { Limits } from "./message.js";

/**
 * Why a field failed validation; mirrors Rust's `protocol::FieldError`.
 */
export type FieldError =
  | { kind: "id"; field: string; reason: "empty" | "too_long" | "bad_characters" }
  | { kind: "missing"; field: string }
  | { kind: "too_long"; field: string; len: number; max: number }
  | { kind: "too_many"; field: string; count: number; max: number }
  | { kind: "unknown_enum"; field: string; value: number }
  | { kind: "sdp_not_utf8" };

/** Why compressed SDP could not be inflated; mirrors Rust's `sdp::SdpError`. */
export type SdpErrorKind =
  | { kind: "too_large"; max: number }
  | { kind: "corrupt" }
  | { kind: "truncated" }
  | { kind: "trailing_data"; extra: number };

/**
 * Why bytes could not be decoded; one variant per Rust `DecodeError` variant,
 * carrying the same numbers.
 */
export type DecodeErrorKind =
  | { kind: "incomplete"; needed: number }
  | { kind: "truncated" }
  | { kind: "unsupported_version"; version: number }
  | { kind: "unknown_type"; type: number }
  | { kind: "bad_flags"; type: number; flags: number }
  | { kind: "too_large"; size: number; max: number }
  | { kind: "too_many_frames"; max: number }
  | { kind: "protobuf"; detail: string }
  | { kind: "field"; error: FieldError }
  | { kind: "compression"; error: SdpErrorKind };

function describeField(e: FieldError): string {
  switch (e.kind) {
    case "id":
      return `${e.field} ${e.reason.replace("_", " ")}`;
    case "missing":
      return `${e.field} is required`;
    case "too_long":
      return `${e.field} is ${e.len} bytes long, the limit is ${e.max}`;
    case "too_many":
      return `${e.field} has ${e.count} entries, the limit is ${e.max}`;
    case "unknown_enum":
      return `${e.field} has unknown value ${e.value}`;
    case "sdp_not_utf8":
      return "sdp is not valid UTF-8";
  }
}

function describeSdp(e: SdpErrorKind): string {
  switch (e.kind) {
    case "too_large":
      return `inflated SDP exceeds ${e.max} bytes`;
    case "corrupt":
      return "compressed SDP is corrupt";
    case "truncated":
      return "compressed SDP is truncated";
    case "trailing_data":
      return `${e.extra} bytes of trailing data after the compressed SDP`;
  }
}

function hex(n: number): string {
  return `0x${n.toString(16).padStart(2, "0")}`;
}

function describe(d: DecodeErrorKind): string {
  switch (d.kind) {
    case "incomplete":
      return `incomplete frame: ${d.needed} more bytes needed`;
    case "truncated":
      return "message ends in the middle of a frame";
    case "unsupported_version":
      return `unsupported frame version ${d.version}`;
    case "unknown_type":
      return `unknown message type ${hex(d.type)}`;
    case "bad_flags":
      return `invalid flags ${hex(d.flags)} for message type ${hex(d.type)}`;
    case "too_large":
      return `frame payload of ${d.size} bytes exceeds the limit of ${d.max}`;
    case "too_many_frames":
      return `more than ${d.max} frames in one message`;
    case "protobuf":
      return `malformed payload: ${d.detail}`;
    case "field":
      return `invalid field: ${describeField(d.error)}`;
    case "compression":
      return `bad compressed sdp: ${describeSdp(d.error)}`;
  }
}

/** The wire error code that reports `d`, as Rust's `DecodeError::code`. */
export function errorCodeOf(d: DecodeErrorKind): ErrorCode {
  switch (d.kind) {
    case "incomplete":
    case "truncated":
    case "bad_flags":
    case "protobuf":
      return ErrorCode.MALFORMED;
    case "unsupported_version":
      return ErrorCode.UNSUPPORTED_VERSION;
    case "unknown_type":
      return ErrorCode.UNKNOWN_TYPE;
    case "too_large":
    case "too_many_frames":
      return ErrorCode.TOO_LARGE;
    case "field":
      if (d.error.kind === "too_long" || d.error.kind === "too_many") return ErrorCode.TOO_LARGE;
      // Over-long, whatever the field: an id is no exception.
      if (d.error.kind === "id" && d.error.reason === "too_long") return ErrorCode.TOO_LARGE;
      if (d.error.kind === "sdp_not_utf8") return ErrorCode.MALFORMED;
      return ErrorCode.INVALID_ARGUMENT;
    case "compression":
      return ErrorCode.BAD_COMPRESSION;
  }
}

/** Bytes that could not be decoded into a message. */
export class DecodeError extends Error {
  override readonly name = "DecodeError";
  /** The wire error code, as the server would report it. */
  readonly code: ErrorCode;

  constructor(readonly detail: DecodeErrorKind) {
    super(describe(detail));
    this.code = errorCodeOf(detail);
  }

  /** Shorthand for a field error. */
  static field(error: FieldError): DecodeError {
    return new DecodeError({ kind: "field", error });
  }
}

/** Compressed SDP that could not be inflated. */
export class SdpError extends Error {
  override readonly name = "SdpError";

  constructor(readonly detail: SdpErrorKind) {
    super(describeSdp(detail));
  }
}

/**
 * An error the server sent, or a request the server refused, surfaced to the
 * application.
 */
export class SignalingError extends Error {
  override readonly name = "SignalingError";

  constructor(
    readonly code: ErrorCode,
    message: string,
    readonly requestSeq = 0,
  ) {
    super(message || ErrorCode[code] || `error ${code}`);
  }
}

/**
 * Something the client refused to send because it is over a limit the server
 * announced in `Welcome.limits` (or the SDK's default while none is
 * announced): the server would refuse it, or close the connection for it.
 */
export class LimitError extends Error {
  override readonly name = "LimitError";
  /** The wire error code the server would answer with. */
  readonly code = ErrorCode.TOO_LARGE;

  constructor(
    /** The `Welcome.limits` field that was exceeded. */
    readonly limit: keyof Limits,
    readonly size: number,
    readonly max: number,
  ) {
    super(`${size} is over the server's ${limit} of ${max}`);
  }
}
