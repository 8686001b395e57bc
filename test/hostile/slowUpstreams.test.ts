/**
 * The probe's worst case, kept as a hostile-suite case: four ModelImages whose upstreams accept
 * connections and never answer, and one healthy ModelImage, on a controller with four
 * workers. The healthy one must still sync (per-request deadlines, the manifest-check
 * deadline and the per-host worker limit bound what a hung upstream can hold). How long it
 * waited is printed for the record, not asserted (timings belong in bench/).
 */
import { afterAll, beforeAll, expect, it } from "vitest";
import { type HostileRegistry, startHostileRegistry } from "../../testkit/hostileRegistry.ts";
import { buildImage } from "../../testkit/images.ts";
import { type RunningRegistry, startRegistry } from "../../testkit/registry.ts";
import {
  createModelImage,
  createNamespaces,
  startCluster,
  startController,
  waitForCondition,
} from "../controller/modelimage-harness.ts";
import { eventually } from "../kube/helpers.ts";

let cluster: Awaited<ReturnType<typeof startCluster>>;
let hung: HostileRegistry[];
let healthy: HostileRegistry;
let cache: RunningRegistry;
let controller: Awaited<ReturnType<typeof startController>>;

beforeAll(async () => {
  [cluster, cache, healthy, ...hung] = await Promise.all([
    startCluster(),
    startRegistry(),
    startHostileRegistry(),
    ...Array.from({ length: 4 }, () => startHostileRegistry()),
  ]);
  for (const registry of hung) {
    registry.addRule({
      times: Number.POSITIVE_INFINITY,
      match: { path: /^\/v2\/.+/ },
      action: { kind: "hang" },
    });
  }
  const image = await buildImage({ layers: [{ seed: "slow-upstreams/ok", size: 100_000 }] });
  const blobs: Buffer[] = [];
  for (const blob of image.blobs) {
    const chunks: Buffer[] = [];
    for await (const chunk of blob.open()) chunks.push(chunk as Buffer);
    blobs.push(Buffer.concat(chunks));
  }
  healthy.put("h/ok", "v1", image.manifest, blobs);
  await createNamespaces(cluster.client, "slow");
  controller = await startController(cluster.client, {
    cache: { registry: cache.host, insecure: true },
    insecureRegistries: [healthy.host, ...hung.map((registry) => registry.host)],
    namespaces: ["slow"],
    workers: 4,
    maxConcurrentSyncs: 4,
  });
}, 60_000);

afterAll(async () => {
  await controller?.stop();
  await Promise.all([
    cluster?.api.stop(),
    cache?.stop(),
    healthy?.stop(),
    ...(hung ?? []).map((r) => r.stop()),
  ]);
});

it("syncs a healthy ModelImage while four others point at upstreams that never answer", async () => {
  for (const [index, registry] of hung.entries()) {
    await createModelImage(cluster.client, "slow", `hung-${index}`, { image: `${registry.host}/h/app:v1` });
  }
  // The hung ones hold the workers first.
  await eventually("every hung upstream is being asked", () =>
    hung.every((registry) => registry.seen().some((r) => r.action === "hang")),
  );
  const started = Date.now();
  await createModelImage(cluster.client, "slow", "healthy", { image: `${healthy.host}/h/ok:v1` });
  await waitForCondition(cluster.client, "slow", "healthy", "Synced", "True", undefined, 110_000);
  const waitedMs = Date.now() - started;
  console.log(
    `slow upstreams: the healthy ModelImage synced ${(waitedMs / 1000).toFixed(1)} s after creation`,
  );
  for (const [index] of hung.entries()) {
    await waitForCondition(
      cluster.client,
      "slow",
      `hung-${index}`,
      "Synced",
      "False",
      "UpstreamTimeout",
      110_000,
    );
  }
  expect(hung.every((registry) => registry.seen().some((r) => r.action === "hang"))).toBe(true);
}, 240_000);
