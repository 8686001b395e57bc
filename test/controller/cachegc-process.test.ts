/**
 * `stowage controller --cache-size-budget` as a process: its eviction loop reads the fronts' pull
 * records in the cache registry and deletes the least recently pulled untagged image over budget.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { loadCrd } from "../../src/api/crds.ts";
import { PullLog } from "../../src/cache/pulls.ts";
import { RegistryClient } from "../../src/oci/registry.ts";
import { systemClock } from "../../src/util/clock.ts";
import { silentLogger } from "../../src/util/log.ts";
import type { TestCluster } from "../../testkit/cluster.ts";
import { type ControllerProcess, startControllerProcess } from "../../testkit/controllerProcess.ts";
import { pushSinglePlatformImage } from "../../testkit/images.ts";
import { type RunningRegistry, startRegistry } from "../../testkit/registry.ts";
import { eventually, startCluster } from "../kube/helpers.ts";

let api: TestCluster;
let cache: RunningRegistry;
let controller: ControllerProcess | undefined;
let client: RegistryClient;

beforeAll(async () => {
  ({ cluster: api } = await startCluster({ crds: [loadCrd("modelimages.stowage.dev") as never] }));
  cache = await startRegistry();
  client = new RegistryClient({ insecureHosts: [cache.host], retry: { attempts: 2 } });
}, 60_000);

afterAll(async () => {
  const exit = await controller?.kill("SIGTERM");
  await client?.close();
  await cache?.stop();
  await api?.stop();
  expect(exit?.code).toBe(0);
});

describe("stowage controller with a cache size budget", () => {
  it("evicts the least recently pulled undeclared image from the cache registry and counts it", async () => {
    const repository = "docker.io/acme/tools";
    // Two undeclared images (about 330 KiB each) as the front stores them: by digest, untagged,
    // with pull records.
    const older = await pushSinglePlatformImage(client, { registry: cache.host, repository }, "older");
    const newer = await pushSinglePlatformImage(client, { registry: cache.host, repository }, "newer");
    for (const image of [older, newer]) {
      const manifest = await client.getManifest({ registry: cache.host, repository }, image.digest);
      await client.deleteManifest({ registry: cache.host, repository }, image.digest);
      await client.putManifest({ registry: cache.host, repository }, image.digest, manifest);
    }
    // Deleting a manifest by digest removes its tags (distribution 2.8); none is left.
    expect(await client.listTags({ registry: cache.host, repository }).catch(() => [])).toEqual([]);
    let now = 1_000;
    const pulls = new PullLog({
      client,
      registry: cache.host,
      instance: "front-0",
      clock: { now: () => now, sleep: systemClock.sleep },
      logger: silentLogger(),
    });
    pulls.record(repository, older.digest);
    now = 2_000;
    pulls.record(repository, newer.digest);
    await pulls.flush();

    controller = await startControllerProcess({
      kubeconfig: api.kubeconfigPath,
      cacheRegistry: cache.url,
      args: [
        "--leader-elect=false",
        "--prewarm=false",
        "--cache-size-budget=400Ki",
        "--cache-gc-interval=200ms",
      ],
    });
    await eventually(
      "an eviction counted",
      async () =>
        (await controller?.health("/metrics"))?.body.includes("stowage_cache_evictions_total 1") ?? false,
      20_000,
    );
    expect(await client.headManifest({ registry: cache.host, repository }, older.digest)).toBeUndefined();
    expect((await client.headManifest({ registry: cache.host, repository }, newer.digest))?.digest).toBe(
      newer.digest,
    );
  }, 60_000);
});
