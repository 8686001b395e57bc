/**
 * The front's HTTP side: a read-only OCI distribution endpoint over the cache layout. Every
 * object request is authorized first (nothing is read from storage for a refused caller),
 * then served from storage when it is there and fetched upstream when it is not.
 */
import type { IncomingMessage, Server, ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import type { Readable } from "node:stream";
import { pipeline } from "node:stream/promises";
import type { CacheMetrics } from "../metrics.ts";
import type { RegistryClient } from "../oci/registry.ts";
import { headerValue } from "../oci/transport.ts";
import { asStowageError, StowageError } from "../util/errors.ts";
import type { Logger } from "../util/log.ts";
import { nodeHttp } from "../util/nodeHttp.ts";
import { type AccessControl, AccessRefused } from "./access.ts";
import { type BlobFile, type BlobFiles, parseRange } from "./blobFiles.ts";
import type { BlobFlights } from "./flights.ts";
import { type CacheTarget, isDigestReference, parseCachePath } from "./layout.ts";
import type { Manifests } from "./manifests.ts";
import type { PullLog } from "./pulls.ts";
import { ociErrorOf, sendError, sendUnauthorized } from "./respond.ts";
import { fileChunks, sendBuffers, sendChunks, TAIL_CHUNK_BYTES } from "./send.ts";
import type { RawResponse, Storage } from "./storage.ts";
import type { TagResolver } from "./tags.ts";
import { callerCredentials } from "./upstreamAuth.ts";

export interface FrontDeps {
  storage: Storage;
  upstream: RegistryClient;
  manifests: Manifests;
  flights: BlobFlights;
  tags: TagResolver;
  access: AccessControl;
  metrics: CacheMetrics;
  logger: Logger;
  /** Upstream hosts this front fetches from; "*" allows any. */
  upstreamHosts: ReadonlySet<string>;
  /** Notes when each manifest was last pulled, for the controller's eviction (pulls.ts). */
  pulls?: PullLog;
  /** The registry's filesystem storage, read directly for hits (`--storage-root`, blobFiles.ts). */
  blobFiles?: BlobFiles;
}

const API_HEADERS = { "docker-distribution-api-version": "registry/2.0" };

/** Headers of a storage blob response passed on to the caller as they are. */
const PASSED_HEADERS = [
  "content-length",
  "content-range",
  "content-type",
  "docker-content-digest",
  "etag",
  "accept-ranges",
];

/** The caller's headers for a storage response: the API version and what PASSED_HEADERS names. */
function passedHeaders(response: RawResponse): Record<string, string> {
  const headers: Record<string, string> = { ...API_HEADERS };
  for (const name of PASSED_HEADERS) {
    const value = headerValue(response.headers, name);
    if (value !== undefined) headers[name] = value;
  }
  return headers;
}

export class Front {
  private readonly deps: FrontDeps;

  constructor(deps: FrontDeps) {
    this.deps = deps;
  }

  readonly handle = (req: IncomingMessage, res: ServerResponse): void => {
    this.serve(req, res).catch((err: unknown) => {
      const failure = asStowageError(err);
      const { status, code } = ociErrorOf(failure, undefined);
      if (status >= 500) this.deps.logger.error({ reason: failure.reason, url: req.url }, failure.message);
      sendError(res, status, code, failure.message);
    });
  };

  private async serve(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const url = new URL(req.url ?? "/", "http://front.invalid");
    // Read-only: uploads, pushes and deletes are refused whatever the path.
    if (req.method !== "GET" && req.method !== "HEAD") return this.readOnly(res);
    if (url.pathname === "/v2" || url.pathname === "/v2/") {
      res.writeHead(200, { ...API_HEADERS, "content-type": "application/json", "content-length": "2" });
      res.end(req.method === "HEAD" ? undefined : "{}");
      return;
    }
    let target: CacheTarget | undefined;
    try {
      target = parseCachePath(url.pathname, url.searchParams.get("ns"));
    } catch (err) {
      const failure = asStowageError(err);
      const { status, code } = ociErrorOf(failure, undefined);
      return sendError(res, status, code, failure.message);
    }
    if (!target)
      return sendError(res, 404, "NOT_FOUND", `${url.pathname} is not served by this read-only cache`);
    if (!this.deps.upstreamHosts.has("*") && !this.deps.upstreamHosts.has(target.upstream)) {
      return sendError(res, 404, "NAME_UNKNOWN", `this cache does not serve images of ${target.upstream}`);
    }
    try {
      if (target.kind === "manifest") await this.serveManifest(req, res, target);
      else await this.serveBlob(req, res, target);
    } catch (err) {
      const failure = asStowageError(err);
      if (err instanceof AccessRefused) {
        this.deps.metrics.refused.inc({ status: String(err.status) });
        this.deps.logger.info(
          { upstream: target.upstream, repository: target.repository, reason: err.reason },
          "refused",
        );
        if (err.reason === "AuthFailed") return sendUnauthorized(res, err.message);
        return sendError(res, 403, "DENIED", err.message);
      }
      if (failure.reason === "AuthFailed" || failure.reason === "Denied") {
        // The caller passed; the upstream refused the front's own credentials. 403 without a
        // challenge: containerd then tries its next host (the upstream) with its own.
        this.deps.logger.warn(
          { upstream: target.upstream, repository: target.repository, reason: failure.reason },
          "the upstream refuses the cache's own credentials; add them with --auth-file",
        );
        return sendError(
          res,
          403,
          "DENIED",
          `the cache cannot fetch ${target.upstream}/${target.repository}: the upstream refuses its credentials (${failure.message})`,
        );
      }
      const { status, code } = ociErrorOf(failure, target.kind);
      if (status >= 500) {
        this.deps.logger.warn(
          {
            upstream: target.upstream,
            repository: target.repository,
            reference: target.reference,
            reason: failure.reason,
          },
          failure.message,
        );
      }
      sendError(res, status, code, failure.message);
    }
  }

  private readOnly(res: ServerResponse): void {
    sendError(res, 405, "UNSUPPORTED", "this cache is read-only: push to the upstream registry");
  }

  private async serveManifest(req: IncomingMessage, res: ServerResponse, target: CacheTarget): Promise<void> {
    const { access, tags } = this.deps;
    const authorization = req.headers.authorization;
    const byTag = !isDigestReference(target.reference);
    let resolving: Promise<string> | undefined;
    const digestOfTag = () => {
      resolving ??= tags.resolve(target).then((resolved) => resolved.digest);
      return resolving;
    };
    const grant = await access.authorize(authorization, target, byTag ? digestOfTag : undefined);
    await callerCredentials.run(grant.credentials, () =>
      this.sendManifest(req, res, target, byTag ? digestOfTag : undefined),
    );
  }

  private async sendManifest(
    req: IncomingMessage,
    res: ServerResponse,
    target: CacheTarget,
    digestOfTag: (() => Promise<string>) | undefined,
  ): Promise<void> {
    const { manifests, metrics } = this.deps;
    const digest = digestOfTag ? await digestOfTag() : target.reference;
    const found = await manifests.get(target, digest);
    if (found.source === "storage") metrics.hits.inc({ kind: "manifest" });
    else metrics.misses.inc({ kind: "manifest" });
    const { manifest } = found;
    this.deps.pulls?.record(target.cacheRepository, manifest.digest);
    res.writeHead(200, {
      ...API_HEADERS,
      "content-type": manifest.mediaType,
      "content-length": String(manifest.bytes.length),
      "docker-content-digest": manifest.digest,
      etag: `"${manifest.digest}"`,
    });
    if (req.method === "HEAD") {
      res.end();
      return;
    }
    metrics.bytesServed.inc({ source: found.source }, manifest.bytes.length);
    res.end(manifest.bytes);
  }

  private async serveBlob(req: IncomingMessage, res: ServerResponse, target: CacheTarget): Promise<void> {
    const { access } = this.deps;
    const grant = await access.authorize(req.headers.authorization, target);
    await callerCredentials.run(grant.credentials, () => this.sendBlob(req, res, target));
  }

  private async sendBlob(req: IncomingMessage, res: ServerResponse, target: CacheTarget): Promise<void> {
    const { storage, metrics } = this.deps;
    const method = req.method === "HEAD" ? "HEAD" : "GET";
    const range = typeof req.headers.range === "string" ? req.headers.range : undefined;
    const abort = new AbortController();
    res.once("close", () => abort.abort());
    const file = await this.deps.blobFiles?.open(target.cacheRepository, target.reference);
    if (file && (await this.sendFile(res, target, file, method, range))) return;
    const stored = await storage
      .openBlob(target.cacheRepository, target.reference, { method, range, signal: abort.signal })
      .catch((err: unknown) => {
        // Storage away: stream from the upstream rather than fail the pull.
        this.deps.logger.warn(
          { repository: target.cacheRepository, digest: target.reference, err: asStowageError(err).message },
          "cache storage unreadable; fetching the blob upstream",
        );
        return undefined;
      });
    if (stored) {
      metrics.hits.inc({ kind: "blob" });
      res.writeHead(stored.statusCode, passedHeaders(stored));
      await this.pipe(stored.body, res, "storage");
      return;
    }
    metrics.misses.inc({ kind: "blob" });
    const running = this.deps.flights.running(target);
    const size = running
      ? (await running).spool.size
      : await this.deps.upstream.hasBlob(
          { registry: target.upstream, repository: target.repository },
          target.reference,
        );
    if (size === undefined) {
      throw new StowageError(
        "BlobNotFound",
        `blob ${target.reference} not found in ${target.upstream}/${target.repository}`,
      );
    }
    const blobHeaders = {
      ...API_HEADERS,
      "content-type": "application/octet-stream",
      "docker-content-digest": target.reference,
      "accept-ranges": "bytes",
    };
    if (method === "HEAD") {
      res.writeHead(200, { ...blobHeaders, "content-length": String(size) });
      res.end();
      return;
    }
    const { flight } = this.deps.flights.join(target, size);
    const { spool, settled } = await flight;
    if (range || spool.closed) {
      // A range of a blob not yet verified cannot be checked on its own, and a flight that
      // ended while this request joined it has no spool left: both wait for the flight to be
      // over, then are answered from storage as a hit would be.
      const committed = await settled;
      if (spool.state !== "sealed")
        throw new StowageError(
          "UpstreamUnavailable",
          `fetching ${target.reference} from ${target.upstream} failed`,
          { retryable: true },
        );
      const after = committed
        ? await storage.openBlob(target.cacheRepository, target.reference, { range, signal: abort.signal })
        : undefined;
      if (!after)
        throw new StowageError(
          "CacheUnavailable",
          `blob ${target.reference} could not be stored; ${range ? "retry without a Range" : "retry"}`,
          { retryable: true },
        );
      res.writeHead(after.statusCode, passedHeaders(after));
      await this.pipe(after.body, res, "upstream");
      return;
    }
    res.writeHead(200, { ...blobHeaders, "content-length": String(size) });
    metrics.singleFlightWaiters.inc();
    try {
      const chunks = spool.tail(0, size, {
        holdLast: true,
        signal: abort.signal,
        buffers: () => sendBuffers(TAIL_CHUNK_BYTES),
      });
      await sendChunks(res, chunks, (bytes) => metrics.bytesServed.inc({ source: "upstream" }, bytes));
      if (res.destroyed) return;
      res.end();
    } catch (err) {
      // Headers are out: the only honest answer left is a cut connection (a short body).
      this.deps.logger.warn(
        { repository: target.cacheRepository, digest: target.reference, err: asStowageError(err).message },
        "aborting a blob response",
      );
      res.destroy();
    } finally {
      metrics.singleFlightWaiters.dec();
    }
  }

  /**
   * A hit read from the registry's own files; false (file closed) for a Range this does not
   * serve, which the caller then asks distribution for.
   */
  private async sendFile(
    res: ServerResponse,
    target: CacheTarget,
    file: BlobFile,
    method: "GET" | "HEAD",
    range: string | undefined,
  ): Promise<boolean> {
    const answer = parseRange(range, file.size);
    if (answer.kind === "unsupported") {
      await file.handle.close().catch(() => {});
      return false;
    }
    this.deps.metrics.hits.inc({ kind: "blob" });
    const headers: Record<string, string> = {
      ...API_HEADERS,
      "content-type": "application/octet-stream",
      "docker-content-digest": target.reference,
      etag: `"${target.reference}"`,
      "accept-ranges": "bytes",
    };
    if (answer.kind === "unsatisfiable") {
      await file.handle.close().catch(() => {});
      res.writeHead(416, { ...headers, "content-range": `bytes */${file.size}`, "content-length": "0" });
      res.end();
      return true;
    }
    const start = answer.kind === "partial" ? answer.start : 0;
    const end = answer.kind === "partial" ? answer.end : file.size - 1;
    const length = file.size === 0 ? 0 : end - start + 1;
    if (answer.kind === "partial") headers["content-range"] = `bytes ${start}-${end}/${file.size}`;
    res.writeHead(answer.kind === "partial" ? 206 : 200, { ...headers, "content-length": String(length) });
    if (method === "HEAD" || length === 0) {
      await file.handle.close().catch(() => {});
      res.end();
      return true;
    }
    let sent = 0;
    try {
      const read = async (buffer: Buffer, length: number, position: number) =>
        (await file.handle.read(buffer, 0, length, position)).bytesRead;
      sent = await sendChunks(res, fileChunks(read, start, end));
      res.end();
    } catch (err) {
      this.deps.logger.warn(
        { repository: target.cacheRepository, digest: target.reference, err: asStowageError(err).message },
        "aborting a blob response read from the registry's files",
      );
      res.destroy();
    } finally {
      await file.handle.close().catch(() => {});
      this.deps.metrics.bytesServed.inc({ source: "storage" }, sent);
    }
    return true;
  }

  /** Streams a storage response to the caller: node's own pipe (the hit path's speed), bytes counted per chunk. */
  private async pipe(body: Readable, res: ServerResponse, source: "storage" | "upstream"): Promise<void> {
    let counted = 0;
    body.on("data", (chunk: Buffer) => {
      counted += chunk.length;
    });
    try {
      await pipeline(body, res);
    } catch {
      res.destroy();
    } finally {
      this.deps.metrics.bytesServed.inc({ source }, counted);
    }
  }
}

export interface RunningFront {
  server: Server;
  address: AddressInfo;
  /** Stops the server; responses under way get `graceMs` (default 0) to finish. */
  close(graceMs?: number): Promise<void>;
}

export async function listenFront(front: Front, port: number, host = "0.0.0.0"): Promise<RunningFront> {
  const server = nodeHttp.createServer(front.handle);
  // Large blobs to slow nodes: no whole-request timeout, only the per-socket idle one.
  server.requestTimeout = 0;
  server.keepAliveTimeout = 30_000;
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(port, host, () => {
      server.off("error", reject);
      resolve();
    });
  });
  return {
    server,
    address: server.address() as AddressInfo,
    close: (graceMs = 0) =>
      new Promise<void>((resolve) => {
        // Stop accepting, let responses under way finish for up to graceMs (a node cut off
        // later resumes with a Range request elsewhere), then cut what is left.
        const timer = setTimeout(() => server.closeAllConnections(), graceMs);
        // A keep-alive connection whose response just finished would otherwise hold close()
        // until its idle timeout.
        const idle = setInterval(() => server.closeIdleConnections(), 100);
        server.close(() => {
          clearTimeout(timer);
          clearInterval(idle);
          resolve();
        });
        server.closeIdleConnections();
      }),
  };
}
