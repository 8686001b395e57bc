/**
 * Retry policy for registry traffic: exponential backoff with full jitter on transient
 * failures (connection errors, 408, 429, 5xx), honouring Retry-After, never on other 4xx.
 */
import type { Clock } from "../util/clock.ts";
import { StowageError } from "../util/errors.ts";
import type { Logger } from "../util/log.ts";

export interface RetryOptions {
  /** Total tries, the first included. Default 5. */
  attempts?: number;
  baseDelayMs?: number;
  maxDelayMs?: number;
}

export interface RetryPolicy {
  attempts: number;
  baseDelayMs: number;
  maxDelayMs: number;
}

export function retryPolicy(options: RetryOptions = {}): RetryPolicy {
  return {
    attempts: Math.max(1, options.attempts ?? 5),
    baseDelayMs: options.baseDelayMs ?? 200,
    maxDelayMs: options.maxDelayMs ?? 30_000,
  };
}

export const RETRYABLE_STATUSES = new Set([408, 429, 500, 502, 503, 504]);

export function isRetryableStatus(status: number): boolean {
  return RETRYABLE_STATUSES.has(status);
}

/** Retry-After as milliseconds: delta-seconds or an HTTP date; undefined when absent or unreadable. */
export function parseRetryAfter(value: string | undefined, nowMs: number): number | undefined {
  if (value === undefined) return undefined;
  const trimmed = value.trim();
  if (/^\d+$/.test(trimmed)) return Number(trimmed) * 1000;
  const date = Date.parse(trimmed);
  if (Number.isNaN(date)) return undefined;
  return Math.max(0, date - nowMs);
}

/** Full jitter: uniform in [0, min(max, base * 2^retry)]. `retry` counts from 0. */
export function backoffDelay(policy: RetryPolicy, retry: number, random: () => number = Math.random): number {
  const ceiling = Math.min(policy.maxDelayMs, policy.baseDelayMs * 2 ** retry);
  return Math.floor(random() * ceiling);
}

/**
 * Run `operation` until it succeeds, fails with a non-retryable error, or the attempts run
 * out. A StowageError may carry `retryAfterMs` (from a Retry-After header) to set the wait.
 */
export async function withRetry<T>(
  operation: (attempt: number) => Promise<T>,
  context: { policy: RetryPolicy; clock: Clock; logger?: Logger; what: string; signal?: AbortSignal },
): Promise<T> {
  const { policy, clock } = context;
  for (let attempt = 1; ; attempt++) {
    try {
      return await operation(attempt);
    } catch (err) {
      if (context.signal?.aborted) throw err;
      if (!(err instanceof StowageError) || !err.retryable || attempt >= policy.attempts) throw err;
      const requested = retryAfterOf(err);
      const delay =
        requested !== undefined ? Math.min(requested, policy.maxDelayMs) : backoffDelay(policy, attempt - 1);
      context.logger?.debug(
        { what: context.what, attempt, delayMs: delay, reason: err.reason, err: err.message },
        "retrying registry request",
      );
      await clock.sleep(delay, context.signal);
    }
  }
}

const RETRY_AFTER = Symbol("retryAfterMs");

/** Attach the server's requested wait to an error, for withRetry. */
export function withRetryAfter(err: StowageError, retryAfterMs: number | undefined): StowageError {
  if (retryAfterMs !== undefined)
    (err as StowageError & { [RETRY_AFTER]?: number })[RETRY_AFTER] = retryAfterMs;
  return err;
}

export function retryAfterOf(err: StowageError): number | undefined {
  return (err as StowageError & { [RETRY_AFTER]?: number })[RETRY_AFTER];
}
