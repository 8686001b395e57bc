/**
 * Retry policy for registry traffic: exponential backoff with full jitter on transient
 * failures (connection errors, timeouts, 408, 429, 5xx), never on other 4xx. Retry-After is
 * honoured up to `maxRetryAfterMs` (default 5 min): a wait up to `maxDelayMs` (30 s) is slept
 * where the request is; a longer one is slept too (`longWaits: "sleep"`, the one-shot CLI), or
 * handed to the caller (`"report"`, the controller, which must not hold a worker for minutes)
 * as an error that says "retrying in Ns" and carries the wait (retryAfterOf).
 */
import type { Clock } from "../util/clock.ts";
import { StowageError } from "../util/errors.ts";
import type { Logger } from "../util/log.ts";

export interface RetryOptions {
  /** Total tries, the first included. Default 5. */
  attempts?: number;
  baseDelayMs?: number;
  maxDelayMs?: number;
  /** The longest Retry-After honoured (default 5 min); longer requests wait this long. */
  maxRetryAfterMs?: number;
  /** A Retry-After past maxDelayMs: slept here ("sleep", default) or reported to the caller ("report"). */
  longWaits?: "sleep" | "report";
}

export interface RetryPolicy {
  attempts: number;
  baseDelayMs: number;
  maxDelayMs: number;
  maxRetryAfterMs: number;
  longWaits: "sleep" | "report";
}

export const DEFAULT_MAX_RETRY_AFTER_MS = 5 * 60_000;

export function retryPolicy(options: RetryOptions = {}): RetryPolicy {
  const maxDelayMs = options.maxDelayMs ?? 30_000;
  return {
    attempts: Math.max(1, options.attempts ?? 5),
    baseDelayMs: options.baseDelayMs ?? 200,
    maxDelayMs,
    maxRetryAfterMs: Math.max(
      maxDelayMs,
      Math.min(options.maxRetryAfterMs ?? DEFAULT_MAX_RETRY_AFTER_MS, 2 ** 31 - 1),
    ),
    longWaits: options.longWaits ?? "sleep",
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
export function backoffDelay(
  policy: Pick<RetryPolicy, "baseDelayMs" | "maxDelayMs">,
  retry: number,
  random: () => number = Math.random,
): number {
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
      if (!(err instanceof StowageError) || !err.retryable) throw err;
      const delay = waitBeforeRetry(policy, err, attempt);
      context.logger?.debug(
        { what: context.what, attempt, delayMs: delay, reason: err.reason, err: err.message },
        "retrying registry request",
      );
      await clock.sleep(delay, context.signal);
    }
  }
}

/**
 * How long to wait before retry number `failures` (1-based) after `err`; throws instead when
 * the attempts are spent or a long Retry-After is to be reported: the thrown error then says
 * "retrying in Ns" when the registry asked for a wait, and carries it (capped).
 */
export function waitBeforeRetry(policy: RetryPolicy, err: StowageError, failures: number): number {
  const requested = retryAfterOf(err);
  if (requested === undefined) {
    if (failures >= policy.attempts) throw err;
    return backoffDelay(policy, failures - 1);
  }
  const wait = Math.min(requested, policy.maxRetryAfterMs);
  const long = wait > policy.maxDelayMs;
  if (failures >= policy.attempts || (long && policy.longWaits === "report")) {
    throw retryingIn(err, wait, requested);
  }
  return wait;
}

function retryingIn(err: StowageError, waitMs: number, requestedMs: number): StowageError {
  const seconds = Math.ceil(waitMs / 1000);
  const capped = requestedMs > waitMs ? `; it asked for ${Math.ceil(requestedMs / 1000)}s, capped` : "";
  const reported = new StowageError(
    err.reason,
    `${err.message}; retrying in ${seconds}s (Retry-After${capped})`,
    { cause: err, retryable: err.retryable, status: err.status },
  );
  return withRetryAfter(reported, waitMs);
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
