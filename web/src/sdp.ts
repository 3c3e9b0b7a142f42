/**
 * SDP compression: raw DEFLATE (RFC 1951) with the server's preset
 * dictionary, the same format as `src/protocol/sdp.rs`. Level 6, as there,
 * which makes pako's output identical to the server's byte for byte.
 */
import { Inflate, deflateRaw } from "pako";

import { dictionary } from "./dictionary.js";
import { SdpError } from "./errors.js";

const LEVEL = 6;
const Z_OK = 0;
const Z_BUF_ERROR = -5;

/** Compresses `sdp` as raw DEFLATE with the preset dictionary. */
export function deflate(sdp: Uint8Array): Uint8Array {
  return deflateRaw(sdp, { level: LEVEL, dictionary: dictionary() });
}

/** Like `deflate`, but returns `undefined` unless it saves bytes. */
export function deflateIfSmaller(sdp: Uint8Array): Uint8Array | undefined {
  const compressed = deflate(sdp);
  return compressed.length < sdp.length ? compressed : undefined;
}

/** Input is fed to the inflater this many bytes at a time, so that a
 * deflate bomb is stopped after about a megabyte of output past `max`. */
const INPUT_STEP = 1024;

/**
 * Inflates raw DEFLATE made with the preset dictionary, producing at most
 * `max` bytes; throws `SdpError` (`too_large`, `truncated`, `trailing_data`,
 * `corrupt`) like the Rust decoder.
 */
export function inflate(data: Uint8Array, max: number): Uint8Array {
  if (data.length === 0) throw new SdpError({ kind: "truncated" });
  const inflater = new Inflate({ raw: true, dictionary: dictionary(), chunkSize: 16 * 1024 });
  const chunks: Uint8Array[] = [];
  let total = 0;
  inflater.onData = (chunk: Uint8Array) => {
    total += chunk.length;
    // pako reuses nothing it has handed out, but copy to be safe.
    if (total <= max) chunks.push(chunk.slice());
  };
  for (let at = 0; at < data.length && !inflater.ended; at += INPUT_STEP) {
    const end = Math.min(at + INPUT_STEP, data.length);
    inflater.push(data.subarray(at, end), end === data.length);
    if (total > max) throw new SdpError({ kind: "too_large", max });
    if (inflater.ended) {
      if (inflater.err === Z_BUF_ERROR) throw new SdpError({ kind: "truncated" });
      if (inflater.err !== Z_OK) throw new SdpError({ kind: "corrupt" });
      const strm = (inflater as unknown as { strm: { avail_in: number } }).strm;
      const extra = strm.avail_in + (data.length - end);
      if (extra > 0) throw new SdpError({ kind: "trailing_data", extra });
    }
  }
  if (!inflater.ended) throw new SdpError({ kind: "truncated" });
  const out = new Uint8Array(total);
  let at = 0;
  for (const c of chunks) {
    out.set(c, at);
    at += c.length;
  }
  return out;
}
