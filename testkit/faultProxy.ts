/**
 * A plain-HTTP proxy on 127.0.0.1 in front of a registry that injects faults into chosen
 * responses: dropped connections, flipped bytes, delays and canned error statuses.
 */
import {
  createServer,
  request as httpRequest,
  type IncomingMessage,
  type OutgoingHttpHeaders,
} from "node:http";
import { request as httpsRequest } from "node:https";
import type { AddressInfo, Socket } from "node:net";

export interface FaultRule {
  match?: { method?: string; path?: RegExp };
  times?: number;
  action:
    | { kind: "flipByte"; offset: number }
    /**
     * Cut the connection once `bytes` of the body went out. `unframed` forwards the body without
     * its Content-Length (chunked), so a cut at the very end still leaves the client without
     * the body's end marker: every byte arrived, yet the read fails.
     */
    | { kind: "dropAfterBytes"; bytes: number; unframed?: boolean }
    | { kind: "delay"; ms: number }
    /** Forward once `until` settles: a test holds an answer until it saw what must come first. */
    | { kind: "hold"; until: Promise<unknown> }
    /** Forward without the Range header, as a server that does not support ranges would answer. */
    | { kind: "ignoreRange" }
    /** Answer 307 to the same path on another origin (object storage, a CDN). */
    | { kind: "redirect"; to: string }
    | {
        kind: "status";
        status: number;
        retryAfterSeconds?: number;
        body?: string;
        /** More response headers (a 401's WWW-Authenticate). */
        headers?: Record<string, string>;
      }
    /**
     * A WAN link: the response body goes out at most `bytesPerSecond` on each client connection
     * (a token bucket per socket, so parallel connections each get the rate, as a registry's
     * per-connection limit gives them), after `latencyMs` added before the request is forwarded.
     * Give it `times: Infinity` and no `match` to throttle everything.
     */
    | { kind: "throttle"; bytesPerSecond: number; latencyMs: number }
    /** Forward the request body, then cut both connections once `bytes` of it went through (a cache killed mid-upload). */
    | { kind: "resetAfterRequestBytes"; bytes: number };
}

export interface SeenRequest {
  method: string;
  /** Path with query string, as the client sent it. */
  path: string;
  status: number;
  range?: string;
  /** Whether the request carried an Authorization header. */
  authorized: boolean;
  /** Whether the client asked for the connection to close after this exchange (Connection: close). */
  closes: boolean;
  /** The fault applied to this request, if any. */
  fault?: FaultRule["action"]["kind"];
}

export interface FaultProxy {
  host: string;
  url: string;
  addRule(rule: FaultRule): void;
  clearRules(): void;
  seen(): SeenRequest[];
  stop(): Promise<void>;
}

interface ActiveRule {
  rule: FaultRule;
  remaining: number;
}

export interface FaultProxyOptions {
  /** CA to trust when the target is HTTPS. */
  caPem?: string;
  /** Hand Location headers back as paths ("/v2/..."), as some registries do. */
  relativeLocations?: boolean;
}

export async function startFaultProxy(target: string, options: FaultProxyOptions = {}): Promise<FaultProxy> {
  const targetUrl = new URL(target);
  const targetOrigin = targetUrl.origin;
  const requestFn = targetUrl.protocol === "https:" ? httpsRequest : httpRequest;
  let rules: ActiveRule[] = [];
  const seenRequests: SeenRequest[] = [];
  const sockets = new Set<Socket>();
  /** When each throttled connection may send its next byte (ms, performance.now()). */
  const linkFreeAt = new WeakMap<Socket, number>();
  let proxyOrigin = "";

  const takeRule = (req: IncomingMessage): FaultRule | undefined => {
    const path = req.url ?? "/";
    for (const active of rules) {
      if (active.remaining <= 0) continue;
      const { match } = active.rule;
      if (match?.method && match.method.toUpperCase() !== req.method) continue;
      if (match?.path && !match.path.test(path)) continue;
      active.remaining--;
      return active.rule;
    }
    return undefined;
  };

  const server = createServer((req, res) => {
    const rule = takeRule(req);
    const record: SeenRequest = {
      method: req.method ?? "GET",
      path: req.url ?? "/",
      status: 0,
      range: typeof req.headers.range === "string" ? req.headers.range : undefined,
      authorized: req.headers.authorization !== undefined,
      closes: /\bclose\b/i.test(req.headers.connection ?? ""),
      fault: rule?.action.kind,
    };
    seenRequests.push(record);
    const action = rule?.action;

    if (action?.kind === "status") {
      req.resume();
      const headers: OutgoingHttpHeaders = { "content-type": "application/json" };
      if (action.retryAfterSeconds !== undefined) headers["retry-after"] = String(action.retryAfterSeconds);
      Object.assign(headers, action.headers);
      const body =
        action.body ??
        JSON.stringify({
          errors: [{ code: "FAULT", message: `injected status ${action.status}`, detail: null }],
        });
      headers["content-length"] = String(Buffer.byteLength(body));
      record.status = action.status;
      res.writeHead(action.status, headers);
      res.end(body);
      return;
    }

    if (action?.kind === "redirect") {
      req.resume();
      record.status = 307;
      res.writeHead(307, {
        location: `${action.to.replace(/\/$/, "")}${req.url ?? "/"}`,
        "content-length": "0",
      });
      res.end();
      return;
    }

    const forward = () => {
      const headers: OutgoingHttpHeaders = { ...req.headers, host: targetUrl.host };
      delete headers.connection;
      if (action?.kind === "ignoreRange") delete headers.range;
      const upstream = requestFn(
        `${targetOrigin}${req.url ?? "/"}`,
        { method: req.method, headers, ca: options.caPem, agent: false },
        (upstreamRes) => {
          const responseHeaders: OutgoingHttpHeaders = { ...upstreamRes.headers };
          const location = upstreamRes.headers.location;
          if (location?.startsWith(targetOrigin)) {
            const path = location.slice(targetOrigin.length);
            responseHeaders.location = options.relativeLocations ? path : proxyOrigin + path;
          }
          delete responseHeaders.connection;
          if (action?.kind === "dropAfterBytes" && action.unframed) delete responseHeaders["content-length"];
          const status = upstreamRes.statusCode ?? 502;
          record.status = status;
          res.writeHead(status, responseHeaders);
          let sent = 0;
          // A throttled chunk waits on a timer; the body ends only after the last one went out.
          let throttledPending = 0;
          let endWhenSent = false;
          // Once cut, the body never ends cleanly (an upstream end already queued must not close it).
          let cut = false;
          upstreamRes.on("data", (chunk: Buffer) => {
            let out = chunk;
            if (action?.kind === "flipByte" && action.offset >= sent && action.offset < sent + chunk.length) {
              out = Buffer.from(chunk);
              out[action.offset - sent] ^= 0xff;
            }
            if (action?.kind === "dropAfterBytes" && sent + out.length >= action.bytes) {
              const keep = action.bytes - sent;
              sent += keep;
              cut = true;
              upstreamRes.destroy();
              // Flush what the rule lets through, then cut the connection without a clean end.
              res.write(out.subarray(0, keep), () => res.socket?.destroy());
              return;
            }
            sent += out.length;
            if (action?.kind === "throttle") {
              // Pace the body on this connection: hold the upstream until the bucket allows the chunk.
              const now = performance.now();
              const socket = req.socket;
              const start = Math.max(now, linkFreeAt.get(socket) ?? now);
              const freeAt = start + (out.length / action.bytesPerSecond) * 1000;
              linkFreeAt.set(socket, freeAt);
              upstreamRes.pause();
              throttledPending++;
              setTimeout(() => {
                throttledPending--;
                const flushed = res.write(out);
                if (endWhenSent && throttledPending === 0) res.end();
                else if (flushed) upstreamRes.resume();
                else res.once("drain", () => upstreamRes.resume());
              }, freeAt - now);
              return;
            }
            if (!res.write(out)) {
              upstreamRes.pause();
              res.once("drain", () => upstreamRes.resume());
            }
          });
          // A throttled body's last chunk may still be waiting for its turn: end after it.
          // (Timers of equal expiry can fire in either order once Node rounds their delays, so the
          // end waits for the pending chunk itself rather than for a timer of its own.)
          upstreamRes.on("end", () => {
            if (cut) return;
            if (throttledPending > 0) endWhenSent = true;
            else res.end();
          });
          upstreamRes.on("error", () => res.socket?.destroy());
        },
      );
      upstream.on("error", () => {
        if (!res.headersSent) {
          record.status = 502;
          res.writeHead(502);
          res.end();
        } else {
          res.socket?.destroy();
        }
      });
      if (action?.kind === "resetAfterRequestBytes") {
        let received = 0;
        req.on("data", (chunk: Buffer) => {
          received += chunk.length;
          if (received < action.bytes) return;
          record.status = -1;
          upstream.destroy();
          req.socket.destroy();
        });
      }
      req.pipe(upstream);
      req.on("error", () => upstream.destroy());
    };

    if (action?.kind === "delay") setTimeout(forward, action.ms);
    else if (action?.kind === "hold") action.until.then(forward, forward);
    else if (action?.kind === "throttle" && action.latencyMs > 0) setTimeout(forward, action.latencyMs);
    else forward();
  });
  server.on("connection", (socket) => {
    sockets.add(socket);
    socket.on("close", () => sockets.delete(socket));
  });

  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as AddressInfo;
  const host = `127.0.0.1:${port}`;
  proxyOrigin = `http://${host}`;

  return {
    host,
    url: proxyOrigin,
    addRule(rule) {
      rules.push({ rule, remaining: rule.times ?? 1 });
    },
    clearRules() {
      rules = [];
    },
    seen: () => seenRequests.map((record) => ({ ...record })),
    stop: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        for (const socket of sockets) socket.destroy();
      }),
  };
}
