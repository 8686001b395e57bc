// The node agent's memory: `npm run bench:agent` (issue 16: every node runs one; goal < 80 MB).
//
// One sandbox node: a real containerd and a real `stowage agent` (bin/stowage.js) as a child
// process, with the process environment the chart gives the agent container, against the API
// double, and a CNCF distribution registry on loopback as the cache. The node's NodeCache (as the
// controller writes it: cache endpoint, mirror hosts, images by digest) lists a few small
// synthetic images; the agent writes hosts.toml, pulls them through CRI, reports them Present,
// then idles. Figures: the agent's peak resident size (VmHWM, sampled from /proc through the run),
// its resident size at the end (VmRSS, RssAnon, RssFile), and a floor measured in the same run: a
// bare `node -e "setTimeout(()=>{},500)"`.
//
// Two agent starts, each on a fresh containerd: first as the image runs it on every node, with
// the compile cache the image ships (bin/warm-compile-cache.js, run here exactly as the
// Dockerfile runs it, into a fresh folder), then from a source checkout with an empty compile
// cache (Node strips the TypeScript sources as it loads them: what the image's cache saves).
// The goal applies to the first. The agent tunes V8 itself (src/agent/runtimeEnv.ts); the
// environment is the chart's.
//
//   npm run bench:agent
//   node bench/agent.ts --images 5 --image-mb 8 --idle-seconds 30
//   node bench/agent.ts --no-runtime-env                 # without the chart's environment
//   node bench/agent.ts --node-flags="--max-lazy"        # try flags on the agent's command line
//   STOWAGE_BENCH_KEEP=1 node bench/agent.ts   # keep the agents' logs (with NODE_DEBUG_NATIVE=COMPILE_CACHE: every file loaded)
//   node bench/agent.ts --heap-snapshot       # the agent writes a V8 heap snapshot after idling,
//                                             # into this process's working directory
//
// Needs root (containerd's snapshotter mounts). Not a test; CI does not run it.
import { type ChildProcess, spawn } from "node:child_process";
import { readdirSync, readFileSync } from "node:fs";
import { mkdir, mkdtemp, open, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { AGENT_RUNTIME_ENV } from "../src/agent/runtimeEnv.ts";
import { loadCrd } from "../src/api/crds.ts";
import { type NodeCache, type NodeCacheImage, NodeCacheResource } from "../src/api/nodeCache.ts";
import { KubeClient } from "../src/kube/client.ts";
import { RegistryClient } from "../src/oci/registry.ts";
import { startTestCluster } from "../testkit/cluster.ts";
import { type RunningContainerd, startContainerd } from "../testkit/containerd.ts";
import { pushSinglePlatformImage } from "../testkit/images.ts";
import { freePort } from "../testkit/ports.ts";
import { startRegistry } from "../testkit/registry.ts";
import { makeImageCompileCache } from "./imageCompileCache.ts";
import { procStatusKiB } from "./procStatus.ts";

const GOAL_MB = 80;
const MB = 1e6;

const { values } = parseArgs({
  options: {
    images: { type: "string", default: "3" },
    "image-mb": { type: "string", default: "4" },
    "idle-seconds": { type: "string", default: "10" },
    "timeout-seconds": { type: "string", default: "180" },
    // Run the agent without the chart's runtime environment (what it costs without it).
    "no-runtime-env": { type: "boolean", default: false },
    "heap-snapshot": { type: "boolean", default: false },
    // V8 or Node flags on the agent's command line (what NODE_OPTIONS does not take), to try them.
    "node-flags": { type: "string", default: "" },
  },
});
const imageCount = Number(values.images);
const imageBytes = Math.round(Number(values["image-mb"]) * MB);
const idleMs = Number(values["idle-seconds"]) * 1000;
const timeoutMs = Number(values["timeout-seconds"]) * 1000;
if (!(imageCount >= 1) || !(imageBytes >= 1024) || !(idleMs >= 0))
  throw new Error("--images, --image-mb and --idle-seconds must be positive numbers");
const nodeFlags = values["node-flags"].split(" ").filter(Boolean);
const runtimeEnv: Record<string, string> = values["no-runtime-env"] ? {} : { ...AGENT_RUNTIME_ENV };

function say(line = ""): void {
  process.stdout.write(`${line}\n`);
}

const mb = (kib: number) => `${((kib * 1024) / MB).toFixed(1)} MB`;
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** The highest VmHWM seen while the process lived, read every `everyMs` (the kernel keeps the peak). */
function sampleHwm(pid: number | undefined, everyMs: number): { peakKiB(): number; stop(): void } {
  let peak = 0;
  const read = () => {
    peak = Math.max(peak, procStatusKiB(pid, "VmHWM"));
  };
  read();
  const timer = setInterval(read, everyMs);
  return {
    peakKiB: () => {
      read();
      return peak;
    },
    stop: () => clearInterval(timer),
  };
}

/** A bare Node process's peak resident size: what any Node program costs before it does anything. */
async function measureFloorKiB(): Promise<number> {
  const child = spawn(process.execPath, ["-e", "setTimeout(()=>{},500)"], { stdio: "ignore" });
  const exited = new Promise((resolve) => child.once("exit", resolve));
  const sampler = sampleHwm(child.pid, 10);
  let peak = 0;
  // Read until it is gone: the last samples before exit hold its peak.
  while (child.exitCode === null && child.signalCode === null) {
    peak = Math.max(peak, sampler.peakKiB());
    await sleep(10);
  }
  sampler.stop();
  await exited;
  return peak;
}

async function stopChild(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()));
  child.kill("SIGTERM");
  const timer = setTimeout(() => child.kill("SIGKILL"), 5_000);
  await exited;
  clearTimeout(timer);
}

interface AgentRun {
  label: string;
  /** Whether the < 80 MB goal applies (the image as the chart runs it). */
  goal: boolean;
  peakKiB: number;
  readyHwmKiB: number;
  presentHwmKiB?: number;
  endKiB: { rss: number; anon: number; file: number };
  presentMs?: number;
  ok: boolean;
}

const dir = await mkdtemp(join(tmpdir(), "stowage-bench-agent-"));
const cleanups: (() => Promise<unknown>)[] = [];
const children = new Set<ChildProcess>();
process.once("exit", () => {
  for (const child of children) child.kill("SIGKILL");
});
let exitCode = 0;

async function runAgent(
  label: string,
  goal: boolean,
  nodeName: string,
  compileCache: string,
  kubeconfig: string,
  client: KubeClient,
  images: NodeCacheImage[],
  cacheUrl: string,
  upstreamHost: string,
): Promise<AgentRun> {
  const containerd: RunningContainerd = await startContainerd();
  cleanups.push(() => containerd.dispose());
  const healthPort = await freePort();
  const logFile = join(dir, `agent-${nodeName}.log`);
  const log = await open(logFile, "a");
  await client.resource<NodeCache>(NodeCacheResource).create({
    apiVersion: "stowage.dev/v1alpha1",
    kind: "NodeCache",
    metadata: { name: nodeName },
    spec: { nodeName, cacheEndpoint: cacheUrl, mirrorHosts: [upstreamHost], images },
  });
  // The container's environment as the chart sets it (runtime env), plus where this start's
  // compile cache lives.
  const nodeOptions = [
    runtimeEnv.NODE_OPTIONS ?? "",
    values["heap-snapshot"] ? `--heapsnapshot-signal=SIGUSR2 --diagnostic-dir=${process.cwd()}` : "",
  ]
    .join(" ")
    .trim();
  const started = performance.now();
  const agent = spawn(
    process.execPath,
    [
      ...nodeFlags,
      join(import.meta.dirname, "../bin/stowage.js"),
      "agent",
      `--node-name=${nodeName}`,
      `--cri-socket=${containerd.socketPath}`,
      `--containerd-config-path=${containerd.certsDir}`,
      `--containerd-config=${containerd.configFile}`,
      `--containerd-root=${join(containerd.dir, "root")}`,
      `--kubeconfig=${kubeconfig}`,
      `--health-port=${healthPort}`,
      "--health-bind-address=127.0.0.1",
      "--heartbeat-interval=15s",
      "--retry-initial=2s",
    ],
    {
      cwd: dir,
      env: {
        ...process.env,
        ...runtimeEnv,
        NODE_OPTIONS: nodeOptions,
        NODE_COMPILE_CACHE: compileCache,
        STOWAGE_LOG_LEVEL: "",
      },
      stdio: ["ignore", log.fd, log.fd],
    },
  );
  children.add(agent);
  cleanups.push(async () => {
    await stopChild(agent);
    await log.close().catch(() => {});
  });
  const sampler = sampleHwm(agent.pid, 100);
  const alive = () => agent.exitCode === null && agent.signalCode === null;
  const logText = () => readFileSync(logFile, "utf8");
  try {
    const deadline = performance.now() + timeoutMs;
    while (!logText().includes('"agent ready"')) {
      if (!alive() || performance.now() > deadline) {
        say(`bench:agent: the agent (${label}) never became ready:\n${logText().slice(-3000)}`);
        return {
          label,
          goal,
          peakKiB: sampler.peakKiB(),
          readyHwmKiB: 0,
          endKiB: { rss: 0, anon: 0, file: 0 },
          ok: false,
        };
      }
      await sleep(50);
    }
    const readyHwmKiB = sampler.peakKiB();
    let presentMs: number | undefined;
    let lastCounts = "";
    while (performance.now() < deadline && alive()) {
      const status = (await client.resource<NodeCache>(NodeCacheResource).get(nodeName)).status;
      const counts = JSON.stringify(status?.counts ?? {});
      if (counts !== lastCounts)
        say(`  [${((performance.now() - started) / 1000).toFixed(1).padStart(5)} s] ${label}: ${counts}`);
      lastCounts = counts;
      if (status?.counts?.present === images.length) {
        presentMs = performance.now() - started;
        break;
      }
      if ((status?.counts?.failed ?? 0) > 0) break;
      await sleep(200);
    }
    const presentHwmKiB = presentMs !== undefined ? sampler.peakKiB() : undefined;
    if (presentMs === undefined)
      say(`bench:agent: not every image Present (${label}):\n${logText().slice(-3000)}`);
    else await sleep(idleMs);
    const endKiB = {
      rss: procStatusKiB(agent.pid, "VmRSS"),
      anon: procStatusKiB(agent.pid, "RssAnon"),
      file: procStatusKiB(agent.pid, "RssFile"),
    };
    // Read before any heap snapshot: writing one costs the agent more than it ever holds.
    const peakKiB = sampler.peakKiB();
    if (values["heap-snapshot"]) {
      const snapshots = () => readdirSync(process.cwd()).filter((f) => f.endsWith(".heapsnapshot"));
      const before = new Set(snapshots());
      agent.kill("SIGUSR2");
      for (let i = 0; i < 100 && snapshots().every((f) => before.has(f)); i++) await sleep(100);
      await sleep(1000);
      const written = snapshots().filter((f) => !before.has(f));
      say(`  heap snapshot: ${written.map((f) => join(process.cwd(), f)).join(", ") || "(none written)"}`);
    }
    return {
      label,
      goal,
      peakKiB,
      readyHwmKiB,
      presentHwmKiB,
      endKiB,
      presentMs,
      ok: presentMs !== undefined && alive(),
    };
  } finally {
    sampler.stop();
  }
}

try {
  if (process.getuid?.() !== 0) {
    process.stderr.write("bench:agent: containerd needs root (snapshotter mounts)\n");
    process.exit(1);
  }
  const [cluster, cache] = await Promise.all([
    startTestCluster({ backend: "double", crds: [loadCrd("stowage.dev_nodecaches") as never] }),
    startRegistry(),
  ]);
  cleanups.push(
    () => cluster.stop(),
    () => cache.stop(),
  );
  const client = KubeClient.load({ path: cluster.kubeconfigPath });
  cleanups.push(async () => client.close());
  // The images' upstream as the nodes name it; nothing listens there, so every pull comes
  // from the cache, where the controller's layout keeps them (<host_port>/<repository>).
  const upstreamHost = `127.0.0.1:${await freePort()}`;
  const push = new RegistryClient({ insecureHosts: [cache.host] });
  const images: NodeCacheImage[] = [];
  for (let i = 0; i < imageCount; i++) {
    // Two layers per image, as a small model image has: a large one and a small one.
    const layerSizes = [Math.round(imageBytes * 0.8), imageBytes - Math.round(imageBytes * 0.8)];
    const repository = `bench/model-${i}`;
    const pushed = await pushSinglePlatformImage(
      push,
      { registry: cache.host, repository: `${upstreamHost.replace(":", "_")}/${repository}` },
      "v1",
      { layerSizes, seed: `stowage-bench-agent-${i}` },
    );
    images.push({ image: `${upstreamHost}/${repository}:v1`, digest: pushed.digest, sizeBytes: imageBytes });
  }
  await push.close();

  const floorKiB = await measureFloorKiB();
  // The image's compile cache, made by the script the Dockerfile runs at build time.
  const imageCompileCache = makeImageCompileCache(dir);
  const emptyCompileCache = join(dir, "empty-compile-cache");
  await mkdir(emptyCompileCache);
  say(
    `${imageCount} images of ${(imageBytes / MB).toFixed(1)} MB from ${cache.url}; agent env ${JSON.stringify(runtimeEnv)}${nodeFlags.length ? `, node flags ${nodeFlags.join(" ")}` : ""}; idle ${idleMs / 1000} s after Present`,
  );
  const runs: AgentRun[] = [];
  const starts = [
    { label: "the image (its compile cache), every pod start", goal: true, compileCache: imageCompileCache },
    { label: "a source checkout, empty compile cache", goal: false, compileCache: emptyCompileCache },
  ];
  for (const [i, start] of starts.entries()) {
    if (i > 0)
      for (const cleanup of cleanups.splice(cleanups.length - 2).reverse()) await cleanup().catch(() => {});
    runs.push(
      await runAgent(
        start.label,
        start.goal,
        `bench-node-${i + 1}`,
        start.compileCache,
        cluster.kubeconfigPath,
        client,
        images,
        cache.url,
        upstreamHost,
      ),
    );
  }
  const floorAgainKiB = await measureFloorKiB();

  say("");
  say(
    `floor: node -e "setTimeout(()=>{},500)" peak RSS ${mb(floorKiB)} (again after the agents: ${mb(floorAgainKiB)})`,
  );
  for (const run of runs) {
    const pass = run.ok && (run.peakKiB * 1024) / MB < GOAL_MB;
    if (!run.ok || (run.goal && !pass)) exitCode = 1;
    say(`agent, ${run.label}:`);
    say(
      `  peak RSS (VmHWM) ${mb(run.peakKiB)} = ${(run.peakKiB / floorKiB).toFixed(2)}× the floor  ${run.goal ? `${pass ? "PASS" : "FAIL"} (< ${GOAL_MB} MB)` : `(no goal: ${run.ok ? "ran" : "FAILED"})`}`,
    );
    say(
      `  peak by phase: at ready ${mb(run.readyHwmKiB)}, at all Present ${run.presentHwmKiB !== undefined ? mb(run.presentHwmKiB) : "-"} (${run.presentMs !== undefined ? `${(run.presentMs / 1000).toFixed(1)} s after start` : "never"})`,
    );
    say(
      `  at the end: VmRSS ${mb(run.endKiB.rss)}, RssAnon ${mb(run.endKiB.anon)}, RssFile ${mb(run.endKiB.file)}`,
    );
  }
} catch (err) {
  process.stderr.write(`bench:agent: ${(err as Error).stack ?? err}\n`);
  exitCode = 1;
} finally {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup().catch(() => {});
  if (process.env.STOWAGE_BENCH_KEEP) say(`kept ${dir} (the agents' logs)`);
  else await rm(dir, { recursive: true, force: true });
}
process.exitCode = exitCode;
