/**
 * The agent's peer endpoint (issue 15, docs/fanout.md): read-only HTTP that serves blobs this node
 * holds to the nodes a fan-out plan assigns to it.
 *
 *   GET|HEAD /fanout/v1/blobs/<digest>   (optional `Range: bytes=a-b` or `bytes=a-`)
 *   Authorization: Bearer <stwp1 peer token naming that digest>
 *
 * Complete blobs come from containerd's content store (content.ts); a blob the agent's mirror is
 * still fetching comes from its spool (`PartialBlobs`), for the bytes spooled so far. No token, a
 * bad one → 401; a valid token not naming the digest → 403; no bytes either way. At most
 * `maxConcurrent` responses at once and `bytesPerSecond` over all of them; a request beyond the
 * concurrency cap gets 503 with Retry-After, so the receiver falls back or retries. A response
 * covering a whole blob is hashed as it goes; on a mismatch the connection is cut before the last
 * byte, so the receiver never holds a complete but wrong blob.
 *
 * node:http rather than a framework: two routes, and the agent must stay small (its memory is budgeted).
 */
import { createHash } from "node:crypto";
import type { IncomingMessage, Server, ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import { StowageError } from "../../util/errors.ts";
import { nodeHttp } from "../../util/nodeHttp.ts";
import type { BlobStore } from "./content.ts";
import { verifyPeerToken } from "./token.ts";

export const PEER_BLOB_PATH = "/fanout/v1/blobs/";
const DIGEST = /^(sha256:[a-f0-9]{64}|sha512:[a-f0-9]{128})$/;

/** A blob the agent's mirror is still fetching: bytes [0, available) are in its spool. */
export interface PartialBlob {
  size: number;
  available(): number;
  read(offset: number, length: number): AsyncIterable<Buffer>;
  /** Whether bytes [start, end] are all held (a spool filled out of order); default: end < available(). */
  covers?(start: number, end: number): boolean;
  /** Frees what get() opened when nothing is read (a refusal, a HEAD); read() frees it itself. */
  close?(): Promise<void>;
}

export interface PartialBlobs {
  get(digest: string): PartialBlob | undefined | Promise<PartialBlob | undefined>;
}

export interface PeerServerOptions {
  store: BlobStore;
  partial?: PartialBlobs;
  /** The fan-out secret peer tokens are signed with. */
  secret: Buffer;
  host: string;
  /** 0 picks a free port. */
  port: number;
  /** Responses served at once (default 3). */
  maxConcurrent?: number;
  /** Serving rate over all responses; undefined or 0 = unlimited. */
  bytesPerSecond?: number;
  /** Injected clock (ms) and sleep, for the token expiry and the rate cap. */
  now?: () => number;
  sleep?: (ms: number) => Promise<void>;
  log?: (message: string) => void;
}

export interface PeerServerStats {
  /** Body bytes written, by digest. */
  bytesServed: Map<string, number>;
  refused: { unauthorized: number; forbidden: number; busy: number };
}

export interface PeerServer {
  url: string;
  port: number;
  stats: PeerServerStats;
  close(): Promise<void>;
}

/**
 * Paces writes to a rate: each chunk waits until the bytes before it would have left at that rate.
 * Hand-written (a few lines) rather than a token-bucket package: it shares one schedule across all
 * responses and takes the injected clock.
 */
class Pacer {
  #next = 0;
  readonly #bytesPerSecond: number;
  readonly #now: () => number;
  readonly #sleep: (ms: number) => Promise<void>;

  constructor(bytesPerSecond: number, now: () => number, sleep: (ms: number) => Promise<void>) {
    this.#bytesPerSecond = bytesPerSecond;
    this.#now = now;
    this.#sleep = sleep;
  }

  async take(bytes: number): Promise<void> {
    const now = this.#now();
    const start = Math.max(now, this.#next);
    this.#next = start + (bytes * 1000) / this.#bytesPerSecond;
    if (start > now) await this.#sleep(start - now);
  }
}

type ByteRange = { start: number; end: number };

/** The single range asked for, `undefined` for the whole blob, or a reason it cannot be served. */
function parseRange(header: string | undefined, size: number): ByteRange | undefined | string {
  if (header === undefined) return undefined;
  const m = /^bytes=(\d+)-(\d*)$/.exec(header.trim());
  if (!m) return `only one range of the form bytes=<first>-[<last>] is served, got ${JSON.stringify(header)}`;
  const start = Number(m[1]);
  const end = m[2] === "" ? size - 1 : Math.min(Number(m[2]), size - 1);
  if (start >= size || end < start) return `range ${header} is outside the blob's ${size} bytes`;
  return { start, end };
}

function refuse(
  res: ServerResponse,
  status: number,
  reason: string,
  headers: Record<string, string> = {},
): void {
  const body = `${JSON.stringify({ reason })}\n`;
  res.writeHead(status, {
    "content-type": "application/json",
    "content-length": Buffer.byteLength(body),
    ...headers,
  });
  res.end(body);
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
      reject(new StowageError("Aborted", "the receiver closed the connection"));
    };
    res.once("drain", onDrain);
    res.once("close", onClose);
  });
}

export async function startPeerServer(options: PeerServerOptions): Promise<PeerServer> {
  const maxConcurrent = options.maxConcurrent ?? 3;
  if (!Number.isInteger(maxConcurrent) || maxConcurrent < 1) {
    throw new StowageError(
      "InvalidArgument",
      `peer serving concurrency must be a positive integer, got ${maxConcurrent}`,
    );
  }
  const rate = options.bytesPerSecond ?? 0;
  if (!Number.isFinite(rate) || rate < 0) {
    throw new StowageError(
      "InvalidArgument",
      `peer serving rate must be a non-negative number of bytes/s, got ${rate}`,
    );
  }
  const now = options.now ?? Date.now;
  const sleep = options.sleep ?? ((ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms)));
  const pacer = rate > 0 ? new Pacer(rate, now, sleep) : undefined;
  const log = options.log ?? (() => {});
  const stats: PeerServerStats = {
    bytesServed: new Map(),
    refused: { unauthorized: 0, forbidden: 0, busy: 0 },
  };
  let active = 0;

  async function serve(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const path = (req.url ?? "").split("?")[0];
    if (!path.startsWith(PEER_BLOB_PATH)) return refuse(res, 404, "NotFound");
    if (req.method !== "GET" && req.method !== "HEAD")
      return refuse(res, 405, "MethodNotAllowed", { allow: "GET, HEAD" });
    const digest = decodeURIComponent(path.slice(PEER_BLOB_PATH.length));
    if (!DIGEST.test(digest)) return refuse(res, 400, "InvalidDigest");

    const auth = req.headers.authorization ?? "";
    const token = auth.startsWith("Bearer ") ? auth.slice(7).trim() : "";
    let receiver: string;
    try {
      if (!token) throw new StowageError("AuthFailed", "no Bearer peer token");
      const claims = verifyPeerToken(options.secret, token, now());
      receiver = claims.receiver;
      if (!claims.digests.includes(digest)) {
        stats.refused.forbidden++;
        log(`peer: refused ${digest} to ${receiver}: the token does not name it`);
        return refuse(res, 403, "DigestNotInToken");
      }
    } catch (err) {
      stats.refused.unauthorized++;
      log(`peer: refused ${digest}: ${(err as Error).message}`);
      return refuse(res, 401, "AuthFailed", { "www-authenticate": 'Bearer realm="stowage-fanout"' });
    }

    if (active >= maxConcurrent) {
      stats.refused.busy++;
      return refuse(res, 503, "Busy", { "retry-after": "1" });
    }
    active++;
    try {
      await serveBlob(req, res, digest, receiver);
    } finally {
      active--;
    }
  }

  async function serveBlob(
    req: IncomingMessage,
    res: ServerResponse,
    digest: string,
    receiver: string,
  ): Promise<void> {
    let size = await options.store.size(digest);
    let reader: (offset: number, length: number) => AsyncIterable<Buffer>;
    let limit: number;
    let partial: PartialBlob | undefined;
    if (size !== undefined) {
      reader = (offset, length) => options.store.read(digest, offset, length);
      limit = size;
    } else {
      partial = await options.partial?.get(digest);
      if (!partial) return refuse(res, 404, "BlobNotHeld");
      const held = partial;
      size = held.size;
      limit = held.available();
      reader = (offset, length) => held.read(offset, length);
    }
    const range = parseRange(req.headers.range, size);
    if (typeof range === "string") {
      await partial?.close?.();
      return refuse(res, 416, "RangeNotSatisfiable", { "content-range": `bytes */${size}` });
    }
    const start = range?.start ?? 0;
    const end = range?.end ?? size - 1;
    if (partial?.covers ? !partial.covers(start, end) : end >= limit) {
      // Still being fetched and not that far yet: the receiver waits and asks again.
      await partial?.close?.();
      return refuse(res, 503, "NotYetSpooled", { "retry-after": "1" });
    }
    if (req.method === "HEAD") await partial?.close?.();
    const length = end - start + 1;
    const whole = start === 0 && end === size - 1;
    res.writeHead(range ? 206 : 200, {
      "content-type": "application/octet-stream",
      "content-length": String(length),
      "docker-content-digest": digest,
      "accept-ranges": "bytes",
      ...(range ? { "content-range": `bytes ${start}-${end}/${size}` } : {}),
    });
    if (req.method === "HEAD") return void res.end();

    const hash = whole ? createHash(digest.split(":")[0]) : undefined;
    let sent = 0;
    try {
      for await (const chunk of reader(start, length)) {
        const piece = sent + chunk.length > length ? chunk.subarray(0, length - sent) : chunk;
        const last = sent + piece.length === length;
        hash?.update(piece);
        if (last && hash && `${digest.split(":")[0]}:${hash.digest("hex")}` !== digest) {
          throw new StowageError("DigestMismatch", `${digest} as read does not hash to its digest`);
        }
        await pacer?.take(piece.length);
        await write(res, piece);
        sent += piece.length;
        stats.bytesServed.set(digest, (stats.bytesServed.get(digest) ?? 0) + piece.length);
        if (last) break;
      }
      if (sent !== length)
        throw new StowageError("SizeMismatch", `${digest}: read ${sent} of ${length} bytes`);
      res.end();
    } catch (err) {
      log(`peer: serving ${digest} to ${receiver} stopped after ${sent} bytes: ${(err as Error).message}`);
      res.destroy();
    }
  }

  const server: Server = nodeHttp.createServer((req, res) => {
    serve(req, res).catch((err) => {
      log(`peer: ${(err as Error).message}`);
      if (!res.headersSent) refuse(res, 500, err instanceof StowageError ? err.reason : "Internal");
      else res.destroy();
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
  const hostPart = options.host.includes(":") ? `[${options.host}]` : options.host;
  return {
    url: `http://${hostPart}:${port}`,
    port,
    stats,
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}
