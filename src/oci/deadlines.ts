/**
 * Deadlines of registry requests. undici's defaults (300 s for headers, 300 s of body
 * silence) times five attempts let one upstream that accepts connections and never answers
 * hold a worker for half an hour. The transport gives every request:
 *
 * - a headers deadline (`requestTimeoutMs`, default 30 s): the response must start this long
 *   after the request was sent;
 * - a stall timeout (`stallTimeoutMs`, default 60 s): a response body (a blob download) that
 *   moves no byte for this long is abandoned; the download resumes from where it stopped;
 * - for uploads, whose request body streams from a source: the same stall timeout while the
 *   target does not take the bytes offered (time spent waiting for the source is the source's
 *   own stall timeout's business, so a slow upstream is never blamed on the cache), then
 *   `commitTimeoutMs` (default 5 min) after the last byte for the registry to verify and
 *   store the blob and answer.
 *
 * undici's own headers timer cannot serve uploads: it starts when the request is dispatched
 * and is only refreshed when a write hits backpressure, so a large upload fed slowly would
 * be cut while still moving. The watchdog below replaces it for streamed bodies.
 * Like the agent's stall detector, progress, not total time, decides.
 */

export const DEFAULT_REQUEST_TIMEOUT_MS = 30_000;
export const DEFAULT_STALL_TIMEOUT_MS = 60_000;
export const DEFAULT_COMMIT_TIMEOUT_MS = 5 * 60_000;

export interface Deadlines {
  requestTimeoutMs: number;
  stallTimeoutMs: number;
  commitTimeoutMs: number;
}

export function deadlines(options: Partial<Deadlines> = {}): Deadlines {
  const positive = (value: number | undefined, fallback: number, name: string) => {
    if (value === undefined) return fallback;
    if (!Number.isFinite(value) || value <= 0 || value > 2 ** 31 - 1) {
      throw new RangeError(`${name} must be a positive number of milliseconds up to 2^31-1, got ${value}`);
    }
    return value;
  };
  return {
    requestTimeoutMs: positive(options.requestTimeoutMs, DEFAULT_REQUEST_TIMEOUT_MS, "requestTimeoutMs"),
    stallTimeoutMs: positive(options.stallTimeoutMs, DEFAULT_STALL_TIMEOUT_MS, "stallTimeoutMs"),
    commitTimeoutMs: positive(options.commitTimeoutMs, DEFAULT_COMMIT_TIMEOUT_MS, "commitTimeoutMs"),
  };
}

/** A deadline of the transport ran out (errors.ts turns it into UpstreamTimeout or CacheUnavailable). */
export class TransportTimeout extends Error {
  readonly code = "STOWAGE_TIMEOUT";
  readonly timeoutMs: number;

  constructor(message: string, timeoutMs: number) {
    super(message);
    this.name = "TransportTimeout";
    this.timeoutMs = timeoutMs;
  }
}

function seconds(ms: number): string {
  return `${Math.round(ms / 100) / 10}s`;
}

/**
 * Wraps a streamed request body: `signal` aborts (with a TransportTimeout) when the body has
 * not moved for the stall limit, or when the response has not started `commitTimeoutMs` after
 * the body's last byte. Call `settle()` once the response headers arrived or the request failed.
 */
export function watchStreamedBody(
  body: AsyncIterable<unknown>,
  limits: Deadlines,
): { body: AsyncGenerator<Buffer>; signal: AbortSignal; settle(): void } {
  const controller = new AbortController();
  let timer: NodeJS.Timeout | undefined;
  let settled = false;
  const arm = (ms: number, message: string) => {
    clearTimeout(timer);
    if (settled) return;
    timer = setTimeout(() => controller.abort(new TransportTimeout(message, ms)), ms);
    timer.unref();
  };
  const stallMs = limits.stallTimeoutMs;
  async function* watched(): AsyncGenerator<Buffer> {
    for await (const chunk of body) {
      // Armed while the chunk waits for the target to take it; a generator suspended at
      // `yield` is one whose consumer (undici's socket writes) stopped pulling.
      arm(stallMs, `stalled: the upload was not taken for ${seconds(stallMs)} (--stall-timeout)`);
      yield chunk as Buffer;
      clearTimeout(timer);
    }
    arm(
      limits.commitTimeoutMs,
      `did not answer within ${seconds(limits.commitTimeoutMs)} of the upload's last byte`,
    );
  }
  return {
    body: watched(),
    signal: controller.signal,
    settle() {
      settled = true;
      clearTimeout(timer);
    },
  };
}
