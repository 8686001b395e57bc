import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Resources } from "../../src/kube/client.ts";
import { RegistryClient } from "../../src/oci/registry.ts";
import { type PushedIndex, pushMultiArchIndex } from "../../testkit/images.ts";
import { type RunningRegistry, startRegistry } from "../../testkit/registry.ts";
import { eventually } from "../kube/helpers.ts";
import {
  createCachedModelImage,
  createNode,
  findNodeCache,
  modelImageClient,
  startCluster,
  startPlanner,
} from "./prewarm-harness.ts";

let cluster: Awaited<ReturnType<typeof startCluster>>;
let cache: RunningRegistry;
let planner: Awaited<ReturnType<typeof startPlanner>>;
let llama: PushedIndex;

beforeAll(async () => {
  [cluster, cache] = await Promise.all([startCluster(), startRegistry()]);
  const push = new RegistryClient({ insecureHosts: [cache.host] });
  llama = await pushMultiArchIndex(push, { registry: cache.host, repository: "docker.io/acme/llama" }, "1.0");
  await push.close();
  await cluster.client.resource(Resources.Namespace).create({ metadata: { name: "passes" } });
  await createNode(cluster.client, "passes-1", { labels: { pool: "gpu" } });
  planner = await startPlanner(cluster.client, cache.host);
}, 60_000);

afterAll(async () => {
  await planner?.stop();
  await Promise.all([cluster?.api.stop(), cache?.stop()]);
  cluster?.client.close();
});

describe("pre-warm plan passes", () => {
  it("are not started by ModelImage status writes the planner does not read, and are by spec changes", async () => {
    await createCachedModelImage(
      cluster.client,
      "passes",
      "llama",
      { variants: [{ name: "gpu", image: "docker.io/acme/llama:1.0", nodeSelector: { pool: "gpu" } }] },
      { gpu: llama.index.digest },
    );
    await eventually(
      "the node is planned",
      async () => ((await findNodeCache(cluster.client, "passes-1"))?.spec.images?.length ?? 0) > 0,
    );
    // Let the passes the creation started settle (they are spaced by about a second).
    let settled = planner.planner.plan();
    await eventually("no further pass for 2.5 s", async () => {
      const before = planner.planner.plan();
      await new Promise((resolve) => setTimeout(resolve, 2500));
      settled = planner.planner.plan();
      return settled === before;
    });

    // What the ModelImage controller writes on every sync: conditions and pre-warm counts.
    const objects = modelImageClient(cluster.client);
    for (let i = 0; i < 5; i++)
      await objects.patchStatus(
        "llama",
        {
          status: {
            conditions: [
              {
                type: "Synced",
                status: "True",
                reason: "Synced",
                message: `pass ${i}`,
                lastTransitionTime: new Date().toISOString().replace(/\.\d+Z$/, "Z"),
              },
            ],
          },
        },
        "passes",
      );
    await new Promise((resolve) => setTimeout(resolve, 2500));
    expect(planner.planner.plan()).toBe(settled);

    // A spec change is planned.
    await objects.patch("llama", { spec: { prewarm: { priority: 7 } } }, { namespace: "passes" });
    await eventually("a new pass after the spec change", () => planner.planner.plan() !== settled);
  });
});
