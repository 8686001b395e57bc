// Controller runtime benchmark: `npm run bench:runtime` (bench/controllerScale.ts runs the real controller).
//
// The API server double runs in this process; the manager under test runs in a child process
// (this same file with --child) so its peak RSS is measured alone. Figures: time from
// manager start to every custom object reconciled once, API requests that took, the
// manager's peak RSS, and API writes during ~5 s of steady state.
import { spawn } from "node:child_process";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import PQueue from "p-queue";
import { KubeClient, type KubeObject, Resources, type ResourceType } from "../src/kube/client.ts";
import { done } from "../src/kube/controller.ts";
import { Manager } from "../src/kube/manager.ts";
import { createRuntimeMetrics } from "../src/metrics.ts";
import { startApiServer } from "../testkit/apiserver/index.ts";

const ItemType: ResourceType = {
  group: "bench.stowage.dev",
  version: "v1",
  plural: "benchitems",
  kind: "BenchItem",
  namespaced: true,
};

const { values } = parseArgs({
  options: {
    child: { type: "boolean", default: false },
    kubeconfig: { type: "string" },
    objects: { type: "string", default: "2000" },
    nodes: { type: "string", default: "500" },
    "steady-seconds": { type: "string", default: "5" },
  },
});
const objectCount = Number(values.objects);
const nodeCount = Number(values.nodes);

if (values.child) await runManager(values.kubeconfig!);
else await runBenchmark();

/** The process under test: a manager with a no-op reconciler over the items and a Node informer. */
async function runManager(kubeconfigPath: string): Promise<void> {
  const client = KubeClient.load({ path: kubeconfigPath });
  const started = performance.now();
  const manager = new Manager({ client, metrics: createRuntimeMetrics() });
  const items = manager.addInformer({ type: ItemType });
  const nodes = manager.addInformer({ type: Resources.Node });
  const reconciled = new Set<string>();
  manager
    .addController({
      name: "bench",
      workers: 4,
      reconcile: async (key) => {
        reconciled.add(key);
        if (reconciled.size === objectCount) {
          report({ event: "reconciled", ms: performance.now() - started, nodesCached: nodes.list().length });
        }
        return done();
      },
    })
    .watches(items);
  await manager.start({ handleSignals: true });
  const lines = createInterface({ input: process.stdin });
  lines.on("line", (line) => {
    if (line === "report") report({ event: "usage", maxRssKiB: process.resourceUsage().maxRSS });
  });
  await manager.stopped;
  lines.close();
}

function report(message: Record<string, unknown>): void {
  process.stdout.write(`${JSON.stringify(message)}\n`);
}

async function runBenchmark(): Promise<void> {
  const server = await startApiServer();
  try {
    const client = KubeClient.load({ path: server.kubeconfigPath });
    await setUp(client);

    server.resetRequestLog();
    const spawnedAt = performance.now();
    const child = spawn(
      process.execPath,
      [
        fileURLToPath(import.meta.url),
        "--child",
        "--kubeconfig",
        server.kubeconfigPath,
        "--objects",
        String(objectCount),
      ],
      {
        stdio: ["pipe", "pipe", "inherit"],
      },
    );
    const messages = createInterface({ input: child.stdout });
    const next = (event: string) =>
      new Promise<Record<string, number>>((resolve, reject) => {
        const onLine = (line: string) => {
          const message = JSON.parse(line);
          if (message.event !== event) return;
          messages.off("line", onLine);
          resolve(message);
        };
        messages.on("line", onLine);
        child.once("exit", (code) => reject(new Error(`manager exited (${code}) before "${event}"`)));
      });

    const reconciled = await next("reconciled");
    const fromSpawnSeconds = (performance.now() - spawnedAt) / 1000;
    const startupRequests = server.requestLog();
    server.resetRequestLog();
    await new Promise((resolve) => setTimeout(resolve, Number(values["steady-seconds"]) * 1000));
    const steady = server.requestLog();
    const steadyWrites = steady.filter((r) => r.method !== "GET");
    const usagePromise = next("usage");
    child.stdin.write("report\n");
    const usage = await usagePromise;
    child.kill("SIGTERM");
    await new Promise((resolve) => child.once("exit", resolve));

    const seconds = reconciled.ms / 1000;
    const rssMB = (usage.maxRssKiB * 1024) / 1e6;
    const byVerb = countBy(startupRequests.map((r) => r.verb));
    console.log(
      `objects: ${objectCount} custom + ${nodeCount} Nodes (Node cache: ${reconciled.nodesCached})`,
    );
    console.log(
      `manager start → all reconciled once: ${seconds.toFixed(2)} s  ${verdict(seconds < 10)} (target < 10 s); from process spawn: ${fromSpawnSeconds.toFixed(2)} s`,
    );
    console.log(`API requests during startup: ${startupRequests.length} (${formatCounts(byVerb)})`);
    console.log(
      `manager peak RSS: ${rssMB.toFixed(1)} MB (${(usage.maxRssKiB / 1024).toFixed(1)} MiB)  ${verdict(rssMB < 150)} (target < 150 MB)`,
    );
    console.log(
      `steady state (${values["steady-seconds"]} s): ${steadyWrites.length} API writes  ${verdict(steadyWrites.length === 0)} (target 0); ${steady.length} requests in all (${formatCounts(countBy(steady.map((r) => r.verb)))})`,
    );
    if (!(seconds < 10 && rssMB < 150 && steadyWrites.length === 0)) process.exitCode = 1;
  } finally {
    await server.stop();
  }
}

async function setUp(client: KubeClient): Promise<void> {
  const started = performance.now();
  await client.resource(Resources.CustomResourceDefinition).create({
    metadata: { name: "benchitems.bench.stowage.dev" },
    spec: {
      group: ItemType.group,
      scope: "Namespaced",
      names: { plural: "benchitems", singular: "benchitem", kind: "BenchItem" },
      versions: [
        {
          name: "v1",
          served: true,
          storage: true,
          subresources: { status: {} },
          schema: { openAPIV3Schema: { type: "object", "x-kubernetes-preserve-unknown-fields": true } },
        },
      ],
    },
  } as KubeObject);
  for (const name of ["bench-a", "bench-b"])
    await client.resource(Resources.Namespace).create({ metadata: { name } });
  for (;;) {
    try {
      await client.resource(ItemType).list({ limit: 1 });
      break;
    } catch {
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
  }
  const queue = new PQueue({ concurrency: 16 });
  const items = client.resource(ItemType);
  const nodes = client.resource(Resources.Node);
  for (let i = 0; i < objectCount; i++) {
    queue.add(() =>
      items.create({
        metadata: { name: `item-${i}`, namespace: i % 2 ? "bench-a" : "bench-b", labels: { bench: "true" } },
        spec: { image: `nvcr.io/nvidia/tritonserver:24.${String(i % 12).padStart(2, "0")}-py3` },
      } as KubeObject),
    );
  }
  for (let i = 0; i < nodeCount; i++) {
    queue.add(() =>
      nodes.create({
        metadata: { name: `node-${i}`, labels: { "nvidia.com/gpu.present": i % 4 ? "false" : "true" } },
      }),
    );
  }
  await queue.onIdle();
  console.log(
    `set-up: ${objectCount} objects and ${nodeCount} Nodes created in ${((performance.now() - started) / 1000).toFixed(1)} s`,
  );
}

function countBy(values: string[]): Map<string, number> {
  const counts = new Map<string, number>();
  for (const value of values) counts.set(value, (counts.get(value) ?? 0) + 1);
  return counts;
}

function formatCounts(counts: Map<string, number>): string {
  return [...counts].map(([verb, n]) => `${verb} ${n}`).join(", ") || "none";
}

function verdict(ok: boolean): string {
  return ok ? "PASS" : "FAIL";
}
