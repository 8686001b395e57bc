/**
 * Parallel ranged download of one large blob: a WAN registry (or the object storage it
 * redirects to) gives each connection a fraction of the link, so a giant layer is fetched as
 * several concurrent `Range` requests and handed on in order. Only a fixed window of ranges
 * is in flight or buffered at once (window × rangeBytes of memory, never the blob), the window
 * grows only while the reader waits on the network, each range resumes on its own after a
 * drop, and the caller hashes the reassembled stream.
 *
 * The blob starts as one request for all of it, and is split into ranges only once the reader
 * waits on that stream: on a fast link (loopback, a registry in the same zone) the target is the
 * slow side, and ranges there cost CPU that the target's ingest needed (bench:mirror at 537 MB
 * on two cores: 228 MB/s in 8 MiB ranges against 281 MB/s as one stream, and 1.5 against 1.1 CPU
 * seconds).
 *
 * Hand-written because no well-kept npm library does ordered, bounded, resumable ranged GETs
 * on top of our own authenticated undici exchange (download managers write to files).
 */
import { StowageError } from "../util/errors.ts";

export interface RangedDownloadOptions {
  /** Blobs at least this large are downloaded in ranges. Default 64 MiB. */
  minBlobBytes?: number;
  /** Bytes per Range request. Default 8 MiB. */
  rangeBytes?: number;
  /** Ranges in flight (and buffered ahead of the reader) at once. Default 8. */
  concurrency?: number;
  /**
   * Ask for the whole blob first and split off ranges once the reader waits on it (default
   * true); false: ranges from the first byte.
   */
  streamFirst?: boolean;
}

export const rangedDefaults: Required<RangedDownloadOptions> = {
  minBlobBytes: 64 * 1024 * 1024,
  rangeBytes: 8 * 1024 * 1024,
  concurrency: 8,
  streamFirst: true,
};

// Bytes the range the reader is on may hold unread before its connection waits: a reader that
// keeps up never meets it, and a slower one (the target's ingest) holds this much, not a range.
// Unbounded, the whole-blob stream filled the heap (310 MB resident) and the collector's work
// cost more than the ranges saved.
const READER_AHEAD_BYTES = 1024 * 1024;
// A stream's first slices are not judged: on loopback the reader waited on the source for 70-86%
// of each of the first four or five 8 MiB slices (the target taking its first tens of MB at
// memory speed), then 15-40%, with two slices in a row above 50% now and then. Judged from the
// first slice, with two starved slices enough, a loopback copy split and merged back in about
// half the runs (bench:mirror at 537 MB: 189-232 MB/s in those against 275). On a WAN link the
// reader waits on every slice, and the later split costs a 2 GiB copy a few per cent.
const STREAM_WARMUP_SLICES = 4;
// Starved slices in a row (the reader waiting on the stream more than STARVED_SHARE of each)
// that split it.
const STARVED_SLICES = 3;
const STARVED_SHARE = 0.6;

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
  /** Inclusive; the whole-blob stream's end moves down when it is split. */
  end: number;
  chunks: Buffer[];
  /** Bytes in `chunks`. */
  unread: number;
  /** Bytes fetched so far. */
  received: number;
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
    /** The clock, in ms, that the reader's waits and rates are measured on (tests pass a virtual one). */
    clock?: () => number;
  },
): AsyncGenerator<Buffer, void, undefined> {
  const clock = options.clock ?? (() => performance.now());
  const rangeBytes = Math.max(1, options.rangeBytes ?? rangedDefaults.rangeBytes);
  const window = Math.max(1, options.concurrency ?? rangedDefaults.concurrency);
  const stop = new AbortController();
  const signal = options.signal ? AbortSignal.any([options.signal, stop.signal]) : stop.signal;

  const newPart = (start: number, end: number): Part => ({
    start,
    end,
    chunks: [],
    unread: 0,
    received: 0,
    done: false,
  });
  const sliceFrom = (from: number) => {
    for (let start = from; start < size; start += rangeBytes)
      parts.push(newPart(start, Math.min(size, start + rangeBytes) - 1));
  };
  const parts: Part[] = [];
  const streamFirst = options.streamFirst ?? rangedDefaults.streamFirst;
  // The part that runs to the blob's end as one stream, until it is split.
  let stream: Part | undefined;
  if (streamFirst) {
    stream = newPart(0, size - 1);
    parts.push(stream);
  } else sliceFrom(0);

  const wake = (part: Part) => {
    const waiter = part.wake;
    part.wake = undefined;
    waiter?.();
  };

  const fetchPart = async (part: Part, first: RangeResponse | undefined): Promise<void> => {
    let received = 0;
    let failures = 0;
    let pending = first;
    let receivedAtAttempt = 0;
    const complete = () => received >= part.end - part.start + 1;
    for (;;) {
      receivedAtAttempt = received;
      try {
        // The end this request asked for: the part's end now, unless a split moves it down.
        const askedEnd = part.end;
        const response = pending ?? (await open(part.start + received, askedEnd, signal));
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
            // Read each time: a split moves the whole-blob stream's end down while it runs.
            const length = part.end - part.start + 1;
            const piece = received + chunk.length > length ? chunk.subarray(0, length - received) : chunk;
            part.chunks.push(piece);
            part.unread += piece.length;
            received += piece.length;
            part.received = received;
            buffered += piece.length;
            wake(part);
            // Split while it ran: the rest of this response belongs to other ranges. (A range
            // read to its natural end is not cut short: its connection stays reusable.)
            if (complete() && part.end < askedEnd) break;
            // Hold the connection (TCP backpressure): ahead of the reader, once the ranges
            // waiting for it hold a range per connection in flight (a slow target then keeps
            // memory at that, not the whole window); the reader's own, past READER_AHEAD_BYTES.
            while (
              (part === parts[readerAt]
                ? part.unread > READER_AHEAD_BYTES
                : buffered > active * rangeBytes) &&
              !signal.aborted
            )
              await new Promise<void>((resolve) => spaceWaiters.push(resolve));
          }
        } finally {
          response.body.destroy();
        }
        if (!complete()) {
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
        // Every byte of the range arrived and only the end of the exchange failed (a connection
        // cut before a chunked body's end marker): keep it. Asking for the rest would request a
        // range past its end (a 416); the caller's digest check still judges the bytes.
        if (complete()) {
          part.done = true;
          wake(part);
          return;
        }
        const err = retry.toError(caught);
        if (!err.retryable) throw err;
        // Attempts count failures in a row: a range that made progress starts counting again.
        if (received > receivedAtAttempt) failures = 0;
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

  // Ranges in flight grow only while the reader starves: on a fast link (loopback, or a
  // target slower than the source) extra connections cost CPU and buy nothing, so one range
  // is fetched at a time (the next one as soon as it is done); when the reader spent most of a
  // range waiting for bytes, the link is the limit and the ranges in flight double, up to
  // `concurrency`, as long as each doubling made the reader faster (else it is undone, and
  // tried again some ranges later). Never more than `concurrency` ranges past the reader's are started.
  let active = 1;
  let buffered = 0;
  const spaceWaiters: (() => void)[] = [];
  const freeSpace = () => {
    for (const resolve of spaceWaiters.splice(0)) resolve();
  };
  signal.addEventListener("abort", freeSpace, { once: true });
  let inflight = 0;
  let nextToStart = 0;
  let readerAt = 0;
  const startMore = () => {
    while (inflight < active && nextToStart < parts.length && nextToStart < readerAt + window) {
      const part = parts[nextToStart++];
      inflight++;
      fetchPart(part, undefined).then(
        () => {
          inflight--;
          startMore();
        },
        (err: unknown) => {
          inflight--;
          part.error = err;
          wake(part);
        },
      );
    }
  };

  try {
    // The first range doubles as the probe: a 200 means the upstream ignores Range.
    const probe = await open(parts[0].start, parts[0].end, signal);
    if (!probe.partial) {
      probe.body.destroy();
      throw new RangeNotSupported();
    }
    nextToStart = 1;
    inflight = 1;
    fetchPart(parts[0], probe).then(
      () => {
        inflight--;
        startMore();
      },
      (err: unknown) => {
        inflight--;
        parts[0].error = err;
        wake(parts[0]);
      },
    );
    // Ranges to read before the window may grow again after a doubling that did not pay.
    let cooldown = 0;
    let trial: { activeBefore: number; rateBefore: number; partsLeft: number } | undefined;
    let segmentStarted = clock();
    let segmentBytes = 0;
    // Slices of the whole-blob stream to read before it is judged again: a stream's first
    // slices always look starved (the target's socket buffers fill at memory speed), and after
    // a split that did not pay, as after a doubling that did not.
    let streamCooldown = STREAM_WARMUP_SLICES;
    // Slices a stream waits after a split that did not pay, doubling each time: a fast link's
    // noise should not keep splitting it.
    let streamBackoff = 4;
    for (let index = 0; index < parts.length; index++) {
      readerAt = index;
      freeSpace();
      startMore();
      const part = parts[index];
      const partStarted = clock();
      let waited = 0;
      // The whole-blob stream is judged every rangeBytes read, as a range is when it ends.
      let sliceStarted = partStarted;
      let sliceWaited = 0;
      let sliceRead = 0;
      let streamStarted = partStarted;
      let streamRead = 0;
      // Slices in a row the reader spent mostly waiting: one alone is noise on a busy machine.
      let starvedSlices = 0;
      for (;;) {
        while (part.chunks.length > 0) {
          const chunk = part.chunks.shift() as Buffer;
          part.unread -= chunk.length;
          buffered -= chunk.length;
          freeSpace();
          yield chunk;
          sliceRead += chunk.length;
          streamRead += chunk.length;
          segmentBytes += chunk.length;
        }
        if (part.error !== undefined) throw part.error;
        if (part.done) break;
        if (part === stream && sliceRead >= rangeBytes) {
          const now = clock();
          if (streamCooldown > 0) {
            if (--streamCooldown === 0) {
              streamStarted = now;
              streamRead = 0;
            }
          } else if (sliceWaited > STARVED_SHARE * (now - sliceStarted)) starvedSlices++;
          else starvedSlices = 0;
          if (starvedSlices >= STARVED_SLICES && window > 1) {
            // The reader waits on the one connection: the link may be the limit. The stream
            // keeps the slice it is in and the rest becomes ranges, two connections at first,
            // judged like a doubling below (against the stream's rate since its warm-up).
            const splitAt = Math.ceil((part.start + part.received + 1) / rangeBytes) * rangeBytes;
            if (splitAt < size) {
              stream = undefined;
              part.end = splitAt - 1;
              sliceFrom(splitAt);
              segmentBytes = 0;
              segmentStarted = now;
              trial = {
                activeBefore: 1,
                rateBefore: streamRead / Math.max(1e-3, now - streamStarted),
                partsLeft: 4,
              };
              active = 2;
              startMore();
            }
          }
          sliceStarted = now;
          sliceWaited = 0;
          sliceRead = 0;
        }
        const waitStarted = clock();
        await new Promise<void>((resolve) => {
          part.wake = resolve;
        });
        const waitedNow = clock() - waitStarted;
        waited += waitedNow;
        sliceWaited += waitedNow;
      }
      // The reader's rate over the ranges since the last decision (one range alone is noisy:
      // ranges fetched ahead arrive in bursts).
      const now = clock();
      const rate = segmentBytes / Math.max(1e-3, now - segmentStarted);
      if (cooldown > 0) cooldown--;
      if (trial && --trial.partsLeft <= 0) {
        segmentBytes = 0;
        segmentStarted = now;
        // Did the extra connections pay? If the reader got less than a tenth more, the limit
        // is elsewhere (the target, the CPU): go back, and try again only after a while. Never
        // for good: on a loaded machine one measurement is noise (seen here at load 20: one
        // unlucky first trial kept a WAN copy on one connection, a third of crane's speed).
        if (rate < 1.1 * trial.rateBefore) {
          active = trial.activeBefore;
          cooldown = 8;
          // Back to one connection: the ranges not started yet become one stream again, so a
          // fast link does not pay a request per range.
          if (active === 1 && streamFirst && nextToStart < parts.length) {
            const rest = newPart(parts[nextToStart].start, size - 1);
            parts.length = nextToStart;
            parts.push(rest);
            stream = rest;
            streamBackoff *= 2;
            streamCooldown = STREAM_WARMUP_SLICES + streamBackoff;
          }
        }
        trial = undefined;
      } else if (
        !trial &&
        cooldown === 0 &&
        active < window &&
        part !== stream &&
        waited > 0.5 * (now - partStarted)
      ) {
        segmentBytes = 0;
        segmentStarted = now;
        const doubled = Math.min(window, active * 2);
        // Judged over two rounds of the new window, so the ramp of the ranges just started
        // does not decide it.
        trial = { activeBefore: active, rateBefore: rate, partsLeft: doubled * 2 };
        active = doubled;
      }
    }
  } finally {
    // The reader stopped (finished, failed or gave up): cancel the ranges still running.
    stop.abort(new StowageError("Aborted", "ranged download stopped"));
  }
}
