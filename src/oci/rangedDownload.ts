/**
 * Parallel ranged download of one large blob: a WAN registry (or the object storage it
 * redirects to) gives each connection a fraction of the link, so a giant layer is fetched as
 * several concurrent `Range` requests and handed on in order. Only a fixed window of ranges
 * is in flight or buffered at once (window × rangeBytes of memory, never the blob), each
 * range resumes on its own after a drop, and the caller hashes the reassembled stream.
 *
 * Hand-written because no well-kept npm library does ordered, bounded, resumable ranged GETs
 * on top of our own authenticated undici exchange (download managers write to files).
 */
import { StowageError } from "../util/errors.ts";

export interface RangedDownloadOptions {
  /** Blobs at least this large are downloaded in ranges. Default 64 MiB. */
  minBlobBytes?: number;
  /** Bytes per Range request. Default 16 MiB. */
  rangeBytes?: number;
  /** Ranges in flight (and buffered ahead of the reader) at once. Default 8. */
  concurrency?: number;
}

export const rangedDefaults: Required<RangedDownloadOptions> = {
  minBlobBytes: 64 * 1024 * 1024,
  rangeBytes: 16 * 1024 * 1024,
  concurrency: 8,
};

/** One ranged response: whether the server honoured the range, and its body. */
export interface RangeResponse {
  /** True for a 206 whose Content-Range starts at the requested byte. */
  partial: boolean;
  body: AsyncIterable<Buffer> & { destroy(): void };
}

/** Opens `bytes=start-end` (inclusive); rejects with a StowageError (retryable or not). */
export type OpenRange = (start: number, end: number, signal: AbortSignal) => Promise<RangeResponse>;

/** The upstream answered the first range with the whole blob: the caller downloads it as one stream. */
export class RangeNotSupported extends Error {}

interface Part {
  start: number;
  end: number;
  chunks: Buffer[];
  done: boolean;
  error?: unknown;
  wake?: () => void;
}

export interface RangedRetry {
  attempts: number;
  /** Waits before attempt `failures` (1-based) of a range; rejects when aborted. */
  sleep: (failures: number, err: StowageError, signal: AbortSignal) => Promise<void>;
  toError: (caught: unknown) => StowageError;
}

/**
 * Yields the blob's bytes in order. Throws RangeNotSupported before yielding anything when
 * the upstream ignores Range on the first request.
 */
export async function* rangedChunks(
  size: number,
  open: OpenRange,
  retry: RangedRetry,
  options: RangedDownloadOptions & {
    signal?: AbortSignal;
    onRetry?: (start: number, err: StowageError) => void;
  },
): AsyncGenerator<Buffer, void, undefined> {
  const rangeBytes = Math.max(1, options.rangeBytes ?? rangedDefaults.rangeBytes);
  const window = Math.max(1, options.concurrency ?? rangedDefaults.concurrency);
  const stop = new AbortController();
  const signal = options.signal ? AbortSignal.any([options.signal, stop.signal]) : stop.signal;

  const parts: Part[] = [];
  for (let start = 0; start < size; start += rangeBytes)
    parts.push({ start, end: Math.min(size, start + rangeBytes) - 1, chunks: [], done: false });

  const wake = (part: Part) => {
    const waiter = part.wake;
    part.wake = undefined;
    waiter?.();
  };

  const fetchPart = async (part: Part, first: RangeResponse | undefined): Promise<void> => {
    let received = 0;
    let failures = 0;
    let pending = first;
    for (;;) {
      try {
        const response = pending ?? (await open(part.start + received, part.end, signal));
        pending = undefined;
        if (!response.partial) {
          response.body.destroy();
          throw new StowageError(
            "UpstreamUnavailable",
            `upstream stopped honouring Range at byte ${part.start + received}`,
          );
        }
        try {
          for await (const chunk of response.body) {
            const length = part.end - part.start + 1;
            const piece = received + chunk.length > length ? chunk.subarray(0, length - received) : chunk;
            part.chunks.push(piece);
            received += piece.length;
            wake(part);
          }
        } finally {
          response.body.destroy();
        }
        if (received < part.end - part.start + 1) {
          throw new StowageError(
            "UpstreamUnavailable",
            `range ${part.start}-${part.end} ended after ${received} bytes`,
            { retryable: true },
          );
        }
        part.done = true;
        wake(part);
        return;
      } catch (caught) {
        if (signal.aborted) throw caught;
        const err = retry.toError(caught);
        if (!err.retryable) throw err;
        failures++;
        if (failures >= retry.attempts) {
          throw new StowageError(err.reason, `${err.message} (gave up after ${failures} attempts)`, {
            cause: err,
            retryable: true,
            status: err.status,
          });
        }
        options.onRetry?.(part.start + received, err);
        await retry.sleep(failures, err, signal);
      }
    }
  };

  const started = new Set<number>();
  const startPart = (index: number, first?: RangeResponse) => {
    if (index >= parts.length || started.has(index)) return;
    started.add(index);
    const part = parts[index];
    fetchPart(part, first).catch((err: unknown) => {
      part.error = err;
      wake(part);
    });
  };

  try {
    // The first range doubles as the probe: a 200 means the upstream ignores Range.
    const probe = await open(parts[0].start, parts[0].end, signal);
    if (!probe.partial) {
      probe.body.destroy();
      throw new RangeNotSupported();
    }
    startPart(0, probe);
    for (let index = 0; index < parts.length; index++) {
      // Keep the window full: the reader's range plus the next window-1.
      for (let ahead = index; ahead < index + window; ahead++) startPart(ahead);
      const part = parts[index];
      for (;;) {
        while (part.chunks.length > 0) {
          const chunk = part.chunks.shift() as Buffer;
          yield chunk;
        }
        if (part.error !== undefined) throw part.error;
        if (part.done) break;
        await new Promise<void>((resolve) => {
          part.wake = resolve;
        });
      }
    }
  } finally {
    // The reader stopped (finished, failed or gave up): cancel the ranges still running.
    stop.abort(new StowageError("Aborted", "ranged download stopped"));
  }
}
