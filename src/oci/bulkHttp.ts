/**
 * One HTTP/1.1 exchange on a connection of its own, for a whole blob's body: the stream-first
 * GET of a large blob and its monolithic PUT. Everything else goes through undici (transport.ts).
 *
 * Hand-written because of where a blob copy's CPU goes: undici (like node:http) reads each
 * socket chunk into fresh memory, and on two cores that costs more than the hashing. Measured
 * here, a 512 MiB GET from distribution took 0.55-0.7 CPU seconds through undici's request
 * API, 0.45-0.55 through its dispatch API, 0.4 on a bare socket's 'data' events, and 0.13-0.17
 * read into reused buffers (net.Socket's `onread`); no well-kept client reads into caller-owned
 * buffers. So a response body arrives here in 256 KiB buffers from a small pool, and a chunk
 * goes back to the pool only through `recycle()`, called by the one consumer that owns it (an
 * upload whose body is that download's alone, once the socket took the chunk). A chunk nobody
 * recycles is simply collected; nothing else ever writes into a buffer while it is lent.
 *
 * What it speaks: a request with a Content-Length body or none; a response framed by
 * Content-Length, chunked transfer coding or the connection's close; 1xx answers skipped.
 * The connection is closed after the exchange (a whole blob per connection). No proxies:
 * the transport uses this only where none is in the way (none configured, or a host that is
 * never proxied: a one-label name, or one the caller named, such as the cache registry).
 */
import { connect as netConnect, type Socket } from "node:net";
import { connect as tlsConnect } from "node:tls";
import { TransportTimeout } from "./deadlines.ts";

export interface BulkRequest {
  method: "GET" | "PUT";
  url: URL;
  headers: Record<string, string>;
  /** A PUT's body; its Content-Length must be in `headers`. */
  body?: AsyncIterable<unknown> & { destroy?(err?: Error): void; return?(value?: unknown): unknown };
  /** Hand each body chunk to `recycle()` once the socket took it (the body's chunks are this upload's alone). */
  recycleBody?: boolean;
  signal?: AbortSignal;
  /** From the request until the response's head (0: none, for a streamed upload watched by its caller). */
  headersTimeoutMs: number;
  /** A response body that moves no byte for this long fails. */
  stallTimeoutMs: number;
  /** CAs for https (undefined: the system's). */
  ca?: string[];
}

export interface BulkResponse {
  statusCode: number;
  headers: Record<string, string | string[]>;
  body: BulkBody;
}

const CHUNK_BYTES = 256 * 1024;
// Released buffers kept for reuse (8 MiB); more than that go to the collector.
const POOL_MAX = 32;
// A read smaller than this is copied out and its buffer reused at once: over TLS or a slow
// link reads are a few KiB, and lending 256 KiB for each would multiply the memory held.
const SMALL_READ = CHUNK_BYTES / 8;
// Unread bytes of a response body before its socket stops reading (TCP backpressure).
const HIGH_WATER = 1024 * 1024;
const MAX_HEAD_BYTES = 64 * 1024;

const free: Buffer[] = [];
/** Chunk handed out → the pool buffer it is a view of. */
const lent = new WeakMap<Buffer, Buffer>();

function takeBuffer(): Buffer {
  return free.pop() ?? Buffer.allocUnsafeSlow(CHUNK_BYTES);
}

function putBack(buffer: Buffer): void {
  if (free.length < POOL_MAX) free.push(buffer);
}

/**
 * The chunk's buffer may be reused: call only when nothing reads the chunk any more. A chunk
 * that did not come from this module is ignored.
 */
export function recycle(chunk: Buffer): void {
  const buffer = lent.get(chunk);
  if (buffer === undefined) return;
  lent.delete(chunk);
  putBack(buffer);
}

/** Buffers waiting for reuse (tests). */
export function pooledBuffers(): number {
  return free.length;
}

function protocolError(message: string): Error {
  return Object.assign(new Error(message), { code: "HPE_INVALID" });
}

function closedEarly(): Error {
  return Object.assign(new Error("the connection closed before the response's end"), {
    code: "UND_ERR_SOCKET",
  });
}

interface Head {
  statusCode: number;
  headers: Record<string, string | string[]>;
}

function parseHead(text: string): Head {
  const lines = text.split("\r\n");
  const status = /^HTTP\/1\.[01] (\d{3})(?: .*)?$/.exec(lines[0] ?? "");
  if (!status) throw protocolError(`not an HTTP/1.1 status line: ${JSON.stringify(lines[0]?.slice(0, 80))}`);
  const headers: Record<string, string | string[]> = {};
  for (const line of lines.slice(1)) {
    if (line === "") continue;
    const colon = line.indexOf(":");
    if (colon <= 0) throw protocolError(`malformed header line: ${JSON.stringify(line.slice(0, 80))}`);
    const name = line.slice(0, colon).trim().toLowerCase();
    const value = line.slice(colon + 1).trim();
    const existing = headers[name];
    headers[name] = existing === undefined ? value : [existing, value].flat();
  }
  return { statusCode: Number(status[1]), headers };
}

function single(headers: Record<string, string | string[]>, name: string): string | undefined {
  const value = headers[name];
  return Array.isArray(value) ? value[0] : value;
}

/**
 * Body framing: Content-Length, chunked, or to the connection's close. `feed` returns the
 * body's bytes in the piece (views of it) and how much of the piece the body used.
 */
class Framing {
  done = false;
  private remaining: number;
  private readonly chunked: boolean;
  private readonly toClose: boolean;
  // Chunked coding: the line being read (size or trailer), or bytes of chunk data left.
  private state: "size" | "data" | "dataEnd" | "trailer" = "size";
  private line = "";
  private dataLeft = 0;

  constructor(method: string, head: Head) {
    const encoding = single(head.headers, "transfer-encoding")?.toLowerCase();
    const length = single(head.headers, "content-length");
    this.chunked = encoding !== undefined && encoding.split(",").at(-1)?.trim() === "chunked";
    const noBody = head.statusCode === 204 || head.statusCode === 304 || method === "HEAD";
    if (noBody) this.remaining = 0;
    else if (this.chunked) this.remaining = Number.POSITIVE_INFINITY;
    else if (length !== undefined) {
      if (!/^\d+$/.test(length)) throw protocolError(`invalid Content-Length ${JSON.stringify(length)}`);
      this.remaining = Number(length);
    } else this.remaining = Number.POSITIVE_INFINITY;
    this.toClose = !noBody && !this.chunked && length === undefined;
    this.done = this.remaining === 0;
  }

  /** The socket ended: fine only for a body framed by the close. */
  end(): void {
    if (this.done) return;
    if (!this.toClose) throw closedEarly();
    this.done = true;
  }

  feed(piece: Buffer, out: Buffer[]): void {
    if (this.done || piece.length === 0) return;
    if (!this.chunked) {
      const take = Math.min(piece.length, this.remaining);
      out.push(take === piece.length ? piece : piece.subarray(0, take));
      if (!this.toClose) this.remaining -= take;
      if (this.remaining === 0) this.done = true;
      return;
    }
    let at = 0;
    while (at < piece.length && !this.done) {
      if (this.state === "data") {
        const take = Math.min(this.dataLeft, piece.length - at);
        out.push(at === 0 && take === piece.length ? piece : piece.subarray(at, at + take));
        at += take;
        this.dataLeft -= take;
        if (this.dataLeft === 0) this.state = "dataEnd";
        continue;
      }
      const newline = piece.indexOf(10, at);
      const end = newline < 0 ? piece.length : newline + 1;
      this.line += piece.toString("latin1", at, end);
      at = end;
      if (this.line.length > 4096) throw protocolError("chunked body: line too long");
      if (newline < 0) break;
      const line = this.line.replace(/\r?\n$/, "");
      this.line = "";
      if (this.state === "dataEnd") {
        if (line !== "") throw protocolError("chunked body: data longer than its chunk size");
        this.state = "size";
      } else if (this.state === "size") {
        const size = /^([0-9a-fA-F]+)(?:;.*)?$/.exec(line.trim());
        if (!size)
          throw protocolError(`chunked body: invalid chunk size ${JSON.stringify(line.slice(0, 40))}`);
        this.dataLeft = Number.parseInt(size[1], 16);
        this.state = this.dataLeft === 0 ? "trailer" : "data";
      } else if (line === "") this.done = true;
    }
  }
}

/** A response body: async-iterable chunks, with undici's dump(), text() and destroy(). */
export class BulkBody implements AsyncIterable<Buffer> {
  private readonly queue: Buffer[] = [];
  private queued = 0;
  private ended = false;
  private failure: Error | undefined;
  private wake: (() => void) | undefined;
  /** Set by the exchange: read again after the reader caught up; close the connection. */
  resumeSocket: () => void = () => {};
  closeSocket: (err?: Error) => void = () => {};
  private paused = false;

  /** Takes the body's bytes; false when the reader is far enough behind to stop reading. */
  push(pieces: Buffer[]): boolean {
    for (const piece of pieces) {
      this.queue.push(piece);
      this.queued += piece.length;
    }
    this.signal();
    if (this.queued > HIGH_WATER) this.paused = true;
    return !this.paused;
  }

  finish(): void {
    this.ended = true;
    this.signal();
  }

  fail(err: Error): void {
    if (this.ended) return;
    this.failure ??= err;
    this.ended = true;
    this.signal();
  }

  private signal(): void {
    const wake = this.wake;
    this.wake = undefined;
    wake?.();
  }

  async *[Symbol.asyncIterator](): AsyncGenerator<Buffer, void, undefined> {
    try {
      for (;;) {
        const chunk = this.queue.shift();
        if (chunk !== undefined) {
          this.queued -= chunk.length;
          if (this.paused && this.queued <= HIGH_WATER / 2) {
            this.paused = false;
            this.resumeSocket();
          }
          yield chunk;
          continue;
        }
        if (this.failure) throw this.failure;
        if (this.ended) return;
        await new Promise<void>((resolve) => {
          this.wake = resolve;
        });
      }
    } finally {
      // Left early (break, throw) or done: the connection is not reused either way.
      this.closeSocket();
    }
  }

  destroy(err?: Error): void {
    this.fail(
      err ?? Object.assign(new Error("the response body was destroyed"), { code: "UND_ERR_ABORTED" }),
    );
    this.queue.length = 0;
    this.queued = 0;
    this.closeSocket();
  }

  async dump(): Promise<void> {
    this.destroy();
  }

  async text(): Promise<string> {
    const chunks: Buffer[] = [];
    for await (const chunk of this) chunks.push(Buffer.from(chunk));
    return Buffer.concat(chunks).toString("utf8");
  }
}

function requestHead(request: BulkRequest): string {
  const { url } = request;
  const lines = [`${request.method} ${url.pathname}${url.search} HTTP/1.1`, `host: ${url.host}`];
  for (const [name, value] of Object.entries(request.headers)) {
    if (/[\r\n]/.test(name) || /[\r\n]/.test(value)) throw new TypeError(`header ${name} holds a line break`);
    if (name.toLowerCase() === "host" || name.toLowerCase() === "connection") continue;
    lines.push(`${name}: ${value}`);
  }
  lines.push("connection: close");
  return `${lines.join("\r\n")}\r\n\r\n`;
}

function abortError(signal: AbortSignal): Error {
  const reason = signal.reason;
  return reason instanceof Error ? reason : Object.assign(new Error("aborted"), { name: "AbortError" });
}

/** Sends the request; resolves with the response's head once it arrived, its body streaming. */
export function bulkRequest(request: BulkRequest): Promise<BulkResponse> {
  const { url, signal } = request;
  if (signal?.aborted) return Promise.reject(abortError(signal));
  const secure = url.protocol === "https:";
  const port = Number(url.port || (secure ? 443 : 80));
  const host = url.hostname.replace(/^\[|\]$/g, "");

  return new Promise<BulkResponse>((resolve, reject) => {
    const body = new BulkBody();
    let head: Head | undefined;
    let framing: Framing | undefined;
    let headBytes: Buffer[] = [];
    let headLength = 0;
    let settled = false;
    let headTimer: NodeJS.Timeout | undefined;
    let stallTimer: NodeJS.Timeout | undefined;
    // The buffer the next read goes into (net.Socket asks for it after each read).
    let next: Buffer = takeBuffer();

    // A stream is destroyed, a generator returned (its `finally` blocks run, and the sources
    // it iterates are closed in turn).
    const stopBody = (err?: Error) => {
      const source = request.body;
      if (source === undefined) return;
      if (typeof source.destroy === "function") source.destroy(err);
      else void Promise.resolve(source.return?.()).catch(() => {});
    };
    const fail = (err: Error) => {
      clearTimeout(headTimer);
      clearTimeout(stallTimer);
      signal?.removeEventListener("abort", onAbort);
      stopBody(err);
      if (!settled) {
        settled = true;
        reject(err);
      } else body.fail(err);
      socket.destroy();
    };
    const onAbort = () => fail(abortError(signal as AbortSignal));
    const armStall = () => {
      clearTimeout(stallTimer);
      stallTimer = setTimeout(
        () =>
          fail(
            new TransportTimeout(
              `stalled: no byte of the response arrived within ${request.stallTimeoutMs / 1000}s (--stall-timeout)`,
              request.stallTimeoutMs,
            ),
          ),
        request.stallTimeoutMs,
      );
      stallTimer.unref();
    };
    const complete = () => {
      clearTimeout(stallTimer);
      signal?.removeEventListener("abort", onAbort);
      body.finish();
      socket.destroy();
    };

    // The body's bytes in one read of `buffer`: lent out as views of it (until recycled), or
    // for a small read copied, and `buffer` read into again. Returns false to stop reading.
    const deliver = (bytes: Buffer, buffer: Buffer, copy: boolean): boolean => {
      const pieces: Buffer[] = [];
      (framing as Framing).feed(bytes, pieces);
      if (copy || pieces.length === 0) {
        next = buffer;
        for (let i = 0; i < pieces.length; i++) pieces[i] = Buffer.from(pieces[i]);
      } else {
        next = takeBuffer();
        // Only one view per buffer may recycle it: the last (a read is split only where a
        // chunked body's chunk ends, rare for a blob).
        lent.set(pieces[pieces.length - 1], buffer);
      }
      const more = pieces.length > 0 ? body.push(pieces) : true;
      if ((framing as Framing).done) complete();
      // Reading stops for a slow reader: the stall timer judges the server, not the reader.
      else if (!more) clearTimeout(stallTimer);
      return more;
    };

    const onRead = (n: number, buffer: Buffer): boolean => {
      next = buffer;
      if (head !== undefined) {
        armStall();
        try {
          return deliver(buffer.subarray(0, n), buffer, n < SMALL_READ);
        } catch (err) {
          fail(err as Error);
          return false;
        }
      }
      headBytes.push(Buffer.from(buffer.subarray(0, n)));
      headLength += n;
      let joined = Buffer.concat(headBytes);
      let end = joined.indexOf("\r\n\r\n");
      try {
        while (end >= 0 && head === undefined) {
          const parsed = parseHead(joined.toString("latin1", 0, end));
          joined = joined.subarray(end + 4);
          // 100 Continue and friends: the real answer follows.
          if (parsed.statusCode >= 200) head = parsed;
          else end = joined.indexOf("\r\n\r\n");
        }
        if (head === undefined) {
          headBytes = [joined];
          headLength = joined.length;
          if (headLength > MAX_HEAD_BYTES) fail(protocolError("response head larger than 64 KiB"));
          return true;
        }
        headBytes = [];
        clearTimeout(headTimer);
        framing = new Framing(request.method, head);
      } catch (err) {
        fail(err as Error);
        return false;
      }
      settled = true;
      resolve({ statusCode: head.statusCode, headers: head.headers, body });
      // An answer before the upload's end (an error): stop sending.
      if (!uploaded) stopBody();
      if (framing.done) {
        complete();
        return false;
      }
      armStall();
      // What came with the head is a copy already.
      try {
        return deliver(joined, buffer, true);
      } catch (err) {
        fail(err as Error);
        return false;
      }
    };

    const options = {
      host,
      port,
      onread: {
        buffer: () => next,
        callback: (n: number, buffer: Uint8Array) => onRead(n, buffer as Buffer),
      },
    };
    const socket: Socket = secure
      ? tlsConnect({
          ...options,
          servername: /^[\d.]+$|:/.test(host) ? undefined : host,
          ca: request.ca,
          ALPNProtocols: ["http/1.1"],
        })
      : netConnect(options);
    socket.setNoDelay(true);
    body.resumeSocket = () => {
      armStall();
      socket.resume();
    };
    body.closeSocket = () => {
      clearTimeout(stallTimer);
      socket.destroy();
    };
    socket.on("error", (err) => fail(err));
    socket.on("end", () => {
      if (!framing) return fail(closedEarly());
      try {
        framing.end();
        complete();
      } catch (err) {
        fail(err as Error);
      }
    });
    socket.on("close", () => {
      if (!settled) fail(closedEarly());
      else if (framing && !framing.done) body.fail(closedEarly());
    });
    signal?.addEventListener("abort", onAbort, { once: true });
    if (request.headersTimeoutMs > 0) {
      headTimer = setTimeout(
        () =>
          fail(
            Object.assign(new Error("no response headers within the request timeout"), {
              code: "UND_ERR_HEADERS_TIMEOUT",
            }),
          ),
        request.headersTimeoutMs,
      );
      headTimer.unref();
    }

    let uploaded = request.body === undefined;
    const connectedEvent = secure ? "secureConnect" : "connect";
    socket.once(connectedEvent, () => {
      try {
        socket.write(requestHead(request));
      } catch (err) {
        fail(err as Error);
        return;
      }
      if (request.body) void upload(request.body);
    });

    const upload = async (source: AsyncIterable<unknown>) => {
      try {
        for await (const item of source) {
          if (head !== undefined || socket.destroyed) return;
          const chunk = item as Buffer;
          const written = socket.write(
            chunk,
            request.recycleBody ? (err) => (err ? undefined : recycle(chunk)) : undefined,
          );
          if (!written) {
            await new Promise<void>((resolve) => {
              const done = () => {
                socket.off("drain", done);
                socket.off("close", done);
                resolve();
              };
              socket.on("drain", done);
              socket.on("close", done);
            });
          }
        }
        uploaded = true;
      } catch (err) {
        // The body's own failure (the source, or its watchdog) ends the exchange.
        if (head === undefined) fail(err as Error);
      }
    };
  });
}
