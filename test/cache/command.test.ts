import { type ChildProcess, spawn } from "node:child_process";
import { createHash, randomBytes } from "node:crypto";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { request } from "undici";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { parseCacheArgs } from "../../src/cache/command.ts";
import { cacheHostSegment } from "../../src/cache/layout.ts";
import { RegistryClient } from "../../src/oci/registry.ts";
import { UsageError } from "../../src/util/flags.ts";
import { pushSinglePlatformImage } from "../../testkit/images.ts";
import { freePort } from "../../testkit/ports.ts";
import { type RunningRegistry, startRegistry } from "../../testkit/registry.ts";
import { eventually } from "../support/eventually.ts";

const root = join(import.meta.dirname, "../..");

function run(args: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [join(root, "bin/stowage.js"), "cache", ...args], { env: {} });
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (chunk) => {
      stdout += chunk;
    });
    child.stderr.on("data", (chunk) => {
      stderr += chunk;
    });
    // "close", not "exit": the output may still be in the pipes when the process exits.
    child.on("close", (code) => resolve({ code, stdout, stderr }));
  });
}

describe("stowage cache flags", () => {
  it("prints its help and exits 0; bad usage exits 2 and says which flag", async () => {
    const help = await run(["--help"]);
    expect(help.code).toBe(0);
    expect(help.stdout).toContain("--storage-registry URL");
    expect(help.stdout).toContain("--tag-ttl DURATION");
    const missing = await run(["--upstream-host", "ghcr.io"]);
    expect(missing.code).toBe(2);
    expect(missing.stderr).toContain("--storage-registry");
  });

  it("reads flags and STOWAGE_* variables, refusing a short node-token secret", async () => {
    const dir = await mkdtemp(join(tmpdir(), "stowage-cache-flags-"));
    try {
      const parsed = await parseCacheArgs(
        ["--storage-registry", "http://127.0.0.1:5000", "--tag-ttl", "5s"],
        {
          STOWAGE_UPSTREAM_HOST: "ghcr.io,https://nvcr.io/",
        },
      );
      expect(parsed).not.toBe("help");
      if (parsed === "help") return;
      expect(parsed.config.upstreamHosts).toEqual(["ghcr.io", "nvcr.io"]);
      expect(parsed.config.tagTtlMs).toBe(5000);
      expect(parsed.config.storageUrl).toBe("http://127.0.0.1:5000");
      const short = join(dir, "short");
      await writeFile(short, "too-short");
      await expect(
        parseCacheArgs(
          ["--storage-registry", "http://x:5000", "--upstream-host", "*", "--node-token-secret-file", short],
          {},
        ),
      ).rejects.toThrow(UsageError);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});

describe("stowage cache process", () => {
  let upstream: RunningRegistry;
  let storage: RunningRegistry;
  let child: ChildProcess | undefined;
  let dir: string;

  beforeAll(async () => {
    [upstream, storage] = await Promise.all([startRegistry(), startRegistry()]);
    dir = await mkdtemp(join(tmpdir(), "stowage-cache-process-"));
  });

  afterAll(async () => {
    if (child && child.exitCode === null) {
      const exited = new Promise((resolve) => child?.once("exit", resolve));
      child.kill("SIGKILL");
      await exited;
    }
    await Promise.all([upstream?.stop(), storage?.stop()]);
    await rm(dir, { recursive: true, force: true });
  });

  it("serves pulls, /healthz, /readyz and /metrics on the health port, and on SIGTERM finishes a response under way, then exits 0", async () => {
    const client = new RegistryClient({ insecureHosts: [upstream.host], retry: { attempts: 2 } });
    const pushed = await pushSinglePlatformImage(
      client,
      { registry: upstream.host, repository: "acme/cli" },
      "v1",
      { layerSizes: [32 * 1024, 24 * 1024 * 1024] },
    );
    await client.close();
    const [port, healthPort] = [await freePort(), await freePort()];
    const secretFile = join(dir, "node-token-secret");
    await writeFile(secretFile, randomBytes(32).toString("hex"));
    const started = spawn(
      process.execPath,
      [
        join(root, "bin/stowage.js"),
        "cache",
        `--storage-registry=${storage.url}`,
        `--upstream-host=${upstream.host}`,
        `--insecure-registry=${upstream.host}`,
        `--node-token-secret-file=${secretFile}`,
        `--spool-dir=${dir}`,
        `--port=${port}`,
        `--health-port=${healthPort}`,
        "--ecr=false",
        "--log-level=warn",
      ],
      { stdio: ["ignore", "ignore", "pipe"] },
    );
    child = started;
    let stderr = "";
    started.stderr?.on("data", (chunk) => {
      stderr += chunk;
    });
    const health = `http://127.0.0.1:${healthPort}`;
    await eventually(
      "the cache's /readyz",
      async () => (await request(`${health}/readyz`)).statusCode === 200,
      20_000,
      100,
    );
    const layer = pushed.image.layers[0].descriptor;
    const blob = await request(
      `http://127.0.0.1:${port}/v2/${cacheHostSegment(upstream.host)}/acme/cli/blobs/${layer.digest}`,
    );
    expect(blob.statusCode).toBe(200);
    const bytes = Buffer.from(await blob.body.arrayBuffer());
    expect(`sha256:${createHash("sha256").update(bytes).digest("hex")}`).toBe(layer.digest);
    expect((await request(`${health}/healthz`)).statusCode).toBe(200);
    const metrics = await (await request(`${health}/metrics`)).body.text();
    expect(metrics).toContain('stowage_cache_misses_total{kind="blob"} 1');
    expect(metrics).toContain("process_resident_memory_bytes");
    // A slow reader: the response is under way (and held back by the socket) at SIGTERM.
    const big = pushed.image.layers[1].descriptor;
    const slow = await request(
      `http://127.0.0.1:${port}/v2/${cacheHostSegment(upstream.host)}/acme/cli/blobs/${big.digest}`,
    );
    expect(slow.statusCode).toBe(200);
    const exited = new Promise<number | null>((resolve) => started.once("exit", resolve));
    started.kill("SIGTERM");
    await new Promise((resolve) => setTimeout(resolve, 500));
    const hash = createHash("sha256");
    for await (const chunk of slow.body) hash.update(chunk as Buffer);
    expect(`sha256:${hash.digest("hex")}`).toBe(big.digest);
    expect(await exited, stderr).toBe(0);
  });
});
