/**
 * The client's send queue, kept within the limits the server announced in
 * `Welcome.limits`: frames leave in order, at most `rateBurst` at once and
 * `ratePerSecond` after that (a mirror of the server's token bucket, so that
 * nothing is dropped as `RATE_LIMITED`), packed into WebSocket messages of at
 * most `maxFramesPerMessage` frames and `maxMessageBytes` bytes.
 *
 * Sans-IO, like `IceBatcher`: the caller passes the time in (milliseconds),
 * sends the messages `take()` returns and calls it again at `deadline()`.
 */
import { concatFrames } from "./frame.js";
import type { Limits } from "./message.js";

/** The announced limits that shape what a client sends; 0 rates mean "not paced". */
export type OutboxLimits = Pick<Limits, "maxMessageBytes" | "maxFramesPerMessage" | "ratePerSecond" | "rateBurst">;

/** Before Welcome: the server's default message limits, no pacing. */
export const DEFAULT_OUTBOX: Readonly<OutboxLimits> = Object.freeze({
  maxMessageBytes: 128 * 1024,
  maxFramesPerMessage: 64,
  ratePerSecond: 0,
  rateBurst: 0,
});

/**
 * Joins frames, in order, into as few WebSocket messages as the limits allow.
 * A frame larger than `maxBytes` goes alone; the caller refuses such frames.
 */
export function packFrames(frames: readonly Uint8Array[], maxFrames: number, maxBytes: number): Uint8Array[] {
  const messages: Uint8Array[] = [];
  let group: Uint8Array[] = [];
  let bytes = 0;
  for (const frame of frames) {
    if (group.length > 0 && (group.length >= maxFrames || bytes + frame.length > maxBytes)) {
      messages.push(concatFrames(group));
      group = [];
      bytes = 0;
    }
    group.push(frame);
    bytes += frame.length;
  }
  if (group.length > 0) messages.push(concatFrames(group));
  return messages;
}

export class Outbox {
  private frames: Uint8Array[] = [];
  private limits: OutboxLimits = DEFAULT_OUTBOX;
  private tokens = Infinity;
  private at = 0;
  /** Frames handed out so far, paid for out of the server's bucket. */
  private spent = 0;
  /** Whether `frames[0]` is an `Ack` (there is at most one waiting, the latest). */
  private ackFirst = false;

  /** How many frames wait to be sent. */
  get size(): number {
    return this.frames.length;
  }

  /**
   * Adopts the limits of a Welcome received at `now`. The server's bucket
   * started full when the connection opened and has paid for every frame
   * sent since (the Hello at least).
   */
  adopt(limits: OutboxLimits, now: number): void {
    this.limits = limits;
    this.at = now;
    this.tokens = limits.ratePerSecond > 0 ? Math.max(0, Math.max(1, limits.rateBurst) - this.spent) : Infinity;
  }

  /** Queues an encoded frame behind the others. */
  push(frame: Uint8Array): void {
    this.frames.push(frame);
  }

  /**
   * Queues an `Ack` in front of the others (it is paid for like any frame),
   * replacing one that still waits: acknowledgements are cumulative.
   */
  ack(frame: Uint8Array): void {
    if (this.ackFirst) this.frames[0] = frame;
    else this.frames.unshift(frame);
    this.ackFirst = true;
  }

  /** The WebSocket messages that may be sent at `now`, oldest frames first. */
  take(now: number): Uint8Array[] {
    const { ratePerSecond: rate, rateBurst } = this.limits;
    if (rate > 0) this.tokens = Math.min(Math.max(1, rateBurst), this.tokens + ((now - this.at) * rate) / 1000);
    this.at = now;
    const n = Math.min(this.frames.length, Math.floor(this.tokens + 1e-9));
    if (n <= 0) return [];
    this.tokens -= n;
    this.spent += n;
    this.ackFirst = false;
    return packFrames(this.frames.splice(0, n), this.limits.maxFramesPerMessage, this.limits.maxMessageBytes);
  }

  /** When to call `take` next; undefined while nothing waits. */
  deadline(): number | undefined {
    if (this.frames.length === 0) return undefined;
    if (this.tokens >= 1) return this.at;
    return this.at + Math.ceil(((1 - this.tokens) * 1000) / this.limits.ratePerSecond);
  }

  /** Drops everything queued (the connection is gone). */
  clear(): void {
    this.frames = [];
    this.ackFirst = false;
  }
}
