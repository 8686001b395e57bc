/**
 * Pre-warm benchmark (issue 5): `npm run bench:prewarm`.
 *
 *   npm run bench:prewarm                 # one 2 GiB single-platform image, three containerd nodes
 *   node bench/prewarm.ts --scale 0.05    # quick run (also STOWAGE_BENCH_SCALE)
 *   node bench/prewarm.ts --mode through  # one mode only (wait or through; default both)
 *
 * Modes, both in one run by default (each on fresh registries, API server, nodes), then compared:
 * `wait` plans a node's pull once the ModelImage is Synced and nodes pull from the cache
 * registry; `through` runs the front before the registry, points the nodes at it and starts the
 * controller with --prewarm-through-cache, so pulls start before Synced; the front
 * single-flights what the nodes and the mirror read upstream (the mirror reads blobs through it).
 *
 * Stowage: the Kubernetes API test double, an upstream and a cache registry, the real
 * `stowage controller` and three `stowage agent` processes, each beside its own containerd.
 * Timed from ModelImage creation to Synced and to Present on all three nodes.
 * Peer, in the same run and from the same cache: three FRESH containerd instances (clean roots)
 * each pulling the cached image with `ctr image pull --plain-http`, started together.
 * Checked: the upstream served every blob of the image exactly once (blob GETs by digest, a
 * ranged one counted by its Range, as the fault proxy before the upstream recorded them), so the
 * bytes read from upstream equal one copy of the image.
 * Needs root (containerd snapshotter mounts). CI does not run it.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { readFileSync } from "node:fs";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { loadAllCrds } from "../src/api/crds.ts";
import { KubeClient } from "../src/kube/client.ts";
import { cacheRepository, parseReference } from "../src/oci/reference.ts";
import { RegistryClient } from "../src/oci/registry.ts";
import { gatherSnapshot } from "../src/status/gather.ts";
import { buildReport, type ModelImageReport } from "../src/status/model.ts";
import { type AgentNode, startAgentNode } from "../testkit/agentNode.ts";
import { startApiServer } from "../testkit/apiserver/index.ts";
import { type RunningContainerd, startContainerd } from "../testkit/containerd.ts";
import { type ControllerProcess, startControllerProcess } from "../testkit/controllerProcess.ts";
import { startFaultProxy } from "../testkit/faultProxy.ts";
import { pushSinglePlatformImage } from "../testkit/images.ts";
import { freePort } from "../testkit/ports.ts";
import { startRegistry } from "../testkit/registry.ts";
import { benchNodeObject, waitForLogLine } from "./sandboxNode.ts";

const MiB = 1024 * 1024;
const NAMESPACE = "bench";
const NAME = "prewarm-bench";
const NODE_NAMES = ["bench-node-1", "bench-node-2", "bench-node-3"];

const { values } = parseArgs({
  options: {
    scale: { type: "string" },
    mode: { type: "string", default: "both" },
    "timeout-seconds": { type: "string", default: "1800" },
  },
});
const scale = Number(values.scale ?? process.env.STOWAGE_BENCH_SCALE ?? "1");
if (!(scale > 0)) throw new Error(`--scale must be a positive number, got ${values.scale}`);
const timeoutMs = Number(values["timeout-seconds"]) * 1000;
type Mode = "wait" | "through";
const modeOption = values.mode;
if (modeOption !== "wait" && modeOption !== "through" && modeOption !== "both")
  throw new Error(`--mode must be wait, through or both, got ${modeOption}`);
const modes: Mode[] = modeOption === "both" ? ["wait", "through"] : [modeOption];

/** What each mode measured, for the comparison at the end of a run of both. */
interface ModeSummary {
  presentMs?: number;
  syncedMs?: number;
  peerMs?: number;
  upstreamBytes: number;
  imageBytes: number;
  eachOnce: boolean;
}
const summaries = new Map<Mode, ModeSummary>();
// 2 GiB at scale 1, in layers of the sizes a large ML image has (one dominant layer).
const layerSizes = [1024, 512, 256, 128, 64, 48, 16].map((m) => Math.max(1024, Math.round(m * MiB * scale)));

function say(line = ""): void {
  process.stdout.write(`${line}\n`);
}

function verdict(ok: boolean): string {
  return ok ? "PASS" : "FAIL";
}

function seconds(ms: number): string {
  return `${(ms / 1000).toFixed(1)} s`;
}

function mib(bytes: number): string {
  return `${(bytes / MiB).toFixed(1)} MiB`;
}

/** Peak resident set of a live process (VmHWM), in KiB. */
function peakRssKiB(pid: number | undefined): number | undefined {
  if (pid === undefined) return undefined;
  try {
    const match = /VmHWM:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, "utf8"));
    return match ? Number(match[1]) : undefined;
  } catch {
    return undefined;
  }
}

const children = new Set<ChildProcess>();
process.once("exit", () => {
  for (const child of children) child.kill("SIGKILL");
});

function run(command: string, args: string[]): Promise<{ code: number | null; output: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, { stdio: ["ignore", "pipe", "pipe"] });
    children.add(child);
    let output = "";
    child.stdout.on("data", (c) => {
      output += c;
    });
    child.stderr.on("data", (c) => {
      output += c;
    });
    child.on("error", reject);
    child.on("close", (code) => {
      children.delete(child);
      resolve({ code, output });
    });
  });
}

/** `stowage cache` as its own process before the cache registry, on free loopback ports. */
async function startFront(
  storageUrl: string,
  upstreamHost: string,
  dir: string,
): Promise<{ url: string; pid: number | undefined; stop: () => Promise<void> }> {
  const [port, healthPort] = await Promise.all([freePort(), freePort()]);
  const child = spawn(
    process.execPath,
    [
      join(import.meta.dirname, "../bin/stowage.js"),
      "cache",
      `--storage-registry=${storageUrl}`,
      `--upstream-host=${upstreamHost}`,
      `--insecure-registry=${upstreamHost}`,
      `--port=${port}`,
      `--health-port=${healthPort}`,
      `--spool-dir=${dir}`,
      "--log-level=warn",
    ],
    { stdio: ["ignore", "inherit", "inherit"] },
  );
  children.add(child);
  const url = `http://127.0.0.1:${port}`;
  const deadline = Date.now() + 30_000;
  for (;;) {
    const ready = await fetch(`http://127.0.0.1:${healthPort}/readyz`).then(
      (r) => r.ok,
      () => false,
    );
    if (ready) break;
    if (Date.now() > deadline || child.exitCode !== null)
      throw new Error("stowage cache did not become ready");
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  return {
    url,
    pid: child.pid,
    stop: async () => {
      if (child.exitCode !== null) return;
      const exited = new Promise((resolve) => child.once("exit", resolve));
      child.kill("SIGTERM");
      await exited;
      children.delete(child);
    },
  };
}

async function main(mode: Mode): Promise<number> {
  if (process.getuid?.() !== 0) {
    process.stderr.write("bench:prewarm: containerd needs root (snapshotter mounts)\n");
    return 1;
  }
  const dir = await mkdtemp(join(tmpdir(), "stowage-bench-prewarm-"));
  const cleanups: (() => Promise<unknown>)[] = [];
  const cleanUp = async () => {
    for (const cleanup of cleanups.splice(0).reverse()) await cleanup().catch(() => {});
    await rm(dir, { recursive: true, force: true });
  };
  process.once("SIGINT", () => void cleanUp().then(() => process.exit(130)));
  try {
    const kubeconfigPath = join(dir, "kubeconfig");
    const api = await startApiServer({ crds: loadAllCrds() as never, kubeconfigPath });
    cleanups.push(() => api.stop());
    const client = KubeClient.load({ path: kubeconfigPath });
    cleanups.push(async () => client.close());
    const registry = await startRegistry();
    cleanups.push(() => registry.stop());
    // The upstream as Stowage sees it: behind the fault proxy (no faults), which records each
    // request's Range, so the bytes read are counted whatever range size a reader uses.
    const upstream = await startFaultProxy(registry.url);
    cleanups.push(() => upstream.stop());
    const cache = await startRegistry();
    cleanups.push(() => cache.stop());

    const seedStarted = performance.now();
    const registryClient = new RegistryClient({ insecureHosts: [registry.host] });
    const pushed = await pushSinglePlatformImage(
      registryClient,
      { registry: registry.host, repository: "acme/llm-serve" },
      "bench",
      { layerSizes, seed: `stowage-bench-prewarm-${scale}` },
    );
    await registryClient.close();
    const blobs = pushed.image.blobs.map((b) => b.descriptor);
    const imageBytes = blobs.reduce((sum, b) => sum + b.size, 0);
    const reference = `${upstream.host}/acme/llm-serve:bench`;
    say(
      `image: ${reference} ${pushed.digest.slice(0, 19)}…, ${blobs.length} blobs, ${mib(imageBytes)} (scale ${scale}); seeded in ${seconds(performance.now() - seedStarted)}`,
    );

    for (const namespace of ["stowage-system", NAMESPACE])
      await api.create({ apiVersion: "v1", kind: "Namespace", metadata: { name: namespace } });

    let frontUrl: string | undefined;
    let frontPid: number | undefined;
    if (mode === "through") {
      const front = await startFront(cache.url, upstream.host, dir);
      cleanups.push(front.stop);
      frontUrl = front.url;
      frontPid = front.pid;
      say(`stowage cache (the front) pid ${front.pid} at ${front.url}`);
    }
    const controller: ControllerProcess = await startControllerProcess({
      kubeconfig: kubeconfigPath,
      cacheRegistry: cache.url,
      args: [
        "--insecure-registry",
        upstream.host,
        "--leader-elect=false",
        ...(frontUrl
          ? [`--cache-endpoint-for-nodes=${frontUrl}`, `--prewarm-through-cache=${frontUrl}`]
          : []),
      ],
      echo: false,
    });
    cleanups.push(() => controller.kill("SIGTERM"));
    try {
      await controller.waitForLog(
        (l) => l.msg === "controller started" && l.controller === "prewarm",
        30_000,
      );
    } catch {
      process.stderr.write('bench:prewarm: the controller never started its "prewarm" controller\n');
      return 1;
    }

    const nodes: AgentNode[] = [];
    for (const name of NODE_NAMES) {
      await api.create(benchNodeObject(name));
      const node = await startAgentNode(name, { kubeconfig: kubeconfigPath, logsDir: dir });
      cleanups.push(() => node.stop());
      nodes.push(node);
    }
    for (const node of nodes) {
      if (!(await waitForLogLine(node.logFile, '"agent ready"', 30_000))) {
        process.stderr.write(
          `bench:prewarm: agent on ${node.name} not ready:\n${readFileSync(node.logFile, "utf8")}\n`,
        );
        return 1;
      }
    }
    say(
      `stowage controller pid ${controller.pid}; ${nodes.length} nodes, each containerd ${nodes[0].containerd.snapshotter} + stowage agent`,
    );

    // --- Stowage: ModelImage created → Synced → Present on every node.
    const started = performance.now();
    await api.create({
      apiVersion: "stowage.dev/v1alpha1",
      kind: "ModelImage",
      metadata: { name: NAME, namespace: NAMESPACE },
      spec: { image: reference, prewarm: { enabled: true, maxConcurrentNodes: 4 } },
    });
    let syncedMs: number | undefined;
    let presentMs: number | undefined;
    let report: ModelImageReport | undefined;
    let lastLine = "";
    while (performance.now() - started < timeoutMs) {
      const snapshot = await gatherSnapshot(client, { namespace: NAMESPACE });
      report = buildReport(snapshot).modelImages.find((m) => m.name === NAME);
      const now = performance.now() - started;
      if (report?.synced?.status === "True") syncedMs ??= now;
      const cells = NODE_NAMES.map((n) => report?.cells.find((c) => c.node === n));
      const line = cells
        .map(
          (c, i) =>
            `${NODE_NAMES[i]} ${c ? `${c.state}${c.percent !== undefined ? ` ${c.percent}%` : ""}` : "-"}`,
        )
        .join(", ");
      const head = `${report?.synced?.status === "True" ? "Synced" : (report?.synced?.reason ?? "Pending")}; ${line}`;
      if (head !== lastLine) say(`  [${seconds(now).padStart(8)}] ${head}`);
      lastLine = head;
      if (cells.every((c) => c?.state === "present")) {
        presentMs = now;
        break;
      }
      if (cells.some((c) => c?.state === "failed")) break;
      await new Promise((resolve) => setTimeout(resolve, 250));
    }

    const controllerRss = peakRssKiB(controller.pid);
    const frontRss = peakRssKiB(frontPid);
    const agentRss = nodes.map((n) => peakRssKiB(n.agent.pid));

    // Bytes from upstream: every blob GET the upstream answered, by digest.
    const gets = upstream
      .seen()
      .filter(
        (r) =>
          r.method === "GET" && /\/blobs\/sha256:/.test(r.path) && (r.status === 200 || r.status === 206),
      );
    // Copies read, by digest: a 200 is one; a Range request (206, a large blob comes in many,
    // of whatever size the reader asks) counts as the share of the blob its range covers.
    const sizeOf = new Map(blobs.map((b) => [b.digest, b.size]));
    const getsByDigest = new Map<string, number>();
    for (const r of gets) {
      const digest = /\/blobs\/(sha256:[0-9a-f]{64})/.exec(r.path)?.[1] ?? r.path;
      const size = sizeOf.get(digest) ?? 1;
      const range = /^bytes=(\d+)-(\d*)$/.exec(r.range ?? "");
      const bytes =
        r.status === 206 && range
          ? Math.min(range[2] === "" ? size - 1 : Number(range[2]), size - 1) - Number(range[1]) + 1
          : size;
      getsByDigest.set(digest, (getsByDigest.get(digest) ?? 0) + bytes / size);
    }
    for (const [digest, copies] of getsByDigest) getsByDigest.set(digest, Math.round(copies * 100) / 100);
    const upstreamBytes = blobs.reduce((sum, b) => sum + b.size * (getsByDigest.get(b.digest) ?? 0), 0);
    const eachOnce =
      blobs.every((b) => getsByDigest.get(b.digest) === 1) && getsByDigest.size === blobs.length;

    // Stop Stowage's nodes before the peer so both run on an otherwise idle machine.
    for (const node of nodes) await node.stop();
    await controller.kill("SIGTERM");

    // --- Peer: three fresh containerd instances pull the cached image by hand, together.
    const cacheDigest = report?.variants[0]?.cacheDigest;
    let peerMs: number | undefined;
    let peerFailure: string | undefined;
    if (cacheDigest) {
      const cacheRef = `${cache.host}/${cacheRepository(parseReference(reference))}@${cacheDigest}`;
      const fresh: RunningContainerd[] = [];
      for (let i = 0; i < 3; i++) {
        const containerd = await startContainerd();
        cleanups.push(() => containerd.dispose());
        fresh.push(containerd);
      }
      say(`peer: 3 × ctr -n k8s.io image pull --plain-http ${cacheRef} on fresh containerd roots`);
      const peerStarted = performance.now();
      const results = await Promise.all(
        fresh.map((c) =>
          run("ctr", [
            "-a",
            c.socketPath,
            "-n",
            "k8s.io",
            "image",
            "pull",
            "--plain-http",
            "--snapshotter",
            c.snapshotter,
            cacheRef,
          ]),
        ),
      );
      peerMs = performance.now() - peerStarted;
      const failed = results.find((r) => r.code !== 0);
      if (failed) peerFailure = failed.output.slice(-2000);
      for (const c of fresh) await c.dispose();
    } else {
      peerFailure = "no cache digest in the ModelImage status";
    }

    summaries.set(mode, { presentMs, syncedMs, peerMs, upstreamBytes, imageBytes, eachOnce });
    say("");
    say(`mode:                               ${mode}`);
    say(`image size (blobs):                 ${mib(imageBytes)} in ${blobs.length} blobs (scale ${scale})`);
    say(`time to Synced:                     ${syncedMs !== undefined ? seconds(syncedMs) : "(never)"}`);
    say(
      `time to Present on all ${nodes.length} nodes:     ${presentMs !== undefined ? seconds(presentMs) : `(not within ${seconds(timeoutMs)}: ${lastLine})`}`,
    );
    say(
      `  of which after Synced:            ${presentMs !== undefined && syncedMs !== undefined ? seconds(presentMs - syncedMs) : "-"}`,
    );
    say(
      `peer: 3 parallel ctr pulls from the cache: ${peerMs !== undefined && !peerFailure ? seconds(peerMs) : `FAILED ${peerFailure ?? ""}`}`,
    );
    if (presentMs !== undefined && peerMs !== undefined && !peerFailure && syncedMs !== undefined) {
      say(`ratio Stowage (create → all Present) / peer:        ${(presentMs / peerMs).toFixed(2)}×`);
      say(
        `ratio Stowage (Synced → all Present) / peer:        ${((presentMs - syncedMs) / peerMs).toFixed(2)}×`,
      );
    }
    say(
      `bytes from upstream: ${upstreamBytes} (${mib(upstreamBytes)}) vs image ${imageBytes} (${mib(imageBytes)}); blob GETs ${gets.length} for ${blobs.length} blobs  ${verdict(eachOnce && upstreamBytes === imageBytes)} (each blob from upstream exactly once)`,
    );
    const layers = pushed.image.layers.map((l) => l.descriptor);
    const layerBytes = layers.reduce((sum, b) => sum + b.size * (getsByDigest.get(b.digest) ?? 0), 0);
    const layersOnce = layers.every((b) => getsByDigest.get(b.digest) === 1);
    say(
      `layer bytes from upstream: ${layerBytes} vs ${layers.reduce((sum, b) => sum + b.size, 0)} in ${layers.length} layers  ${verdict(layersOnce)} (each layer from upstream exactly once)`,
    );
    for (const b of blobs) {
      const count = getsByDigest.get(b.digest) ?? 0;
      if (count !== 1)
        say(
          `  blob ${b.digest.slice(0, 19)}… (${b.mediaType}, ${b.size} bytes) fetched from upstream ${count}×`,
        );
    }
    const kib = (v: number | undefined) => (v === undefined ? "?" : `${(v / 1024).toFixed(1)} MiB`);
    say(
      `peak RSS (VmHWM): controller ${kib(controllerRss)}; agents ${agentRss.map(kib).join(", ")}${frontPid ? `; front ${kib(frontRss)}` : ""}`,
    );
    say(`all nodes Present: ${verdict(presentMs !== undefined)}`);
    // Both modes read the upstream once: through the front, the mirror reads blobs through it too.
    const upstreamOk = eachOnce && upstreamBytes === imageBytes;
    return presentMs !== undefined && upstreamOk && !peerFailure ? 0 : 1;
  } finally {
    await cleanUp();
  }
}

let exitCode = 0;
for (const mode of modes) {
  say(`=== mode ${mode} ===`);
  const code = await main(mode).catch((err) => {
    process.stderr.write(`bench:prewarm: ${(err as Error).stack ?? err}\n`);
    return 1;
  });
  exitCode = Math.max(exitCode, code);
}
const wait = summaries.get("wait");
const through = summaries.get("through");
if (wait && through) {
  const cell = (ms: number | undefined) => (ms === undefined ? "-" : seconds(ms));
  const copies = (m: ModeSummary) => `${(m.upstreamBytes / m.imageBytes).toFixed(2)}×`;
  say("");
  say(`both modes, same run (image ${mib(wait.imageBytes)}, scale ${scale}):`);
  say(`  mode     create→Synced  create→all Present  peer (3 ctr pulls)  upstream bytes`);
  for (const [name, m] of [
    ["wait", wait],
    ["through", through],
  ] as const)
    say(
      `  ${name.padEnd(8)} ${cell(m.syncedMs).padStart(13)}  ${cell(m.presentMs).padStart(18)}  ${cell(m.peerMs).padStart(18)}  ${copies(m)} the image ${verdict(m.eachOnce)}`,
    );
  if (wait.presentMs !== undefined && through.presentMs !== undefined)
    say(`  through / wait (create → all Present): ${(through.presentMs / wait.presentMs).toFixed(2)}×`);
}
process.exitCode = exitCode;
