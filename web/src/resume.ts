/**
 * Session resume's bookkeeping on the client side (PROTOCOL.md section
 * 11a), sans-IO like `Outbox`: the frames sent that the server has not
 * acknowledged (bounded by `Welcome.resume_limits`), the highest server
 * frame processed, and whether an `Ack` is owed. `SignalingClient` does the
 * sockets and the timers.
 *
 * Sequence numbers wrap modulo 2^32 and skip 0; 0 is outside the numbering
 * (an `Ack`, the `Welcome` of a resumed connection) and is never held,
 * acknowledged or a duplicate.
 */
import type { ResumeLimits } from "./message.js";

/** The server's defaults, for what a `Welcome` leaves at 0. */
export const DEFAULT_RESUME_LIMITS: Readonly<ResumeLimits> = Object.freeze({
  graceMs: 30_000,
  replayFrames: 256,
  replayBytes: 256 * 1024,
  ackDelayMs: 200,
});

/** Whether `a` is `b` or comes before it, in serial-number order (RFC 1982 style, modulo 2^32). */
export function seqAtOrBefore(a: number, b: number): boolean {
  return ((b - a) >>> 0) < 0x80000000;
}

interface Held {
  seq: number;
  frame: Uint8Array;
  /** Payload bytes, what `replay_bytes` counts. */
  bytes: number;
}

export class ResumeSession {
  /** The latest `Welcome`'s token; undefined until a `Welcome` grants resume. */
  token: Uint8Array | undefined;
  private limits: ResumeLimits = DEFAULT_RESUME_LIMITS;
  private held: Held[] = [];
  private bytes = 0;
  /** The highest seq dropped from `held` before the server acknowledged it; 0: none. */
  private lostThrough = 0;
  /** The highest server seq processed, and the highest acknowledged to the server. */
  private last = 0;
  private acked = 0;

  /** Adopts `Welcome.resume_limits`; a limit at 0 keeps the default. */
  adopt(limits: ResumeLimits): void {
    const announced = Object.fromEntries(Object.entries(limits).filter(([, v]) => v !== 0));
    this.limits = { ...DEFAULT_RESUME_LIMITS, ...announced };
  }

  /** How long to wait at most before acknowledging, in ms. */
  get ackDelayMs(): number {
    return this.limits.ackDelayMs;
  }

  /**
   * Whether the session can be resumed: a token was granted and every frame
   * the server has not acknowledged is still held.
   */
  get resumable(): boolean {
    return this.token !== undefined && this.lostThrough === 0;
  }

  /** Frames held, and their payload bytes. */
  get heldFrames(): number {
    return this.held.length;
  }
  get heldBytes(): number {
    return this.bytes;
  }

  /** The seqs held, oldest first. */
  heldSeqs(): number[] {
    return this.held.map((h) => h.seq);
  }

  /** Whether one more frame of `bytes` payload bytes can be held without dropping one. */
  fits(bytes: number): boolean {
    return this.held.length + 1 <= this.limits.replayFrames && this.bytes + bytes <= this.limits.replayBytes;
  }

  /**
   * Holds a frame sent (or about to be) until the server acknowledges it.
   * Past the limits the oldest frames are dropped, and the session is not
   * resumable until the server acknowledges them after all.
   */
  hold(seq: number, frame: Uint8Array, bytes: number): void {
    if (seq === 0) return;
    this.held.push({ seq, frame, bytes });
    this.bytes += bytes;
    while (this.held.length > this.limits.replayFrames || this.bytes > this.limits.replayBytes) {
      const dropped = this.held.shift()!;
      this.bytes -= dropped.bytes;
      this.lostThrough = dropped.seq;
    }
  }

  /** The server processed every frame up to `seq` (an `Ack`, or `Welcome.resume_last_seq`). */
  acknowledged(seq: number): void {
    if (seq === 0) return;
    while (this.held.length > 0 && seqAtOrBefore(this.held[0]!.seq, seq)) {
      this.bytes -= this.held.shift()!.bytes;
    }
    if (this.lostThrough !== 0 && seqAtOrBefore(this.lostThrough, seq)) this.lostThrough = 0;
  }

  /**
   * After a resume in which the server processed every frame up to
   * `lastSeq`: the frames to send again, oldest first, with their numbers
   * (they stay held until acknowledged).
   */
  resendAfter(lastSeq: number): Uint8Array[] {
    this.acknowledged(lastSeq);
    return this.held.map((h) => h.frame);
  }

  /**
   * A server frame numbered `seq` arrived. False for one processed already
   * (a duplicate, never handled twice); seq 0 is outside the numbering.
   */
  received(seq: number): boolean {
    if (seq === 0) return true;
    if (this.last !== 0 && seqAtOrBefore(seq, this.last)) return false;
    this.last = seq;
    return true;
  }

  /** The highest server seq processed (what a resume `Hello` reports). */
  get lastReceived(): number {
    return this.last;
  }

  /** Whether frames were processed since the last `Ack`. */
  get ackOwed(): boolean {
    return this.last !== this.acked;
  }

  /** The seq to acknowledge now; from here on it counts as acknowledged. */
  takeAck(): number {
    this.acked = this.last;
    return this.last;
  }
}
