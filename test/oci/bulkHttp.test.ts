import { randomBytes } from "node:crypto";
import { createServer as createHttpServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { createServer as createNetServer, type Server as NetServer, type Socket } from "node:net";
import { afterEach, describe, expect, it } from "vitest";
import { bulkRequest, pooledBuffers, recycle } from "../../src/oci/bulkHttp.ts";

const servers: (Server | NetServer)[] = [];

afterEach(async () => {
  await Promise.all(
    servers.splice(0).map(
      (server) =>
        new Promise<void>((resolve) => {
          (server as Server).closeAllConnections?.();
          server.close(() => resolve());
        }),
    ),
  );
});

async function listen<T extends Server | NetServer>(server: T): Promise<URL> {
  servers.push(server);
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  return new URL(`http://127.0.0.1:${(server.address() as AddressInfo).port}/blob`);
}

/** A server that writes `raw` (an HTTP response, framed by hand) and then what `after` does. */
async function rawServer(raw: Buffer | string, after: (socket: Socket) => void = (s) => s.end()) {
  const sockets: Socket[] = [];
  const server = createNetServer((socket) => {
    sockets.push(socket);
    socket.once("data", () => {
      socket.write(raw);
      after(socket);
    });
  });
  const url = await listen(server);
  return { url, sockets };
}

const get = (url: URL, extra: Partial<Parameters<typeof bulkRequest>[0]> = {}) =>
  bulkRequest({ method: "GET", url, headers: {}, headersTimeoutMs: 5_000, stallTimeoutMs: 5_000, ...extra });

async function readBody(body: AsyncIterable<Buffer>): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const chunk of body) chunks.push(Buffer.from(chunk));
  return Buffer.concat(chunks);
}

describe("bulk HTTP exchanges", () => {
  it("reads a Content-Length body in order and reads into a recycled chunk's buffer again", async () => {
    const bytes = randomBytes(3 * 1024 * 1024 + 17);
    const url = await listen(
      createHttpServer((_req, res) => {
        res.writeHead(200, { "content-length": String(bytes.length), "x-two": ["a", "b"] });
        res.end(bytes);
      }),
    );
    const response = await get(url);
    expect(response.statusCode).toBe(200);
    expect(response.headers["x-two"]).toEqual(["a", "b"]);
    const chunks: Buffer[] = [];
    for await (const chunk of response.body) chunks.push(chunk);
    expect(Buffer.concat(chunks).equals(bytes)).toBe(true);
    // Only a chunk that was handed back is read into again: one that was not keeps its bytes.
    const lent = chunks.filter((chunk) => chunk.length >= 32 * 1024);
    expect(lent.length).toBeGreaterThan(2);
    const [kept, ...handedBack] = lent;
    const keptBytes = Buffer.from(kept);
    const before = pooledBuffers();
    for (const chunk of handedBack) recycle(chunk);
    expect(pooledBuffers()).toBeGreaterThan(before);
    const again = await get(url);
    expect((await readBody(again.body)).equals(bytes)).toBe(true);
    expect(pooledBuffers()).toBeLessThan(before + handedBack.length);
    expect(kept.equals(keptBytes)).toBe(true);
  });

  it("decodes a chunked body, extensions and trailers included", async () => {
    const raw = [
      "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n",
      "5;ext=1\r\nhello\r\n",
      "1\r\n \r\n",
      "5\r\nworld\r\n",
      "0\r\nx-trailer: yes\r\n\r\n",
    ].join("");
    const { url } = await rawServer(raw, () => {});
    const response = await get(url);
    expect((await readBody(response.body)).toString()).toBe("hello world");
  });

  it("reads a body that ends with the connection when it names no length", async () => {
    const { url } = await rawServer("HTTP/1.0 200 OK\r\ncontent-type: text/plain\r\n\r\nuntil the end");
    const response = await get(url);
    expect((await readBody(response.body)).toString()).toBe("until the end");
  });

  it("skips a 100 Continue and answers the final status", async () => {
    const { url } = await rawServer(
      "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 404 Not Found\r\ncontent-length: 9\r\n\r\nnot found",
    );
    const response = await get(url);
    expect(response.statusCode).toBe(404);
    expect(await response.body.text()).toBe("not found");
  });

  it("fails a body whose connection closes before its Content-Length", async () => {
    const { url } = await rawServer("HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\nonly this", (s) =>
      s.end(),
    );
    const response = await get(url);
    await expect(readBody(response.body)).rejects.toThrow(/closed before the response's end/);
  });

  it("fails a body that stops moving for the stall timeout, with the transport's timeout code", async () => {
    const { url } = await rawServer("HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\nsome", () => {});
    const response = await get(url, { stallTimeoutMs: 300 });
    const err = await readBody(response.body).then(
      () => undefined,
      (caught: unknown) => caught as { code?: string; message?: string },
    );
    expect(err?.code).toBe("STOWAGE_TIMEOUT");
    expect(err?.message).toMatch(/stalled/);
  });

  it("does not call a server stalled while its reader, not the server, is behind", async () => {
    const bytes = randomBytes(8 * 1024 * 1024);
    const url = await listen(
      createHttpServer((_req, res) => {
        res.writeHead(200, { "content-length": String(bytes.length) });
        res.end(bytes);
      }),
    );
    // Two seconds without a byte from a local server while it is read would be a real stall.
    const response = await get(url, { stallTimeoutMs: 2_000 });
    const chunks: Buffer[] = [];
    let paused = false;
    for await (const chunk of response.body) {
      chunks.push(Buffer.from(chunk));
      if (!paused) {
        paused = true;
        // Long enough for the body to fill what it holds and stop reading, and half as long again
        // as the stall timeout.
        await new Promise((resolve) => setTimeout(resolve, 3_000));
      }
    }
    expect(Buffer.concat(chunks).equals(bytes)).toBe(true);
  });

  it("fails when no response head comes within the request timeout", async () => {
    const { url } = await rawServer("", () => {});
    const err = await get(url, { headersTimeoutMs: 300 }).then(
      () => undefined,
      (caught: unknown) => caught as { code?: string },
    );
    expect(err?.code).toBe("UND_ERR_HEADERS_TIMEOUT");
  });

  it("refuses a response that is not HTTP/1.x", async () => {
    const { url } = await rawServer("SSH-2.0-OpenSSH\r\n\r\n");
    await expect(get(url)).rejects.toThrow(/not an HTTP\/1.1 status line/);
  });

  it("rejects with the signal's reason when aborted while the body flows", async () => {
    const { url } = await rawServer("HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\nsome", () => {});
    const controller = new AbortController();
    const response = await get(url, { signal: controller.signal });
    const reading = readBody(response.body);
    controller.abort(new Error("stop here"));
    await expect(reading).rejects.toThrow("stop here");
  });

  it("uploads a body with its Content-Length, and stops sending it when the server answers early", async () => {
    const received: Buffer[] = [];
    const url = await listen(
      createHttpServer((req, res) => {
        if (req.url === "/refuse") {
          res.writeHead(413, { "content-length": "8" });
          res.end("too big!");
          // Read and drop the rest, as a registry does, so the client can read the answer.
          req.resume();
          return;
        }
        req.on("data", (chunk: Buffer) => received.push(chunk));
        req.on("end", () => {
          res.writeHead(201, { location: "/done" });
          res.end();
        });
      }),
    );
    const bytes = randomBytes(2 * 1024 * 1024);
    const put = (target: URL, body: AsyncIterable<Buffer> & { destroy?(): void }) =>
      bulkRequest({
        method: "PUT",
        url: target,
        headers: { "content-length": String(bytes.length) },
        body,
        headersTimeoutMs: 0,
        stallTimeoutMs: 5_000,
      });
    async function* pieces() {
      for (let at = 0; at < bytes.length; at += 100_000) yield bytes.subarray(at, at + 100_000);
    }
    const created = await put(url, pieces());
    expect(created.statusCode).toBe(201);
    expect(created.headers.location).toBe("/done");
    expect(Buffer.concat(received).equals(bytes)).toBe(true);

    let pulled = 0;
    let destroyed = false;
    const endless = {
      async *[Symbol.asyncIterator]() {
        for (;;) {
          pulled++;
          yield Buffer.alloc(64 * 1024);
          await new Promise((resolve) => setTimeout(resolve, 5));
        }
      },
      destroy() {
        destroyed = true;
      },
    };
    const refused = await put(new URL("/refuse", url), endless);
    expect(refused.statusCode).toBe(413);
    expect(await refused.body.text()).toBe("too big!");
    expect(destroyed).toBe(true);
    const pulledAtAnswer = pulled;
    await new Promise((resolve) => setTimeout(resolve, 100));
    expect(pulled - pulledAtAnswer).toBeLessThanOrEqual(1);
  });
});
