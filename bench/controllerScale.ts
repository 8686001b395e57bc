// The real controller at cluster scale: `npm run bench:controller`.
//
// `stowage controller` (bin/stowage.js, every controller it runs: ModelImage sync, pre-warm
// planner, gates) runs as a child process against the API double, with two CNCF distribution
// registries on loopback as the upstream and the cache. The cluster holds 2,000 ModelImages
// (over 20 small images), 500 Nodes as a kubelet reports them (status.images and all), and
// 2,000 Pods. Figures: time from process start to every ModelImage Synced, NodeCaches planned,
// the controller's peak RSS (VmHWM) against the goal (< 150 MB), and API writes in steady state.
// bench/controller.ts measures the controller runtime alone (a no-op reconciler).
import { readdirSync, statSync } from "node:fs";
import { rm } from "node:fs/promises";
import { parseArgs } from "node:util";
import PQueue from "p-queue";
import { loadCrd } from "../src/api/crds.ts";
import { type ModelImage, ModelImageResource } from "../src/api/modelImage.ts";
import { NodeCacheResource } from "../src/api/nodeCache.ts";
import { CONTROLLER_RUNTIME_ENV } from "../src/controller/runtimeEnv.ts";
import { KubeClient, type KubeObject, Resources } from "../src/kube/client.ts";
import { getCondition } from "../src/kube/conditions.ts";
import { RegistryClient } from "../src/oci/registry.ts";
import { startTestCluster } from "../testkit/cluster.ts";
import { startControllerProcess } from "../testkit/controllerProcess.ts";
import { pushSinglePlatformImage } from "../testkit/images.ts";
import { freePort } from "../testkit/ports.ts";
import { startRegistry } from "../testkit/registry.ts";
import { makeImageCompileCache } from "./imageCompileCache.ts";
import { procStatusKiB } from "./procStatus.ts";

const { values } = parseArgs({
  options: {
    modelimages: { type: "string", default: "2000" },
    nodes: { type: "string", default: "500" },
    pods: { type: "string", default: "2000" },
    images: { type: "string", default: "20" },
    "steady-seconds": { type: "string", default: "10" },
    // Writes a V8 heap snapshot of the controller (in this process's working directory) after
    // the steady-state window: where the memory goes.
    "heap-snapshot": { type: "boolean", default: false },
    // Samples the controller's RSS every 100 ms and prints each rise of 2 MiB or more with the
    // API requests made since the previous sample: what the controller was doing when it grew.
    "trace-rss": { type: "boolean", default: false },
  },
});
const modelImageCount = Number(values.modelimages);
const nodeCount = Number(values.nodes);
const podCount = Number(values.pods);
const imageCount = Number(values.images);
const namespaces = ["team-a", "team-b", "team-c", "team-d"];

const [cluster, upstream, cache] = await Promise.all([
  startTestCluster({
    backend: "double",
    crds: [loadCrd("stowage.dev_modelimages") as never, loadCrd("stowage.dev_nodecaches") as never],
  }),
  startRegistry(),
  startRegistry(),
]);
const client = KubeClient.load({ path: cluster.kubeconfigPath });
let exitCode = 0;
let compileCache: string | undefined;
try {
  const setUpStarted = performance.now();
  const push = new RegistryClient({ insecureHosts: [upstream.host] });
  for (let i = 0; i < imageCount; i++)
    await pushSinglePlatformImage(push, { registry: upstream.host, repository: `bench/model-${i}` }, "v1", {
      layerSizes: [4096, 16 * 1024],
    });
  await push.close();
  for (const name of namespaces) await client.resource(Resources.Namespace).create({ metadata: { name } });
  const queue = new PQueue({ concurrency: 32 });
  for (let i = 0; i < nodeCount; i++) queue.add(() => client.resource(Resources.Node).create(kubeletNode(i)));
  for (let i = 0; i < podCount; i++) queue.add(() => client.resource(Resources.Pod).create(workloadPod(i)));
  for (let i = 0; i < modelImageCount; i++)
    queue.add(() => client.resource<ModelImage>(ModelImageResource).create(modelImage(i)));
  await queue.onIdle();
  console.log(
    `set-up: ${modelImageCount} ModelImages over ${imageCount} images, ${nodeCount} Nodes, ${podCount} Pods in ${seconds(performance.now() - setUpStarted)} s`,
  );

  compileCache = makeImageCompileCache();
  const healthPort = await freePort();
  const started = performance.now();
  const controller = await startControllerProcess({
    kubeconfig: cluster.kubeconfigPath,
    cacheRegistry: cache.url,
    args: [
      "--leader-elect=false",
      "--insecure-registry",
      upstream.host,
      "--cache-endpoint-for-nodes",
      cache.url,
      // Known here: at log level warn the "controller ready" line that names the port is not logged.
      "--health-port",
      String(healthPort),
    ],
    // The process environment the chart gives the controller container, plus what is asked here.
    env: {
      STOWAGE_LOG_LEVEL: "warn",
      // As the image runs it: its sources already stripped and compiled.
      NODE_COMPILE_CACHE: compileCache,
      ...CONTROLLER_RUNTIME_ENV,
      NODE_OPTIONS: [
        CONTROLLER_RUNTIME_ENV.NODE_OPTIONS,
        process.env.BENCH_CONTROLLER_NODE_OPTIONS ?? "",
        values["heap-snapshot"] ? "--heapsnapshot-signal=SIGUSR2" : "",
      ]
        .join(" ")
        .trim(),
    },
    readyTimeoutMs: 120_000,
    waitReady: false,
  });
  let peakKiB = 0;
  let exited = false;
  void controller.exited.then(() => {
    exited = true;
  });
  // Where the memory is: V8's heap (committed and live) or outside it, read from /metrics as
  // Prometheus would, every 15 s (the chart's ServiceMonitor scrapes every 30 s). Scraping at each
  // new RSS high instead made each high worse: a scrape at 2,000 ModelImages allocates ~20 MB.
  let heapAtPeak = { rssKiB: 0, heapTotal: 0, heapUsed: 0, external: 0 };
  let peakAtMs = 0;
  const sampler = setInterval(() => {
    const hwm = procStatusKiB(controller.pid, "VmHWM");
    if (hwm > peakKiB) {
      peakKiB = hwm;
      peakAtMs = performance.now() - started;
    }
  }, 500);
  const scraper = setInterval(() => {
    const rssKiB = procStatusKiB(controller.pid, "VmRSS");
    fetch(`http://127.0.0.1:${healthPort}/metrics`)
      .then((response) => response.text())
      .then(
        (body) => {
          const metric = (name: string) => Number(new RegExp(`^${name} (\\S+)`, "m").exec(body)?.[1] ?? 0);
          if (rssKiB > heapAtPeak.rssKiB)
            heapAtPeak = {
              rssKiB,
              heapTotal: metric("nodejs_heap_size_total_bytes"),
              heapUsed: metric("nodejs_heap_size_used_bytes"),
              external: metric("nodejs_external_memory_bytes"),
            };
        },
        () => {},
      );
  }, 15_000);
  let traced = { rssKiB: 0, requests: 0 };
  const tracer = values["trace-rss"]
    ? setInterval(async () => {
        const rssKiB = procStatusKiB(controller.pid, "VmRSS");
        const log = await cluster.requestLog();
        if (rssKiB - traced.rssKiB >= 2048) {
          const since = new Map<string, number>();
          for (const entry of log.slice(traced.requests)) {
            const what = `${entry.method} ${entry.path.replace(/\?.*/, "").replace(/\/(namespaces\/)?[^/]+\/(status)?$/, "/*/$2")}`;
            since.set(what, (since.get(what) ?? 0) + 1);
          }
          console.log(
            `  rss ${(rssKiB / 1024).toFixed(1)} MiB (+${((rssKiB - traced.rssKiB) / 1024).toFixed(1)}, anon ${(procStatusKiB(controller.pid, "RssAnon") / 1024).toFixed(1)}) at ${seconds(performance.now() - started)} s after ${[...since].map(([what, n]) => `${n}× ${what}`).join(", ") || "no request"}`,
          );
        }
        traced = { rssKiB, requests: log.length };
      }, 100)
    : undefined;
  try {
    let synced = 0;
    let lastProgress = started;
    for (;;) {
      const list = await client.resource<ModelImage>(ModelImageResource).list();
      synced = list.items.filter(
        (mi) => getCondition(mi.status?.conditions, "Synced")?.status === "True",
      ).length;
      if (synced === modelImageCount) break;
      if (exited) throw new Error(`the controller exited: ${controller.stderr().slice(-2000)}`);
      if (performance.now() - lastProgress > 30_000) {
        lastProgress = performance.now();
        const warnings = controller.logs().filter((l) => l.level === "warn" || l.level === "error");
        console.log(
          `  ${seconds(lastProgress - started)} s: ${synced} Synced, RSS ${(procStatusKiB(controller.pid, "VmRSS") / 1024).toFixed(0)} MiB, ${warnings.length} warnings${warnings.length ? ` (last: ${warnings.at(-1)?.msg}: ${String(warnings.at(-1)?.error ?? warnings.at(-1)?.err ?? "").slice(0, 300)})` : ""}`,
        );
      }
      if (performance.now() - started > 30 * 60_000) throw new Error(`only ${synced} Synced after 30 min`);
      await new Promise((resolve) => setTimeout(resolve, 1000));
    }
    const syncedMs = performance.now() - started;
    const nodeCaches = (await client.resource(NodeCacheResource).list()).items.length;

    const statusesBefore = await statusesByKey(client);
    await cluster.resetRequestLog();
    await new Promise((resolve) => setTimeout(resolve, Number(values["steady-seconds"]) * 1000));
    const statusesAfter = await statusesByKey(client);
    const steady = await cluster.requestLog();
    const steadyWrites = steady.filter((r) => r.method !== "GET").length;
    const finalHwm = procStatusKiB(controller.pid, "VmHWM");
    if (finalHwm > peakKiB) {
      peakKiB = finalHwm;
      peakAtMs = performance.now() - started;
    }
    const rssKiB = procStatusKiB(controller.pid, "VmRSS");
    const anonKiB = procStatusKiB(controller.pid, "RssAnon");
    const fds = openFds(controller.pid);
    const peakMB = (peakKiB * 1024) / 1e6;

    console.log(`controller start → all ${modelImageCount} ModelImages Synced: ${seconds(syncedMs)} s`);
    console.log(`NodeCaches planned: ${nodeCaches} (GPU nodes: ${Math.ceil(nodeCount / 4)})`);
    console.log(
      `controller peak RSS: ${peakMB.toFixed(1)} MB (${(peakKiB / 1024).toFixed(1)} MiB); now ${(rssKiB / 1024).toFixed(1)} MiB (anonymous ${(anonKiB / 1024).toFixed(1)} MiB, ${fds} open files)  ${peakMB < 150 ? "PASS" : "FAIL"} (goal < 150 MB)`,
    );
    const mib = (bytes: number) => (bytes / 1024 / 1024).toFixed(1);
    console.log(`  the peak was reached ${seconds(peakAtMs)} s after the controller started`);
    console.log(
      `  at the highest RSS of a /metrics scrape (every 15 s: ${(heapAtPeak.rssKiB / 1024).toFixed(1)} MiB): V8 heap ${mib(heapAtPeak.heapTotal)} MiB committed, ${mib(heapAtPeak.heapUsed)} MiB used; external ${mib(heapAtPeak.external)} MiB`,
    );
    console.log(
      `steady state (${values["steady-seconds"]} s): ${steadyWrites} API writes, ${steady.length} requests in all`,
    );
    // Which writes, by verb, resource and answer (names and namespaces folded away).
    const writeKinds = new Map<string, number>();
    for (const r of steady.filter((r) => r.method !== "GET")) {
      const shape = `${r.method} ${r.path
        .replace(/\?.*$/, "")
        .replace(/\/namespaces\/[^/]+/, "/namespaces/*")
        .replace(/\/(nodecaches|modelimages|pods|nodes|events|leases)\/[^/]+/, "/$1/*")} ${r.status}`;
      writeKinds.set(shape, (writeKinds.get(shape) ?? 0) + 1);
    }
    for (const [shape, count] of [...writeKinds].sort((a, b) => b[1] - a[1]).slice(0, 8))
      console.log(`  ${count}  ${shape}`);
    // A steady state should write nothing: say what the writes changed.
    const changed = [...statusesAfter].filter(([key, status]) => statusesBefore.get(key) !== status);
    if (changed.length > 0) {
      const [key, after] = changed[0];
      console.log(`  ModelImage statuses changed in steady state: ${changed.length}; e.g. ${key}:`);
      for (const line of jsonDiff(JSON.parse(statusesBefore.get(key) ?? "{}"), JSON.parse(after)).slice(
        0,
        10,
      ))
        console.log(`    ${line}`);
    }
    if (peakMB >= 150) exitCode = 1;
    if (values["heap-snapshot"]) {
      const before = new Set(readdirSync(".").filter((f) => f.endsWith(".heapsnapshot")));
      process.kill(controller.pid, "SIGUSR2");
      for (let waited = 0; waited < 120_000; waited += 500) {
        await new Promise((resolve) => setTimeout(resolve, 500));
        const written = readdirSync(".").find((f) => f.endsWith(".heapsnapshot") && !before.has(f));
        // V8 writes the file in one go; its size stops changing once it is complete.
        if (written && statSync(written).size > 0) {
          await new Promise((resolve) => setTimeout(resolve, 3000));
          console.log(`heap snapshot: ${written}`);
          break;
        }
      }
    }
  } finally {
    clearInterval(sampler);
    clearInterval(scraper);
    clearInterval(tracer);
    await controller.kill("SIGTERM");
    if (process.env.BENCH_GC_TRACE)
      (await import("node:fs")).writeFileSync(process.env.BENCH_GC_TRACE, controller.stdout());
  }
} finally {
  client.close();
  await Promise.all([cluster.stop(), upstream.stop(), cache.stop()]);
  if (compileCache) await rm(compileCache, { recursive: true, force: true });
}
process.exitCode = exitCode;

function modelImage(i: number): ModelImage {
  return {
    apiVersion: "stowage.dev/v1alpha1",
    kind: "ModelImage",
    metadata: { name: `model-${i}`, namespace: namespaces[i % namespaces.length] },
    spec: {
      variants: [
        {
          name: "gpu",
          image: `${upstream.host}/bench/model-${i % imageCount}:v1`,
          nodeSelector: { "nvidia.com/gpu.present": "true" },
        },
      ],
    },
  } as ModelImage;
}

/** A Node the way a kubelet fills it in: the bulk (image list, addresses, capacity) is real-sized. */
function kubeletNode(i: number): KubeObject {
  const gpu = i % 4 === 0;
  return {
    metadata: {
      name: `node-${i}`,
      labels: {
        "kubernetes.io/os": "linux",
        "kubernetes.io/arch": "amd64",
        "kubernetes.io/hostname": `node-${i}`,
        "topology.kubernetes.io/zone": `zone-${i % 3}`,
        "node.kubernetes.io/instance-type": gpu ? "p5.48xlarge" : "m7i.8xlarge",
        ...(gpu ? { "nvidia.com/gpu.present": "true", "nvidia.com/cuda.driver.major": "550" } : {}),
      },
      annotations: {
        "node.alpha.kubernetes.io/ttl": "0",
        "volumes.kubernetes.io/controller-managed-attach-detach": "true",
      },
    },
    spec: {
      podCIDR: `10.${i >> 8}.${i & 255}.0/24`,
      providerID: `aws:///zone/i-${i.toString(16).padStart(17, "0")}`,
    },
    status: {
      conditions: ["MemoryPressure", "DiskPressure", "PIDPressure", "Ready"].map((type) => ({
        type,
        status: type === "Ready" ? "True" : "False",
        reason: `Kubelet${type}`,
        message: `kubelet reports ${type}`,
        lastHeartbeatTime: "2026-12-04T00:00:00Z",
        lastTransitionTime: "2026-12-04T00:00:00Z",
      })),
      addresses: [
        { type: "InternalIP", address: `10.${i >> 8}.${i & 255}.1` },
        { type: "Hostname", address: `node-${i}` },
      ],
      capacity: { cpu: "96", memory: "1056Gi", pods: "110", ...(gpu ? { "nvidia.com/gpu": "8" } : {}) },
      allocatable: { cpu: "95", memory: "1040Gi", pods: "110", ...(gpu ? { "nvidia.com/gpu": "8" } : {}) },
      nodeInfo: {
        machineID: `m-${i}`,
        systemUUID: `u-${i}`,
        bootID: `b-${i}`,
        kernelVersion: "6.1.0",
        osImage: "Debian GNU/Linux 12",
        containerRuntimeVersion: "containerd://1.7.24",
        kubeletVersion: "v1.37.2",
        operatingSystem: "linux",
        architecture: "amd64",
      },
      images: Array.from({ length: 50 }, (_, n) => ({
        names: [
          `registry.example/team/model-${n}@sha256:${String(n).padStart(64, "0")}`,
          `registry.example/team/model-${n}:v${n}`,
        ],
        sizeBytes: 5_000_000_000 + n,
      })),
    },
  } as KubeObject;
}

/** An ordinary workload Pod (not gated): what a cluster-wide Pod cache holds most of. */
function workloadPod(i: number): KubeObject {
  return {
    metadata: {
      name: `worker-${i}`,
      namespace: namespaces[i % namespaces.length],
      labels: { app: `svc-${i % 50}`, "pod-template-hash": "7d9f8c6b5d" },
      annotations: {
        "kubectl.kubernetes.io/last-applied-configuration": JSON.stringify({ i, pad: "x".repeat(1500) }),
      },
    },
    spec: {
      nodeName: `node-${i % nodeCount}`,
      containers: [
        {
          name: "main",
          image: `registry.example/team/svc-${i % 50}:v1`,
          args: ["--port=8080", "--log-level=info"],
          env: Array.from({ length: 10 }, (_, n) => ({ name: `VAR_${n}`, value: `value-${n}` })),
          resources: { requests: { cpu: "1", memory: "2Gi" }, limits: { memory: "2Gi" } },
        },
      ],
    },
    status: { phase: "Running", podIP: `10.200.${i >> 8}.${i & 255}` },
  } as KubeObject;
}

function openFds(pid: number): number {
  try {
    return readdirSync(`/proc/${pid}/fd`).length;
  } catch {
    return 0;
  }
}

function seconds(ms: number): string {
  return (ms / 1000).toFixed(1);
}

async function statusesByKey(client: KubeClient): Promise<Map<string, string>> {
  const list = await client.resource<ModelImage>(ModelImageResource).list();
  return new Map(
    list.items.map((mi) => [`${mi.metadata.namespace}/${mi.metadata.name}`, JSON.stringify(mi.status ?? {})]),
  );
}

/** Leaf-level differences between two JSON values, as `path: before → after`. */
function jsonDiff(before: unknown, after: unknown, path = ""): string[] {
  if (JSON.stringify(before) === JSON.stringify(after)) return [];
  if (before && after && typeof before === "object" && typeof after === "object") {
    const keys = new Set([...Object.keys(before), ...Object.keys(after)]);
    return [...keys].flatMap((k) =>
      jsonDiff((before as Record<string, unknown>)[k], (after as Record<string, unknown>)[k], `${path}.${k}`),
    );
  }
  return [`${path || "."}: ${JSON.stringify(before)} → ${JSON.stringify(after)}`];
}
