/**
 * Pod-startup benchmark (issue 12): `npm run bench:podstart`.
 *
 *   npm run bench:podstart                          # a 2 GiB model image, 40 MB/s per connection, +20 ms
 *   node bench/podstart.ts --scale 0.05             # quick run (also STOWAGE_BENCH_SCALE)
 *   node bench/podstart.ts --rate 40 --latency 20   # the upstream link: MB/s per connection, added ms
 *
 * Everything is real and on 127.0.0.1: the control plane (etcd, kube-apiserver,
 * controller-manager, scheduler), kubelet nodes each with its own containerd
 * (testkit/kubeletNode.ts), an "upstream" distribution registry behind a link paced per
 * connection with added latency (bench/wanLink.ts: a WAN registry), the cache registry with the
 * `stowage cache` front, and Stowage's `controller` (with
 * its pod admission webhook) and `agent` processes. The user pod's image is busybox plus
 * multi-GB incompressible layers; its container really starts on the kubelet.
 *
 * Timed: pod creation → container running, with the bench's monotonic clock (performance.now()
 * just before the create request, to the pod watch event whose containerStatuses show
 * `running`); the pod's own whole-second timestamps (startedAt − creationTimestamp) are printed
 * beside. Cases:
 *   local  the image already in the node's containerd (the peer of (b)); on the node without
 *          Stowage, in a namespace the webhook skips; run --runs times, interleaved with (b).
 *   (a)    no Stowage: the kubelet pulls from the upstream over the throttled link.
 *   (b)    ModelImage Ready and the node's NodeCache Present, then the pod (--runs times).
 *   (c)    a fresh node (registered with the stowage.dev/warming taint) joins after the
 *          ModelImage is Ready; its pod is created at join: join (containerd + kubelet start) →
 *          running, the taint holding the pod until the image is present.
 *   (d)    an undeclared image pulled through `stowage cache` a second time (skipped while the
 *          pull-through front does not exist).
 * Needs root (kubelet, containerd mounts). CI does not run it.
 */
import { spawnSync } from "node:child_process";
import { readFileSync } from "node:fs";
import { mkdir, mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import { loadAllCrds } from "../src/api/crds.ts";
import { WARMING_TAINT_KEY } from "../src/api/labels.ts";
import { KubeClient } from "../src/kube/client.ts";
import { RegistryClient } from "../src/oci/registry.ts";
import { type AgentNode, spawnStowage, startAgentNode, stopChild } from "../testkit/agentNode.ts";
import { type ControllerProcess, startControllerProcess } from "../testkit/controllerProcess.ts";
import { type ControlPlane, startControlPlane } from "../testkit/controlplane/index.ts";
import { type FaultProxy, startFaultProxy } from "../testkit/faultProxy.ts";
import { type KubeletNode, type KubeletNodeOptions, startKubeletNode } from "../testkit/kubeletNode.ts";
import { unmountUnder } from "../testkit/mounts.ts";
import { freePort } from "../testkit/ports.ts";
import { type RunningRegistry, startRegistry } from "../testkit/registry.ts";
import {
  buildRunnableImage,
  deletePod,
  imageBytes,
  type Json,
  median,
  type PodStart,
  pushRunnableImage,
  timePodStart,
  userPod,
  waitFor,
} from "./podstartKit.ts";
import { startWanLink } from "./wanLink.ts";

const MiB = 1024 * 1024;
const STOWAGE_NS = "stowage-system";
/** Pods under Stowage (the webhook sees them). */
const BENCH_NS = "bench";
/** Pods of the cases without Stowage: the webhook's namespaceSelector skips this namespace. */
const PLAIN_NS = "bench-plain";
const MODEL_IMAGE = "llm-serve";
const WEBHOOK_CONFIGURATION = "stowage-webhook";
const POOL = { "stowage.dev/bench-pool": "gpu" };
const PLAIN_NODE = "plain-node";
const WARM_NODE = "warm-node";
const LATE_NODE = "late-node";

const { values } = parseArgs({
  options: {
    scale: { type: "string" },
    rate: { type: "string", default: "40" },
    latency: { type: "string", default: "20" },
    runs: { type: "string", default: "11" },
    "timeout-seconds": { type: "string", default: "1800" },
  },
});
const scale = Number(values.scale ?? process.env.STOWAGE_BENCH_SCALE ?? "1");
if (!(scale > 0)) throw new Error(`--scale must be a positive number, got ${values.scale}`);
const rateMBps = Number(values.rate);
if (!(rateMBps >= 0))
  throw new Error(`--rate must be MB/s per connection (0: unlimited), got ${values.rate}`);
const latencyMs = Number(values.latency);
if (!(latencyMs >= 0)) throw new Error(`--latency must be milliseconds, got ${values.latency}`);
const runs = Number(values.runs);
if (!(Number.isInteger(runs) && runs >= 1))
  throw new Error(`--runs must be a whole number ≥ 1, got ${values.runs}`);
const timeoutMs = Number(values["timeout-seconds"]) * 1000;
// 2 GiB at scale 1, in the layer sizes of a large ML image (one dominant layer), as bench:prewarm.
const layerSizes = [1024, 512, 256, 128, 64, 48, 16].map((m) => Math.max(1024, Math.round(m * MiB * scale)));

function say(line = ""): void {
  process.stdout.write(`${line}\n`);
}

const secs = (ms: number | undefined) => (ms === undefined ? "-" : (ms / 1000).toFixed(ms < 10_000 ? 2 : 1));
const mib = (bytes: number) => `${(bytes / MiB).toFixed(0)} MiB`;

/** Whether `stowage cache` (the pull-through front, src/cache) exists in this tree. */
function cacheCommandMissing(): string | undefined {
  const bin = fileURLToPath(new URL("../bin/stowage.js", import.meta.url));
  const help = spawnSync(process.execPath, [bin, "cache", "--help"], { encoding: "utf8", timeout: 30_000 });
  if (help.status === 0 && /Usage: stowage cache/.test(help.stdout + help.stderr)) return undefined;
  return `\`stowage cache --help\` exits ${help.status}: ${(help.stderr || help.stdout).trim().split("\n")[0]}`;
}

async function main(): Promise<number> {
  if (process.getuid?.() !== 0) {
    process.stderr.write("bench:podstart: kubelet and containerd need root\n");
    return 1;
  }
  const dir = await mkdtemp(join(tmpdir(), "stowage-bench-podstart-"));
  const logsDir = join(dir, "logs");
  await mkdir(logsDir);
  const cleanups: (() => Promise<unknown>)[] = [];
  let cleaning: Promise<void> | undefined;
  const cleanUp = () => {
    cleaning ??= (async () => {
      for (const cleanup of cleanups.splice(0).reverse()) await cleanup().catch(() => {});
      await unmountUnder(dir);
      await rm(dir, { recursive: true, force: true });
    })();
    return cleaning;
  };
  for (const signal of ["SIGINT", "SIGTERM"] as const)
    process.once(signal, () => {
      say(`\n${signal}: stopping every process and removing ${dir}`);
      void cleanUp().then(() => process.exit(130));
    });

  try {
    say(
      `bench:podstart: scale ${scale}, upstream link ${rateMBps > 0 ? `${rateMBps} MB/s per connection` : "unlimited"}, +${latencyMs} ms, ${runs} run(s) of local and (b)`,
    );
    // --- registries and the WAN link
    const [upstream, cache] = await Promise.all([startRegistry(), startRegistry()]);
    cleanups.push(
      () => upstream.stop(),
      () => cache.stop(),
    );
    // client → WAN link (per-connection pace, added latency) → fault proxy (records requests) → upstream
    const recorder: FaultProxy = await startFaultProxy(upstream.url);
    cleanups.push(() => recorder.stop());
    const link = await startWanLink(Number(new URL(recorder.url).port), {
      bytesPerSecond: rateMBps * 1e6,
      latencyMs,
    });
    cleanups.push(() => link.stop());

    const seedStarted = performance.now();
    const image = await buildRunnableImage(`stowage-bench-podstart-${scale}`, layerSizes);
    const pusher = new RegistryClient({ insecureHosts: [upstream.host] });
    const digest = await pushRunnableImage(
      pusher,
      { registry: upstream.host, repository: "models/llm-serve" },
      "bench",
      image,
    );
    const reference = `${link.host}/models/llm-serve:bench`;
    const bytes = imageBytes(image);
    // (d)'s image: no ModelImage names it; same sizes, other bytes (only the busybox layer is shared).
    const frontMissing = cacheCommandMissing();
    const undeclared = frontMissing
      ? undefined
      : await buildRunnableImage(`stowage-bench-podstart-undeclared-${scale}`, layerSizes);
    if (undeclared)
      await pushRunnableImage(
        pusher,
        { registry: upstream.host, repository: "models/undeclared" },
        "bench",
        undeclared,
      );
    await pusher.close();
    const undeclaredReference = `${link.host}/models/undeclared:bench`;
    const blobSizes = new Map(
      [...image.blobs, ...(undeclared?.blobs ?? [])].map((b) => [b.descriptor.digest, b.descriptor.size]),
    );
    const traffic = trafficMeter(recorder, cache, blobSizes);
    say(
      `image ${reference} ${digest.slice(0, 19)}…: busybox + ${layerSizes.length} layers, ${mib(bytes)}${undeclared ? `; and ${undeclaredReference} (no ModelImage), as large` : ""}; seeded upstream in ${secs(performance.now() - seedStarted)} s`,
    );

    // --- control plane, namespaces, the first two nodes
    const planeStarted = performance.now();
    const plane: ControlPlane = await startControlPlane({
      crds: loadAllCrds() as object[],
      // kubectl logs/exec reach the kubelet at its InternalIP (the Hostname does not resolve)
      apiserverFlags: ["--kubelet-preferred-address-types=InternalIP"],
    });
    cleanups.push(() => plane.stop());
    const client = KubeClient.load({ path: plane.kubeconfigPath });
    cleanups.push(async () => client.close());
    for (const [name, labels] of [
      [STOWAGE_NS, {}],
      [BENCH_NS, {}],
      [PLAIN_NS, { "stowage.dev/hold-pods": "disabled" }],
    ] as const)
      await client.request("POST", "/api/v1/namespaces", {
        body: { apiVersion: "v1", kind: "Namespace", metadata: { name, labels } },
      });
    for (const ns of [BENCH_NS, PLAIN_NS])
      await waitFor(
        `ServiceAccount ${ns}/default`,
        () => client.request(`GET`, `/api/v1/namespaces/${ns}/serviceaccounts/default`),
        60_000,
      );

    const nodes: KubeletNode[] = [];
    const startNode = async (name: string, options?: KubeletNodeOptions) => {
      // startKubeletNode starts again a kubelet that lost the race for the shared device-plugin socket.
      const node = await startKubeletNode(plane, name, options);
      nodes.push(node);
      cleanups.push(() => node.stop());
      return node;
    };
    // One after the other: the kubelets race for a shared device-plugin socket (testkit/kubeletNode).
    const plainNode = await startNode(PLAIN_NODE);
    const warmNode = await startNode(WARM_NODE, { labels: POOL });
    say(
      `control plane and kubelet nodes ${PLAIN_NODE}, ${WARM_NODE} Ready in ${secs(performance.now() - planeStarted)} s`,
    );
    // Without Stowage, containerd must be told the upstream speaks plain HTTP.
    await writeHostsToml(plainNode, link.host, `http://${link.host}`);

    // --- (a) no Stowage: the kubelet pulls 2 GiB over the WAN link
    say("(a) no Stowage: pod on a node without the image, the kubelet pulls from the upstream …");
    let mark = await traffic.mark();
    const coldA = await timePodStart(client, userPod("cold-a", PLAIN_NS, PLAIN_NODE, reference), {
      timeoutMs,
    });
    say(
      `    running after ${secs(coldA.ms)} s (pod timestamps: ${coldA.podTimestampsSeconds} s); ${await traffic.since(mark)}`,
    );
    await deletePod(client, PLAIN_NS, "cold-a");

    // --- Stowage: the pull-through front before the storage registry (when this tree has it),
    // the controller with its webhook, an agent on the pool's node, the ModelImage
    const stowageStarted = performance.now();
    let front: { url: string; logFile: string } | undefined;
    if (!frontMissing) {
      const logFile = join(logsDir, "cache-front.log");
      const spoolDir = join(dir, "spool");
      await mkdir(spoolDir);
      const child = await spawnStowage(
        [
          "cache",
          "--storage-registry",
          cache.url,
          "--upstream-host",
          link.host,
          "--insecure-registry",
          link.host,
          "--spool-dir",
          spoolDir,
          "--port",
          "0",
          "--health-port",
          "0",
          // spawnStowage sets STOWAGE_LOG_LEVEL="", which `stowage cache` refuses; a flag wins
          "--log-level",
          "info",
        ],
        logFile,
      );
      cleanups.push(() => stopChild(child));
      const ready = await waitFor(
        "`stowage cache` ready",
        async () => {
          if (child.exitCode !== null) throw new Error(`stowage cache exited ${child.exitCode}`);
          return readFileSync(logFile, "utf8")
            .split("\n")
            .filter((line) => line.startsWith("{"))
            .map((line) => JSON.parse(line) as Json)
            .find((line) => line.msg === "cache ready");
        },
        30_000,
      ).catch((err: Error) => {
        throw new Error(`${err.message}\n${readFileSync(logFile, "utf8").slice(-3000)}`);
      });
      front = { url: `http://${ready.address}`, logFile };
    }
    const nodesCacheUrl = front?.url ?? cache.url;
    const webhookPort = await freePort();
    await client.request("POST", "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations", {
      body: webhookConfiguration(webhookPort),
    });
    const controller: ControllerProcess = await startControllerProcess({
      kubeconfig: plane.kubeconfigPath,
      cacheRegistry: cache.url,
      args: [
        "--insecure-registry",
        link.host,
        "--leader-elect=false",
        "--webhook-port",
        String(webhookPort),
        "--webhook-namespace",
        STOWAGE_NS,
        "--webhook-configuration",
        WEBHOOK_CONFIGURATION,
        // nodes pull through the front; the controller pushes into the storage registry
        "--cache-endpoint-for-nodes",
        nodesCacheUrl,
      ],
      echo: false,
    });
    cleanups.push(() => controller.kill("SIGTERM"));
    await controller.waitForLog((l) => l.msg === "controller started" && l.controller === "prewarm", 60_000);
    const agents: AgentNode[] = [];
    const startAgent = async (node: KubeletNode) => {
      const agent = await startAgentNode(node.name, {
        kubeconfig: plane.kubeconfigPath,
        logsDir,
        containerd: node.containerd,
      });
      agents.push(agent);
      cleanups.push(() => agent.stop());
      return agent;
    };
    await startAgent(warmNode);
    await waitFor(
      "the webhook's caBundle published",
      async () => {
        const mwc: Json = await client.request(
          "GET",
          `/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/${WEBHOOK_CONFIGURATION}`,
        );
        return mwc.webhooks?.[0]?.clientConfig?.caBundle ? true : undefined;
      },
      60_000,
    );
    say(
      `${front ? `stowage cache front ${front.url} before the storage registry ${cache.url}; ` : ""}stowage controller (pid ${controller.pid}, webhook :${webhookPort}) and agent on ${WARM_NODE} up in ${secs(performance.now() - stowageStarted)} s`,
    );

    mark = await traffic.mark();
    const miStarted = performance.now();
    await client.request("POST", `/apis/stowage.dev/v1alpha1/namespaces/${BENCH_NS}/modelimages`, {
      body: {
        apiVersion: "stowage.dev/v1alpha1",
        kind: "ModelImage",
        metadata: { name: MODEL_IMAGE, namespace: BENCH_NS },
        spec: {
          variants: [{ name: "gpu", image: reference, nodeSelector: POOL }],
          // one warm node keeps Prewarmed=True when a new node joins: the taint holds its pods
          prewarm: { enabled: true, holdPods: true, minReadyNodes: 1 },
        },
      },
    });
    const readyMs = await waitFor(
      `ModelImage ${BENCH_NS}/${MODEL_IMAGE} Ready`,
      async () => {
        const mi: Json = await client.request(
          "GET",
          `/apis/stowage.dev/v1alpha1/namespaces/${BENCH_NS}/modelimages/${MODEL_IMAGE}`,
        );
        const ready = (mi.status?.conditions ?? []).find((c: Json) => c.type === "Ready");
        return ready?.status === "True" ? performance.now() - miStarted : undefined;
      },
      timeoutMs,
      250,
    ).catch(withLog(controller));
    const warmPresentMs = await waitFor(
      `${digest} Present in NodeCache ${WARM_NODE}`,
      async () =>
        (await imageState(client, WARM_NODE, digest)) === "Present"
          ? performance.now() - miStarted
          : undefined,
      timeoutMs,
      250,
    );
    say(
      `ModelImage created → Present on ${WARM_NODE} ${secs(warmPresentMs)} s, → Ready ${secs(readyMs)} s (mirror over the link, then the pre-pull from the cache); ${await traffic.since(mark)}`,
    );

    // --- local baseline and (b), interleaved so both see the same machine load
    const local: PodStart[] = [];
    const warm: PodStart[] = [];
    mark = await traffic.mark();
    for (let i = 1; i <= runs; i++) {
      const localRun = await timePodStart(client, userPod(`local-${i}`, PLAIN_NS, PLAIN_NODE, reference), {
        timeoutMs,
      });
      await deletePod(client, PLAIN_NS, `local-${i}`);
      const warmRun = await timePodStart(client, userPod(`warm-b-${i}`, BENCH_NS, WARM_NODE, reference), {
        timeoutMs,
      });
      await deletePod(client, BENCH_NS, `warm-b-${i}`);
      if (warmRun.gated) say(`    note: the webhook gated warm-b-${i} although the ModelImage was Prewarmed`);
      local.push(localRun);
      warm.push(warmRun);
      say(
        `run ${i}: local ${secs(localRun.ms)} s (pod timestamps ${localRun.podTimestampsSeconds} s), (b) ${secs(warmRun.ms)} s (pod timestamps ${warmRun.podTimestampsSeconds} s)`,
      );
    }
    say(`    local and (b) runs: ${await traffic.since(mark)}`);
    const localMs = median(local.map((r) => r.ms));
    const warmMs = median(warm.map((r) => r.ms));

    // --- (c) a node joins after Ready; its pod is created at join
    say(`(c) ${LATE_NODE} joins (taint ${WARMING_TAINT_KEY}), its pod created at join …`);
    mark = await traffic.mark();
    const joinStarted = performance.now();
    const phases: {
      registered?: number;
      ready?: number;
      agentStarted?: number;
      present?: number;
      untainted?: number;
    } = {};
    // The Node through a watch (the taint's removal to the millisecond), the NodeCache by polling.
    const watching = new AbortController();
    const nodeList: Json = await client.request("GET", "/api/v1/nodes");
    const nodeWatch = client
      .watch(
        "/api/v1/nodes",
        { fieldSelector: `metadata.name=${LATE_NODE}`, resourceVersion: nodeList.metadata.resourceVersion },
        (_type, object) => {
          const at = performance.now() - joinStarted;
          phases.registered ??= at;
          const taints = (object as Json).spec?.taints ?? [];
          if (!taints.some((t: Json) => t.key === WARMING_TAINT_KEY)) phases.untainted ??= at;
        },
        { signal: watching.signal, inactivityMs: timeoutMs },
      )
      .catch((err: Error) => say(`    node watch ended: ${err.message}`));
    const presence = (async () => {
      while (!watching.signal.aborted && phases.present === undefined) {
        if ((await imageState(client, LATE_NODE, digest).catch(() => undefined)) === "Present")
          phases.present = performance.now() - joinStarted;
        await new Promise((resolve) => setTimeout(resolve, 200));
      }
    })();
    const latePod = timePodStart(client, userPod("late-c", BENCH_NS, LATE_NODE, reference), {
      timeoutMs,
      started: joinStarted,
    });
    latePod.catch(() => {}); // awaited below; a failed join must not leave it unhandled
    const lateNode = await startNode(LATE_NODE, {
      labels: POOL,
      taints: [{ key: WARMING_TAINT_KEY, value: "true", effect: "NoSchedule" }],
    });
    phases.ready = performance.now() - joinStarted;
    // The agent starts once the node is Ready, as its DaemonSet pod would.
    await startAgent(lateNode);
    phases.agentStarted = performance.now() - joinStarted;
    const late = await latePod.finally(() => watching.abort());
    await Promise.all([nodeWatch, presence]);
    say(
      `    registered ${secs(phases.registered)} s, Ready ${secs(phases.ready)} s, agent started ${secs(phases.agentStarted)} s, image Present ${secs(phases.present)} s (NodeCache, polled), taint removed ${secs(phases.untainted)} s, pod scheduled ${secs(late.scheduledMs)} s, running ${secs(late.ms)} s (pod timestamps: ${late.podTimestampsSeconds} s from creation); ${await traffic.since(mark)}`,
    );
    const heldByTaint =
      phases.untainted !== undefined &&
      late.scheduledMs !== undefined &&
      late.scheduledMs >= phases.untainted;
    if (!heldByTaint)
      say(`    NOTE: the pod was scheduled before the ${WARMING_TAINT_KEY} taint was removed`);
    if (late.gated) say("    note: the webhook gated the pod too (scheduling gate) until the node was warm");

    // --- (d) an undeclared image through the pull-through front: first on one node, then again
    // on another (whose containerd never had it), both through the hosts.toml the agents wrote
    let firstD: PodStart | undefined;
    let secondD: PodStart | undefined;
    const dSkipped = frontMissing
      ? `the pull-through front \`stowage cache\` is not in this tree (${frontMissing})`
      : undefined;
    if (!dSkipped) {
      say(`(d) ${undeclaredReference}, declared by no ModelImage, through the front …`);
      mark = await traffic.mark();
      firstD = await timePodStart(client, userPod("undeclared-1", BENCH_NS, WARM_NODE, undeclaredReference), {
        timeoutMs,
      });
      say(
        `    first pull (${WARM_NODE}, a miss: the front fetches upstream): running after ${secs(firstD.ms)} s (pod timestamps ${firstD.podTimestampsSeconds} s); ${await traffic.since(mark)}`,
      );
      await deletePod(client, BENCH_NS, "undeclared-1");
      mark = await traffic.mark();
      secondD = await timePodStart(
        client,
        userPod("undeclared-2", BENCH_NS, LATE_NODE, undeclaredReference),
        {
          timeoutMs,
        },
      );
      say(
        `    second pull (${LATE_NODE}, a hit): running after ${secs(secondD.ms)} s (pod timestamps ${secondD.podTimestampsSeconds} s); ${await traffic.since(mark)}`,
      );
      await deletePod(client, BENCH_NS, "undeclared-2");
    }

    // --- table
    const joinReady = phases.ready ?? 0;
    const rows: [string, number | undefined, string][] = [
      [`local: image already in containerd (median of ${runs})`, localMs, "the peer of (b)"],
      ["(a) no Stowage: kubelet pulls over the link", coldA.ms, `peer (b) ${secs(warmMs)} s`],
      [`(b) Stowage pre-warm done (median of ${runs})`, warmMs, `peer local ${secs(localMs)} s`],
      [
        "(c) node joined after Ready: join → running",
        late.ms,
        `peers: join→Ready + local ${secs(joinReady + localMs)} s; join→Ready + (a) ${secs(joinReady + coldA.ms)} s`,
      ],
      [
        "(d) undeclared image via the front, 2nd pull",
        secondD?.ms,
        dSkipped
          ? `skipped: ${dSkipped}`
          : `peers: 1st pull through the front ${secs(firstD?.ms)} s; (a) ${secs(coldA.ms)} s`,
      ],
    ];
    say("");
    say(
      `pod creation → container running (bench's monotonic clock, pod watch); image ${mib(bytes)} (scale ${scale}); link ${rateMBps > 0 ? `${rateMBps} MB/s per connection` : "unlimited"}, +${latencyMs} ms`,
    );
    say(`${"case".padEnd(52)} ${"seconds".padStart(8)} ${"× local".padStart(8)}  note`);
    for (const [name, ms, note] of rows)
      say(
        `${name.padEnd(52)} ${secs(ms).padStart(8)} ${(ms === undefined ? "-" : (ms / localMs).toFixed(2)).padStart(8)}  ${note}`,
      );
    const warmOverLocal = warmMs / localMs;
    const coldOverWarm = coldA.ms / warmMs;
    const fullSize = scale === 1 ? "" : ` (the goals are for a 2 GiB image; this run is scale ${scale})`;
    say("");
    say(
      `(b)/local = ${warmOverLocal.toFixed(2)}×   goal ≤ 1.2×: ${warmOverLocal <= 1.2 ? "met" : "NOT met"}${fullSize}`,
    );
    say(
      `(a)/(b)   = ${coldOverWarm.toFixed(1)}×   goal ≥ 10×: ${coldOverWarm >= 10 ? "met" : "NOT met"}${fullSize}`,
    );
    if (secondD && firstD)
      say(
        `(d) 1st/2nd pull through the front = ${(firstD.ms / secondD.ms).toFixed(1)}×; (a)/(d) = ${(coldA.ms / secondD.ms).toFixed(1)}×`,
      );
    if (dSkipped) say(`(d) skipped: ${dSkipped}`);
    return 0;
  } finally {
    await cleanUp();
  }
}

/** The chart's MutatingWebhookConfiguration (templates/webhook.yaml), calling the controller on loopback. */
function webhookConfiguration(port: number): Json {
  return {
    apiVersion: "admissionregistration.k8s.io/v1",
    kind: "MutatingWebhookConfiguration",
    metadata: { name: WEBHOOK_CONFIGURATION },
    webhooks: [
      {
        name: "pods.stowage.dev",
        admissionReviewVersions: ["v1"],
        sideEffects: "None",
        failurePolicy: "Ignore",
        timeoutSeconds: 5,
        reinvocationPolicy: "IfNeeded",
        matchPolicy: "Equivalent",
        clientConfig: { url: `https://127.0.0.1:${port}/mutate-pods` },
        rules: [
          {
            operations: ["CREATE"],
            apiGroups: [""],
            apiVersions: ["v1"],
            resources: ["pods"],
            scope: "Namespaced",
          },
        ],
        namespaceSelector: {
          matchExpressions: [
            { key: "kubernetes.io/metadata.name", operator: "NotIn", values: [STOWAGE_NS, "kube-system"] },
            { key: "stowage.dev/hold-pods", operator: "NotIn", values: ["disabled"] },
          ],
        },
      },
    ],
  };
}

/** containerd's hosts.toml for `host` on the node: pull and resolve from `server`. */
async function writeHostsToml(node: KubeletNode, host: string, server: string): Promise<void> {
  const hostDir = join(node.containerd.certsDir, host);
  await mkdir(hostDir, { recursive: true });
  await writeFile(
    join(hostDir, "hosts.toml"),
    [
      `server = ${JSON.stringify(server)}`,
      "",
      `[host.${JSON.stringify(server)}]`,
      `  capabilities = ["pull", "resolve"]`,
      "",
    ].join("\n"),
  );
}

interface TrafficMark {
  link: number;
  cache: number;
}

/**
 * Bytes of the images' blobs fetched over the link (from the fault proxy's record) and from the
 * cache registry (its access log, which has no Range: a 206 there counts as the whole blob) since
 * a mark: blob GETs answered 200 or 206.
 */
function trafficMeter(link: FaultProxy, cache: RunningRegistry, blobSizes: Map<string, number>) {
  // A 206 counts its range (Stowage's client downloads large blobs in parallel ranges), a 200 the blob.
  const bytesOf = (r: { path: string; status: number; range?: string }) => {
    const size = blobSizes.get(/\/blobs\/(sha256:[0-9a-f]{64})/.exec(r.path)?.[1] ?? "") ?? 0;
    const range = r.status === 206 ? /^bytes=(\d+)-(\d*)$/.exec(r.range ?? "") : null;
    if (!range) return size;
    const end = range[2] ? Math.min(Number(range[2]), size - 1) : size - 1;
    return Math.max(0, end - Number(range[1]) + 1);
  };
  const blobBytes = (entries: { method: string; path: string; status: number; range?: string }[]) =>
    entries
      .filter((r) => r.method === "GET" && (r.status === 200 || r.status === 206))
      .reduce((sum, r) => sum + bytesOf(r), 0);
  return {
    async mark(): Promise<TrafficMark> {
      return { link: link.seen().length, cache: (await cache.requests()).length };
    },
    async since(mark: TrafficMark): Promise<string> {
      const linkRequests = link.seen().slice(mark.link);
      const overLink = blobBytes(linkRequests);
      const linkGets = linkRequests.filter((r) => r.method === "GET" && /\/blobs\//.test(r.path)).length;
      const fromCache = blobBytes((await cache.requests()).slice(mark.cache));
      return `over the link ${mib(overLink)} (${linkGets} blob GETs), from the cache ${mib(fromCache)}`;
    },
  };
}

async function imageState(client: KubeClient, node: string, digest: string): Promise<string | undefined> {
  const nc: Json = await client
    .request("GET", `/apis/stowage.dev/v1alpha1/nodecaches/${node}`)
    .catch(() => undefined);
  return (nc?.status?.images ?? []).find((i: Json) => i.digest === digest)?.state;
}

function withLog(controller: ControllerProcess) {
  return (err: Error): never => {
    throw new Error(`${err.message}\ncontroller log (end):\n${controller.stderr().slice(-3000)}`);
  };
}

process.exitCode = await main().catch((err) => {
  process.stderr.write(`bench:podstart: ${(err as Error).stack ?? err}\n`);
  return 1;
});
