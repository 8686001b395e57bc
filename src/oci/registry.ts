/**
 * A streaming client for the OCI distribution API: manifests byte-exact and verified,
 * blobs streamed with digest verification and resume, uploads monolithic with a chunked
 * fallback, cross-repository mounts, referrers and tag listing, behind token/Basic auth
 * and a retry policy.
 */
import { Readable } from "node:stream";
import { type Clock, systemClock } from "../util/clock.ts";
import { StowageError } from "../util/errors.ts";
import { type Logger, silentLogger } from "../util/log.ts";
import {
  Authenticator,
  type CredentialLookup,
  type Credentials,
  isAnonymous,
  pullScope,
  pushScope,
  repositoryOfScopes,
} from "./challenge.ts";
import { blameCache, errorFromNetwork, errorFromResponse } from "./errors.ts";
import type { ProxySettings } from "./proxy.ts";
import {
  type OpenRange,
  type RangedDownloadOptions,
  RangeNotSupported,
  rangedChunks,
  rangedDefaults,
} from "./rangedDownload.ts";
import type { HostResolver } from "./redirects.ts";
import { type RetryOptions, type RetryPolicy, retryPolicy, waitBeforeRetry, withRetry } from "./retry.ts";
import { readCappedText } from "./sanitize.ts";
import { type HttpMethod, headerValue, type ResponseData, Transport } from "./transport.ts";
import { type Descriptor, type ImageIndex, ManifestAccept, MediaType, type RawManifest } from "./types.ts";
import { DigestVerifier, digestOf } from "./verify.ts";

export type { CredentialLookup, Credentials } from "./challenge.ts";
export { digestOf } from "./verify.ts";

export interface RegistryClientOptions {
  credentials?: CredentialLookup;
  /** Hosts ("127.0.0.1:5000") spoken to over plain HTTP; every other host is HTTPS. */
  insecureHosts?: string[];
  /** Extra trusted CAs, on top of the system ones. */
  caPem?: string | string[];
  userAgent?: string;
  /** Undici pool size per origin. Default 16. */
  maxConnectionsPerHost?: number;
  /** Default 5 attempts, 200 ms base, 30 s cap. */
  retry?: RetryOptions;
  clock?: Clock;
  logger?: Logger;
  /** Size of PATCH chunks when a registry refuses monolithic uploads. Default 64 MiB. */
  chunkSizeBytes?: number;
  /** Parallel ranged downloads of large blobs; false downloads every blob as one stream. */
  rangedDownload?: RangedDownloadOptions | false;
  /**
   * Blobs at least this large move on connections of their own, read into reused buffers
   * (bulkHttp.ts; not through a proxy). Default 16 MiB; Infinity: never.
   */
  bulkMinBytes?: number;
  /**
   * The cache: registries whose failures (no answer, timeouts, 5xx) are CacheUnavailable rather
   * than UpstreamUnavailable, and which are never reached through a proxy.
   */
  cacheRegistries?: string[];
  /** Headers deadline of every request, ms (default 30 s; deadlines.ts). */
  requestTimeoutMs?: number;
  /** A transfer that moves no byte for this long is abandoned and retried, ms (default 60 s). */
  stallTimeoutMs?: number;
  /** How long a registry may take to answer after an upload's last byte, ms (default 5 min). */
  commitTimeoutMs?: number;
  /** HTTPS_PROXY/HTTP_PROXY/NO_PROXY from this environment (default process.env); false: no proxy. */
  proxy?: ProxySettings | false;
  /** Resolves redirect targets before they are followed (tests); default the system resolver. */
  resolveHost?: HostResolver;
}

export interface RepoRef {
  registry: string;
  repository: string;
}

export interface BlobTransferOptions {
  signal?: AbortSignal;
  /** Called with the number of new bytes each time some arrive (a delta, not a total). */
  onBytes?: (n: number) => void;
  /**
   * pushBlob: the stream's chunks are this upload's alone (nothing else reads them, as with a
   * getBlob stream handed straight to it), so a downloaded chunk's buffer is reused once sent.
   */
  exclusiveChunks?: boolean;
}

/** Blobs at least this large are downloaded and uploaded on connections of their own (bulkHttp.ts). */
export const DEFAULT_BULK_MIN_BYTES = 16 * 1024 * 1024;

/** Manifests larger than this are refused (distribution itself caps them at 4 MiB). */
export const MANIFEST_SIZE_LIMIT = 4 * 1024 * 1024;
const OCI_ARTIFACT_MANIFEST = "application/vnd.oci.artifact.manifest.v1+json";
export const MANIFEST_ACCEPT = [...ManifestAccept, OCI_ARTIFACT_MANIFEST].join(", ");
const KNOWN_MANIFEST_TYPES = new Set<string>([...ManifestAccept, OCI_ARTIFACT_MANIFEST]);
const DEFAULT_CHUNK_SIZE = 64 * 1024 * 1024;

interface ExchangeRequest {
  registry: string;
  method: HttpMethod;
  /** A path under the registry ("/v2/...") or an absolute URL (upload locations). */
  target: string;
  headers?: Record<string, string>;
  body?: Buffer | string | Readable | AsyncIterable<Buffer> | null;
  scopes: string[];
  /** Statuses handed back to the caller; anything else becomes a StowageError. */
  expect: number[];
  subject: string;
  notFound?: StowageError["reason"];
  signal?: AbortSignal;
  /** A whole large blob's body (transport.ts's `bulk`), and whether its upload's chunks may be reused. */
  bulk?: boolean;
  recycleBody?: boolean;
}

function isDigest(reference: string): boolean {
  return /^[a-z0-9]+(?:[+._-][a-z0-9]+)*:[a-zA-Z0-9=_-]+$/.test(reference);
}

function displayName(repo: RepoRef, reference?: string): string {
  const name = `${repo.registry}/${repo.repository}`;
  if (reference === undefined) return name;
  return isDigest(reference) ? `${name}@${reference}` : `${name}:${reference}`;
}

function appendQuery(url: string, params: Record<string, string>): string {
  const query = Object.entries(params)
    .map(([key, value]) => `${encodeURIComponent(key)}=${encodeURIComponent(value)}`)
    .join("&");
  return `${url}${url.includes("?") ? "&" : "?"}${query}`;
}

async function readLimited(body: ResponseData["body"], limit: number, what: string): Promise<Buffer> {
  const chunks: Buffer[] = [];
  let total = 0;
  for await (const chunk of body) {
    total += (chunk as Buffer).length;
    if (total > limit) {
      body.destroy();
      throw new StowageError("ManifestInvalid", `${what} is larger than the ${limit}-byte manifest limit`);
    }
    chunks.push(chunk as Buffer);
  }
  return Buffer.concat(chunks);
}

/** Pulls exact-length pieces off a byte stream, for chunked uploads. */
class ChunkReader {
  private readonly iterator: AsyncIterator<Buffer>;
  private leftover: Buffer | undefined;

  constructor(source: AsyncIterable<Buffer>) {
    this.iterator = source[Symbol.asyncIterator]();
  }

  async *take(length: number): AsyncGenerator<Buffer> {
    let remaining = length;
    while (remaining > 0) {
      let chunk = this.leftover;
      this.leftover = undefined;
      if (!chunk) {
        const next = await this.iterator.next();
        if (next.done) {
          throw new StowageError("SizeMismatch", `source ended ${remaining} bytes before the declared size`);
        }
        chunk = next.value;
      }
      if (chunk.length > remaining) {
        this.leftover = chunk.subarray(remaining);
        chunk = chunk.subarray(0, remaining);
      }
      remaining -= chunk.length;
      yield chunk;
    }
  }
}

type RangeResponseBody = AsyncIterable<Buffer> & { destroy(): void };

/** Thrown by a monolithic PUT the registry refused in a way that chunks may fix. */
class MonolithicRefused extends Error {}

export class RegistryClient {
  private readonly transport: Transport;
  private readonly auth: Authenticator;
  private readonly policy: RetryPolicy;
  private readonly clock: Clock;
  private readonly logger: Logger;
  private readonly chunkSize: number;
  private readonly ranged: Required<RangedDownloadOptions> | undefined;
  private readonly cacheRegistries: Set<string>;
  private readonly bulkMinBytes: number;

  constructor(options: RegistryClientOptions = {}) {
    this.cacheRegistries = new Set(options.cacheRegistries ?? []);
    this.transport = new Transport({
      insecureHosts: options.insecureHosts,
      caPem: options.caPem,
      maxConnectionsPerHost: options.maxConnectionsPerHost,
      userAgent: options.userAgent,
      requestTimeoutMs: options.requestTimeoutMs,
      stallTimeoutMs: options.stallTimeoutMs,
      commitTimeoutMs: options.commitTimeoutMs,
      proxy:
        options.proxy === false
          ? false
          : { ...options.proxy, noProxy: [...(options.proxy?.noProxy ?? []), ...this.cacheRegistries] },
      resolveHost: options.resolveHost,
    });
    this.clock = options.clock ?? systemClock;
    this.logger = options.logger ?? silentLogger();
    this.policy = retryPolicy(options.retry);
    this.auth = new Authenticator({
      transport: this.transport,
      credentials: options.credentials,
      clock: this.clock,
    });
    this.chunkSize = options.chunkSizeBytes ?? DEFAULT_CHUNK_SIZE;
    this.bulkMinBytes = options.bulkMinBytes ?? DEFAULT_BULK_MIN_BYTES;
    this.ranged =
      options.rangedDownload === false ? undefined : { ...rangedDefaults, ...options.rangedDownload };
  }

  /** Checks the registry answers the API (and, when it asks for auth, that our credentials work). */
  async ping(registry: string): Promise<void> {
    await this.retrying(`ping ${registry}`, undefined, async () => {
      const response = await this.exchange({
        registry,
        method: "GET",
        target: "/v2/",
        scopes: [],
        expect: [200],
        subject: "the API root /v2/",
      });
      await response.body.dump();
    });
  }

  /** `signal` aborts the request and its retries (a controller's sync deadline). */
  async getManifest(
    repo: RepoRef,
    reference: string,
    options: { signal?: AbortSignal } = {},
  ): Promise<RawManifest> {
    const name = displayName(repo, reference);
    return this.retrying(`get manifest ${name}`, options.signal, async () => {
      const response = await this.exchange({
        registry: repo.registry,
        method: "GET",
        target: `/v2/${repo.repository}/manifests/${reference}`,
        headers: { accept: MANIFEST_ACCEPT },
        scopes: [pullScope(repo.repository)],
        signal: options.signal,
        expect: [200],
        subject: `image ${name}`,
        notFound: "ImageNotFound",
      });
      const declaredLength = Number(headerValue(response.headers, "content-length") ?? "0");
      if (declaredLength > MANIFEST_SIZE_LIMIT) {
        await response.body.dump();
        throw new StowageError(
          "ManifestInvalid",
          `manifest ${name} is ${declaredLength} bytes, over the ${MANIFEST_SIZE_LIMIT}-byte limit`,
        );
      }
      const bytes = await readLimited(response.body, MANIFEST_SIZE_LIMIT, `manifest ${name}`);
      const mediaType = this.manifestMediaType(headerValue(response.headers, "content-type"), bytes, name);
      const served = headerValue(response.headers, "docker-content-digest");
      const expected = isDigest(reference) ? reference : served;
      const algorithm = expected?.startsWith("sha512:") ? "sha512" : "sha256";
      const digest = digestOf(bytes, algorithm);
      if (expected !== undefined && expected !== digest) {
        throw new StowageError(
          "DigestMismatch",
          `manifest ${name} hashes to ${digest}, but ${isDigest(reference) ? "was requested" : "the registry says it is"} ${expected}`,
        );
      }
      return { mediaType, digest, bytes };
    });
  }

  async headManifest(
    repo: RepoRef,
    reference: string,
    options: { signal?: AbortSignal } = {},
  ): Promise<{ digest: string; mediaType: string; size: number } | undefined> {
    const head = await this.retrying(`head manifest ${displayName(repo, reference)}`, options.signal, () =>
      this.headOnce(repo, reference, options.signal),
    );
    if (head === undefined) return undefined;
    if (head.digest && head.size >= 0 && KNOWN_MANIFEST_TYPES.has(head.mediaType)) {
      return { digest: head.digest, mediaType: head.mediaType, size: head.size };
    }
    // Some registries omit the digest or a useful content type on HEAD: ask for the body.
    const manifest = await this.getManifest(repo, reference, options);
    return { digest: manifest.digest, mediaType: manifest.mediaType, size: manifest.bytes.length };
  }

  /**
   * One HEAD of a manifest, with no retry and no GET behind it: the digest the registry serves
   * for `reference`, or undefined when it holds none or does not say. For a caller with another
   * way to the manifest (Copier.plan reads an unchanged image from its target): registries such
   * as Docker Hub count every manifest GET as a pull against the rate limit, and a HEAD as none.
   */
  async peekManifestDigest(
    repo: RepoRef,
    reference: string,
    options: { signal?: AbortSignal } = {},
  ): Promise<string | undefined> {
    const digest = (await this.headOnce(repo, reference, options.signal))?.digest;
    return digest !== undefined && isDigest(digest) ? digest : undefined;
  }

  /** One manifest HEAD: what its headers say, or undefined for a 404. */
  private async headOnce(repo: RepoRef, reference: string, signal: AbortSignal | undefined) {
    const response = await this.exchange({
      registry: repo.registry,
      method: "HEAD",
      target: `/v2/${repo.repository}/manifests/${reference}`,
      headers: { accept: MANIFEST_ACCEPT },
      scopes: [pullScope(repo.repository)],
      signal,
      expect: [200, 404],
      subject: `image ${displayName(repo, reference)}`,
      notFound: "ImageNotFound",
    });
    await response.body.dump();
    if (response.statusCode === 404) return undefined;
    return {
      digest: headerValue(response.headers, "docker-content-digest"),
      mediaType: (headerValue(response.headers, "content-type") ?? "").split(";")[0].trim(),
      size: Number(headerValue(response.headers, "content-length") ?? "-1"),
    };
  }

  /** Pushes the exact bytes under a tag or digest; returns the digest the registry stored. */
  async putManifest(repo: RepoRef, reference: string, manifest: RawManifest): Promise<string> {
    const name = displayName(repo, reference);
    const algorithm = manifest.digest?.startsWith("sha512:") ? "sha512" : "sha256";
    const digest = digestOf(manifest.bytes, algorithm);
    if (isDigest(reference) && reference !== digest) {
      throw new StowageError(
        "DigestMismatch",
        `manifest bytes hash to ${digest}, not to ${reference} (${name})`,
      );
    }
    return this.retrying(`put manifest ${name}`, undefined, async () => {
      const response = await this.exchange({
        registry: repo.registry,
        method: "PUT",
        target: `/v2/${repo.repository}/manifests/${reference}`,
        headers: { "content-type": manifest.mediaType },
        body: manifest.bytes,
        scopes: [pushScope(repo.repository)],
        expect: [200, 201, 202],
        subject: `manifest ${name}`,
        notFound: "ImageNotFound",
      });
      await response.body.dump();
      return headerValue(response.headers, "docker-content-digest") ?? digest;
    });
  }

  /** Deletes a manifest by digest; false when it was not there. */
  async deleteManifest(repo: RepoRef, digest: string): Promise<boolean> {
    const name = displayName(repo, digest);
    return this.retrying(`delete manifest ${name}`, undefined, async () => {
      const response = await this.exchange({
        registry: repo.registry,
        method: "DELETE",
        target: `/v2/${repo.repository}/manifests/${digest}`,
        scopes: [`repository:${repo.repository}:delete`, pushScope(repo.repository)],
        expect: [202, 200, 404],
        subject: `manifest ${name}`,
      });
      await response.body.dump();
      return response.statusCode !== 404;
    });
  }

  /**
   * Unlinks a blob from a repository (distribution keeps the data while any repository or
   * manifest refers to it); false when the repository did not have it.
   */
  async deleteBlob(repo: RepoRef, digest: string): Promise<boolean> {
    return this.retrying(`delete blob ${digest}`, undefined, async () => {
      const response = await this.exchange({
        registry: repo.registry,
        method: "DELETE",
        target: `/v2/${repo.repository}/blobs/${digest}`,
        scopes: [`repository:${repo.repository}:delete`, pushScope(repo.repository)],
        expect: [200, 202, 204, 404],
        subject: `blob ${digest} in ${displayName(repo)}`,
      });
      await response.body.dump();
      return response.statusCode !== 404;
    });
  }

  /** The blob's size when the repository has it, undefined when it does not. */
  async hasBlob(repo: RepoRef, digest: string): Promise<number | undefined> {
    return this.retrying(`head blob ${digest}`, undefined, async () => {
      const response = await this.exchange({
        registry: repo.registry,
        method: "HEAD",
        target: `/v2/${repo.repository}/blobs/${digest}`,
        scopes: [pullScope(repo.repository)],
        expect: [200, 404],
        subject: `blob ${digest} in ${displayName(repo)}`,
        notFound: "BlobNotFound",
      });
      await response.body.dump();
      if (response.statusCode === 404) return undefined;
      return Number(headerValue(response.headers, "content-length") ?? "0");
    });
  }

  /**
   * The blob as a stream, verified against `descriptor` while it flows. The last chunk is
   * held back until the digest checks out; on mismatch the stream errors with
   * DigestMismatch instead. Dropped connections resume with a Range request.
   */
  getBlob(repo: RepoRef, descriptor: Descriptor, options: BlobTransferOptions = {}): Readable {
    const stream = Readable.from(this.blobChunks(repo, descriptor, options), { objectMode: false });
    return stream;
  }

  private async *blobChunks(
    repo: RepoRef,
    descriptor: Descriptor,
    options: BlobTransferOptions,
  ): AsyncGenerator<Buffer, void, undefined> {
    const { signal, onBytes } = options;
    const subject = `blob ${descriptor.digest} in ${displayName(repo)}`;
    const verifier = new DigestVerifier(descriptor);
    let held: Buffer | undefined;
    if (
      this.ranged &&
      descriptor.size >= this.ranged.minBlobBytes &&
      descriptor.size > this.ranged.rangeBytes
    ) {
      try {
        for await (const piece of this.rangedBlobChunks(repo, descriptor, subject, signal)) {
          verifier.update(piece);
          onBytes?.(piece.length);
          if (held) yield held;
          held = piece;
        }
      } catch (err) {
        if (!(err instanceof RangeNotSupported)) throw err;
        this.logger.debug({ blob: descriptor.digest, registry: repo.registry }, "upstream ignores Range");
      }
    }
    let failures = 0;
    // Ranged or not, the stream ends here once every byte arrived (the loop below only runs for
    // a single-stream download, or when the upstream turned out to ignore Range).
    for (; verifier.received < descriptor.size || descriptor.size === 0; ) {
      if (signal?.aborted) throw new StowageError("Aborted", `download of ${subject} was aborted`);
      const start = verifier.received;
      let response: Awaited<ReturnType<RegistryClient["exchange"]>> | undefined;
      try {
        response = await this.exchange({
          registry: repo.registry,
          method: "GET",
          target: `/v2/${repo.repository}/blobs/${descriptor.digest}`,
          headers: start > 0 ? { range: `bytes=${start}-` } : {},
          scopes: [pullScope(repo.repository)],
          expect: [200, 206],
          subject,
          notFound: "BlobNotFound",
          signal,
          bulk: descriptor.size - start >= this.bulkMinBytes,
        });
        let skip = 0;
        if (start > 0) {
          if (response.statusCode === 206) {
            const range = /^bytes (\d+)-/.exec(headerValue(response.headers, "content-range") ?? "");
            const rangeStart = range ? Number(range[1]) : Number.NaN;
            if (!(rangeStart <= start)) {
              throw new StowageError(
                "UpstreamUnavailable",
                `${repo.registry} answered a range request for ${subject} with Content-Range "${headerValue(response.headers, "content-range")}"`,
                { retryable: true },
              );
            }
            skip = start - rangeStart;
          } else {
            // The server ignored Range: it restarts from byte 0; skip what we already have.
            skip = start;
          }
        }
        for await (const chunk of response.body) {
          let piece = chunk as Buffer;
          if (skip > 0) {
            if (piece.length <= skip) {
              skip -= piece.length;
              continue;
            }
            piece = piece.subarray(skip);
            skip = 0;
          }
          verifier.update(piece);
          onBytes?.(piece.length);
          if (held) yield held;
          held = piece;
        }
        if (verifier.received < descriptor.size) {
          throw new StowageError(
            "UpstreamUnavailable",
            `${repo.registry} ended ${subject} after ${verifier.received} of ${descriptor.size} bytes`,
            { retryable: true },
          );
        }
        break;
      } catch (caught) {
        if (signal?.aborted)
          throw new StowageError("Aborted", `download of ${subject} was aborted`, { cause: caught });
        const err = this.blame(errorFromNetwork(caught, repo.registry, subject), repo.registry);
        if (!err.retryable) throw err;
        if (verifier.received > start) failures = 0;
        failures++;
        let delay: number;
        try {
          delay = waitBeforeRetry(this.policy, err, failures);
        } catch (final) {
          const last = final as StowageError;
          throw new StowageError(last.reason, `${last.message} (gave up after ${failures} attempts)`, {
            cause: err,
            retryable: true,
            status: err.status,
          });
        }
        this.logger.debug(
          { blob: descriptor.digest, received: verifier.received, err: err.message },
          "resuming blob",
        );
        await this.clock.sleep(delay, signal);
      } finally {
        if (response && !response.body.destroyed) response.body.destroy();
      }
    }
    try {
      verifier.finish();
    } catch (err) {
      const failure = err as StowageError;
      throw new StowageError(failure.reason, `${subject}: ${failure.message}`, { cause: err });
    }
    if (held) yield held;
  }

  /**
   * The blob's bytes in order, fetched as concurrent ranges (see rangedDownload.ts). Once a
   * range was redirected to object storage, later ranges go straight there (without our
   * Authorization, the URL carries its own signature), back to the registry if that fails.
   */
  private rangedBlobChunks(
    repo: RepoRef,
    descriptor: Descriptor,
    subject: string,
    signal: AbortSignal | undefined,
  ): AsyncGenerator<Buffer, void, undefined> {
    const ranged = this.ranged as Required<RangedDownloadOptions>;
    const registryOrigin = new URL(this.transport.baseUrl(repo.registry)).origin;
    let direct: string | undefined;
    const open: OpenRange = async (start, end, rangeSignal) => {
      const via = direct;
      let response: Awaited<ReturnType<RegistryClient["exchange"]>>;
      try {
        response = await this.exchange({
          registry: repo.registry,
          method: "GET",
          target: via ?? `/v2/${repo.repository}/blobs/${descriptor.digest}`,
          headers: { range: `bytes=${start}-${end}` },
          scopes: [pullScope(repo.repository)],
          expect: [200, 206],
          subject,
          notFound: "BlobNotFound",
          signal: rangeSignal,
          // The whole-blob stream (and a resume of it), not the ranges split off it: those
          // reuse undici's pooled connections, a handshake fewer each.
          bulk:
            end === descriptor.size - 1 &&
            end - start + 1 >= Math.max(this.bulkMinBytes, 2 * ranged.rangeBytes),
        });
      } catch (err) {
        if (via === undefined) throw err;
        // A signed storage URL may have expired: ask the registry again on the retry.
        direct = undefined;
        const failure = this.blame(errorFromNetwork(err, repo.registry, subject), repo.registry);
        throw new StowageError(failure.reason, failure.message, { cause: err, retryable: true });
      }
      const contentRange = /^bytes (\d+)-/.exec(headerValue(response.headers, "content-range") ?? "");
      const partial =
        response.statusCode === 206 && contentRange !== null && Number(contentRange[1]) === start;
      if (partial && via === undefined && new URL(response.url).origin !== registryOrigin)
        direct = response.url;
      return { partial, body: response.body as unknown as RangeResponseBody };
    };
    return rangedChunks(
      descriptor.size,
      open,
      {
        attempts: this.policy.attempts,
        toError: (caught) => this.blame(errorFromNetwork(caught, repo.registry, subject), repo.registry),
        sleep: (failures, err, sleepSignal) => {
          // rangedChunks counts the attempts itself; only the wait (and a long Retry-After to
          // report) is decided here.
          const delay = waitBeforeRetry(
            { ...this.policy, attempts: Number.POSITIVE_INFINITY },
            err,
            failures,
          );
          return this.clock.sleep(delay, sleepSignal);
        },
      },
      {
        ...ranged,
        signal,
        onRetry: (at, err) =>
          this.logger.debug({ blob: descriptor.digest, at, err: err.message }, "resuming blob range"),
      },
    );
  }

  /** Cross-repository mount: true when mounted (201); false when the registry opened an upload instead. */
  async mountBlob(target: RepoRef, digest: string, fromRepository: string): Promise<boolean> {
    return this.retrying(`mount ${digest}`, undefined, async () => {
      const response = await this.exchange({
        registry: target.registry,
        method: "POST",
        target: `/v2/${target.repository}/blobs/uploads/?mount=${encodeURIComponent(digest)}&from=${encodeURIComponent(fromRepository)}`,
        scopes: [pushScope(target.repository), pullScope(fromRepository)],
        expect: [201, 202],
        subject: `mount of ${digest} from ${fromRepository} into ${displayName(target)}`,
      });
      await response.body.dump();
      if (response.statusCode === 201) return true;
      const location = headerValue(response.headers, "location");
      if (location) await this.cancelUpload(target, new URL(location, response.url).toString());
      return false;
    });
  }

  /**
   * Uploads a blob from `open()`'s stream: one monolithic PUT, or PATCH chunks when the
   * registry refuses that. Retryable failures open the source again and start over.
   */
  async pushBlob(
    repo: RepoRef,
    descriptor: Descriptor,
    open: () => Readable | Promise<Readable>,
    options: BlobTransferOptions = {},
  ): Promise<void> {
    let chunked = false;
    await this.retrying(`push blob ${descriptor.digest}`, options.signal, async () => {
      for (;;) {
        try {
          await this.uploadOnce(repo, descriptor, open, options, chunked);
          return;
        } catch (err) {
          if (err instanceof MonolithicRefused && !chunked) {
            this.logger.debug(
              { blob: descriptor.digest, registry: repo.registry },
              "monolithic upload refused",
            );
            chunked = true;
            continue;
          }
          throw err;
        }
      }
    });
  }

  private async uploadOnce(
    repo: RepoRef,
    descriptor: Descriptor,
    open: () => Readable | Promise<Readable>,
    options: BlobTransferOptions,
    chunked: boolean,
  ): Promise<void> {
    const subject = `upload of ${descriptor.digest} to ${displayName(repo)}`;
    let location = await this.startUpload(repo, subject, options.signal);
    let source: Readable | undefined;
    let sourceError: unknown;
    try {
      source = await open();
    } catch (err) {
      await this.cancelUpload(repo, location);
      throw err;
    }
    const opened = source;
    const counted = (async function* counting(): AsyncGenerator<Buffer> {
      try {
        for await (const chunk of opened) {
          options.onBytes?.((chunk as Buffer).length);
          yield chunk as Buffer;
        }
      } catch (err) {
        sourceError = err;
        throw err;
      }
    })();
    try {
      if (!chunked) {
        const response = await this.exchange({
          registry: repo.registry,
          method: "PUT",
          target: appendQuery(location, { digest: descriptor.digest }),
          headers: { "content-type": "application/octet-stream", "content-length": String(descriptor.size) },
          body: counted,
          scopes: [pushScope(repo.repository)],
          expect: [201, 204, 400, 405, 413, 416],
          subject,
          signal: options.signal,
          bulk: descriptor.size >= this.bulkMinBytes,
          recycleBody: options.exclusiveChunks === true,
        });
        const text = await readCappedText(response.body);
        if (response.statusCode === 201 || response.statusCode === 204) return;
        const err = errorFromResponse(response.statusCode, text, { host: repo.registry, subject });
        if (sourceError) throw sourceError;
        if (err.reason === "DigestMismatch" || err.reason === "SizeMismatch") throw err;
        throw new MonolithicRefused(err.message);
      }
      const reader = new ChunkReader(counted);
      for (let offset = 0; offset < descriptor.size; ) {
        const length = Math.min(this.chunkSize, descriptor.size - offset);
        const response = await this.exchange({
          registry: repo.registry,
          method: "PATCH",
          target: location,
          headers: {
            "content-type": "application/octet-stream",
            "content-length": String(length),
            "content-range": `${offset}-${offset + length - 1}`,
          },
          body: reader.take(length),
          scopes: [pushScope(repo.repository)],
          expect: [202, 204],
          subject,
          signal: options.signal,
        });
        await response.body.dump();
        location = this.uploadLocation(response, location);
        offset += length;
      }
      // The source must end exactly at the declared size (and, if verifying, check out).
      for await (const extra of counted) {
        if (extra.length > 0) {
          throw new StowageError(
            "SizeMismatch",
            `source of ${subject} is longer than ${descriptor.size} bytes`,
          );
        }
      }
      const response = await this.exchange({
        registry: repo.registry,
        method: "PUT",
        target: appendQuery(location, { digest: descriptor.digest }),
        headers: { "content-type": "application/octet-stream", "content-length": "0" },
        scopes: [pushScope(repo.repository)],
        expect: [201, 204],
        subject,
        signal: options.signal,
      });
      await response.body.dump();
    } catch (err) {
      opened.destroy();
      await this.cancelUpload(repo, location);
      // The source's own failure wins, unless it is only the echo of the upload being torn
      // down (a premature close or abort after the target dropped the connection): then the
      // target's error says what happened.
      if (sourceError && !(isTeardownError(sourceError) && err instanceof StowageError)) throw sourceError;
      throw err;
    }
  }

  private async startUpload(repo: RepoRef, subject: string, signal?: AbortSignal): Promise<string> {
    const response = await this.exchange({
      registry: repo.registry,
      method: "POST",
      target: `/v2/${repo.repository}/blobs/uploads/`,
      headers: { "content-length": "0" },
      scopes: [pushScope(repo.repository)],
      expect: [202],
      subject,
      signal,
    });
    await response.body.dump();
    return this.uploadLocation(response, undefined);
  }

  private uploadLocation(response: ResponseData & { url: string }, previous: string | undefined): string {
    const location = headerValue(response.headers, "location");
    if (!location) {
      if (previous) return previous;
      throw new StowageError(
        "UpstreamUnavailable",
        `registry did not say where to upload (no Location header)`,
      );
    }
    return new URL(location, response.url).toString();
  }

  private async cancelUpload(repo: RepoRef, location: string): Promise<void> {
    try {
      const response = await this.exchange({
        registry: repo.registry,
        method: "DELETE",
        target: location,
        scopes: [pushScope(repo.repository)],
        expect: [200, 202, 204, 404],
        subject: "upload cancel",
      });
      await response.body.dump();
    } catch (err) {
      this.logger.debug({ registry: repo.registry, err: (err as Error).message }, "could not cancel upload");
    }
  }

  /**
   * Descriptors of manifests that refer to `digest`: the OCI 1.1 referrers API, or the
   * `sha256-<hex>` tag schema where the registry lacks it; [] when there are none.
   */
  async referrers(
    repo: RepoRef,
    digest: string,
    options: { artifactType?: string } = {},
  ): Promise<Descriptor[]> {
    const name = displayName(repo, digest);
    const filter = (descriptors: Descriptor[]) =>
      options.artifactType === undefined
        ? descriptors
        : descriptors.filter((descriptor) => descriptor.artifactType === options.artifactType);
    const api = await this.retrying(`referrers of ${name}`, undefined, async () => {
      let target = `/v2/${repo.repository}/referrers/${digest}`;
      if (options.artifactType) target = appendQuery(target, { artifactType: options.artifactType });
      const response = await this.exchange({
        registry: repo.registry,
        method: "GET",
        target,
        headers: { accept: MediaType.OciIndex },
        scopes: [pullScope(repo.repository)],
        expect: [200, 400, 404, 405],
        subject: `referrers of ${name}`,
      });
      if (response.statusCode !== 200) {
        await response.body.dump();
        return undefined;
      }
      const contentType = headerValue(response.headers, "content-type") ?? "";
      const text = await response.body.text();
      if (!contentType.startsWith(MediaType.OciIndex) && !contentType.startsWith("application/json"))
        return undefined;
      return (JSON.parse(text) as ImageIndex).manifests ?? [];
    });
    if (api !== undefined) return filter(api);
    try {
      const index = await this.getManifest(repo, digest.replace(":", "-"));
      return filter((JSON.parse(index.bytes.toString("utf8")) as ImageIndex).manifests ?? []);
    } catch (err) {
      if (err instanceof StowageError && err.reason === "ImageNotFound") return [];
      throw err;
    }
  }

  /** Every tag of the repository, following `Link: <...>; rel="next"` pages. */
  async listTags(repo: RepoRef, options: { pageSize?: number } = {}): Promise<string[]> {
    const tags: string[] = [];
    let target: string | undefined = `/v2/${repo.repository}/tags/list`;
    if (options.pageSize) target = appendQuery(target, { n: String(options.pageSize) });
    while (target !== undefined) {
      const page: string = target;
      const result = await this.retrying(`list tags of ${displayName(repo)}`, undefined, async () => {
        const response = await this.exchange({
          registry: repo.registry,
          method: "GET",
          target: page,
          scopes: [pullScope(repo.repository)],
          expect: [200],
          subject: `repository ${displayName(repo)}`,
          notFound: "ImageNotFound",
        });
        const body = JSON.parse(await response.body.text()) as { tags?: string[] | null };
        const link = headerValue(response.headers, "link");
        const next = link ? /<([^>]+)>\s*;\s*rel="?next"?/.exec(link)?.[1] : undefined;
        return { tags: body.tags ?? [], next: next ? new URL(next, response.url).toString() : undefined };
      });
      tags.push(...result.tags);
      target = result.next;
    }
    return tags;
  }

  /**
   * Repositories of a registry from its catalog (`/v2/_catalog`, paged by Link), at most
   * `limit`. Needs the registry's catalog scope; distribution serves it to anyone it lets pull.
   */
  async listRepositories(
    registry: string,
    options: { limit?: number; pageSize?: number } = {},
  ): Promise<string[]> {
    const limit = options.limit ?? Number.POSITIVE_INFINITY;
    const repositories: string[] = [];
    let target: string | undefined = appendQuery("/v2/_catalog", { n: String(options.pageSize ?? 1000) });
    while (target !== undefined && repositories.length < limit) {
      const page: string = target;
      const result = await this.retrying(`list repositories of ${registry}`, undefined, async () => {
        const response = await this.exchange({
          registry,
          method: "GET",
          target: page,
          scopes: ["registry:catalog:*"],
          expect: [200],
          subject: `catalog of ${registry}`,
        });
        const body = JSON.parse(await response.body.text()) as { repositories?: string[] | null };
        const link = headerValue(response.headers, "link");
        const next = link ? /<([^>]+)>\s*;\s*rel="?next"?/.exec(link)?.[1] : undefined;
        return {
          names: body.repositories ?? [],
          next: next ? new URL(next, response.url).toString() : undefined,
        };
      });
      repositories.push(...result.names);
      target = result.next;
    }
    return repositories.slice(0, limit);
  }

  close(): Promise<void> {
    return this.transport.close();
  }

  private manifestMediaType(contentType: string | undefined, bytes: Buffer, name: string): string {
    const served = (contentType ?? "").split(";")[0].trim();
    let declared: string | undefined;
    try {
      declared = (JSON.parse(bytes.toString("utf8")) as { mediaType?: string }).mediaType;
    } catch (cause) {
      throw new StowageError("ManifestInvalid", `manifest ${name} is not valid JSON`, { cause });
    }
    if (KNOWN_MANIFEST_TYPES.has(served)) return served;
    return declared ?? served;
  }

  /** A failure of a cache registry is the cache's (CacheUnavailable), not the upstream's. */
  private blame(err: StowageError, registry: string): StowageError {
    return this.cacheRegistries.has(registry) ? blameCache(err, registry) : err;
  }

  private blameResponse(status: number, body: string, context: Parameters<typeof errorFromResponse>[2]) {
    return this.blame(errorFromResponse(status, body, context), context.host);
  }

  private retrying<T>(
    what: string,
    signal: AbortSignal | undefined,
    operation: () => Promise<T>,
  ): Promise<T> {
    return withRetry(operation, {
      policy: this.policy,
      clock: this.clock,
      logger: this.logger,
      what,
      signal,
    });
  }

  /**
   * One request with authentication: answers a 401 challenge once (fetching a token for
   * the scopes, or sending Basic credentials), and turns unexpected statuses into errors.
   */
  /**
   * After a 401: tries each candidate credential the lookup offers for the repository, the
   * one accepted last time first, until the registry (or its token realm) accepts one, and
   * remembers it. A streamed body cannot be sent twice: then the retry loop starts over.
   */
  private async answerChallenge(
    request: ExchangeRequest,
    refused: ResponseData & { url: string },
    attempt: (authorization: string | undefined) => Promise<ResponseData & { url: string }>,
  ): Promise<ResponseData & { url: string }> {
    const { registry, signal } = request;
    const challenge = headerValue(refused.headers, "www-authenticate");
    let said = await readCappedText(refused.body);
    const scopes = this.auth.onChallenge(registry, challenge, request.scopes);
    const repository = repositoryOfScopes(request.scopes);
    const candidates = await this.auth.candidates(registry, repository);
    const order = this.auth.candidateOrder(registry, repository, candidates.length);
    // A streamed body is consumed by the refused attempt: it cannot go out again.
    const body = request.body;
    const canResend =
      body === undefined || body === null || typeof body === "string" || Buffer.isBuffer(body);
    const refusedBy: string[] = [];
    let realmError: StowageError | undefined;
    for (const index of order) {
      const credentials = candidates[index];
      let authorization: string | undefined;
      try {
        authorization = await this.auth.authorizationWith(registry, scopes, credentials, signal);
      } catch (err) {
        if (!(err instanceof StowageError) || err.reason !== "AuthFailed") throw err;
        realmError = err;
        refusedBy.push(describeCandidate(credentials));
        continue;
      }
      if (authorization === undefined) continue;
      if (!canResend) {
        // Keep the candidate: the requests before a streamed one (the upload's POST) already
        // chose it, so this 401 is most likely an expired token, fetched anew on the retry.
        throw new StowageError(
          "AuthFailed",
          errorFromResponse(401, said, { host: registry, subject: request.subject }).message,
          { status: 401, retryable: true },
        );
      }
      const response = await attempt(authorization);
      if (response.statusCode !== 401) {
        this.auth.accept(registry, repository, index);
        if (refusedBy.length > 0) {
          this.logger.info(
            { registry, repository, refused: refusedBy.length, accepted: describeCandidate(credentials) },
            "registry accepted a later credential candidate",
          );
        }
        return response;
      }
      said = await readCappedText(response.body);
      refusedBy.push(describeCandidate(credentials));
    }
    const err = errorFromResponse(401, said, { host: registry, subject: request.subject });
    const configured = candidates.some((candidate) => !isAnonymous(candidate));
    const hint = !configured
      ? ` (no credentials configured for ${registry})`
      : refusedBy.length > 1
        ? ` (refused: ${refusedBy.join(", ")})`
        : "";
    const message = realmError && refusedBy.length === 1 ? realmError.message : `${err.message}${hint}`;
    throw new StowageError("AuthFailed", message, { status: 401 });
  }

  private async exchange(request: ExchangeRequest): Promise<ResponseData & { url: string }> {
    const base = this.transport.baseUrl(request.registry);
    const url = request.target.startsWith("/") ? base + request.target : request.target;
    const sameOrigin = new URL(url).origin === new URL(base).origin;
    const attempt = async (authorization: string | undefined) => {
      const headers = { ...request.headers };
      if (authorization && sameOrigin) headers.authorization = authorization;
      try {
        return await this.transport.send({
          method: request.method,
          url,
          headers,
          body: request.body,
          signal: request.signal,
          bulk: request.bulk,
          recycleBody: request.recycleBody,
        });
      } catch (err) {
        if (request.signal?.aborted) {
          throw new StowageError("Aborted", `${request.subject} was aborted`, { cause: err });
        }
        throw this.blame(errorFromNetwork(err, request.registry, request.subject), request.registry);
      }
    };

    const authorization = await this.auth.authorization(request.registry, request.scopes, request.signal);
    let response = await attempt(authorization);
    if (response.statusCode === 401) {
      response = await this.answerChallenge(request, response, attempt);
    }
    if (request.expect.includes(response.statusCode)) return response;
    const text = request.method === "HEAD" ? "" : await readCappedText(response.body);
    if (request.method === "HEAD") await response.body.dump();
    throw this.blameResponse(response.statusCode, text, {
      host: request.registry,
      subject: request.subject,
      notFound: request.notFound,
      retryAfter: headerValue(response.headers, "retry-after"),
      nowMs: this.clock.now(),
    });
  }
}

function isTeardownError(err: unknown): boolean {
  const code = (err as { code?: string } | undefined)?.code;
  return (
    code === "ERR_STREAM_PREMATURE_CLOSE" || code === "ABORT_ERR" || (err as Error)?.name === "AbortError"
  );
}

/** "pull secret "ngc" (nvcr.io)", "anonymous", or "credentials #2"-free: never a secret. */
function describeCandidate(credentials: Credentials | undefined): string {
  if (isAnonymous(credentials)) return "anonymous";
  return credentials?.label ?? (credentials?.username ? `user "${credentials.username}"` : "a token");
}
