/**
 * The agent as its node's registry mirror (issue 15, docs/fanout.md "Wiring it in" 4). In
 * `planned` mode containerd's hosts.toml lists this endpoint first (override_path, so requests
 * arrive as `/v2/<cache prefix>/<repo>/...`, the same paths the cache serves), then the cache,
 * then the upstream.
 *
 * - A blob GET whose digest has a fan-out assignment is assembled piece by piece, in offset
 *   order, each piece from its assigned source: a peer agent (Range request with this node's
 *   peer token) or the cache (Range request with the credentials containerd sent). A peer that
 *   fails, or sends no byte for `stallTimeoutMs`, or has not got the piece `sourceWaitMs` after
 *   it was first asked (the plan is made ahead: a source may still be pulling it), is dropped for the rest of the blob and the
 *   piece's remaining bytes come from the cache; the peer is reported (peerFailures). The whole
 *   blob is hashed on the way; on a mismatch the response is cut before its last byte, so
 *   containerd never commits it.
 * - Everything else (manifests, undeclared blobs, HEADs, containerd's own Range resumes) is
 *   proxied to the cache unchanged, Authorization included and answers (401 challenges, 404)
 *   passed back as they are: pull-through and private-image auth work as without the mirror,
 *   and containerd moves on to the next host on a failure as it does today.
 *
 * node:http rather than fetch: streamed bodies with backpressure and per-request abort, without
 * loading undici into the agent.
 */
import { createHash } from "node:crypto";
import { type FileHandle, open as openFile, rm } from "node:fs/promises";
import type { IncomingHttpHeaders, IncomingMessage, Server, ServerResponse } from "node:http";
import { request as httpsRequest } from "node:https";
import type { AddressInfo } from "node:net";
import { join } from "node:path";
import { FANOUT_CACHE_SOURCE, type FanoutPiece, type PeerFailure } from "../../api/nodeCache.ts";
import { StowageError } from "../../util/errors.ts";
import { nodeHttp } from "../../util/nodeHttp.ts";
import { type PartialBlobs, PEER_BLOB_PATH } from "./server.ts";

/** What the NodeCache spec says about one digest: its pieces, and how to reach their peers. */
export interface BlobAssignment {
  pieces: readonly FanoutPiece[];
}

export interface FanoutState {
  /** The digest's pieces (spec images[].fanout), or undefined when it has none. */
  assignment(digest: string): BlobAssignment | undefined;
  /** A peer's endpoint (spec.peers). */
  endpoint(node: string): string | undefined;
  /** This node's peer token (spec.peerToken). */
  token(): string | undefined;
}

export interface MirrorOptions {
  /** The cache registry: `http://10.0.0.5:5000`, or a getter (the NodeCache spec's, read per request). */
  cacheEndpoint: string | (() => string | undefined);
  state: FanoutState;
  host: string;
  port: number;
  /** No byte from a peer for this long → the piece's rest comes from the cache (default 2000). */
  stallTimeoutMs?: number;
  /**
   * How long a source that does not have a piece yet (404 BlobNotHeld, 503 NotYetSpooled or busy)
   * is asked again before it counts as Stalled (default 30 s): its own pull may still be queued.
   */
  sourceWaitMs?: number;
  sleep?: (ms: number) => Promise<void>;
  /**
   * A directory for spools: with it, a blob's pieces are fetched several at once, each from its
   * own source and in any order, into a file there, and streamed to containerd in order from it;
   * peers are served every piece the spool holds (`partial`). Without it, pieces are fetched one
   * after another straight into containerd's stream.
   */
  spoolDir?: string;
  now?: () => number;
  log?: (message: string) => void;
}

export interface MirrorStats {
  /** Blob bytes sent to containerd, by digest and source (`cache` or a node). */
  sources: Map<string, Map<string, number>>;
  /** The latest failure of each peer. */
  peerFailures: Map<string, PeerFailure>;
  /** Requests passed to the cache unchanged. */
  proxied: number;
}

export interface Mirror {
  url: string;
  port: number;
  stats: MirrorStats;
  /** The blobs being spooled, for the peer endpoint (only with `spoolDir`). */
  partial: PartialBlobs;
  close(): Promise<void>;
}

export const DEFAULT_SOURCE_WAIT_MS = 30_000;
/** Pieces of one blob fetched at once into its spool (containerd's own downloads per node are 3). */
const SPOOL_FETCHES = 3;
const SPOOL_READ_BYTES = 256 * 1024;
/** How often a source without the piece yet is asked again: a wave's delay is about this. */
const SOURCE_POLL_MS = 100;

const BLOB_PATH = /^\/v2\/(.+)\/blobs\/(sha256:[a-f0-9]{64}|sha512:[a-f0-9]{128})$/;
const HOP_BY_HOP = new Set([
  "connection",
  "keep-alive",
  "transfer-encoding",
  "upgrade",
  "host",
  "proxy-connection",
]);

function open(
  url: string,
  method: string,
  headers: Record<string, string | string[] | undefined>,
  signal?: AbortSignal,
): Promise<IncomingMessage> {
  return new Promise((resolve, reject) => {
    const request = url.startsWith("https:") ? httpsRequest : nodeHttp.request;
    const req = request(url, { method, headers, signal }, resolve);
    req.once("error", reject);
    req.end();
  });
}

function forwardHeaders(headers: IncomingHttpHeaders): Record<string, string | string[] | undefined> {
  const out: Record<string, string | string[] | undefined> = {};
  for (const [name, value] of Object.entries(headers)) if (!HOP_BY_HOP.has(name)) out[name] = value;
  return out;
}

function write(res: ServerResponse, chunk: Buffer): Promise<void> {
  if (res.write(chunk)) return Promise.resolve();
  return new Promise((resolve, reject) => {
    const onDrain = () => {
      res.off("close", onClose);
      resolve();
    };
    const onClose = () => {
      res.off("drain", onDrain);
      reject(new StowageError("Aborted", "containerd closed the connection"));
    };
    res.once("drain", onDrain);
    res.once("close", onClose);
  });
}

/** A source that does not have the piece yet, or is busy (404, 503): ask again later. */
class NotReady extends Error {
  readonly node: string;

  constructor(node: string) {
    super(`${node} does not have the piece yet`);
    this.node = node;
  }
}

class PeerUnavailable extends Error {
  readonly node: string;
  readonly reason: "Failed" | "Stalled";

  constructor(node: string, reason: "Failed" | "Stalled", message: string) {
    super(message);
    this.node = node;
    this.reason = reason;
  }
}

export async function startMirror(options: MirrorOptions): Promise<Mirror> {
  const cacheOption = options.cacheEndpoint;
  const cacheUrl = (): string => {
    const endpoint = typeof cacheOption === "string" ? cacheOption : cacheOption();
    if (!endpoint)
      throw new StowageError("CacheUnavailable", "the NodeCache spec names no cache endpoint yet");
    return endpoint.replace(/\/+$/, "");
  };
  const stallTimeoutMs = options.stallTimeoutMs ?? 2000;
  if (!Number.isFinite(stallTimeoutMs) || stallTimeoutMs <= 0) {
    throw new StowageError(
      "InvalidArgument",
      `the peer stall timeout must be positive, got ${stallTimeoutMs} ms`,
    );
  }
  const sourceWaitMs = options.sourceWaitMs ?? DEFAULT_SOURCE_WAIT_MS;
  const now = options.now ?? Date.now;
  const sleep = options.sleep ?? ((ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms)));
  const log = options.log ?? (() => {});
  const stats: MirrorStats = { sources: new Map(), peerFailures: new Map(), proxied: 0 };

  function count(digest: string, source: string, bytes: number): void {
    let bySource = stats.sources.get(digest);
    if (!bySource) {
      bySource = new Map();
      stats.sources.set(digest, bySource);
    }
    bySource.set(source, (bySource.get(source) ?? 0) + bytes);
  }

  async function proxy(req: IncomingMessage, res: ServerResponse): Promise<void> {
    stats.proxied++;
    const upstream = await open(`${cacheUrl()}${req.url}`, req.method ?? "GET", forwardHeaders(req.headers));
    const headers = forwardHeaders(upstream.headers);
    res.writeHead(upstream.statusCode ?? 502, headers);
    upstream.pipe(res);
  }

  /** Streams bytes [offset, offset + length) of a piece from a peer, stall-guarded. */
  /**
   * The peers' endpoints and this node's token as the spec had them when a blob's assembly began:
   * the controller may rewrite the spec meanwhile (a node finished, a peer was re-planned), and
   * the pieces already assigned keep the sources, endpoints and token they were planned with.
   */
  type Snapshot = { token?: string; endpoints: Map<string, string | undefined> };
  function snapshotFor(pieces: readonly FanoutPiece[]): Snapshot {
    const endpoints = new Map<string, string | undefined>();
    for (const piece of pieces)
      if (piece.source !== FANOUT_CACHE_SOURCE && !endpoints.has(piece.source))
        endpoints.set(piece.source, options.state.endpoint(piece.source));
    return { token: options.state.token(), endpoints };
  }

  async function* fromPeer(
    node: string,
    digest: string,
    offset: number,
    length: number,
    snapshot?: Snapshot,
    /** Throw NotReady at the first 404/503 instead of waiting (the spool tries another piece). */
    once = false,
  ): AsyncIterable<Buffer> {
    const endpoint = snapshot?.endpoints.get(node) ?? options.state.endpoint(node);
    const token = snapshot?.token ?? options.state.token();
    if (!endpoint || !token) {
      throw new PeerUnavailable(node, "Failed", `no ${endpoint ? "peer token" : "endpoint"} for ${node}`);
    }
    const abort = new AbortController();
    let timer: NodeJS.Timeout | undefined;
    const arm = () => {
      clearTimeout(timer);
      timer = setTimeout(() => abort.abort(), stallTimeoutMs);
    };
    const waitUntil = now() + sourceWaitMs;
    try {
      let res: IncomingMessage;
      for (;;) {
        arm();
        try {
          res = await open(
            `${endpoint}${PEER_BLOB_PATH}${digest}`,
            "GET",
            { authorization: `Bearer ${token}`, range: `bytes=${offset}-${offset + length - 1}` },
            abort.signal,
          );
        } catch (err) {
          throw abort.signal.aborted
            ? new PeerUnavailable(node, "Stalled", `no answer within ${stallTimeoutMs} ms`)
            : new PeerUnavailable(node, "Failed", (err as Error).message);
        }
        // The plan is made ahead: a source may not have started, or not got this far, or be
        // serving its other children. It is waited for (as the simulator's nodes wait for theirs)
        // until sourceWaitMs pass without the piece, then treated as stalled.
        if (res.statusCode !== 404 && res.statusCode !== 503) break;
        res.resume();
        if (once) throw new NotReady(node);
        if (now() >= waitUntil) {
          throw new PeerUnavailable(
            node,
            "Stalled",
            `answered ${res.statusCode} to bytes ${offset}-${offset + length - 1} of ${digest} for ${sourceWaitMs} ms`,
          );
        }
        clearTimeout(timer);
        await sleep(SOURCE_POLL_MS);
      }
      if (res.statusCode !== 206) {
        res.resume();
        throw new PeerUnavailable(node, "Failed", `answered ${res.statusCode} to a range of ${digest}`);
      }
      let got = 0;
      try {
        for await (const chunk of res as AsyncIterable<Buffer>) {
          arm();
          got += chunk.length;
          yield chunk;
        }
      } catch (err) {
        throw abort.signal.aborted
          ? new PeerUnavailable(node, "Stalled", `no byte for ${stallTimeoutMs} ms after ${got} of ${length}`)
          : new PeerUnavailable(node, "Failed", (err as Error).message);
      }
      if (got !== length) throw new PeerUnavailable(node, "Failed", `sent ${got} of ${length} bytes`);
    } finally {
      clearTimeout(timer);
      abort.abort();
    }
  }

  async function* fromCache(
    path: string,
    headers: IncomingHttpHeaders,
    offset: number,
    length: number,
  ): AsyncIterable<Buffer> {
    const res = await open(`${cacheUrl()}${path}`, "GET", {
      ...(headers.authorization ? { authorization: headers.authorization } : {}),
      range: `bytes=${offset}-${offset + length - 1}`,
    });
    if (res.statusCode !== 206 && !(res.statusCode === 200 && offset === 0)) {
      res.resume();
      throw new StowageError(
        "CacheUnavailable",
        `the cache answered ${res.statusCode} to a range of ${path}`,
      );
    }
    let got = 0;
    for await (const chunk of res as AsyncIterable<Buffer>) {
      const piece = got + chunk.length > length ? chunk.subarray(0, length - got) : chunk;
      got += piece.length;
      yield piece;
      if (got === length) {
        res.destroy();
        break;
      }
    }
    if (got !== length)
      throw new StowageError("SizeMismatch", `the cache sent ${got} of ${length} bytes of ${path}`);
  }

  /** A peer that failed a transfer: not asked again for this blob, reported in status, logged. */
  function dropPeer(err: PeerUnavailable, digest: string, dropped: Set<string>): void {
    dropped.add(err.node);
    stats.peerFailures.set(err.node, {
      node: err.node,
      reason: err.reason,
      since: new Date(now()).toISOString(),
    });
    log(`mirror: peer ${err.node} ${err.reason} on ${digest}: ${err.message}; the cache serves the rest`);
  }

  async function assemble(
    req: IncomingMessage,
    res: ServerResponse,
    digest: string,
    pieces: readonly FanoutPiece[],
  ): Promise<void> {
    const size = pieces.reduce((total, p) => Math.max(total, p.offset + p.length), 0);
    const ordered = [...pieces].sort((a, b) => a.offset - b.offset);
    let expected = 0;
    for (const p of ordered) {
      if (p.offset !== expected) {
        // The spec does not cover the blob contiguously: not ours to assemble.
        log(`mirror: fan-out pieces of ${digest} are not contiguous at ${expected}; proxying`);
        return proxy(req, res);
      }
      expected += p.length;
    }
    if (options.spoolDir && !spools.has(digest)) return assembleSpooled(req, res, digest, ordered, size);
    const path = req.url ?? "";
    const snapshot = snapshotFor(ordered);
    const algorithm = digest.split(":")[0];
    const hash = createHash(algorithm);
    const dropped = new Set<string>();
    let sent = 0;
    let held: Buffer | undefined;
    // The chunk that completes the blob is held back until the hash is known, so a wrong blob
    // never arrives whole. Only that one: every other byte goes to containerd at once, because
    // this node's peers read its pieces from containerd's ingest, and a piece short of its last
    // chunk until the next piece arrives deadlocked two nodes that fed each other's next piece.
    const emit = async (chunk: Buffer, source: string) => {
      hash.update(chunk);
      sent += chunk.length;
      count(digest, source, chunk.length);
      if (sent === size) held = chunk;
      else await write(res, chunk);
    };
    res.writeHead(200, {
      "content-type": "application/octet-stream",
      "content-length": String(size),
      "docker-content-digest": digest,
    });
    for (const piece of ordered) {
      let done = 0;
      if (piece.source !== FANOUT_CACHE_SOURCE && !dropped.has(piece.source)) {
        try {
          for await (const chunk of fromPeer(piece.source, digest, piece.offset, piece.length, snapshot)) {
            await emit(chunk, piece.source);
            done += chunk.length;
          }
        } catch (err) {
          if (!(err instanceof PeerUnavailable)) throw err;
          dropPeer(err, digest, dropped);
        }
      }
      if (done < piece.length) {
        for await (const chunk of fromCache(path, req.headers, piece.offset + done, piece.length - done)) {
          await emit(chunk, FANOUT_CACHE_SOURCE);
        }
      }
    }
    const got = `${algorithm}:${hash.digest("hex")}`;
    if (sent !== size || got !== digest) {
      throw new StowageError(
        "DigestMismatch",
        `${digest} assembled from its pieces hashes to ${got} (${sent} bytes)`,
      );
    }
    if (held) await write(res, held);
    res.end();
  }

  /** Blobs being spooled, by digest: which pieces the file holds complete. */
  const spools = new Map<
    string,
    { path: string; size: number; pieces: readonly FanoutPiece[]; done: boolean[] }
  >();
  let spoolCount = 0;

  /** One piece into the spool at its offset: from its peer while it answers, the rest from the cache. */
  async function fetchPiece(
    file: FileHandle,
    path: string,
    headers: IncomingHttpHeaders,
    digest: string,
    piece: FanoutPiece,
    dropped: Set<string>,
    snapshot: Snapshot,
    /** The piece's source has been asked this long without having it: past sourceWaitMs, it is Stalled. */
    waitedMs: number,
  ): Promise<"done" | "notReady"> {
    let done = 0;
    const put = async (chunk: Buffer, source: string) => {
      await file.write(chunk, 0, chunk.length, piece.offset + done);
      done += chunk.length;
      count(digest, source, chunk.length);
    };
    if (piece.source !== FANOUT_CACHE_SOURCE && !dropped.has(piece.source)) {
      try {
        if (waitedMs >= sourceWaitMs) {
          throw new PeerUnavailable(
            piece.source,
            "Stalled",
            `did not have bytes ${piece.offset}-${piece.offset + piece.length - 1} of ${digest} for ${sourceWaitMs} ms`,
          );
        }
        for await (const chunk of fromPeer(piece.source, digest, piece.offset, piece.length, snapshot, true))
          await put(chunk, piece.source);
      } catch (err) {
        if (err instanceof NotReady && done === 0) return "notReady";
        if (err instanceof NotReady)
          throw new StowageError("Internal", "a source stopped having a piece mid-way");
        if (!(err instanceof PeerUnavailable)) throw err;
        dropPeer(err, digest, dropped);
      }
    }
    if (done < piece.length) {
      for await (const chunk of fromCache(path, headers, piece.offset + done, piece.length - done))
        await put(chunk, FANOUT_CACHE_SOURCE);
    }
    return "done";
  }

  /**
   * The piece mode on a node: up to SPOOL_FETCHES pieces fetched at once into a spool file, each
   * from its own source, so a piece whose source is behind does not hold up the next ones; the
   * blob goes to containerd in order from the file, hashed as it goes, its last chunk held back
   * until the digest checks out. Peers read every complete piece from the same file meanwhile.
   */
  async function assembleSpooled(
    req: IncomingMessage,
    res: ServerResponse,
    digest: string,
    ordered: readonly FanoutPiece[],
    size: number,
  ): Promise<void> {
    const path = req.url ?? "";
    const file = join(
      options.spoolDir as string,
      `${digest.replace(":", "-")}-${process.pid}-${++spoolCount}.part`,
    );
    const handle = await openFile(file, "w+");
    const entry = { path: file, size, pieces: ordered, done: ordered.map(() => false) };
    const snapshot = snapshotFor(ordered);
    spools.set(digest, entry);
    const dropped = new Set<string>();
    const waiters: (() => void)[] = [];
    const wake = () => {
      for (const waiter of waiters.splice(0)) waiter();
    };
    let failure: unknown;
    // Per piece: not started (with the time its source may be asked again, and when it was first
    // asked), in flight, or done. A worker takes the first piece, in offset order, whose source may
    // be asked now; a source without the piece yet puts it back for SOURCE_POLL_MS and the worker
    // moves on, as the simulator's nodes start only transfers whose source is ready: workers that
    // waited on sources that were behind kept the pieces others needed from this node unfetched,
    // and the waits chained through the tree (bench:fanout, 8 nodes: sources Stalled after 30 s).
    const pending = ordered.map(() => ({ notBefore: 0, firstAsked: undefined as number | undefined }));
    const started = ordered.map(() => false);
    const pick = (): number | "wait" | "none" => {
      let any = false;
      for (let i = 0; i < ordered.length; i++) {
        if (started[i]) continue;
        any = true;
        if (pending[i].notBefore <= now()) return i;
      }
      return any ? "wait" : "none";
    };
    const worker = async () => {
      while (failure === undefined) {
        const index = pick();
        if (index === "none") return;
        if (index === "wait") {
          await sleep(SOURCE_POLL_MS);
          continue;
        }
        started[index] = true;
        const state = pending[index];
        try {
          const waited = state.firstAsked === undefined ? 0 : now() - state.firstAsked;
          const outcome = await fetchPiece(
            handle,
            path,
            req.headers,
            digest,
            ordered[index],
            dropped,
            snapshot,
            waited,
          );
          if (outcome === "notReady") {
            // Only the piece containerd's stream waits on counts toward the source's deadline: later
            // pieces are asked early and often, and their sources may rightly be far from them yet.
            if (entry.done.findIndex((done) => !done) === index) state.firstAsked ??= now();
            state.notBefore = now() + SOURCE_POLL_MS;
            started[index] = false;
            continue;
          }
          entry.done[index] = true;
        } catch (err) {
          failure ??= err;
        }
        wake();
      }
    };
    const workers = Array.from({ length: Math.min(SPOOL_FETCHES, ordered.length) }, worker);
    const algorithm = digest.split(":")[0];
    const hash = createHash(algorithm);
    let sent = 0;
    let held: Buffer | undefined;
    try {
      res.writeHead(200, {
        "content-type": "application/octet-stream",
        "content-length": String(size),
        "docker-content-digest": digest,
      });
      for (const [index, piece] of ordered.entries()) {
        while (!entry.done[index]) {
          if (failure !== undefined) throw failure;
          await new Promise<void>((resolve) => waiters.push(resolve));
        }
        for (let offset = 0; offset < piece.length; ) {
          const buffer = Buffer.allocUnsafe(Math.min(SPOOL_READ_BYTES, piece.length - offset));
          const { bytesRead } = await handle.read(buffer, 0, buffer.length, piece.offset + offset);
          if (bytesRead === 0)
            throw new StowageError("Internal", `spool ${file} ended inside piece ${piece.offset}`);
          const chunk = buffer.subarray(0, bytesRead);
          offset += bytesRead;
          hash.update(chunk);
          sent += bytesRead;
          if (sent === size) held = chunk;
          else await write(res, chunk);
        }
      }
      const got = `${algorithm}:${hash.digest("hex")}`;
      if (got !== digest) {
        throw new StowageError(
          "DigestMismatch",
          `${digest} assembled from its pieces hashes to ${got} (${sent} bytes)`,
        );
      }
      if (held) await write(res, held);
      res.end();
    } finally {
      failure ??= new StowageError("Aborted", "the response ended");
      await Promise.allSettled(workers);
      spools.delete(digest);
      await handle.close().catch(() => {});
      await rm(file, { force: true });
    }
  }

  const partial: PartialBlobs = {
    async get(digest) {
      const entry = spools.get(digest);
      if (!entry) return undefined;
      // Its own handle: the spool's file may be closed and removed while a peer reads (the open
      // descriptor keeps its bytes).
      const reader = await openFile(entry.path, "r").catch(() => undefined);
      if (!reader) return undefined;
      const covers = (start: number, end: number) =>
        entry.pieces.every((p, i) => entry.done[i] || p.offset > end || p.offset + p.length <= start);
      return {
        size: entry.size,
        available: () => {
          let upTo = 0;
          for (const [i, p] of entry.pieces.entries()) {
            if (!entry.done[i]) break;
            upTo = p.offset + p.length;
          }
          return upTo;
        },
        covers,
        async *read(offset: number, length: number) {
          try {
            for (let position = offset; position < offset + length; ) {
              const buffer = Buffer.allocUnsafe(Math.min(SPOOL_READ_BYTES, offset + length - position));
              const { bytesRead } = await reader.read(buffer, 0, buffer.length, position);
              if (bytesRead === 0) return;
              position += bytesRead;
              yield buffer.subarray(0, bytesRead);
            }
          } finally {
            await reader.close().catch(() => {});
          }
        },
        close: () => reader.close().catch(() => {}),
      };
    },
  };

  async function handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const path = (req.url ?? "").split("?")[0];
    const blob = BLOB_PATH.exec(path);
    const assignment = blob ? options.state.assignment(blob[2]) : undefined;
    if (req.method !== "GET" || !blob || !assignment || assignment.pieces.length === 0 || req.headers.range) {
      return proxy(req, res);
    }
    return assemble(req, res, blob[2], assignment.pieces);
  }

  const server: Server = nodeHttp.createServer((req, res) => {
    handle(req, res).catch((err) => {
      log(`mirror: ${req.method} ${req.url}: ${(err as Error).message}`);
      if (!res.headersSent) {
        res.writeHead(502, { "content-type": "text/plain" });
        res.end(`${(err as Error).message}\n`);
      } else res.destroy();
    });
  });
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(options.port, options.host, () => {
      server.off("error", reject);
      resolve();
    });
  });
  const port = (server.address() as AddressInfo).port;
  return {
    url: `http://${options.host.includes(":") ? `[${options.host}]` : options.host}:${port}`,
    port,
    stats,
    partial,
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}
