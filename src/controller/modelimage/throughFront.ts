/**
 * The mirror's blob reads through the cache front (`--prewarm-through-cache`). With pre-warm
 * through the front, agents pull a declared image through `stowage cache` while the mirror
 * copies it; if the mirror read the upstream itself, the upstream would serve the image twice
 * (measured 1.87x). Here every upstream blob the mirror reads is asked of the front instead,
 * under the cache layout (`/v2/<upstream-host>/<repository>/blobs/<digest>`), so the front's
 * single flight serves the mirror and the nodes from one upstream read.
 *
 * The front stores what it fetched in the cache registry itself (verified by digest there), so
 * the mirror does not upload those bytes a second time: it reads them to the end (the client
 * verifies the digest as they flow), then waits for the front's commit to show in the cache
 * registry; only if it never shows (the front could not store it) does it upload them itself.
 * A front that is down or refuses (before its first byte) does not stop the mirror: the blob is
 * then read from the upstream directly and uploaded, as without the front.
 *
 * Manifests (and referrers) are still read from the upstream directly: they are small, the
 * front does not serve the referrers API, and the mirror must see exactly what the upstream says.
 * The caller's upstream credentials are presented to the front for the front's privacy check.
 */
import { Readable } from "node:stream";
import { hostOfSegment } from "../../cache/layout.ts";
import { cacheRepository } from "../../oci/reference.ts";
import {
  type BlobTransferOptions,
  type CredentialLookup,
  RegistryClient,
  type RegistryClientOptions,
  type RepoRef,
} from "../../oci/registry.ts";
import type { Descriptor } from "../../oci/types.ts";
import { type Clock, systemClock } from "../../util/clock.ts";
import { asStowageError } from "../../util/errors.ts";
import { type Logger, silentLogger } from "../../util/log.ts";

export interface ThroughFrontOptions {
  /** The front as the controller reaches it: "http://stowage-cache:5000". */
  frontUrl: string;
  /** The cache registry (host[:port]) the front stores into and the mirror pushes to. */
  cacheRegistry: string;
  /**
   * How long to wait for the front's commit of a blob the mirror read through it, beyond
   * `size / minStoreBytesPerSecond` (storage ingests more slowly than the front serves).
   */
  commitGraceMs?: number;
  minStoreBytesPerSecond?: number;
}

/** The front's host and a credential lookup that answers for it with the upstream's credentials. */
export function throughFrontCredentials(frontUrl: string, lookup: CredentialLookup): CredentialLookup {
  const frontHost = new URL(frontUrl).host;
  return (registry, repository) => {
    if (registry !== frontHost) return lookup(registry, repository);
    // The front's repository is the cache layout: "<upstream host segment>/<upstream repository>".
    const slash = repository?.indexOf("/") ?? -1;
    const upstream = slash > 0 ? hostOfSegment(repository?.slice(0, slash) ?? "") : undefined;
    if (!upstream || !repository) return undefined;
    return lookup(upstream, repository.slice(slash + 1));
  };
}

/**
 * A RegistryClient whose upstream blob reads go through the front, and whose pushes of those
 * blobs into the cache registry wait for the front's own commit instead of uploading again.
 */
export class ThroughFrontClient extends RegistryClient {
  readonly frontHost: string;
  readonly #cacheRegistry: string;
  readonly #clock: Clock;
  readonly #commitGraceMs: number;
  readonly #minStoreBytesPerSecond: number;
  readonly #logger: Logger;
  /**
   * Blob streams this client opened on the front (the front stores what they carry), and
   * whether one fell back to the upstream because the front could not serve it.
   */
  readonly #fromFront = new WeakMap<Readable, { direct: boolean }>();

  constructor(options: RegistryClientOptions & ThroughFrontOptions) {
    const frontUrl = new URL(options.frontUrl);
    super({
      ...options,
      insecureHosts: [
        ...(options.insecureHosts ?? []),
        ...(frontUrl.protocol === "http:" ? [frontUrl.host] : []),
      ],
      // A Range of a blob the front has not verified yet waits for its whole flight there:
      // one stream per blob is what the front serves as it arrives.
      rangedDownload: false,
    });
    this.frontHost = frontUrl.host;
    this.#cacheRegistry = options.cacheRegistry;
    this.#clock = options.clock ?? systemClock;
    this.#commitGraceMs = options.commitGraceMs ?? 60_000;
    this.#minStoreBytesPerSecond = options.minStoreBytesPerSecond ?? 10_000_000;
    this.#logger = options.logger ?? silentLogger();
  }

  override getBlob(repo: RepoRef, descriptor: Descriptor, options: BlobTransferOptions = {}): Readable {
    if (repo.registry === this.frontHost || repo.registry === this.#cacheRegistry)
      return super.getBlob(repo, descriptor, options);
    const viaFront = super.getBlob(
      { registry: this.frontHost, repository: cacheRepository(repo) },
      descriptor,
      options,
    );
    const direct = () => super.getBlob(repo, descriptor, options);
    const state = { direct: false };
    const logger = this.#logger;
    const frontHost = this.frontHost;
    // The front down or refusing must not stop the mirror: before its first byte, any failure
    // but a digest mismatch falls back to reading the upstream directly, as without the front.
    async function* chunks(): AsyncGenerator<Buffer> {
      let received = false;
      try {
        for await (const chunk of viaFront) {
          received = true;
          yield chunk as Buffer;
        }
        return;
      } catch (err) {
        const failure = asStowageError(err);
        if (received || options.signal?.aborted || failure.reason === "DigestMismatch") throw err;
        logger.warn(
          { front: frontHost, registry: repo.registry, repository: repo.repository, blob: descriptor.digest },
          `the cache front could not serve a blob (${failure.reason}: ${failure.message}); reading it from the upstream`,
        );
      }
      state.direct = true;
      for await (const chunk of direct()) yield chunk as Buffer;
    }
    const stream = Readable.from(chunks(), { objectMode: false });
    this.#fromFront.set(stream, state);
    return stream;
  }

  override async pushBlob(
    repo: RepoRef,
    descriptor: Descriptor,
    open: () => Readable | Promise<Readable>,
    options: BlobTransferOptions = {},
  ): Promise<void> {
    if (repo.registry !== this.#cacheRegistry) return super.pushBlob(repo, descriptor, open, options);
    const source = await open();
    // A plain upload, its first attempt from what was already opened or read.
    const upload = (first: Readable) => {
      let opened: Readable | undefined = first;
      const reopen = () => {
        const given = opened;
        opened = undefined;
        return given ?? open();
      };
      return super.pushBlob(repo, descriptor, reopen, options);
    };
    const state = this.#fromFront.get(source);
    // Not read through the front (bytes already in hand, another registry).
    if (!state) return upload(source);
    // Whether the front serves it is known by its first byte.
    const chunks = source[Symbol.asyncIterator]();
    const first = await chunks.next();
    const rest = async function* (): AsyncGenerator<Buffer> {
      if (!first.done) yield first.value as Buffer;
      for (let next = await chunks.next(); !next.done; next = await chunks.next()) yield next.value as Buffer;
    };
    if (state.direct) return upload(Readable.from(rest(), { objectMode: false }));
    // The bytes come through the front, verified as they flow; the front stores them.
    for await (const chunk of rest()) options.onBytes?.(chunk.length);
    if (await this.#committedByFront(repo, descriptor, options.signal)) return;
    // The front could not store it (its upload failed): upload what it serves ourselves.
    await super.pushBlob(repo, descriptor, open, options);
  }

  /** Polls the cache registry until the front's upload of the blob has committed, or gives up. */
  async #committedByFront(repo: RepoRef, descriptor: Descriptor, signal?: AbortSignal): Promise<boolean> {
    const deadline =
      this.#clock.now() + this.#commitGraceMs + (descriptor.size / this.#minStoreBytesPerSecond) * 1000;
    let pauseMs = 50;
    for (;;) {
      signal?.throwIfAborted();
      if ((await this.hasBlob(repo, descriptor.digest)) === descriptor.size) return true;
      if (this.#clock.now() >= deadline) return false;
      await this.#clock.sleep(pauseMs, signal);
      pauseMs = Math.min(pauseMs * 2, 1000);
    }
  }
}
