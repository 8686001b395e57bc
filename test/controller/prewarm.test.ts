import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { WARM_LABEL_VALUE, WARMING_TAINT_KEY, warmNodeLabel } from "../../src/api/labels.ts";
import type { NodeCache } from "../../src/api/nodeCache.ts";
import { parseControllerArgs } from "../../src/controller/command.ts";
import { DEFAULT_PREWARM_CONFIG } from "../../src/controller/prewarm/config.ts";
import { prewarmStatus } from "../../src/controller/prewarm/index.ts";
import { Resources } from "../../src/kube/client.ts";
import { RegistryClient } from "../../src/oci/registry.ts";
import { type PushedIndex, pushMultiArchIndex } from "../../testkit/images.ts";
import { type RunningRegistry, startRegistry } from "../../testkit/registry.ts";
import { eventually } from "../kube/helpers.ts";
import {
  agentStarted,
  createCachedModelImage,
  createNode,
  eventsAbout,
  findNodeCache,
  getNode,
  modelImageClient,
  nodeCaches,
  report,
  startCluster,
  startPlanner,
} from "./prewarm-harness.ts";

let cluster: Awaited<ReturnType<typeof startCluster>>;
let cache: RunningRegistry;
let planner: Awaited<ReturnType<typeof startPlanner>>;
let push: RegistryClient;
let llamaCuda: PushedIndex;
let llamaCpu: PushedIndex;
let tools: PushedIndex;

const amd64 = (index: PushedIndex) => index.images[0];
const arm64 = (index: PushedIndex) => index.images[1];
const sizeOf = (image: PushedIndex["images"][number]) =>
  image.blobs.reduce((sum, b) => sum + b.descriptor.size, 0);

beforeAll(async () => {
  [cluster, cache] = await Promise.all([startCluster(), startRegistry()]);
  push = new RegistryClient({ insecureHosts: [cache.host] });
  // What the ModelImage reconciler leaves in the cache (the layout of cacheRepository).
  llamaCuda = await pushMultiArchIndex(
    push,
    { registry: cache.host, repository: "docker.io/acme/llama" },
    "1.0",
    {
      cuda: true,
    },
  );
  llamaCpu = await pushMultiArchIndex(
    push,
    { registry: cache.host, repository: "docker.io/acme/llama-cpu" },
    "1.0",
  );
  tools = await pushMultiArchIndex(push, { registry: cache.host, repository: "nvcr.io/acme/tools" }, "2", {
    layerSizes: [300 * 1024],
  });
  await cluster.client.resource(Resources.Namespace).create({ metadata: { name: "ml" } });
  planner = await startPlanner(cluster.client, cache.host, { cacheEndpointForNodes: "http://10.0.0.5:5000" });
}, 60_000);

afterAll(async () => {
  await planner?.stop();
  await push?.close();
  await Promise.all([cluster?.api.stop(), cache?.stop()]);
  cluster?.client.close();
});

async function specImages(node: string) {
  return (await findNodeCache(cluster.client, node))?.spec.images ?? [];
}

async function waitForSpec(node: string, check: (nc: NodeCache | undefined) => boolean, what: string) {
  let last: NodeCache | undefined;
  await eventually(`${what} (last: ${JSON.stringify(last?.spec)})`, async () => {
    last = await findNodeCache(cluster.client, node);
    return check(last);
  });
  return last;
}

describe("the default disk budget", () => {
  it("stays under the kubelet's image GC low threshold (80%), in the planner and in the controller's flag", async () => {
    expect(DEFAULT_PREWARM_CONFIG.diskBudgetFraction).toBeLessThan(0.8);
    const invocation = await parseControllerArgs(["--cache-registry", "http://127.0.0.1:5000"], {
      POD_NAMESPACE: "stowage-system",
    });
    if (invocation === "help") throw new Error("unexpected help");
    expect(invocation.prewarm?.diskBudgetFraction).toBe(DEFAULT_PREWARM_CONFIG.diskBudgetFraction);
  });
});

describe("pre-warm planner", () => {
  it("puts each node's own platform digest in its NodeCache and skips a GPU node whose driver is too old for the image's CUDA", async () => {
    const t = { suite: "platforms" };
    await createNode(cluster.client, "p-cuda-new", {
      labels: {
        ...t,
        "nvidia.com/gpu.present": "true",
        "nvidia.com/cuda.driver.major": "550",
        "nvidia.com/cuda.driver.minor": "54",
      },
    });
    await createNode(cluster.client, "p-cuda-old", {
      labels: {
        ...t,
        "nvidia.com/gpu.present": "true",
        "nvidia.com/cuda.driver-version.major": "535",
        "nvidia.com/cuda.driver-version.minor": "104",
        // the runtime labels are not the driver: a 12.8 runtime must not make this node eligible
        "nvidia.com/cuda.runtime.major": "12",
        "nvidia.com/cuda.runtime.minor": "8",
      },
    });
    await createNode(cluster.client, "p-arm-cpu", { arch: "arm64", labels: { ...t, role: "cpu" } });
    await createNode(cluster.client, "p-amd-cpu", { labels: { ...t, role: "cpu" } });
    await createCachedModelImage(
      cluster.client,
      "ml",
      "llama3-serve",
      {
        variants: [
          {
            name: "cuda",
            image: "docker.io/acme/llama:1.0",
            nodeSelector: { ...t, "nvidia.com/gpu.present": "true" },
          },
          { name: "cpu", image: "docker.io/acme/llama-cpu:1.0", nodeSelector: { ...t, role: "cpu" } },
        ],
        prewarm: { enabled: true, maxConcurrentNodes: 10 },
      },
      { cuda: llamaCuda.digest, cpu: llamaCpu.digest },
    );

    const cudaNode = await waitForSpec(
      "p-cuda-new",
      (nc) => (nc?.spec.images?.length ?? 0) === 1,
      "cuda node planned",
    );
    expect(cudaNode?.spec).toEqual({
      nodeName: "p-cuda-new",
      cacheEndpoint: "http://10.0.0.5:5000",
      mirrorHosts: ["docker.io"],
      images: [
        {
          image: "docker.io/acme/llama:1.0",
          digest: amd64(llamaCuda).manifest.digest,
          cacheRepository: "docker.io/acme/llama",
          sizeBytes: sizeOf(amd64(llamaCuda)),
          priority: 0,
          requestedBy: [{ namespace: "ml", name: "llama3-serve", variant: "cuda" }],
        },
      ],
    });
    const node = await getNode(cluster.client, "p-cuda-new");
    expect(cudaNode?.metadata.ownerReferences).toEqual([
      expect.objectContaining({ kind: "Node", name: "p-cuda-new", uid: node.metadata?.uid }),
    ]);
    await waitForSpec("p-arm-cpu", (nc) => nc?.spec.images?.length === 1, "arm node planned");
    await waitForSpec("p-amd-cpu", (nc) => nc?.spec.images?.length === 1, "amd node planned");
    expect((await specImages("p-arm-cpu")).map((e) => [e.image, e.digest])).toEqual([
      ["docker.io/acme/llama-cpu:1.0", arm64(llamaCpu).manifest.digest],
    ]);
    expect((await specImages("p-amd-cpu")).map((e) => [e.image, e.digest])).toEqual([
      ["docker.io/acme/llama-cpu:1.0", amd64(llamaCpu).manifest.digest],
    ]);
    expect(await findNodeCache(cluster.client, "p-cuda-old")).toBeUndefined();

    const mi = await modelImageClient(cluster.client).get("llama3-serve", "ml");
    const status = prewarmStatus(
      mi,
      [],
      (await nodeCaches(cluster.client).list()).items,
      planner.planner.plan(),
    );
    expect(status.variants.cuda).toEqual({ desired: 1, ready: 0, pulling: 1, failed: 0, skipped: 1 });
    expect(status.variants.cpu).toEqual({ desired: 2, ready: 0, pulling: 2, failed: 0, skipped: 0 });
    expect(status.prewarmed.message).toContain(
      "CudaDriverTooOld: node p-cuda-old: NVIDIA driver 535.104 supports CUDA 12.2, the image needs CUDA 12.4",
    );
    await eventually("a CudaDriverTooOld event on the ModelImage", async () =>
      (await eventsAbout(cluster.client, "ml", "llama3-serve")).some(
        (e) => e.reason === "CudaDriverTooOld" && e.note?.includes("p-cuda-old"),
      ),
    );
  });

  it("lets at most maxConcurrentNodes nodes pull a ModelImage at a time and moves on when one reports Present", async () => {
    const t = { suite: "rollout" };
    for (const name of ["r-1", "r-2", "r-3"]) await createNode(cluster.client, name, { labels: t });
    await createCachedModelImage(
      cluster.client,
      "ml",
      "rollout",
      { image: "docker.io/acme/llama-cpu:1.0", variants: undefined, prewarm: { maxConcurrentNodes: 1 } },
      {},
    ).catch(() => undefined);
    // The shorthand selects every node; use a selector so only this test's nodes match.
    await modelImageClient(cluster.client)
      .delete("rollout", "ml")
      .catch(() => undefined);
    await createCachedModelImage(
      cluster.client,
      "ml",
      "rollout1",
      {
        variants: [{ name: "cpu", image: "docker.io/acme/llama-cpu:1.0", nodeSelector: t }],
        prewarm: { maxConcurrentNodes: 1 },
      },
      { cpu: llamaCpu.digest },
    );
    const digest = amd64(llamaCpu).manifest.digest;
    const planned = async () => {
      const out: string[] = [];
      for (const name of ["r-1", "r-2", "r-3"]) if ((await specImages(name)).length > 0) out.push(name);
      return out;
    };
    await eventually("one node planned", async () => (await planned()).length === 1);
    expect(await planned()).toEqual(["r-1"]);
    await report(cluster.client, "r-1", { [digest]: "Pulling" });
    await report(cluster.client, "r-1", { [digest]: "Pulling" }); // a second status write changes nothing
    expect(await planned()).toEqual(["r-1"]);
    await report(cluster.client, "r-1", { [digest]: "Present" });
    await eventually("the second node planned", async () => (await planned()).length === 2);
    expect(await planned()).toEqual(["r-1", "r-2"]);
    await report(cluster.client, "r-2", { [digest]: "Pending" });
    expect(await planned()).toEqual(["r-1", "r-2"]);
    await report(cluster.client, "r-2", { [digest]: "Failed" });
    await eventually("the third node planned after a failure", async () => (await planned()).length === 3);

    // r-1 holds everything of rollout1: it carries the warm label; r-2 (failed) and r-3 do not.
    const label = warmNodeLabel("ml", "rollout1");
    await eventually(
      "warm label on r-1",
      async () => (await getNode(cluster.client, "r-1")).metadata?.labels?.[label] === WARM_LABEL_VALUE,
    );
    expect((await getNode(cluster.client, "r-2")).metadata?.labels?.[label]).toBeUndefined();
    expect((await getNode(cluster.client, "r-3")).metadata?.labels?.[label]).toBeUndefined();
  });

  it("pulls an image shared by two ModelImages once per node, naming both, with the higher priority first", async () => {
    const t = { suite: "shared" };
    await createNode(cluster.client, "s-1", { labels: t });
    for (const [name, priority] of [
      ["shared-a", 1],
      ["shared-b", 5],
    ] as const) {
      await createCachedModelImage(
        cluster.client,
        "ml",
        name,
        {
          variants: [{ name: "cpu", image: "docker.io/acme/llama-cpu:1.0", nodeSelector: t }],
          prewarm: { priority },
        },
        { cpu: llamaCpu.digest },
      );
    }
    await createCachedModelImage(
      cluster.client,
      "ml",
      "shared-tools",
      {
        variants: [{ name: "tools", image: "nvcr.io/acme/tools:2", nodeSelector: t }],
        prewarm: { priority: 10 },
      },
      { tools: tools.digest },
    );
    await waitForSpec(
      "s-1",
      (nc) => nc?.spec.images?.length === 2 && nc.spec.images[1].requestedBy?.length === 2,
      "both images",
    );
    const nc = await findNodeCache(cluster.client, "s-1");
    expect(nc?.spec.mirrorHosts).toEqual(["docker.io", "nvcr.io"]);
    expect(nc?.spec.images?.map((e) => [e.image, e.priority, e.requestedBy])).toEqual([
      ["nvcr.io/acme/tools:2", 10, [{ namespace: "ml", name: "shared-tools", variant: "tools" }]],
      [
        "docker.io/acme/llama-cpu:1.0",
        5,
        [
          { namespace: "ml", name: "shared-a", variant: "cpu" },
          { namespace: "ml", name: "shared-b", variant: "cpu" },
        ],
      ],
    ]);
  });

  it("refuses an image that would not fit the node's disk budget: QuotaExceeded, counted failed, never in spec", async () => {
    const t = { suite: "quota" };
    await createNode(cluster.client, "q-1", { labels: t });
    const toolsSize = sizeOf(amd64(tools));
    const llamaSize = sizeOf(amd64(llamaCpu));
    // The default budget (a share of the capacity) fits the higher-priority tools image but not both.
    const capacityBytes = Math.ceil((toolsSize + llamaSize / 2) / DEFAULT_PREWARM_CONFIG.diskBudgetFraction);
    await agentStarted(cluster.client, "q-1", { capacityBytes, usedBytes: 0 });
    await createCachedModelImage(
      cluster.client,
      "ml",
      "quota-tools",
      {
        variants: [{ name: "tools", image: "nvcr.io/acme/tools:2", nodeSelector: t }],
        prewarm: { priority: 2 },
      },
      { tools: tools.digest },
    );
    await createCachedModelImage(
      cluster.client,
      "ml",
      "quota-llama",
      {
        variants: [{ name: "cpu", image: "docker.io/acme/llama-cpu:1.0", nodeSelector: t }],
        prewarm: { priority: 1 },
      },
      { cpu: llamaCpu.digest },
    );
    await eventually("a QuotaExceeded event on quota-llama", async () =>
      (await eventsAbout(cluster.client, "ml", "quota-llama")).some((e) => e.reason === "QuotaExceeded"),
    );
    expect((await specImages("q-1")).map((e) => e.image)).toEqual(["nvcr.io/acme/tools:2"]);
    const mi = await modelImageClient(cluster.client).get("quota-llama", "ml");
    const status = prewarmStatus(
      mi,
      [],
      (await nodeCaches(cluster.client).list()).items,
      planner.planner.plan(),
    );
    expect(status.variants.cpu).toEqual({ desired: 1, ready: 0, pulling: 0, failed: 1, skipped: 0 });
    expect(status.prewarmed).toMatchObject({ status: "False", reason: "QuotaExceeded" });
    expect(status.prewarmed.message).toContain("does not fit the disk budget");
  });

  it("gives a node that joins later its images, and takes them away when its labels stop matching", async () => {
    const t = { suite: "joins" };
    await createCachedModelImage(
      cluster.client,
      "ml",
      "joins",
      { variants: [{ name: "cpu", image: "docker.io/acme/llama-cpu:1.0", nodeSelector: t }] },
      { cpu: llamaCpu.digest },
    );
    await createNode(cluster.client, "j-late", { arch: "arm64", labels: t });
    await waitForSpec("j-late", (nc) => nc?.spec.images?.length === 1, "the new node planned");
    expect((await specImages("j-late"))[0].digest).toBe(arm64(llamaCpu).manifest.digest);
    await report(cluster.client, "j-late", { [arm64(llamaCpu).manifest.digest]: "Present" });
    const label = warmNodeLabel("ml", "joins");
    await eventually(
      "warm label",
      async () => (await getNode(cluster.client, "j-late")).metadata?.labels?.[label] === "true",
    );

    await cluster.client.resource(Resources.Node).patch("j-late", { metadata: { labels: { suite: null } } });
    await waitForSpec("j-late", (nc) => nc?.spec.images?.length === 0, "the entry removed");
    await eventually(
      "warm label removed",
      async () => (await getNode(cluster.client, "j-late")).metadata?.labels?.[label] === undefined,
    );
    expect((await getNode(cluster.client, "j-late")).metadata?.labels?.["kubernetes.io/arch"]).toBe("arm64");
  });

  it("removes the warming taint only once every image planned for the node is Present", async () => {
    const t = { suite: "taint" };
    await createCachedModelImage(
      cluster.client,
      "ml",
      "taint",
      {
        variants: [
          { name: "cpu", image: "docker.io/acme/llama-cpu:1.0", nodeSelector: t },
          { name: "tools", image: "nvcr.io/acme/tools:2", nodeSelector: t },
        ],
      },
      { cpu: llamaCpu.digest, tools: tools.digest },
    );
    // An autoscaled node joins with the taint (the ModelImage exists already).
    await createNode(cluster.client, "w-1", {
      labels: t,
      taints: [
        { key: WARMING_TAINT_KEY, value: "true", effect: "NoSchedule" },
        { key: "dedicated", value: "gpu", effect: "NoSchedule" },
      ],
    });
    await waitForSpec("w-1", (nc) => nc?.spec.images?.length === 2, "both planned");
    const [first, second] = (await specImages("w-1")).map((e) => e.digest);
    await report(cluster.client, "w-1", { [first]: "Present", [second]: "Pulling" });
    await eventually("the planner saw the status", async () => {
      const plan = planner.planner.plan();
      return plan !== undefined && (await findNodeCache(cluster.client, "w-1"))?.status?.images?.length === 2;
    });
    const taintKeys = async () => (await getNode(cluster.client, "w-1")).spec?.taints?.map((x) => x.key);
    expect(await taintKeys()).toContain(WARMING_TAINT_KEY);
    await report(cluster.client, "w-1", { [first]: "Present", [second]: "Present" });
    await eventually("taint removed", async () => !(await taintKeys())?.includes(WARMING_TAINT_KEY));
    expect(await taintKeys()).toEqual(["dedicated"]);
    await eventually("a WarmingComplete event on the node", async () =>
      (await eventsAbout(cluster.client, "default", "w-1")).some((e) => e.reason === "WarmingComplete"),
    );
  });

  it("removes the warming taint when the images that could be pulled are Present and says which failed", async () => {
    const t = { suite: "taint-failed" };
    await createCachedModelImage(
      cluster.client,
      "ml",
      "taint-failed",
      {
        variants: [
          { name: "cpu", image: "docker.io/acme/llama-cpu:1.0", nodeSelector: t },
          { name: "tools", image: "nvcr.io/acme/tools:2", nodeSelector: t },
        ],
      },
      { cpu: llamaCpu.digest, tools: tools.digest },
    );
    await createNode(cluster.client, "w-2", {
      labels: t,
      taints: [{ key: WARMING_TAINT_KEY, value: "true", effect: "NoSchedule" }],
    });
    await waitForSpec("w-2", (nc) => nc?.spec.images?.length === 2, "both planned");
    const toolsDigest = amd64(tools).manifest.digest;
    const llamaDigest = amd64(llamaCpu).manifest.digest;
    await report(cluster.client, "w-2", { [toolsDigest]: "Present", [llamaDigest]: "Failed" });
    await eventually(
      "taint removed",
      // No taints left: the API server drops an empty list (omitempty), so it reads back absent.
      async () => (await getNode(cluster.client, "w-2")).spec?.taints === undefined,
    );
    // The event is recorded after the Node update: on the real API server it can land a moment
    // after the taint is seen gone.
    let warmed: Awaited<ReturnType<typeof eventsAbout>>[number] | undefined;
    await eventually("a WarmingComplete event about w-2", async () => {
      const events = await eventsAbout(cluster.client, "default", "w-2");
      warmed = events.find((e) => e.reason === "WarmingComplete");
      return warmed !== undefined;
    });
    expect(warmed?.type).toBe("Warning");
    expect(warmed?.note).toContain(`ml/taint-failed (${llamaDigest}: PullFailed)`);
    // Not every image is Present: no warm label.
    expect(
      (await getNode(cluster.client, "w-2")).metadata?.labels?.[warmNodeLabel("ml", "taint-failed")],
    ).toBeUndefined();
  });

  it("leaves NodeCache objects to go with their Node", async () => {
    await createNode(cluster.client, "gone-1", { labels: { suite: "joins" } });
    await waitForSpec("gone-1", (nc) => nc?.spec.images?.length === 1, "planned");
    await cluster.client.resource(Resources.Node).delete("gone-1");
    await eventually(
      "NodeCache garbage-collected",
      async () => (await findNodeCache(cluster.client, "gone-1")) === undefined,
    );
  });

  it("exports stowage_prewarm_nodes per ModelImage and state, removes the series when it is deleted, and times pulls", async () => {
    const scrape = async () => planner.registry.metrics();
    await eventually("series for rollout1", async () =>
      (await scrape()).includes('stowage_prewarm_nodes{namespace="ml",name="rollout1",state="desired"} 3'),
    );
    const text = await scrape();
    expect(text).toContain('stowage_prewarm_nodes{namespace="ml",name="rollout1",state="ready"} 1');
    expect(text).toContain('stowage_prewarm_nodes{namespace="ml",name="rollout1",state="failed"} 1');
    expect(text).toMatch(/stowage_prewarm_duration_seconds_count [1-9]/);
    await modelImageClient(cluster.client).delete("rollout1", "ml");
    await eventually("series gone", async () => !(await scrape()).includes('name="rollout1"'));
  });
});
