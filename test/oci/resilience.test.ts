import { randomBytes } from "node:crypto";
import { Readable } from "node:stream";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { digestOf, RegistryClient, type RepoRef } from "../../src/oci/registry.ts";
import { backoffDelay, parseRetryAfter, retryAfterOf } from "../../src/oci/retry.ts";
import { type Descriptor, MediaType, type RawManifest } from "../../src/oci/types.ts";
import type { Clock } from "../../src/util/clock.ts";
import { type FaultProxy, startFaultProxy } from "../../testkit/faultProxy.ts";
import { type RunningRegistry, startRegistry } from "../../testkit/registry.ts";
import { failure } from "../support/failure.ts";

/** A clock whose sleeps return at once and are recorded, so waits are asserted, not timed. */
function recordingClock(): Clock & { sleeps: number[] } {
  let now = Date.UTC(2026, 0, 1);
  const sleeps: number[] = [];
  return {
    sleeps,
    now: () => now,
    sleep: async (ms) => {
      sleeps.push(ms);
      now += ms;
    },
  };
}

let source: RunningRegistry;
let target: RunningRegistry;
let proxy: FaultProxy;
let direct: RegistryClient;
const clients: RegistryClient[] = [];
/** Blobs at least this large move on bulk connections; set by the describe block running. */
let bulkMinBytes: number | undefined;

function clientWith(clock: Clock, attempts = 5): RegistryClient {
  const client = new RegistryClient({
    insecureHosts: [source.host, target.host, proxy.host],
    clock,
    retry: { attempts, baseDelayMs: 100, maxDelayMs: 10_000 },
    bulkMinBytes,
  });
  clients.push(client);
  return client;
}

beforeAll(async () => {
  [source, target] = await Promise.all([startRegistry(), startRegistry()]);
  proxy = await startFaultProxy(source.url);
  direct = new RegistryClient({ insecureHosts: [source.host, target.host] });
});

afterAll(async () => {
  await Promise.all([direct?.close(), ...clients.map((client) => client.close())]);
  await proxy?.stop();
  await Promise.all([source?.stop(), target?.stop()]);
});

function viaProxy(repository: string): RepoRef {
  return { registry: proxy.host, repository };
}

async function seedBlob(
  repository: string,
  size: number,
): Promise<{ descriptor: Descriptor; bytes: Buffer }> {
  const bytes = randomBytes(size);
  const descriptor = { mediaType: MediaType.OciLayerTar, digest: digestOf(bytes), size };
  await direct.pushBlob({ registry: source.host, repository }, descriptor, () => Readable.from([bytes]));
  return { descriptor, bytes };
}

async function seedManifest(repository: string, tag: string): Promise<RawManifest> {
  const config = await seedBlob(repository, 100);
  const bytes = Buffer.from(
    JSON.stringify({
      schemaVersion: 2,
      mediaType: MediaType.OciManifest,
      config: { ...config.descriptor, mediaType: MediaType.OciConfig },
      layers: [],
    }),
  );
  const manifest = { mediaType: MediaType.OciManifest, digest: digestOf(bytes), bytes };
  await direct.putManifest({ registry: source.host, repository }, tag, manifest);
  return manifest;
}

async function readAll(stream: Readable): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const chunk of stream) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks);
}

function seenFor(path: RegExp, since: number) {
  return proxy
    .seen()
    .slice(since)
    .filter((r) => path.test(r.path));
}

// Each transfer behaviour holds on undici's pooled connections (blobs below bulkMinBytes) and on
// the bulk connections of bulkHttp.ts (every blob, here).
for (const [over, bulk] of [
  ["undici's pooled connections", undefined],
  ["bulk connections", 1],
] as const) {
  describe(`over ${over}`, () => {
    beforeAll(() => {
      bulkMinBytes = bulk;
    });

    describe("blob downloads", () => {
      it("resumes a blob download from the byte where the connection dropped", async () => {
        const content = await seedBlob("resume/blob", 2_000_000);
        proxy.addRule({
          match: { path: /\/blobs\/sha256:/ },
          action: { kind: "dropAfterBytes", bytes: 700_000 },
        });
        const since = proxy.seen().length;
        const fetched = await readAll(
          clientWith(recordingClock()).getBlob(viaProxy("resume/blob"), content.descriptor),
        );
        expect(fetched.equals(content.bytes)).toBe(true);
        const gets = seenFor(/\/blobs\/sha256:/, since);
        expect(gets.map((r) => [r.range, r.status])).toEqual([
          [undefined, 200],
          ["bytes=700000-", 206],
        ]);
      });

      it("follows a blob download's redirect to another origin, on the same kind of connection", async () => {
        const content = await seedBlob("redirect/blob", 1_500_000);
        const store = await startFaultProxy(source.url);
        try {
          proxy.addRule({ match: { path: /\/blobs\/sha256:/ }, action: { kind: "redirect", to: store.url } });
          const since = proxy.seen().length;
          const fetched = await readAll(
            clientWith(recordingClock()).getBlob(viaProxy("redirect/blob"), content.descriptor),
          );
          expect(fetched.equals(content.bytes)).toBe(true);
          expect(seenFor(/\/blobs\/sha256:/, since).map((r) => r.status)).toEqual([307]);
          const bulk = bulkMinBytes !== undefined;
          expect(store.seen().map((r) => [r.status, r.closes])).toEqual([[200, bulk]]);
        } finally {
          await store.stop();
        }
      });

      it("resumes correctly when the server ignores Range and sends the blob from the start", async () => {
        const content = await seedBlob("resume/norange", 1_500_000);
        proxy.addRule({
          match: { path: /\/blobs\/sha256:/ },
          action: { kind: "dropAfterBytes", bytes: 500_000 },
        });
        proxy.addRule({ match: { path: /\/blobs\/sha256:/ }, action: { kind: "ignoreRange" } });
        const since = proxy.seen().length;
        const fetched = await readAll(
          clientWith(recordingClock()).getBlob(viaProxy("resume/norange"), content.descriptor),
        );
        expect(fetched.equals(content.bytes)).toBe(true);
        expect(seenFor(/\/blobs\/sha256:/, since).map((r) => [r.range, r.status])).toEqual([
          [undefined, 200],
          ["bytes=500000-", 200],
        ]);
      });

      it("fails with DigestMismatch on a flipped byte and commits nothing in the target it was piped into", async () => {
        const content = await seedBlob("flip/blob", 1_000_000);
        proxy.addRule({ match: { path: /\/blobs\/sha256:/ }, action: { kind: "flipByte", offset: 999_000 } });
        const client = clientWith(recordingClock());
        const destination: RepoRef = { registry: target.host, repository: "flip/copy" };
        const targetBefore = (await target.requests()).length;
        const err = await failure(
          client.pushBlob(destination, content.descriptor, () =>
            client.getBlob(viaProxy("flip/blob"), content.descriptor),
          ),
        );
        expect(err.reason).toBe("DigestMismatch");
        expect(err.message).toContain(content.descriptor.digest);
        expect(await direct.hasBlob(destination, content.descriptor.digest)).toBeUndefined();
        const uploads = (await target.requests()).slice(targetBefore).filter((r) => r.method === "PUT");
        expect(uploads.some((r) => r.status === 201)).toBe(false);
      });

      it("stops a download with Aborted when its signal fires", async () => {
        const content = await seedBlob("abort/blob", 3_000_000);
        const controller = new AbortController();
        const stream = clientWith(recordingClock()).getBlob(viaProxy("abort/blob"), content.descriptor, {
          signal: controller.signal,
        });
        const err = await failure(
          (async () => {
            for await (const _chunk of stream) controller.abort();
          })(),
        );
        expect(err.reason).toBe("Aborted");
      });

      it("gives up after the configured attempts with a retryable UpstreamUnavailable", async () => {
        const content = await seedBlob("giveup/blob", 10_000);
        proxy.addRule({
          match: { path: /\/blobs\/sha256:/ },
          times: 3,
          action: { kind: "status", status: 502 },
        });
        const clock = recordingClock();
        const since = proxy.seen().length;
        const err = await failure(
          readAll(clientWith(clock, 3).getBlob(viaProxy("giveup/blob"), content.descriptor)),
        );
        expect(err.reason).toBe("UpstreamUnavailable");
        expect(err.retryable).toBe(true);
        expect(seenFor(/\/blobs\/sha256:/, since).map((r) => r.status)).toEqual([502, 502, 502]);
        expect(clock.sleeps.length).toBe(2);
      });
    });

    describe("retries", () => {
      it("waits as long as Retry-After asks after a 429 before trying again", async () => {
        await seedManifest("ratelimit/image", "v1");
        proxy.addRule({
          match: { path: /\/manifests\/v1$/ },
          action: {
            kind: "status",
            status: 429,
            retryAfterSeconds: 7,
            body: '{"errors":[{"code":"TOOMANYREQUESTS"}]}',
          },
        });
        const clock = recordingClock();
        const since = proxy.seen().length;
        await clientWith(clock).getManifest(viaProxy("ratelimit/image"), "v1");
        expect(seenFor(/\/manifests\/v1$/, since).map((r) => r.status)).toEqual([429, 200]);
        expect(clock.sleeps).toEqual([7_000]);
      });

      it("honours Retry-After on a blob download too", async () => {
        const content = await seedBlob("ratelimit/blob", 20_000);
        proxy.addRule({
          match: { path: /ratelimit\/blob\/blobs\/sha256:/ },
          action: { kind: "status", status: 429, retryAfterSeconds: 4 },
        });
        const clock = recordingClock();
        const fetched = await readAll(
          clientWith(clock).getBlob(viaProxy("ratelimit/blob"), content.descriptor),
        );
        expect(fetched.equals(content.bytes)).toBe(true);
        expect(clock.sleeps).toEqual([4_000]);
      });

      it("reports RateLimited, retryable, with the wait it would take, when 429s outlast the attempts", async () => {
        await seedManifest("ratelimit/always", "v1");
        proxy.addRule({
          match: { path: /ratelimit\/always\/manifests/ },
          times: 2,
          action: { kind: "status", status: 429, retryAfterSeconds: 3600 },
        });
        const clock = recordingClock();
        const err = await failure(clientWith(clock, 2).getManifest(viaProxy("ratelimit/always"), "v1"));
        expect(err.reason).toBe("RateLimited");
        expect(err.retryable).toBe(true);
        // Retry-After is honoured past maxDelayMs, up to maxRetryAfterMs (5 min by default), and
        // the final error says how long the next try is away.
        expect(clock.sleeps).toEqual([300_000]);
        expect(err.message).toMatch(/retrying in 300s \(Retry-After; it asked for 3600s, capped\)/);
        expect(retryAfterOf(err)).toBe(300_000);
      });

      it("retries 503s until the registry recovers", async () => {
        const pushed = await seedManifest("flaky/image", "v1");
        proxy.addRule({
          match: { path: /flaky\/image\/manifests/ },
          times: 3,
          action: { kind: "status", status: 503 },
        });
        const clock = recordingClock();
        const since = proxy.seen().length;
        const fetched = await clientWith(clock).getManifest(viaProxy("flaky/image"), "v1");
        expect(fetched.digest).toBe(pushed.digest);
        expect(seenFor(/flaky\/image\/manifests/, since).map((r) => r.status)).toEqual([503, 503, 503, 200]);
        expect(clock.sleeps.length).toBe(3);
        expect(clock.sleeps.every((ms, i) => ms >= 0 && ms <= 100 * 2 ** i)).toBe(true);
      });

      it("never retries a 404 and reports an unknown tag as ImageNotFound", async () => {
        await seedManifest("missing/image", "v1");
        const since = proxy.seen().length;
        const err = await failure(
          clientWith(recordingClock()).getManifest(viaProxy("missing/image"), "nope"),
        );
        expect(err.reason).toBe("ImageNotFound");
        expect(err.message).toContain(`${proxy.host}/missing/image:nope`);
        expect(seenFor(/missing\/image\/manifests/, since).length).toBe(1);
      });

      it("never sends a consumed upload body again after a 401: the retry opens the source anew", async () => {
        const secured = await startRegistry({ auth: "htpasswd" });
        const front = await startFaultProxy(secured.url);
        try {
          const [user] = secured.users;
          const client = new RegistryClient({
            insecureHosts: [front.host],
            credentials: () => [{ username: user.username, password: user.password }],
            clock: recordingClock(),
            retry: { attempts: 3, baseDelayMs: 10, maxDelayMs: 10 },
            bulkMinBytes,
          });
          clients.push(client);
          // An expired token, as a registry answers it in the middle of an upload.
          front.addRule({
            match: { method: "PUT", path: /\/blobs\/uploads\// },
            action: {
              kind: "status",
              status: 401,
              headers: { "www-authenticate": 'Basic realm="registry"' },
            },
          });
          const bytes = randomBytes(60_000);
          const descriptor = {
            mediaType: MediaType.OciLayerTar,
            digest: digestOf(bytes),
            size: bytes.length,
          };
          let opened = 0;
          await client.pushBlob({ registry: front.host, repository: "auth/upload" }, descriptor, () => {
            opened++;
            return Readable.from([bytes]);
          });
          expect(opened).toBe(2);
          const puts = front.seen().filter((r) => r.method === "PUT");
          expect(puts.map((r) => r.status)).toEqual([401, 201]);
          expect(
            await client.hasBlob({ registry: front.host, repository: "auth/upload" }, descriptor.digest),
          ).toBe(60_000);
        } finally {
          await front.stop();
          await secured.stop();
        }
      });

      it("opens the source again and starts a fresh upload when a blob PUT fails with 503", async () => {
        const bytes = randomBytes(50_000);
        const descriptor = { mediaType: MediaType.OciLayerTar, digest: digestOf(bytes), size: bytes.length };
        proxy.addRule({
          match: { method: "PUT", path: /\/blobs\/uploads\// },
          action: { kind: "status", status: 503 },
        });
        let opened = 0;
        const since = proxy.seen().length;
        await clientWith(recordingClock()).pushBlob(viaProxy("retry/upload"), descriptor, () => {
          opened++;
          return Readable.from([bytes]);
        });
        expect(opened).toBe(2);
        expect(seenFor(/retry\/upload\/blobs\/uploads/, since).map((r) => `${r.method} ${r.status}`)).toEqual(
          ["POST 202", "PUT 503", "DELETE 204", "POST 202", "PUT 201"],
        );
        expect(
          await direct.hasBlob({ registry: source.host, repository: "retry/upload" }, descriptor.digest),
        ).toBe(50_000);
      });
    });

    describe("TLS", () => {
      let secure: RunningRegistry;
      beforeAll(async () => {
        secure = await startRegistry({ tls: true });
      });
      afterAll(async () => secure?.stop());

      it("talks HTTPS to a registry whose certificate is signed by a CA it was given", async () => {
        const client = new RegistryClient({ caPem: secure.caPem, bulkMinBytes });
        clients.push(client);
        const bytes = randomBytes(3_000_000);
        const repo = { registry: secure.host, repository: "tls/image" };
        const descriptor = { mediaType: MediaType.OciLayerTar, digest: digestOf(bytes), size: bytes.length };
        await client.pushBlob(repo, descriptor, () => Readable.from([bytes]));
        expect((await readAll(client.getBlob(repo, descriptor))).equals(bytes)).toBe(true);
      });

      it("fails clearly, without retrying, when the registry's CA is not trusted", async () => {
        const clock = recordingClock();
        const client = new RegistryClient({ clock });
        clients.push(client);
        const err = await failure(client.ping(secure.host));
        expect(err.reason).toBe("UpstreamUnavailable");
        expect(err.retryable).toBe(false);
        expect(err.message).toContain(`TLS verification of ${secure.host} failed`);
        expect(clock.sleeps).toEqual([]);
      });

      it("fails a blob download clearly, without retrying, when the registry's CA is not trusted", async () => {
        const clock = recordingClock();
        const client = new RegistryClient({ clock, bulkMinBytes });
        clients.push(client);
        const bytes = randomBytes(2_000);
        const descriptor = { mediaType: MediaType.OciLayerTar, digest: digestOf(bytes), size: bytes.length };
        const err = await failure(
          readAll(client.getBlob({ registry: secure.host, repository: "tls/none" }, descriptor)),
        );
        expect(err.reason).toBe("UpstreamUnavailable");
        expect(err.retryable).toBe(false);
        expect(err.message).toContain(`TLS verification of ${secure.host} failed`);
        expect(clock.sleeps).toEqual([]);
      });

      it("speaks HTTPS unless the host is listed as insecure, even for 127.0.0.1", async () => {
        const client = new RegistryClient({ clock: recordingClock(), retry: { attempts: 1 } });
        clients.push(client);
        const err = await failure(client.ping(target.host));
        expect(err.reason).toBe("UpstreamUnavailable");
        expect(err.message).toContain(target.host);
      });
    });
  });
}

describe("retry policy", () => {
  it("reads Retry-After as seconds or as an HTTP date", () => {
    const now = Date.UTC(2026, 0, 1, 12, 0, 0);
    expect(parseRetryAfter("5", now)).toBe(5_000);
    expect(parseRetryAfter(new Date(now + 30_000).toUTCString(), now)).toBe(30_000);
    expect(parseRetryAfter(new Date(now - 30_000).toUTCString(), now)).toBe(0);
    expect(parseRetryAfter("soon", now)).toBeUndefined();
    expect(parseRetryAfter(undefined, now)).toBeUndefined();
  });

  it("draws backoff with full jitter under an exponentially growing, capped ceiling", () => {
    const policy = { attempts: 5, baseDelayMs: 200, maxDelayMs: 1_000 };
    expect([0, 1, 2, 3, 4].map((retry) => backoffDelay(policy, retry, () => 0.999_999))).toEqual([
      199, 399, 799, 999, 999,
    ]);
    expect(backoffDelay(policy, 3, () => 0)).toBe(0);
  });
});

describe("manifest integrity", () => {
  it("refuses manifest bytes that do not hash to the requested digest", async () => {
    const pushed = await seedManifest("corrupt/image", "v1");
    proxy.addRule({
      match: { path: /corrupt\/image\/manifests\/sha256:/ },
      action: { kind: "flipByte", offset: 10 },
    });
    const err = await failure(
      clientWith(recordingClock()).getManifest(viaProxy("corrupt/image"), pushed.digest),
    );
    expect(err.reason).toBe("DigestMismatch");
  });

  it("refuses tag-fetched manifest bytes that contradict Docker-Content-Digest", async () => {
    await seedManifest("corrupt/tagged", "v1");
    proxy.addRule({
      match: { path: /corrupt\/tagged\/manifests\/v1/ },
      action: { kind: "flipByte", offset: 5 },
    });
    const err = await failure(clientWith(recordingClock()).getManifest(viaProxy("corrupt/tagged"), "v1"));
    expect(err.reason).toBe("DigestMismatch");
  });

  it("refuses a manifest larger than 4 MiB with a clear error", async () => {
    const huge = JSON.stringify({
      schemaVersion: 2,
      mediaType: MediaType.OciIndex,
      pad: "x".repeat(5 * 1024 * 1024),
    });
    proxy.addRule({
      match: { path: /huge\/image\/manifests/ },
      action: { kind: "status", status: 200, body: huge },
    });
    const err = await failure(clientWith(recordingClock()).getManifest(viaProxy("huge/image"), "v1"));
    expect(err.reason).toBe("ManifestInvalid");
    expect(err.message).toContain("limit");
  });
});
