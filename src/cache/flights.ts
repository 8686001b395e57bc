/**
 * Single flight for blob misses: the first caller for a (repository, digest) starts one
 * upstream fetch; it and every caller that comes while it runs read the same spool as the
 * bytes arrive. The fetch is verified against the digest as it streams (RegistryClient's
 * getBlob, which also resumes dropped connections) and uploaded to storage at the same time
 * with the digest on the final PUT. The flight is keyed by repository too: a digest in
 * flight for a private repository is never handed to a caller authorized for another one.
 */
import { Readable } from "node:stream";
import type { CacheMetrics } from "../metrics.ts";
import type { RegistryClient } from "../oci/registry.ts";
import type { Descriptor } from "../oci/types.ts";
import { asStowageError, StowageError } from "../util/errors.ts";
import type { Logger } from "../util/log.ts";
import type { CollectionPacer } from "./collect.ts";
import type { CacheTarget } from "./layout.ts";
import { Spool } from "./spool.ts";
import type { Storage } from "./storage.ts";

export interface Flight {
  spool: Spool;
  /** Resolves once the blob is verified and the storage upload is over (true: committed). */
  settled: Promise<boolean>;
}

export interface BlobFlightsOptions {
  upstream: RegistryClient;
  storage: Storage;
  spoolDir: string;
  metrics: CacheMetrics;
  logger: Logger;
  /** Abort a fetch that received nothing for this long. */
  stallTimeoutMs: number;
  /** Told when a fetched blob is committed to storage (manifest promotion). */
  onCommitted?: (target: CacheTarget) => void;
  /** Counts every fetched byte, to collect the fetch's dead buffers at its pace (collect.ts). */
  collection?: CollectionPacer;
}

export class BlobFlights {
  private readonly options: BlobFlightsOptions;
  private readonly flights = new Map<string, Promise<Flight>>();

  constructor(options: BlobFlightsOptions) {
    this.options = options;
  }

  /** The flight under way for this blob, if any (callers then need not ask the upstream its size). */
  running(target: CacheTarget): Promise<Flight> | undefined {
    return this.flights.get(`${target.cacheRepository}@${target.reference}`);
  }

  /** The flight for this blob: the one under way, or a new one of `size` bytes. */
  join(target: CacheTarget, size: number): { flight: Promise<Flight> } {
    const key = `${target.cacheRepository}@${target.reference}`;
    const existing = this.flights.get(key);
    if (existing) {
      this.options.metrics.singleFlightJoined.inc({ kind: "blob" });
      return { flight: existing };
    }
    // A failed flight is forgotten at once, before its callers see the failure, so a retry
    // starts a new fetch instead of joining the broken one.
    const forget = () => {
      if (this.flights.get(key) === flight) this.flights.delete(key);
    };
    const flight = this.start(target, size, forget);
    this.flights.set(key, flight);
    flight
      .then((started) => started.settled)
      .catch(() => false)
      .finally(forget);
    return { flight };
  }

  private async start(target: CacheTarget, size: number, forget: () => void): Promise<Flight> {
    const spool = await Spool.create(this.options.spoolDir, target.reference, size);
    const settled = this.run(target, spool, forget).finally(() => spool.dispose());
    return { spool, settled };
  }

  private async run(target: CacheTarget, spool: Spool, forget: () => void): Promise<boolean> {
    const { upstream, storage, metrics, logger } = this.options;
    const digest = target.reference;
    const descriptor: Descriptor = { mediaType: "application/octet-stream", digest, size: spool.size };
    const abort = new AbortController();
    let stallTimer: NodeJS.Timeout | undefined;
    const armStallTimer = () => {
      clearTimeout(stallTimer);
      stallTimer = setTimeout(
        () =>
          abort.abort(
            new StowageError(
              "Timeout",
              `no bytes of ${digest} from ${target.upstream} for ${this.options.stallTimeoutMs} ms`,
            ),
          ),
        this.options.stallTimeoutMs,
      );
    };
    // The upload reads the spool as it fills; a failure there must not be retried from a
    // spool that failed, so it is not retryable.
    const upload = storage
      .pushBlob(target.cacheRepository, descriptor, () =>
        Readable.from(uploadTail(spool, this.options.collection), { objectMode: false }),
      )
      .then(
        () => true,
        (err: unknown) => {
          logger.warn(
            { repository: target.cacheRepository, digest, err: asStowageError(err).message },
            "could not store a fetched blob; it will be fetched again next time",
          );
          return false;
        },
      );
    try {
      armStallTimer();
      const source = upstream.getBlob(
        { registry: target.upstream, repository: target.repository },
        descriptor,
        {
          signal: abort.signal,
        },
      );
      for await (const chunk of source) {
        armStallTimer();
        await spool.append(chunk as Buffer);
        metrics.upstreamBytes.inc((chunk as Buffer).length);
        this.options.collection?.count((chunk as Buffer).length);
      }
      await spool.flush();
    } catch (err) {
      const failure = asStowageError(abort.signal.reason ?? err);
      metrics.fetchFailures.inc({ reason: failure.reason });
      logger.warn(
        { upstream: target.upstream, repository: target.repository, digest, reason: failure.reason },
        `blob fetch failed: ${failure.message}`,
      );
      forget();
      spool.fail(failure);
      await upload;
      return false;
    } finally {
      clearTimeout(stallTimer);
    }
    // Verified (getBlob checks the digest before its last chunk): the callers may finish now,
    // without waiting for storage's slower ingest. The flight stays joinable until the upload
    // is over, so a pull in between reads the sealed spool instead of the upstream.
    spool.seal();
    const stored = await upload;
    // Joinable no longer, at once: a caller from now on is answered from storage, or fetches
    // again if storage lost the blob meanwhile (deleted, evicted). Joining this finished flight
    // would serve its old spool without storing anything, or fail once the spool is gone.
    forget();
    if (stored) this.options.onCommitted?.(target);
    logger.info(
      { upstream: target.upstream, repository: target.repository, digest, bytes: spool.size, stored },
      "fetched blob upstream",
    );
    return stored;
  }
}

/** The spool to storage, in fresh buffers (counted: they are garbage once sent, see collect.ts). */
async function* uploadTail(spool: Spool, collection: CollectionPacer | undefined): AsyncGenerator<Buffer> {
  try {
    for await (const chunk of spool.tail(0, spool.size)) {
      collection?.count(chunk.length);
      yield chunk;
    }
  } catch (err) {
    const failure = asStowageError(err);
    throw new StowageError(failure.reason === "Aborted" ? "Aborted" : failure.reason, failure.message, {
      retryable: false,
    });
  }
}
