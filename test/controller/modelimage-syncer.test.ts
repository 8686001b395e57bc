/**
 * One copy shared by several ModelImages (same image, same cache repository): one ModelImage's
 * deadline or deletion stops only its own wait; the copy goes on for the others, and is aborted
 * once nobody waits for it. Real registries, the upstream slowed by the fault proxy.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { controllerConfig } from "../../src/controller/config.ts";
import { createRegistries, type Registries } from "../../src/controller/modelimage/registries.ts";
import { Syncer, type SyncRequest } from "../../src/controller/modelimage/sync.ts";
import { createRegistry, createStowageMetrics } from "../../src/metrics.ts";
import { RegistryClient } from "../../src/oci/registry.ts";
import { systemClock } from "../../src/util/clock.ts";
import { silentLogger } from "../../src/util/log.ts";
import { type FaultProxy, startFaultProxy } from "../../testkit/faultProxy.ts";
import { type PushedImage, pushSinglePlatformImage } from "../../testkit/images.ts";
import { type RunningRegistry, startRegistry } from "../../testkit/registry.ts";
import { eventually } from "../kube/helpers.ts";

let upstream: RunningRegistry;
let cache: RunningRegistry;
let proxy: FaultProxy;
let registries: Registries;
let syncer: Syncer;
let reader: RegistryClient;
const images: Record<string, PushedImage> = {};

beforeAll(async () => {
  [upstream, cache] = await Promise.all([startRegistry(), startRegistry()]);
  const owner = new RegistryClient({ insecureHosts: [upstream.host] });
  for (const name of ["shared", "abandoned"]) {
    images[name] = await pushSinglePlatformImage(
      owner,
      { registry: upstream.host, repository: `models/${name}` },
      "v1",
    );
  }
  await owner.close();
  proxy = await startFaultProxy(upstream.url);
  proxy.addRule({
    match: { method: "GET", path: /\/blobs\// },
    times: Number.POSITIVE_INFINITY,
    action: { kind: "delay", ms: 1_500 },
  });
  registries = createRegistries({
    config: controllerConfig({ registry: cache.host, insecure: true }, { insecureRegistries: [proxy.host] }),
    cacheCredentials: () => undefined,
    logger: silentLogger(),
  });
  syncer = new Syncer({
    registries,
    metrics: createStowageMetrics(createRegistry()),
    clock: systemClock,
    maxConcurrentSyncs: 2,
  });
  reader = new RegistryClient({ insecureHosts: [cache.host] });
}, 60_000);

afterAll(async () => {
  await reader?.close();
  await registries?.client.close();
  await proxy?.stop();
  await Promise.all([upstream?.stop(), cache?.stop()]);
});

function request(name: string, signal: AbortSignal): SyncRequest {
  return {
    source: { registry: proxy.host, repository: `models/${name}`, digest: images[name].digest },
    target: { registry: cache.host, repository: `${proxy.host.replace(":", "_")}/models/${name}`, tag: "v1" },
    options: { allPlatforms: true, signal },
    platformKey: "all",
    credentials: () => undefined,
  };
}

describe("a copy shared by several ModelImages", () => {
  it("keeps copying for the others when one gives up, and stops when the last one does", async () => {
    const first = new AbortController();
    const second = new AbortController();
    const firstWait = syncer.sync(request("shared", first.signal));
    const secondWait = syncer.sync(request("shared", second.signal));
    first.abort(new Error("first ModelImage deleted"));
    await expect(firstWait).rejects.toThrow("first ModelImage deleted");
    const { result, shared } = await secondWait;
    expect(shared).toBe(true);
    expect(result.targetDigest).toBe(images.shared.digest);
    const cached = await reader.headManifest(request("shared", second.signal).target, "v1");
    expect(cached?.digest).toBe(images.shared.digest);

    const only = new AbortController();
    const abandoned = syncer.sync(request("abandoned", only.signal));
    // Under way: it read the manifest and waits for its (delayed) blobs.
    await eventually("the copy read the manifest", () =>
      proxy.seen().some((r) => r.method === "GET" && r.path.includes("/models/abandoned/manifests/")),
    );
    only.abort(new Error("deadline"));
    await expect(abandoned).rejects.toThrow("deadline");
    // Past the blob delay a copy that was not aborted pushes its manifest.
    await new Promise((resolve) => setTimeout(resolve, 4_000));
    const tags = await reader.listTags(request("abandoned", only.signal).target).catch(() => [] as string[]);
    expect(tags).toEqual([]);
  });
});
