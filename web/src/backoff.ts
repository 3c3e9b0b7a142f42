/** Reconnect delays: exponential back-off with jitter. */

export interface BackoffConfig {
  /** Delay before the first retry, in ms. */
  initialMs: number;
  /** Largest delay, in ms. */
  maxMs: number;
  /** Growth per attempt. */
  factor: number;
  /**
   * Fraction of the delay that is random, 0..1. With 0.5 a delay of 1000 ms
   * becomes anything in [500, 1000], so clients that lost the same server do
   * not all come back in the same millisecond.
   */
  jitter: number;
  /** Give up after this many failed attempts in a row (Infinity: never). */
  maxAttempts: number;
}

export const DEFAULT_BACKOFF: Readonly<BackoffConfig> = Object.freeze({
  initialMs: 500,
  maxMs: 30_000,
  factor: 2,
  jitter: 0.5,
  maxAttempts: Infinity,
});

/** The ceiling of the delay before retry number `attempt` (0-based). */
export function backoffCeiling(attempt: number, config: BackoffConfig = DEFAULT_BACKOFF): number {
  return Math.min(config.maxMs, config.initialMs * config.factor ** attempt);
}

/**
 * The delay before retry `attempt` (0-based): within
 * `[ceiling * (1 - jitter), ceiling]`. `random` returns [0, 1).
 */
export function backoffDelay(
  attempt: number,
  config: BackoffConfig = DEFAULT_BACKOFF,
  random: () => number = Math.random,
): number {
  const ceiling = backoffCeiling(attempt, config);
  const jitter = Math.min(1, Math.max(0, config.jitter));
  return Math.round(ceiling * (1 - jitter * random()));
}
