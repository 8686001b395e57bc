import { createHash } from "node:crypto";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { CriClient } from "../../src/agent/cri.ts";
import { applyMirrorConfig } from "../../src/agent/hostsToml.ts";
import { ContainerdContent } from "../../src/agent/peer/content.ts";
import { type PartialBlobs, type PeerServer, startPeerServer } from "../../src/agent/peer/server.ts";
import { issuePeerToken } from "../../src/agent/peer/token.ts";
import { RegistryClient } from "../../src/oci/registry.ts";
import { type RunningContainerd, startContainerd } from "../../testkit/containerd.ts";
import { type PushedImage, pushSinglePlatformImage } from "../../testkit/images.ts";
import { freePort } from "../../testkit/ports.ts";
import { type RunningRegistry, startRegistry } from "../../testkit/registry.ts";

const secret = Buffer.alloc(32, 3);
let node: RunningContainerd;
let cache: RunningRegistry;
let registryClient: RegistryClient;
let runtime: CriClient;
let store: ContainerdContent;
let server: PeerServer;
let image: PushedImage;
let big: { digest: string; bytes: Buffer };
let small: { digest: string; bytes: Buffer };
const closers: (() => Promise<void>)[] = [];

async function readAll(stream: NodeJS.ReadableStream): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const chunk of stream) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks);
}

function token(digests: string[], receiver = "node-b", exp = Date.now() / 1000 + 600): string {
  return issuePeerToken(secret, { receiver, digests, exp });
}

function get(url: string, tokenValue?: string, headers: Record<string, string> = {}): Promise<Response> {
  return fetch(url, {
    headers: { ...(tokenValue ? { authorization: `Bearer ${tokenValue}` } : {}), ...headers },
  });
}

const blobUrl = (s: PeerServer, digest: string) => `${s.url}/fanout/v1/blobs/${digest}`;

beforeAll(async () => {
  [node, cache] = await Promise.all([startContainerd(), startRegistry()]);
  registryClient = new RegistryClient({ insecureHosts: [cache.host] });
  const upstreamHost = `127.0.0.1:${await freePort()}`;
  image = await pushSinglePlatformImage(
    registryClient,
    { registry: cache.host, repository: `${upstreamHost.replace(":", "_")}/acme/peer` },
    "1.0",
    { layerSizes: [3 * 1024 * 1024 + 17, 64 * 1024], seed: "peer-server" },
  );
  const [bigLayer, smallLayer] = image.image.layers;
  big = { digest: bigLayer.descriptor.digest, bytes: await readAll(bigLayer.open()) };
  small = { digest: smallLayer.descriptor.digest, bytes: await readAll(smallLayer.open()) };
  // Node A's containerd pulls the image through the cache, as a pre-warm would.
  await applyMirrorConfig(node.certsDir, [upstreamHost], { cacheEndpoint: cache.url });
  runtime = new CriClient(node.socketPath);
  await runtime.pullImage(`${upstreamHost}/acme/peer@${image.digest}`);
  store = new ContainerdContent(node.socketPath);
  server = await startPeerServer({ store, secret, host: "127.0.0.1", port: 0 });
});

afterAll(async () => {
  for (const close of closers) await close();
  await server?.close();
  store?.close();
  runtime?.close();
  await registryClient?.close();
  await Promise.all([node?.dispose(), cache?.stop()]);
});

describe("the agent's peer endpoint on a real containerd", () => {
  it("serves a blob containerd holds, whole, by range and as HEAD, to a token naming it", async () => {
    const whole = await get(blobUrl(server, big.digest), token([big.digest]));
    expect(whole.status).toBe(200);
    const body = Buffer.from(await whole.arrayBuffer());
    expect(`sha256:${createHash("sha256").update(body).digest("hex")}`).toBe(big.digest);
    expect(body.equals(big.bytes)).toBe(true);

    const ranged = await get(blobUrl(server, big.digest), token([big.digest]), {
      range: "bytes=1048570-2097160",
    });
    expect(ranged.status).toBe(206);
    expect(ranged.headers.get("content-range")).toBe(`bytes 1048570-2097160/${big.bytes.length}`);
    expect(Buffer.from(await ranged.arrayBuffer()).equals(big.bytes.subarray(1048570, 2097161))).toBe(true);

    const open = await get(blobUrl(server, big.digest), token([big.digest]), { range: "bytes=3145700-" });
    expect(Buffer.from(await open.arrayBuffer()).equals(big.bytes.subarray(3145700))).toBe(true);

    const head = await fetch(blobUrl(server, small.digest), {
      method: "HEAD",
      headers: { authorization: `Bearer ${token([small.digest])}` },
    });
    expect(head.status).toBe(200);
    expect(head.headers.get("content-length")).toBe(String(small.bytes.length));
    expect(server.stats.bytesServed.get(big.digest)).toBe(
      big.bytes.length + 1048591 + (big.bytes.length - 3145700),
    );
  });

  it("refuses a missing, forged, expired or other-digest token and serves no byte", async () => {
    const before = server.stats.bytesServed.get(small.digest) ?? 0;
    const forged = issuePeerToken(Buffer.alloc(32, 9), {
      receiver: "node-b",
      digests: [small.digest],
      exp: 2e9,
    });
    const cases: [string | undefined, number][] = [
      [undefined, 401],
      [forged, 401],
      [token([small.digest], "node-b", Date.now() / 1000 - 1), 401],
      [token([big.digest]), 403],
    ];
    for (const [value, status] of cases) {
      const res = await get(blobUrl(server, small.digest), value);
      const text = await res.text();
      expect({ status: res.status, body: text }).toEqual({
        status,
        body: `${JSON.stringify({ reason: status === 401 ? "AuthFailed" : "DigestNotInToken" })}\n`,
      });
    }
    expect(server.stats.bytesServed.get(small.digest) ?? 0).toBe(before);
    expect(server.stats.refused).toMatchObject({ unauthorized: 3, forbidden: 1 });
  });

  it("answers a blob it does not hold with 404 and an unsatisfiable range with 416", async () => {
    const absent = `sha256:${"0".repeat(64)}`;
    expect((await get(blobUrl(server, absent), token([absent]))).status).toBe(404);
    const bad = await get(blobUrl(server, small.digest), token([small.digest]), { range: "bytes=999999-" });
    expect(bad.status).toBe(416);
    expect(bad.headers.get("content-range")).toBe(`bytes */${small.bytes.length}`);
  });

  it("paces its bytes to the serving rate and answers 503 with Retry-After beyond its concurrency", async () => {
    const sleeps: number[] = [];
    let release!: () => void;
    const gate = new Promise<void>((resolve) => {
      release = resolve;
    });
    const rate = 1024 * 1024;
    const capped = await startPeerServer({
      store,
      secret,
      host: "127.0.0.1",
      port: 0,
      maxConcurrent: 1,
      bytesPerSecond: rate,
      now: () => 1_000_000,
      sleep: (ms) => {
        sleeps.push(ms);
        return gate;
      },
    });
    closers.push(() => capped.close());
    const first = await get(blobUrl(capped, big.digest), token([big.digest]));
    expect(first.status).toBe(200);
    const busy = await get(blobUrl(capped, small.digest), token([small.digest]));
    expect(busy.status).toBe(503);
    expect(busy.headers.get("retry-after")).toBe("1");
    await busy.text();
    release();
    const body = Buffer.from(await first.arrayBuffer());
    expect(body.equals(big.bytes)).toBe(true);
    // The clock stands still, so each chunk waits for all the bytes before it at the rate.
    expect(sleeps.length).toBeGreaterThan(0);
    expect(Math.max(...sleeps)).toBeLessThan((big.bytes.length * 1000) / rate);
    expect(Math.max(...sleeps)).toBeGreaterThan((big.bytes.length * 1000) / rate / 2);
    expect(capped.stats.refused.busy).toBe(1);
  });

  it("serves a blob still being fetched only as far as it is spooled, and cuts a whole read that does not verify", async () => {
    const digest = `sha256:${createHash("sha256").update(small.bytes).digest("hex")}`;
    let available = 1000;
    let corrupt = false;
    const partial: PartialBlobs = {
      get: (d) =>
        d === digest
          ? {
              size: small.bytes.length,
              available: () => available,
              async *read(offset, length) {
                const bytes = Buffer.from(small.bytes.subarray(offset, offset + length));
                if (corrupt) bytes[bytes.length - 1] ^= 0xff;
                // Two chunks, so the first reaches the receiver before the last is found wrong.
                yield bytes.subarray(0, 1000);
                yield bytes.subarray(1000);
              },
            }
          : undefined,
    };
    const emptyStore = { size: async () => undefined, read: store.read.bind(store), close: () => {} };
    const spooling = await startPeerServer({
      store: emptyStore,
      partial,
      secret,
      host: "127.0.0.1",
      port: 0,
    });
    closers.push(() => spooling.close());
    const within = await get(blobUrl(spooling, digest), token([digest]), { range: "bytes=0-999" });
    expect(within.status).toBe(206);
    expect(Buffer.from(await within.arrayBuffer()).equals(small.bytes.subarray(0, 1000))).toBe(true);
    const beyond = await get(blobUrl(spooling, digest), token([digest]), { range: "bytes=0-1000" });
    expect(beyond.status).toBe(503);
    await beyond.text();

    available = small.bytes.length;
    corrupt = true;
    // The connection is cut before the last chunk: whether the headers got out first or not, the
    // receiver never reads a complete response.
    const outcome = await get(blobUrl(spooling, digest), token([digest]))
      .then(
        async (res) => {
          await res.arrayBuffer();
          return `complete ${res.status}`;
        },
        () => "cut",
      )
      .catch(() => "cut");
    expect(outcome).toBe("cut");
    // 1000 from the range read before, 1000 of the cut read handed to the socket; the last chunk never.
    expect(spooling.stats.bytesServed.get(digest) ?? 0).toBe(2000);
  });
});
