/**
 * Batching of trickled ICE candidates, with the semantics of Rust's
 * `protocol::ice::IceBatcher`: candidates gather for a window that starts at
 * the oldest pending one (20 ms by default), a full batch (8) goes at once,
 * and end-of-candidates sends everything pending with the marker.
 *
 * Sans-IO: the caller passes the time in (milliseconds) and asks `deadline()`
 * when to `poll()` next.
 */
import type { IceCandidate } from "./message.js";

export interface BatchConfig {
  /** How long after the first pending candidate the batch is sent, in ms. */
  windowMs: number;
  /** Most candidates in one batch; zero behaves like one. */
  maxBatch: number;
}

export const DEFAULT_BATCH: Readonly<BatchConfig> = Object.freeze({ windowMs: 20, maxBatch: 8 });

export interface Batch {
  candidates: IceCandidate[];
  endOfCandidates: boolean;
}

export class IceBatcher {
  private pending: IceCandidate[] = [];
  private since: number | undefined;

  constructor(readonly config: BatchConfig = DEFAULT_BATCH) {}

  /** How many candidates wait to be sent. */
  get size(): number {
    return this.pending.length;
  }

  /**
   * Adds a candidate gathered at `now`; returns the batch to send at once when
   * it is full, or when the window of the pending candidates has already
   * expired (the new one then rides along).
   */
  push(candidate: IceCandidate, now: number): Batch | undefined {
    const expired = this.since !== undefined && now >= this.since + this.config.windowMs;
    if (this.since === undefined) this.since = now;
    this.pending.push(candidate);
    if (expired || this.pending.length >= Math.max(1, this.config.maxBatch)) return this.take(false);
    return undefined;
  }

  /** Gathering is complete: everything pending plus the end marker. */
  endOfCandidates(): Batch {
    return this.take(true);
  }

  /** The pending batch if its window has expired at `now`. */
  poll(now: number): Batch | undefined {
    const deadline = this.deadline();
    return deadline !== undefined && now >= deadline ? this.take(false) : undefined;
  }

  /** When to call `poll`; undefined while nothing is pending. */
  deadline(): number | undefined {
    return this.since === undefined ? undefined : this.since + this.config.windowMs;
  }

  /** Drops everything pending (the call ended). */
  clear(): void {
    this.pending = [];
    this.since = undefined;
  }

  private take(endOfCandidates: boolean): Batch {
    const batch = { candidates: this.pending, endOfCandidates };
    this.clear();
    return batch;
  }
}
