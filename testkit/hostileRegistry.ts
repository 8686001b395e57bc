/**
 * A registry on 127.0.0.1 that misbehaves on request, for the hostile suite (test/hostile).
 * It serves the OCI distribution read API (manifests, blobs, Range, HEAD, optional Basic auth)
 * from memory, correctly until a rule says otherwise: hang without answering, stall a body
 * half-way, redirect anywhere (another origin, 169.254.169.254, file:, itself in a loop),
 * send oversized or malformed manifests, answer bursts of 429/503 with Retry-After, or echo
 * bodies full of HTML and control characters. It records every request (with whether it
 * carried Authorization) and the bytes it wrote, so tests can assert what a client did.
 * A real registry cannot be made to do these things; the protocol parts follow the spec.
 */
import { createHash } from "node:crypto";
import { createServer, type IncomingMessage, type ServerResponse } from "node:http";
import type { AddressInfo, Socket } from "node:net";
import type { RawManifest } from "../src/oci/types.ts";

export type HostileAction =
  /** Accept the request and never answer (the connection stays open). */
  | { kind: "hang" }
  /** Send the headers and `afterBytes` of the body, then go silent. */
  | { kind: "stallBody"; afterBytes: number }
  /** Answer with a 3xx to `location` (absolute, or relative to this registry). */
  | { kind: "redirect"; location: string; status?: number }
  /** Answer `status` with this body (default an OCI error) and Retry-After when given. */
  | {
      kind: "status";
      status: number;
      retryAfter?: string;
      body?: string | Buffer;
      contentType?: string;
      headers?: Record<string, string>;
    }
  /** Answer 200 with this body as a manifest (any bytes, any content type). */
  | { kind: "manifestBody"; body: Buffer; contentType?: string; declareLength?: boolean };

export interface HostileRule {
  match?: { method?: string; path?: RegExp };
  /** How many requests the rule applies to (default 1; Infinity for all). */
  times?: number;
  action: HostileAction;
}

export interface HostileRequest {
  method: string;
  path: string;
  authorized: boolean;
  action?: HostileAction["kind"];
}

export interface HostileRegistry {
  host: string;
  url: string;
  /** Stores an image's manifest (under its digest and `tag`) and blobs. */
  put(repository: string, tag: string, manifest: RawManifest, blobs: Buffer[]): void;
  addRule(rule: HostileRule): void;
  clearRules(): void;
  seen(): HostileRequest[];
  /** Body bytes written to clients so far. */
  bytesSent(): number;
  stop(): Promise<void>;
}

export interface HostileOptions {
  /** Require HTTP Basic credentials (a 401 challenge without them). */
  basicAuth?: { username: string; password: string };
}

function sha256(bytes: Buffer): string {
  return `sha256:${createHash("sha256").update(bytes).digest("hex")}`;
}

export async function startHostileRegistry(options: HostileOptions = {}): Promise<HostileRegistry> {
  const manifests = new Map<string, RawManifest>();
  const blobs = new Map<string, Buffer>();
  let rules: { rule: HostileRule; remaining: number }[] = [];
  const requests: HostileRequest[] = [];
  const sockets = new Set<Socket>();
  let sent = 0;
  const expectedAuth = options.basicAuth
    ? `Basic ${Buffer.from(`${options.basicAuth.username}:${options.basicAuth.password}`).toString("base64")}`
    : undefined;

  const takeRule = (req: IncomingMessage): HostileRule | undefined => {
    for (const active of rules) {
      if (active.remaining <= 0) continue;
      const { match } = active.rule;
      if (match?.method && match.method.toUpperCase() !== req.method) continue;
      if (match?.path && !match.path.test(req.url ?? "/")) continue;
      active.remaining--;
      return active.rule;
    }
    return undefined;
  };

  const write = (res: ServerResponse, body: Buffer) => {
    sent += body.length;
    res.end(body);
  };

  const ociError = (res: ServerResponse, status: number, code: string, message: string) => {
    const body = Buffer.from(JSON.stringify({ errors: [{ code, message }] }));
    res.writeHead(status, { "content-type": "application/json", "content-length": body.length });
    write(res, body);
  };

  const serveBytes = (
    req: IncomingMessage,
    res: ServerResponse,
    bytes: Buffer,
    headers: Record<string, string>,
    stallAfter?: number,
  ) => {
    let body = bytes;
    let status = 200;
    const range = /^bytes=(\d+)-(\d*)$/.exec(req.headers.range ?? "");
    if (range && headers["docker-content-digest"]?.startsWith("sha256:") && !headers["content-type"]) {
      const start = Number(range[1]);
      const end = range[2] ? Math.min(Number(range[2]), bytes.length - 1) : bytes.length - 1;
      if (start >= bytes.length) {
        res.writeHead(416, { "content-range": `bytes */${bytes.length}` });
        res.end();
        return;
      }
      body = bytes.subarray(start, end + 1);
      status = 206;
      headers["content-range"] = `bytes ${start}-${end}/${bytes.length}`;
    }
    res.writeHead(status, { ...headers, "content-length": String(body.length), "accept-ranges": "bytes" });
    if (req.method === "HEAD") {
      res.end();
      return;
    }
    if (stallAfter !== undefined) {
      const part = body.subarray(0, Math.min(stallAfter, body.length));
      sent += part.length;
      res.write(part);
      return; // never ends: the client's stall timeout must notice
    }
    write(res, body);
  };

  const server = createServer((req, res) => {
    const rule = takeRule(req);
    const path = (req.url ?? "/").split("?")[0];
    requests.push({
      method: req.method ?? "GET",
      path: req.url ?? "/",
      authorized: req.headers.authorization !== undefined,
      action: rule?.action.kind,
    });
    req.resume();
    const action = rule?.action;
    if (action?.kind === "hang") return;
    if (action?.kind === "redirect") {
      res.writeHead(action.status ?? 307, { location: action.location, "content-length": "0" });
      res.end();
      return;
    }
    if (action?.kind === "status") {
      const body =
        action.body === undefined
          ? Buffer.from(
              JSON.stringify({ errors: [{ code: "UNAVAILABLE", message: `status ${action.status}` }] }),
            )
          : Buffer.from(action.body);
      const headers: Record<string, string> = {
        ...action.headers,
        "content-type": action.contentType ?? "application/json",
        "content-length": String(body.length),
      };
      if (action.retryAfter !== undefined) headers["retry-after"] = action.retryAfter;
      res.writeHead(action.status, headers);
      if (req.method === "HEAD") res.end();
      else write(res, body);
      return;
    }
    if (expectedAuth && req.headers.authorization !== expectedAuth) {
      res.setHeader("www-authenticate", 'Basic realm="hostile"');
      ociError(res, 401, "UNAUTHORIZED", "authentication required");
      return;
    }
    if (path === "/v2/" || path === "/v2") {
      res.writeHead(200, { "content-type": "application/json", "content-length": "2" });
      write(res, Buffer.from("{}"));
      return;
    }
    const manifest = /^\/v2\/(.+)\/manifests\/([^/]+)$/.exec(path);
    if (manifest) {
      if (action?.kind === "manifestBody") {
        const headers: Record<string, string> = {
          "content-type": action.contentType ?? "application/vnd.oci.image.manifest.v1+json",
        };
        if (action.declareLength !== false) headers["content-length"] = String(action.body.length);
        res.writeHead(200, headers);
        if (req.method === "HEAD") res.end();
        else write(res, action.body);
        return;
      }
      const found = manifests.get(`${manifest[1]}@${manifest[2]}`);
      if (!found) return ociError(res, 404, "MANIFEST_UNKNOWN", "manifest unknown");
      serveBytes(
        req,
        res,
        found.bytes,
        { "content-type": found.mediaType, "docker-content-digest": found.digest },
        action?.kind === "stallBody" ? action.afterBytes : undefined,
      );
      return;
    }
    const blob = /^\/v2\/(.+)\/blobs\/(sha256:[a-f0-9]{64})$/.exec(path);
    if (blob) {
      const bytes = blobs.get(`${blob[1]}@${blob[2]}`);
      if (!bytes) return ociError(res, 404, "BLOB_UNKNOWN", "blob unknown");
      serveBytes(
        req,
        res,
        bytes,
        { "docker-content-digest": blob[2] },
        action?.kind === "stallBody" ? action.afterBytes : undefined,
      );
      return;
    }
    ociError(res, 404, "NAME_UNKNOWN", "not found");
  });
  server.on("connection", (socket) => {
    sockets.add(socket);
    socket.on("close", () => sockets.delete(socket));
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as AddressInfo;
  const host = `127.0.0.1:${port}`;

  return {
    host,
    url: `http://${host}`,
    put(repository, tag, manifest, contents) {
      manifests.set(`${repository}@${tag}`, manifest);
      manifests.set(`${repository}@${manifest.digest}`, manifest);
      for (const bytes of contents) blobs.set(`${repository}@${sha256(bytes)}`, bytes);
    },
    addRule(rule) {
      rules.push({ rule, remaining: rule.times ?? 1 });
    },
    clearRules() {
      rules = [];
    },
    seen: () => requests.map((request) => ({ ...request })),
    bytesSent: () => sent,
    stop: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        for (const socket of sockets) socket.destroy();
      }),
  };
}
