import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { RegistryClient } from "../../src/oci/registry.ts";
import { type ControllerProcess, startControllerProcess } from "../../testkit/controllerProcess.ts";
import { type FaultProxy, startFaultProxy } from "../../testkit/faultProxy.ts";
import { type PushedImage, pushSinglePlatformImage } from "../../testkit/images.ts";
import { type RunningRegistry, startRegistry } from "../../testkit/registry.ts";
import { type Cluster, eventually, modelImage, startCluster } from "./helpers.ts";

const MiB = 1024 * 1024;
// Short leases so the replacement process takes over from the killed one within seconds.
const leaseFlags = ["--lease-duration", "3s", "--renew-deadline", "2s", "--retry-period", "500ms"];

let cluster: Cluster;
let upstream: RunningRegistry;
let proxy: FaultProxy;
let cache: RunningRegistry;
let big: PushedImage;
const controllers: ControllerProcess[] = [];

const manifestAccept = [
  "application/vnd.oci.image.manifest.v1+json",
  "application/vnd.oci.image.index.v1+json",
  "application/vnd.docker.distribution.manifest.v2+json",
].join(", ");

/**
 * One look at the cache as a node would see it: when the tag resolves, every blob the manifest
 * references must be there. Returns the problems seen (empty when consistent or not yet pushed).
 */
async function inconsistenciesNow(repository: string, tag: string): Promise<string[]> {
  const response = await fetch(`${cache.url}/v2/${repository}/manifests/${tag}`, {
    headers: { accept: manifestAccept },
  });
  if (response.status === 404) {
    await response.body?.cancel();
    return [];
  }
  if (response.status !== 200) return [`manifest GET answered ${response.status}`];
  const manifest = (await response.json()) as { config: { digest: string }; layers: { digest: string }[] };
  const problems: string[] = [];
  for (const digest of [manifest.config.digest, ...manifest.layers.map((l) => l.digest)]) {
    const blob = await fetch(`${cache.url}/v2/${repository}/blobs/${digest}`, { method: "HEAD" });
    if (blob.status !== 200) problems.push(`manifest served while blob ${digest} answered ${blob.status}`);
  }
  return problems;
}

beforeAll(async () => {
  [cluster, upstream, cache] = await Promise.all([startCluster(), startRegistry(), startRegistry()]);
  proxy = await startFaultProxy(upstream.url);
  const owner = new RegistryClient({ insecureHosts: [upstream.host] });
  // ~150 MiB in six layers, so a copy has several blobs in flight and some already done.
  big = await pushSinglePlatformImage(owner, { registry: upstream.host, repository: "models/big" }, "v1", {
    layers: Array.from({ length: 6 }, (_, i) => ({
      seed: `restart-big/${i}`,
      size: 25 * MiB,
      format: "raw" as const,
    })),
  });
  await owner.close();
});

afterAll(async () => {
  await Promise.all(controllers.map((c) => c.kill("SIGKILL")));
  await Promise.all([cluster?.stop(), upstream?.stop(), proxy?.stop(), cache?.stop()]);
});

describe("controller restarted mid-copy", () => {
  it("resumes in a new process after SIGKILL and completes, never exposing a manifest with missing blobs", async () => {
    // Each blob download waits before it starts, so the copy is still running when we kill it.
    proxy.addRule({
      match: { method: "GET", path: /\/blobs\/sha256:/ },
      times: 1000,
      action: { kind: "delay", ms: 1500 },
    });
    const repository = `${proxy.host.replace(":", "_")}/models/big`;
    const problems: string[] = [];
    let observations = 0;
    let polling = true;
    const poller = (async () => {
      while (polling) {
        try {
          problems.push(...(await inconsistenciesNow(repository, "v1")));
          observations++;
        } catch {
          // the cache stopping at teardown is not an inconsistency
        }
        await new Promise((resolve) => setTimeout(resolve, 100));
      }
    })();

    let landed: string[] = [];
    try {
      const args = ["--insecure-registry", proxy.host, ...leaseFlags];
      const first = await startControllerProcess({
        kubeconfig: cluster.api.kubeconfigPath,
        cacheRegistry: cache.url,
        identity: "first",
        args,
      });
      controllers.push(first);
      await cluster.apply([modelImage("big", { image: `${proxy.host}/models/big:v1` })]);

      // Kill once at least one layer has landed in the cache but the image is not complete.
      const layerDigests = big.image.layers.map((l) => l.descriptor.digest);
      landed = await eventually(
        "a first layer pushed to the cache",
        async () => {
          const puts = (await cache.requests()).filter((r) => r.method === "PUT" && r.status === 201);
          const done = layerDigests.filter((d) => puts.some((r) => decodeURIComponent(r.path).includes(d)));
          return done.length > 0 ? done : undefined;
        },
        60_000,
        50,
      );
      const exit = await first.kill("SIGKILL");
      expect(exit.signal).toBe("SIGKILL");
      const atKill = await fetch(`${cache.url}/v2/${repository}/manifests/v1`, {
        method: "HEAD",
        headers: { accept: manifestAccept },
      });
      expect(atKill.status).toBe(404); // the copy really was interrupted

      const second = await startControllerProcess({
        kubeconfig: cluster.api.kubeconfigPath,
        cacheRegistry: cache.url,
        identity: "second",
        args,
      });
      controllers.push(second);
      const wait = await cluster.kubectl(["wait", "--for=condition=Ready", "mi/big", "--timeout=90s"]);
      expect(wait.code, wait.stderr).toBe(0);
    } finally {
      polling = false;
      await poller;
    }

    const head = await fetch(`${cache.url}/v2/${repository}/manifests/v1`, {
      method: "HEAD",
      headers: { accept: manifestAccept },
    });
    expect(head.headers.get("docker-content-digest")).toBe(big.digest);
    expect(problems).toEqual([]);
    expect(observations).toBeGreaterThan(3);
    // What the first process finished was not uploaded again by the second.
    const puts = (await cache.requests()).filter((r) => r.method === "PUT" && r.status === 201);
    for (const digest of landed) {
      expect(puts.filter((r) => decodeURIComponent(r.path).includes(digest))).toHaveLength(1);
    }
    expect(await inconsistenciesNow(repository, "v1")).toEqual([]);
  }, 150_000);
});
