/**
 * The hostile suite, upstream side: the copy API against testkit/hostileRegistry.ts (an
 * upstream that hangs, stalls, redirects anywhere, sends bad manifests, bursts 429/503 and
 * echoes HTML and control characters) into a real CNCF distribution cache. After every case
 * the cache verifier reads every manifest and hashes every blob of the cache: a fault may
 * fail a copy, never leave the cache inconsistent.
 */
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { Copier } from "../../src/oci/copy.ts";
import { parseReference } from "../../src/oci/reference.ts";
import { RegistryClient, type RegistryClientOptions } from "../../src/oci/registry.ts";
import { retryAfterOf } from "../../src/oci/retry.ts";
import type { Clock } from "../../src/util/clock.ts";
import { verifyCache } from "../../testkit/cacheVerifier.ts";
import { type HostileRegistry, startHostileRegistry } from "../../testkit/hostileRegistry.ts";
import { buildImage, type SyntheticImage } from "../../testkit/images.ts";
import { type RunningRegistry, startRegistry } from "../../testkit/registry.ts";
import { failure } from "../support/failure.ts";
import { stowage } from "../support/run.ts";

let hostile: HostileRegistry;
let guarded: HostileRegistry;
let elsewhere: HostileRegistry;
let cache: RunningRegistry;
let image: SyntheticImage;
const clients: RegistryClient[] = [];

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

function client(options: Partial<RegistryClientOptions> = {}): RegistryClient {
  const made = new RegistryClient({
    insecureHosts: [hostile.host, guarded.host, elsewhere.host, cache.host],
    cacheRegistries: [cache.host],
    retry: { attempts: 2, baseDelayMs: 10, maxDelayMs: 100 },
    // Short enough for the hang and stall cases, long enough for a loaded 2-core machine.
    requestTimeoutMs: 3_000,
    stallTimeoutMs: 3_000,
    rangedDownload: false,
    proxy: false,
    ...options,
  });
  clients.push(made);
  return made;
}

async function bytesOf(blob: SyntheticImage["blobs"][number]): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const chunk of blob.open()) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks);
}

const largestLayer = () => image.layers.reduce((a, b) => (a.descriptor.size >= b.descriptor.size ? a : b));
const blobPath = (digest: string) => new RegExp(`/blobs/${digest}$`);

async function copy(tag: string, options: Partial<RegistryClientOptions> = {}, from = hostile) {
  const copier = new Copier({ client: client(options) });
  // A repository per case, so no case finds blobs an earlier one left in the cache.
  return copier.copy(parseReference(`${from.host}/h/app:v1`), parseReference(`${cache.host}/h/${tag}:v1`));
}

beforeAll(async () => {
  [hostile, guarded, elsewhere, cache] = await Promise.all([
    startHostileRegistry(),
    startHostileRegistry({ basicAuth: { username: "u", password: "p" } }),
    startHostileRegistry(),
    startRegistry(),
  ]);
  image = await buildImage({
    layers: [
      { seed: "hostile/0", size: 300_000 },
      { seed: "hostile/1", size: 40_000 },
    ],
  });
  const blobs = await Promise.all(image.blobs.map(bytesOf));
  for (const registry of [hostile, guarded, elsewhere]) registry.put("h/app", "v1", image.manifest, blobs);
});

afterEach(async () => {
  for (const registry of [hostile, guarded, elsewhere]) registry.clearRules();
  const report = await verifyCache(cache.host);
  expect(report.problems).toEqual([]);
});

afterAll(async () => {
  await Promise.all(clients.map((c) => c.close()));
  await Promise.all([hostile?.stop(), guarded?.stop(), elsewhere?.stop(), cache?.stop()]);
});

describe("an upstream that hangs or stalls", () => {
  it("gives up on a manifest request that never gets an answer with UpstreamTimeout, once per attempt", async () => {
    hostile.addRule({
      match: { path: /\/manifests\// },
      times: Number.POSITIVE_INFINITY,
      action: { kind: "hang" },
    });
    const err = await failure(copy("hang"));
    expect(err.reason).toBe("UpstreamTimeout");
    expect(err.retryable).toBe(true);
    expect(err.message).toContain(hostile.host);
    expect(err.message).toContain("--request-timeout");
    expect(hostile.seen().filter((r) => r.action === "hang")).toHaveLength(2);
  });

  it("resumes a blob whose body stalls half-way once the stall timeout fires", async () => {
    const layer = largestLayer();
    hostile.addRule({
      match: { method: "GET", path: blobPath(layer.descriptor.digest) },
      action: { kind: "stallBody", afterBytes: 100_000 },
    });
    const result = await copy("stall-once");
    expect(result.blobs.transferred).toBe(image.blobs.length);
    const gets = hostile
      .seen()
      .filter((r) => r.method === "GET" && blobPath(layer.descriptor.digest).test(r.path));
    expect(gets.length).toBeGreaterThanOrEqual(2);
  });

  it("completes a blob that stalls on every request but moves forward each time", async () => {
    const layer = largestLayer();
    hostile.addRule({
      match: { method: "GET", path: blobPath(layer.descriptor.digest) },
      times: Number.POSITIVE_INFINITY,
      action: { kind: "stallBody", afterBytes: 100_000 },
    });
    const result = await copy("stall-progress");
    expect(result.targetDigest).toBe(image.manifest.digest);
  });

  it("fails a blob that always stalls with UpstreamTimeout and pushes no manifest", async () => {
    const layer = largestLayer();
    hostile.addRule({
      match: { method: "GET", path: blobPath(layer.descriptor.digest) },
      times: Number.POSITIVE_INFINITY,
      action: { kind: "stallBody", afterBytes: 0 },
    });
    const err = await failure(copy("stall-always"));
    expect(err.reason).toBe("UpstreamTimeout");
    expect(err.message).toContain("--stall-timeout");
    expect(
      await client().headManifest({ registry: cache.host, repository: "h/app" }, "stall-always"),
    ).toBeUndefined();
  });
});

describe("redirects", () => {
  it("refuses a blob redirect to the cloud metadata address, without retrying", async () => {
    const layer = largestLayer();
    hostile.addRule({
      match: { method: "GET", path: blobPath(layer.descriptor.digest) },
      times: Number.POSITIVE_INFINITY,
      action: { kind: "redirect", location: "http://169.254.169.254/latest/meta-data/iam" },
    });
    const err = await failure(copy("metadata"));
    expect(err.reason).toBe("UpstreamUnavailable");
    expect(err.retryable).toBe(false);
    expect(err.message).toMatch(/169\.254\.169\.254.*link-local or cloud metadata/);
    expect(hostile.seen().filter((r) => r.action === "redirect")).toHaveLength(1);
  });

  it("refuses a blob redirect to a name that resolves to a link-local address", async () => {
    const layer = largestLayer();
    hostile.addRule({
      match: { method: "GET", path: blobPath(layer.descriptor.digest) },
      action: { kind: "redirect", location: "http://metadata.internal.test/computeMetadata/v1/" },
    });
    const err = await failure(
      copy("metadata-name", {
        resolveHost: async (name) => (name === "metadata.internal.test" ? ["fe80::a9fe:a9fe"] : []),
      }),
    );
    expect(err.message).toContain(
      "metadata.internal.test resolves to a link-local or cloud metadata address",
    );
  });

  it("refuses a redirect to a scheme other than http or https", async () => {
    hostile.addRule({
      match: { method: "GET", path: blobPath(largestLayer().descriptor.digest) },
      action: { kind: "redirect", location: "file:///etc/passwd" },
    });
    const err = await failure(copy("file-scheme"));
    expect(err.message).toContain("only http and https are followed");
  });

  it("stops a redirect loop after 5 hops", async () => {
    const digest = largestLayer().descriptor.digest;
    hostile.addRule({
      match: { method: "GET", path: blobPath(digest) },
      times: Number.POSITIVE_INFINITY,
      action: { kind: "redirect", location: `/v2/h/app/blobs/${digest}` },
    });
    const since = hostile.seen().length;
    const err = await failure(copy("loop"));
    expect(err.message).toContain("more than 5 redirects");
    expect(
      hostile
        .seen()
        .slice(since)
        .filter((r) => r.action === "redirect"),
    ).toHaveLength(6);
  });

  it("follows a blob redirect to another origin without sending it the Authorization header", async () => {
    const digest = largestLayer().descriptor.digest;
    guarded.addRule({
      match: { method: "GET", path: blobPath(digest) },
      action: { kind: "redirect", location: `${elsewhere.url}/v2/h/app/blobs/${digest}` },
    });
    const result = await copy(
      "cross-origin",
      { credentials: () => ({ username: "u", password: "p" }) },
      guarded,
    );
    expect(result.blobs.transferred).toBe(image.blobs.length);
    expect(guarded.seen().find((r) => r.action === "redirect")?.authorized).toBe(true);
    expect(elsewhere.seen().map((r) => [r.path, r.authorized])).toEqual([
      [`/v2/h/app/blobs/${digest}`, false],
    ]);
  });

  it("never follows a redirect of a token request", async () => {
    hostile.addRule({
      match: { path: /\/manifests\/v1$/ },
      action: {
        kind: "status",
        status: 401,
        headers: { "www-authenticate": `Bearer realm="${elsewhere.url}/token",service="hostile"` },
      },
    });
    elsewhere.addRule({
      match: { path: /^\/token/ },
      action: {
        kind: "redirect",
        location: "http://169.254.169.254/latest/meta-data/iam/security-credentials/",
      },
    });
    const since = elsewhere.seen().length;
    const err = await failure(
      copy("token-redirect", { credentials: () => ({ username: "u", password: "p" }) }),
    );
    expect(err.message).toContain("redirects are followed only for blob downloads");
    expect(
      elsewhere
        .seen()
        .slice(since)
        .map((r) => r.action),
    ).toEqual(["redirect"]);
  });

  it("never follows a redirect of a manifest", async () => {
    hostile.addRule({
      match: { path: /\/manifests\/v1$/ },
      action: { kind: "redirect", location: `${elsewhere.url}/v2/h/app/manifests/v1` },
    });
    const since = elsewhere.seen().length;
    const err = await failure(copy("manifest-redirect"));
    expect(err.reason).toBe("UpstreamUnavailable");
    expect(err.message).toContain("redirects are followed only for blob downloads");
    expect(elsewhere.seen().slice(since)).toEqual([]);
  });
});

describe("bad manifests", () => {
  it("refuses a manifest declared larger than 4 MiB", async () => {
    hostile.addRule({
      match: { path: /\/manifests\/v1$/ },
      action: { kind: "manifestBody", body: Buffer.alloc(5 * 1024 * 1024, 0x20) },
    });
    const err = await failure(copy("oversized"));
    expect(err.reason).toBe("ManifestInvalid");
    expect(err.message).toContain("over the 4194304-byte limit");
  });

  it("stops reading an undeclared manifest body past 4 MiB", async () => {
    hostile.addRule({
      match: { path: /\/manifests\/v1$/ },
      action: { kind: "manifestBody", body: Buffer.alloc(6 * 1024 * 1024, 0x20), declareLength: false },
    });
    const err = await failure(copy("oversized-chunked"));
    expect(err.reason).toBe("ManifestInvalid");
    expect(err.message).toContain("larger than the 4194304-byte manifest limit");
  });

  it("refuses a manifest that is not JSON", async () => {
    hostile.addRule({
      match: { path: /\/manifests\/v1$/ },
      action: { kind: "manifestBody", body: Buffer.from("<html>not a manifest</html>") },
    });
    const err = await failure(copy("not-json"));
    expect(err.reason).toBe("ManifestInvalid");
  });

  it("refuses manifest bytes that do not hash to the digest asked for", async () => {
    hostile.addRule({
      match: { path: /\/manifests\/sha256:/ },
      action: { kind: "manifestBody", body: Buffer.from('{"schemaVersion":2,"layers":[]}') },
    });
    const copier = new Copier({ client: client() });
    const err = await failure(
      copier.copy(
        parseReference(`${hostile.host}/h/app@${image.manifest.digest}`),
        parseReference(`${cache.host}/h/wrong-bytes:v1`),
      ),
    );
    expect(err.reason).toBe("DigestMismatch");
  });
});

describe("rate limits and error bodies", () => {
  it("rides out a burst of 503s with Retry-After, waiting as asked", async () => {
    hostile.addRule({
      match: { path: /\/manifests\/v1$/ },
      times: 3,
      action: { kind: "status", status: 503, retryAfter: "2" },
    });
    const clock = recordingClock();
    const result = await copy("burst", { clock, retry: { attempts: 5, baseDelayMs: 10, maxDelayMs: 100 } });
    expect(result.targetDigest).toBe(image.manifest.digest);
    expect(clock.sleeps.slice(0, 3)).toEqual([2_000, 2_000, 2_000]);
  });

  it("honours a Retry-After longer than 30 s up to the 5 min cap", async () => {
    hostile.addRule({
      match: { path: /\/manifests\/v1$/ },
      action: { kind: "status", status: 429, retryAfter: "99999" },
    });
    const clock = recordingClock();
    await copy("long-wait", { clock });
    expect(clock.sleeps).toEqual([300_000]);
  });

  it("reports a long Retry-After as 'retrying in Ns' instead of holding the caller, when asked to", async () => {
    hostile.addRule({
      match: { path: /\/manifests\/v1$/ },
      action: { kind: "status", status: 429, retryAfter: "120" },
    });
    const clock = recordingClock();
    const err = await failure(
      copy("reported-wait", { clock, retry: { attempts: 5, maxDelayMs: 30_000, longWaits: "report" } }),
    );
    expect(err.reason).toBe("RateLimited");
    expect(err.message).toContain("retrying in 120s (Retry-After)");
    expect(retryAfterOf(err)).toBe(120_000);
    expect(clock.sleeps).toEqual([]);
  });

  it("keeps HTML, control characters and bulk of an error body out of the message", async () => {
    const page = `<html><head><style>body{color:red}</style><script>alert("x")</script></head><body><h1>Bad\u001b[31m&amp; gateway\u202e</h1>${"<p>filler</p>".repeat(200_000)}</body></html>`;
    hostile.addRule({
      match: { path: /\/manifests\/v1$/ },
      times: 2,
      action: { kind: "status", status: 502, body: page, contentType: "text/html" },
    });
    const err = await failure(copy("html"));
    expect(err.reason).toBe("UpstreamUnavailable");
    expect(err.message).toContain("Bad & gateway");
    // biome-ignore lint/suspicious/noControlCharactersInRegex: asserting their absence
    expect(err.message).not.toMatch(/[<>\u0000-\u001f\u202e]|\[31m|alert|color:red/);
    expect(err.message.length).toBeLessThan(500);
  });
});

describe("through stowage mirror", () => {
  const mirror = (tag: string, ...flags: string[]) =>
    stowage([
      "mirror",
      "--no-blob-index",
      "--quiet",
      "--insecure-registry",
      hostile.host,
      "--insecure-registry",
      cache.host,
      ...flags,
      `${hostile.host}/h/app:v1`,
      `${cache.host}/h/${tag}:v1`,
    ]);

  it("exits 1 with UpstreamTimeout when the upstream never answers, after --request-timeout per attempt", async () => {
    hostile.addRule({
      match: { path: /\/manifests\// },
      times: Number.POSITIVE_INFINITY,
      action: { kind: "hang" },
    });
    const run = await mirror("cli-hang", "--request-timeout", "1s");
    expect(run.code).toBe(1);
    expect(run.stderr).toMatch(/^stowage: UpstreamTimeout: /);
    expect(run.stderr).toContain(hostile.host);
  });

  it("prints an upstream's HTML error page as one short plain line", async () => {
    const page = `<html><body><h1>Service\u0007 Unavailable</h1><script>evil()</script>${"x".repeat(100_000)}</body></html>`;
    hostile.addRule({
      match: { path: /\/manifests\// },
      times: Number.POSITIVE_INFINITY,
      action: { kind: "status", status: 500, body: page, contentType: "text/html" },
    });
    const run = await mirror("cli-html");
    expect(run.code).toBe(1);
    const lines = run.stderr.split("\n").filter((line) => line.length > 0);
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatch(/^stowage: UpstreamUnavailable: .*Service Unavailable/);
    expect(lines[0]).not.toMatch(/<|evil/);
    expect(lines[0]).not.toContain("\u0007");
    expect(lines[0].length).toBeLessThan(600);
  });

  it("follows a blob redirect to object storage and mirrors the image", async () => {
    const digest = largestLayer().descriptor.digest;
    hostile.addRule({
      match: { method: "GET", path: blobPath(digest) },
      action: { kind: "redirect", location: `${elsewhere.url}/v2/h/app/blobs/${digest}` },
    });
    const run = await mirror("cli-redirect");
    expect(run.stderr).toBe("");
    expect(run.code).toBe(0);
  });
});
