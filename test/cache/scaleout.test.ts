/**
 * Scale-out on shared object storage: two CNCF distribution registries storing in one bucket of a
 * real S3 server (SeaweedFS, testkit/s3.ts) with one shared http.secret, and two `stowage cache`
 * fronts, one per registry, run as processes the way the chart runs them.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { createHash, randomBytes } from "node:crypto";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { request } from "undici";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { stringify } from "yaml";
import { cacheHostSegment } from "../../src/cache/layout.ts";
import { collectWhilePaused, garbageCollect } from "../../src/controller/cachegc/collect.ts";
import { evictUndeclared } from "../../src/controller/cachegc/evict.ts";
import { createEvictionMetrics, createRegistry } from "../../src/metrics.ts";
import { RegistryClient } from "../../src/oci/registry.ts";
import { silentLogger } from "../../src/util/log.ts";
import { type PushedImage, pushSinglePlatformImage } from "../../testkit/images.ts";
import { freePort } from "../../testkit/ports.ts";
import { type RegistryOptions, type RunningRegistry, startRegistry } from "../../testkit/registry.ts";
import { type RunningS3, startS3 } from "../../testkit/s3.ts";
import { eventually } from "../support/eventually.ts";

const root = join(import.meta.dirname, "../..");

interface FrontProcess {
  url: string;
  metrics(): Promise<string>;
  stop(): Promise<void>;
}

async function startFront(
  storageUrl: string,
  upstreamHost: string,
  spoolDir: string,
  ports: { port: number; healthPort: number },
  instance: string,
): Promise<FrontProcess> {
  const child: ChildProcess = spawn(
    process.execPath,
    [
      join(root, "bin/stowage.js"),
      "cache",
      `--storage-registry=${storageUrl}`,
      `--upstream-host=${upstreamHost}`,
      `--insecure-registry=${upstreamHost}`,
      `--spool-dir=${spoolDir}`,
      `--port=${ports.port}`,
      `--health-port=${ports.healthPort}`,
      `--instance=${instance}`,
      "--ecr=false",
      "--log-level=warn",
    ],
    { stdio: ["ignore", "ignore", "pipe"] },
  );
  let stderr = "";
  child.stderr?.on("data", (chunk) => {
    stderr = (stderr + chunk).slice(-4000);
  });
  const health = `http://127.0.0.1:${ports.healthPort}`;
  await eventually(
    "the front's /readyz",
    async () => {
      if (child.exitCode !== null) throw new Error(`stowage cache exited ${child.exitCode}: ${stderr}`);
      return (await request(`${health}/readyz`).catch(() => undefined))?.statusCode === 200;
    },
    20_000,
    100,
  );
  return {
    url: `http://127.0.0.1:${ports.port}`,
    metrics: async () => (await request(`${health}/metrics`)).body.text(),
    async stop() {
      if (child.exitCode !== null || child.signalCode !== null) return;
      const exited = new Promise((resolve) => child.once("exit", resolve));
      child.kill("SIGTERM");
      await exited;
    },
  };
}

function metric(text: string, series: string): number {
  const line = text.split("\n").find((l) => l.startsWith(`${series} `));
  return line ? Number(line.slice(series.length + 1)) : 0;
}

function sha256(bytes: Buffer): string {
  return `sha256:${createHash("sha256").update(bytes).digest("hex")}`;
}

/** Pulls an image by digest through a front (manifest, config, layers) and checks every digest. */
async function pullByDigest(frontUrl: string, prefix: string, pushed: PushedImage): Promise<void> {
  const manifest = await request(`${frontUrl}${prefix}/manifests/${pushed.digest}`, {
    headers: { accept: pushed.mediaType },
  });
  expect(manifest.statusCode, `manifest ${pushed.digest} through ${frontUrl}`).toBe(200);
  expect(sha256(Buffer.from(await manifest.body.arrayBuffer()))).toBe(pushed.digest);
  for (const blob of pushed.image.blobs) {
    const response = await request(`${frontUrl}${prefix}/blobs/${blob.descriptor.digest}`);
    expect(response.statusCode, `blob ${blob.descriptor.digest} through ${frontUrl}`).toBe(200);
    expect(sha256(Buffer.from(await response.body.arrayBuffer()))).toBe(blob.descriptor.digest);
  }
}

describe("two registries on one S3 bucket behind two fronts", () => {
  let s3: RunningS3;
  let upstream: RunningRegistry;
  const registries: RunningRegistry[] = [];
  const fronts: FrontProcess[] = [];
  let spoolDir: string;
  let registryOptions: RegistryOptions;

  beforeAll(async () => {
    s3 = await startS3();
    registryOptions = { s3, httpSecret: randomBytes(32).toString("hex") };
    spoolDir = await mkdtemp(join(tmpdir(), "stowage-scaleout-"));
    upstream = await startRegistry();
    registries.push(await startRegistry(registryOptions), await startRegistry(registryOptions));
  }, 600_000);

  afterAll(async () => {
    for (const front of fronts) await front.stop();
    await Promise.all([...registries.map((r) => r.stop()), upstream?.stop()]);
    await s3?.stop();
    if (spoolDir) await rm(spoolDir, { recursive: true, force: true });
  });

  it("continues on one registry an upload started on the other, since they share http.secret", async () => {
    const [one, two] = registries;
    const repository = "acme/upload";
    const started = await request(`${one.url}/v2/${repository}/blobs/uploads/`, { method: "POST" });
    await started.body.dump();
    expect(started.statusCode).toBe(202);
    const location = String(started.headers.location);
    // The upload's state travels in the URL, signed with http.secret: send it to the other one.
    const onTwo = (url: string) => {
      const parsed = new URL(url, one.url);
      return `${two.url}${parsed.pathname}${parsed.search}`;
    };
    const bytes = randomBytes(300 * 1024);
    const patched = await request(onTwo(location), {
      method: "PATCH",
      body: bytes.subarray(0, 100 * 1024),
      headers: { "content-type": "application/octet-stream" },
    });
    await patched.body.dump();
    expect(patched.statusCode).toBe(202);
    const back = new URL(String(patched.headers.location), two.url);
    const digest = sha256(bytes);
    back.searchParams.set("digest", digest);
    const finished = await request(`${one.url}${back.pathname}${back.search}`, {
      method: "PUT",
      body: bytes.subarray(100 * 1024),
      headers: { "content-type": "application/octet-stream" },
    });
    await finished.body.dump();
    expect(finished.statusCode).toBe(201);
    for (const registry of registries) {
      const blob = await request(`${registry.url}/v2/${repository}/blobs/${digest}`);
      expect(sha256(Buffer.from(await blob.body.arrayBuffer()))).toBe(digest);
    }
  });

  it("serves through both fronts an image pushed through one registry and one pulled through the other front, after a restart of either registry and either front, until evicted from the bucket with both registries read-only", async () => {
    const segment = cacheHostSegment(upstream.host);
    const client = new RegistryClient({
      insecureHosts: [upstream.host, ...registries.map((r) => r.host)],
      retry: { attempts: 2 },
    });
    // Declared: upstream, and mirrored into the cache (through registry 1) as the controller does.
    const declaredSpec = { seed: "declared", layerSizes: [64 * 1024, 2 * 1024 * 1024] };
    await pushSinglePlatformImage(
      client,
      { registry: upstream.host, repository: "acme/declared" },
      "v1",
      declaredSpec,
    );
    const declared = await pushSinglePlatformImage(
      client,
      { registry: registries[0].host, repository: `${segment}/acme/declared` },
      "v1",
      declaredSpec,
    );
    // Undeclared: only upstream, cached on first pull.
    const undeclared = await pushSinglePlatformImage(
      client,
      { registry: upstream.host, repository: "acme/undeclared" },
      "v1",
      { layerSizes: [32 * 1024, 3 * 1024 * 1024] },
    );
    await client.close();
    const ports = await Promise.all(
      [0, 1].map(async () => ({ port: await freePort(), healthPort: await freePort() })),
    );
    fronts.push(
      await startFront(registries[0].url, upstream.host, spoolDir, ports[0], "front-0"),
      await startFront(registries[1].url, upstream.host, spoolDir, ports[1], "front-1"),
    );
    const prefix = (repository: string) => `/v2/${segment}/${repository}`;

    await pullByDigest(fronts[1].url, prefix("acme/declared"), declared);
    await pullByDigest(fronts[0].url, prefix("acme/undeclared"), undeclared);
    expect(metric(await fronts[0].metrics(), 'stowage_cache_misses_total{kind="blob"}')).toBe(
      undeclared.image.blobs.length,
    );
    // Front 1's miss lands in the shared bucket (committed just after the last byte went out):
    // once registry 2 has it, front 2 serves it from there.
    for (const blob of undeclared.image.blobs) {
      await eventually(
        `blob ${blob.descriptor.digest} in registry 2`,
        async () => {
          const head = await request(
            `${registries[1].url}${prefix("acme/undeclared")}/blobs/${blob.descriptor.digest}`,
            {
              method: "HEAD",
            },
          );
          await head.body.dump();
          return head.statusCode === 200;
        },
        10_000,
        50,
      );
    }
    await pullByDigest(fronts[1].url, prefix("acme/undeclared"), undeclared);
    const frontTwo = await fronts[1].metrics();
    expect(metric(frontTwo, 'stowage_cache_misses_total{kind="blob"}')).toBe(0);
    expect(metric(frontTwo, 'stowage_cache_hits_total{kind="blob"}')).toBe(
      declared.image.blobs.length + undeclared.image.blobs.length,
    );

    // Every registry and front restarts, one at a time, on its port; blobs keep coming from the
    // bucket (the upstream stays up only because the fronts check with it who may pull).
    const upstreamBlobGets = async () =>
      (await upstream.requests()).filter((r) => r.method === "GET" && r.path.includes("/blobs/")).length;
    expect(await upstreamBlobGets()).toBe(undeclared.image.blobs.length);
    for (const i of [0, 1]) {
      const port = Number(registries[i].host.split(":")[1]);
      await registries[i].stop();
      registries[i] = await startRegistry({ ...registryOptions, port });
      await fronts[i].stop();
      fronts[i] = await startFront(registries[i].url, upstream.host, spoolDir, ports[i], `front-${i}`);
      for (const front of fronts) {
        await pullByDigest(front.url, prefix("acme/declared"), declared);
        await pullByDigest(front.url, prefix("acme/undeclared"), undeclared);
      }
    }
    expect(await upstreamBlobGets()).toBe(undeclared.image.blobs.length);

    // Eviction on the shared bucket: a stale undeclared image, pulled before the others.
    const pusher = new RegistryClient({ insecureHosts: [upstream.host], retry: { attempts: 2 } });
    const stale = await pushSinglePlatformImage(
      pusher,
      { registry: upstream.host, repository: "acme/stale" },
      "v1",
      { layerSizes: [16 * 1024, 1024 * 1024] },
    );
    await pusher.close();
    await pullByDigest(fronts[0].url, prefix("acme/stale"), stale);
    await eventually(
      "the stale image promoted",
      async () =>
        (
          await request(`${registries[1].url}${prefix("acme/stale")}/manifests/${stale.digest}`, {
            method: "HEAD",
            headers: { accept: stale.mediaType },
          })
        ).statusCode === 200,
      10_000,
      50,
    );
    await new Promise((resolve) => setTimeout(resolve, 5));
    await pullByDigest(fronts[1].url, prefix("acme/undeclared"), undeclared);
    await pullByDigest(fronts[0].url, prefix("acme/declared"), declared);
    for (const front of fronts) await front.stop(); // each writes its pull record

    const gcConfig = join(spoolDir, "gc.yml");
    await writeFile(
      gcConfig,
      stringify({
        version: 0.1,
        storage: {
          s3: {
            accesskey: s3.accessKey,
            secretkey: s3.secretKey,
            region: s3.region,
            regionendpoint: s3.endpoint,
            forcepathstyle: true,
            bucket: s3.bucket,
            rootdirectory: "/stowage",
          },
        },
      }),
    );
    const undeclaredBytes =
      undeclared.image.blobs.reduce((sum, blob) => sum + blob.descriptor.size, 0) +
      undeclared.image.manifest.bytes.length;
    const restartAll = async (readOnly: boolean) => {
      for (const i of [0, 1]) {
        const port = Number(registries[i].host.split(":")[1]);
        await registries[i].stop();
        registries[i] = await startRegistry({ ...registryOptions, port, readOnly });
      }
    };
    const gcClient = new RegistryClient({
      insecureHosts: registries.map((r) => r.host),
      retry: { attempts: 2 },
    });
    let collected: string[] = [];
    const result = await evictUndeclared({
      client: gcClient,
      registry: registries[0].host,
      budgetBytes: undeclaredBytes + 1024,
      metrics: createEvictionMetrics(createRegistry()),
      logger: silentLogger(),
      collectGarbage: async () => {
        const env = Object.fromEntries(
          Object.entries(process.env).filter(([name]) => !name.startsWith("AWS_")),
        );
        collected = (
          await collectWhilePaused({ pause: () => restartAll(true), resume: () => restartAll(false) }, () =>
            garbageCollect({ configPath: gcConfig, env }),
          )
        ).blobs;
      },
    });
    await gcClient.close();
    expect(result.evicted.map((e) => e.digest)).toEqual([stale.digest]);
    const staleLayers = stale.image.blobs.map((b) => b.descriptor.digest);
    expect(collected).toEqual(expect.arrayContaining(staleLayers));
    for (const registry of registries) {
      const status = async (path: string, accept?: string) => {
        const response = await request(`${registry.url}${path}`, {
          method: "HEAD",
          headers: accept ? { accept } : {},
        });
        await response.body.dump();
        return response.statusCode;
      };
      expect(await status(`${prefix("acme/stale")}/manifests/${stale.digest}`, stale.mediaType)).toBe(404);
      for (const digest of staleLayers)
        expect(await status(`${prefix("acme/stale")}/blobs/${digest}`)).toBe(404);
      for (const [name, image] of [
        ["acme/declared", declared],
        ["acme/undeclared", undeclared],
      ] as const) {
        expect(await status(`${prefix(name)}/manifests/${image.digest}`, image.mediaType)).toBe(200);
        for (const blob of image.image.blobs)
          expect(await status(`${prefix(name)}/blobs/${blob.descriptor.digest}`)).toBe(200);
      }
    }
  }, 300_000);
});
