/**
 * Cache front benchmark: `stowage cache` as its own process between real distribution
 * registries on 127.0.0.1.
 *
 *   npm run bench:cache                 # full size: one 2 GiB layer
 *   node bench/cache.ts --scale 0.25    # quicker (also STOWAGE_BENCH_SCALE)
 *
 * Figures: the hit path (the blob through the front vs straight from distribution, same run,
 * alternating, best of --rounds), eight concurrent cold pulls (bytes read upstream as a multiple
 * of the blob, the best time against the best single cold pull over --cold-rounds), and the
 * front's peak RSS (VmHWM) while serving, with the highest sample of each phase split into
 * anonymous and file-backed memory (the node binary alone is ~55 MB of the latter), and the
 * front's CPU seconds per phase by thread (main, libuv's pool, V8's workers). The front reads
 * hits from the storage registry's files (--storage-root), as it does beside the registry in
 * the chart.
 * The cold rounds run twice: with the upstream on loopback, and behind a WAN link paced per
 * connection (--wan-rate MB/s, default 40, 20 ms; bench/wanLink.ts), the way nodes meet a public
 * registry. On loopback everything shares this machine's two cores with the eight curl clients, so
 * each round also prints the least time any front could take here: the one pull's whole-machine
 * CPU plus, per extra caller, its curl's CPU and the front's CPU on the hit path.
 * Goals from issue 13: hit ≥ 0.9×, upstream bytes 1×, eight cold ≤ 1.2× one cold, RSS < 150 MB.
 * The front runs with the chart's environment (src/cache/runtimeEnv.ts); NODE_OPTIONS reaches it too, after it.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { readdirSync, readFileSync } from "node:fs";
import { mkdir, mkdtemp, readdir, readFile, rm } from "node:fs/promises";
import { cpus, tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import { request } from "undici";
import { cacheHostSegment } from "../src/cache/layout.ts";
import { FRONT_RUNTIME_ENV } from "../src/cache/runtimeEnv.ts";
import { cacheRepository } from "../src/oci/reference.ts";
import { RegistryClient } from "../src/oci/registry.ts";
import { pushSinglePlatformImage } from "../testkit/images.ts";
import { freePort } from "../testkit/ports.ts";
import { type RunningRegistry, startRegistry } from "../testkit/registry.ts";
import { startWanLink, type WanLink } from "./wanLink.ts";

const MiB = 1024 * 1024;
const root = fileURLToPath(new URL("..", import.meta.url));

const { values } = parseArgs({
  options: {
    scale: { type: "string" },
    rounds: { type: "string" },
    "cold-rounds": { type: "string" },
    "wan-rate": { type: "string" },
  },
});
const scale = Number(values.scale ?? process.env.STOWAGE_BENCH_SCALE ?? "1");
if (!(scale > 0)) throw new Error(`--scale must be a positive number, got ${values.scale}`);
const rounds = Number(values.rounds ?? "3");
// One cold pull and eight concurrent ones per round, each round's pair a moment apart under the
// same load: on a shared two-core machine a single timing of either swings by 2x with the load.
const coldRounds = Number(values["cold-rounds"] ?? "2");
if (!(coldRounds >= 1)) throw new Error(`--cold-rounds must be at least 1, got ${values["cold-rounds"]}`);
const blobSize = Math.max(MiB, Math.round(2048 * MiB * scale));
// The upstream as nodes meet it (Docker Hub, NGC, ECR from a cluster): a link paced per connection,
// as bench:mirror's (b) and bench:podstart have it. MB/s per connection; 0 skips those rounds.
const wanRate = Number(values["wan-rate"] ?? "40") * 1e6;
if (!(wanRate >= 0)) throw new Error(`--wan-rate must be a number of MB/s, got ${values["wan-rate"]}`);
const wanLatencyMs = 20;

/**
 * GETs a URL to the end with curl into /dev/null: the bytes received and the seconds it took.
 * curl, not a client in this process: eight Node clients on this machine's two cores would
 * measure themselves as much as the front (nodes pull from other machines).
 */
function timedGet(url: string): Promise<{ bytes: number; seconds: number; cpuSeconds: number }> {
  return new Promise((resolve, reject) => {
    const started = performance.now();
    // Under /usr/bin/time: the client's own CPU (user + system) is printed last on stderr.
    const curl = spawn(
      "/usr/bin/time",
      ["-f", "%U %S", "curl", "-sS", "-f", "-o", "/dev/null", "-w", "%{size_download}", url],
      { stdio: ["ignore", "pipe", "pipe"] },
    );
    let stdout = "";
    let stderr = "";
    curl.stdout.on("data", (chunk) => {
      stdout += chunk;
    });
    curl.stderr.on("data", (chunk) => {
      stderr += chunk;
    });
    curl.on("error", reject);
    // "close", not "exit": stdout may still hold the byte count when the process exits.
    curl.on("close", (code) => {
      if (code !== 0) return reject(new Error(`curl ${url} exited ${code}: ${stderr.trim()}`));
      const [user, system] = (stderr.trim().split("\n").pop() ?? "").split(" ").map(Number);
      resolve({
        bytes: Number(stdout),
        seconds: (performance.now() - started) / 1000,
        cpuSeconds: (user || 0) + (system || 0),
      });
    });
  });
}

async function metric(healthUrl: string, name: string): Promise<number> {
  const text = await (await request(`${healthUrl}/metrics`)).body.text();
  const line = text.split("\n").find((candidate) => candidate.startsWith(`${name} `));
  return line ? Number(line.split(" ")[1]) : 0;
}

async function peakRssKiB(pid: number): Promise<number> {
  const status = await readFile(`/proc/${pid}/status`, "utf8");
  return Number(/VmHWM:\s+(\d+) kB/.exec(status)?.[1] ?? "0");
}

/** The front's resident memory now, split as the kernel counts it (kB). */
interface RssSample {
  rss: number;
  anon: number;
  file: number;
}

async function rssNow(pid: number): Promise<RssSample | undefined> {
  const status = await readFile(`/proc/${pid}/status`, "utf8").catch(() => undefined);
  if (!status) return undefined;
  const field = (name: string) => Number(new RegExp(`${name}:\\s+(\\d+) kB`).exec(status)?.[1] ?? "0");
  return { rss: field("VmRSS"), anon: field("RssAnon"), file: field("RssFile") };
}

/**
 * Samples the front's RSS every 20 ms and keeps the highest sample of each phase: VmHWM says how
 * high, this says when (cold fan-out or hit path) and what (anonymous memory, or the node binary
 * and other file pages).
 */
class RssSampler {
  #phase = "ready";
  readonly peaks = new Map<string, RssSample>();
  /** CPU seconds per phase and thread name (the main thread, libuv's pool, V8's workers). */
  readonly cpu = new Map<string, Map<string, number>>();
  private readonly timer: NodeJS.Timeout;
  private readonly pid: number;
  private phaseStarted: Map<string, number> = new Map();
  private phaseWall = performance.now();

  get phase(): string {
    return this.#phase;
  }

  set phase(name: string) {
    const previous = this.#phase;
    const started = this.phaseStarted;
    const wall = (performance.now() - this.phaseWall) / 1000;
    this.#phase = name;
    this.phaseWall = performance.now();
    const now = threadCpu(this.pid);
    now.set(MACHINE, machineBusySeconds());
    this.phaseStarted = now;
    const spent = this.cpu.get(previous) ?? new Map<string, number>();
    for (const [thread, seconds] of now)
      spent.set(thread, (spent.get(thread) ?? 0) + seconds - (started.get(thread) ?? 0));
    spent.set("wall", (spent.get("wall") ?? 0) + wall);
    this.cpu.set(previous, spent);
  }

  constructor(pid: number) {
    this.pid = pid;
    this.phaseStarted = threadCpu(pid);
    this.phaseStarted.set(MACHINE, machineBusySeconds());
    this.timer = setInterval(async () => {
      const sample = await rssNow(pid);
      if (!sample) return;
      const peak = this.peaks.get(this.phase);
      if (!peak || sample.rss > peak.rss) this.peaks.set(this.phase, sample);
    }, 20);
  }

  stop(): void {
    clearInterval(this.timer);
  }

  cpuReport(): string {
    return [...this.cpu]
      .map(
        ([phase, threads]) =>
          `${phase}: ${[...threads]
            .filter(([thread, seconds]) => seconds >= 0.05 && thread !== MACHINE)
            .map(([thread, seconds]) => `${thread} ${seconds.toFixed(1)}`)
            .join(
              ", ",
            )}, machine ${((threads.get(MACHINE) ?? 0) / (threads.get("wall") || 1)).toFixed(2)} of ${cpus().length} cores busy`,
      )
      .join("; ");
  }

  report(): string {
    const mb = (kB: number) => ((kB * 1024) / 1e6).toFixed(1);
    return [...this.peaks]
      .map(([phase, peak]) => `${phase} ${mb(peak.rss)} (anon ${mb(peak.anon)}, file ${mb(peak.file)})`)
      .join("; ");
  }
}

/**
 * The whole machine's busy CPU seconds (every core; /proc/stat, all but idle and iowait): with the
 * eight curl clients and both registries on the same two cores as the front, whether the machine
 * was saturated says how far the front's own costs can explain a phase's time.
 */
const MACHINE = "machine";
function machineBusySeconds(): number {
  const fields = readFileSync("/proc/stat", "utf8").split("\n")[0].trim().split(/\s+/).slice(1).map(Number);
  const total = fields.reduce((sum, n) => sum + n, 0);
  return (total - fields[3] - (fields[4] ?? 0)) / 100;
}

/** CPU seconds (user + system) of a whole process. */
function processCpu(pid: number): number {
  let total = 0;
  for (const seconds of threadCpu(pid).values()) total += seconds;
  return total;
}

/** CPU seconds (user + system) of each of a process's threads, summed by thread name. */
function threadCpu(pid: number): Map<string, number> {
  const seconds = new Map<string, number>();
  let tasks: string[] = [];
  try {
    tasks = readdirSync(`/proc/${pid}/task`);
  } catch {
    return seconds;
  }
  for (const task of tasks) {
    try {
      const stat = readFileSync(`/proc/${pid}/task/${task}/stat`, "utf8");
      const name = stat.slice(stat.indexOf("(") + 1, stat.lastIndexOf(")")).replace(/\d+$/, "");
      const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
      const ticks = Number(fields[11]) + Number(fields[12]);
      seconds.set(name, (seconds.get(name) ?? 0) + ticks / 100);
    } catch {}
  }
  return seconds;
}

async function deleteBlob(storage: RunningRegistry, repository: string, digest: string): Promise<void> {
  const response = await request(`${storage.url}/v2/${repository}/blobs/${digest}`, { method: "DELETE" });
  await response.body.dump();
  if (response.statusCode !== 202)
    throw new Error(`could not delete the blob from storage: HTTP ${response.statusCode}`);
}

/** The front's environment as the chart sets it (runtimeEnv.ts); NODE_OPTIONS given to the bench comes after (and wins). */
function frontEnv(): NodeJS.ProcessEnv {
  const nodeOptions = [FRONT_RUNTIME_ENV.NODE_OPTIONS, process.env.NODE_OPTIONS].filter(Boolean).join(" ");
  return { ...process.env, ...FRONT_RUNTIME_ENV, NODE_OPTIONS: nodeOptions };
}

const mbps = (bytes: number, seconds: number) => bytes / 1e6 / seconds;
const verdict = (ok: boolean) => (ok ? "ok" : "MISSED");

let upstream: RunningRegistry | undefined;
let wan: WanLink | undefined;
let storage: RunningRegistry | undefined;
let front: ChildProcess | undefined;
let sampler: RssSampler | undefined;
const spoolDir = await mkdtemp(join(tmpdir(), "stowage-bench-cache-"));
try {
  [upstream, storage] = await Promise.all([startRegistry(), startRegistry()]);
  const client = new RegistryClient({ insecureHosts: [upstream.host], retry: { attempts: 2 } });
  process.stdout.write(`pushing a ${(blobSize / MiB).toFixed(0)} MiB layer to the upstream...\n`);
  const pushed = await pushSinglePlatformImage(
    client,
    { registry: upstream.host, repository: "bench/big" },
    "v1",
    { layers: [{ seed: `bench-cache-${blobSize}`, size: blobSize, format: "raw" }] },
  );
  await client.close();
  const layer = pushed.image.layers[0].descriptor;
  if (wanRate > 0)
    wan = await startWanLink(Number(upstream.host.split(":")[1]), {
      bytesPerSecond: wanRate,
      latencyMs: wanLatencyMs,
    });
  // The registry creates its root on the first push; a pod's volume mount is there from the start.
  await mkdir(storage.storageDir, { recursive: true });
  const [port, healthPort] = [await freePort(), await freePort()];
  front = spawn(
    process.execPath,
    [
      join(root, "bin/stowage.js"),
      "cache",
      `--storage-registry=${storage.url}`,
      `--upstream-host=${upstream.host}`,
      `--insecure-registry=${upstream.host}`,
      ...(wan ? [`--upstream-host=${wan.host}`, `--insecure-registry=${wan.host}`] : []),
      `--spool-dir=${spoolDir}`,
      // As in the chart: the front beside the registry, its volume mounted read-only.
      `--storage-root=${storage.storageDir}`,
      `--port=${port}`,
      `--health-port=${healthPort}`,
      "--ecr=false",
      "--log-level=warn",
    ],
    { stdio: ["ignore", "inherit", "inherit"], env: frontEnv() },
  );
  const healthUrl = `http://127.0.0.1:${healthPort}`;
  for (let tries = 0; ; tries++) {
    const ready = await request(`${healthUrl}/readyz`).then(
      async (response) => {
        await response.body.dump();
        return response.statusCode === 200;
      },
      () => false,
    );
    if (ready) break;
    if (tries > 200) throw new Error("the cache front did not become ready");
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  const readyRssMB = ((await peakRssKiB(front.pid as number)) * 1024) / 1e6;
  sampler = new RssSampler(front.pid as number);
  const phase = (name: string) => {
    if (sampler) sampler.phase = name;
  };
  const frontBlobUrl = `http://127.0.0.1:${port}/v2/${cacheHostSegment(upstream.host)}/bench/big/blobs/${layer.digest}`;
  const storageRepository = cacheRepository({ registry: upstream.host, repository: "bench/big" });
  const storageBlobUrl = `${storage.url}/v2/${storageRepository}/blobs/${layer.digest}`;

  phase("first cold pull");
  const machineBefore = machineBusySeconds();
  const cold = await timedGet(frontBlobUrl);
  // The whole machine's CPU over a cold pull: the upstream registry serving, the front fetching,
  // hashing, spooling and sending, storage ingesting, curl receiving.
  const oneMachineCpu = machineBusySeconds() - machineBefore;
  if (cold.bytes !== layer.size) throw new Error(`cold pull got ${cold.bytes} of ${layer.size} bytes`);
  process.stdout.write(
    `one cold pull through the front: ${cold.seconds.toFixed(2)} s (${mbps(cold.bytes, cold.seconds).toFixed(0)} MB/s)\n`,
  );

  // Callers finish once the blob is verified; storage's commit may still be under way. Then the
  // flight must be over too (its spool file gone) before a round deletes the blob: storage shows
  // the blob a moment before the front hears its upload's 201, and pulls in that moment join the
  // finished flight and get its spool's bytes, upstream untouched and nothing stored again (a
  // round deleting there measured no cold pull, and the next round's wait for storage failed:
  // the "201 yet HEAD 404" seen before, a race in the bench, not in distribution).
  const waitStored = async (blobUrl: string) => {
    for (let tries = 0; ; tries++) {
      const head = await request(blobUrl, { method: "HEAD" });
      await head.body.dump();
      const spools = (await readdir(spoolDir)).filter((name) => name.endsWith(".part"));
      if (head.statusCode === 200 && spools.length === 0) break;
      if (tries > 1200) throw new Error("the blob never reached storage, or its flight never ended");
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
  };
  phase("storing");
  await waitStored(storageBlobUrl);
  phase("hit path");
  let bestFront = Number.POSITIVE_INFINITY;
  let bestDirect = Number.POSITIVE_INFINITY;
  // The front's CPU to send the whole blob to one caller from storage: its cheapest way to serve.
  let hitFrontCpu = Number.POSITIVE_INFINITY;
  for (let round = 0; round < rounds; round++) {
    const direct = await timedGet(storageBlobUrl);
    const frontBefore = processCpu(front.pid as number);
    const through = await timedGet(frontBlobUrl);
    hitFrontCpu = Math.min(hitFrontCpu, processCpu(front.pid as number) - frontBefore);
    if (direct.bytes !== layer.size || through.bytes !== layer.size)
      throw new Error(
        `a hit came up short: ${through.bytes} (front), ${direct.bytes} (direct) of ${layer.size}`,
      );
    bestDirect = Math.min(bestDirect, direct.seconds);
    bestFront = Math.min(bestFront, through.seconds);
  }
  const hitRatio = bestDirect / bestFront;
  process.stdout.write(
    `hit path, best of ${rounds}: front ${mbps(layer.size, bestFront).toFixed(0)} MB/s, distribution ${mbps(layer.size, bestDirect).toFixed(0)} MB/s, ratio ${hitRatio.toFixed(2)}x  ${verdict(hitRatio >= 0.9)} (goal >= 0.9x)\n`,
  );

  /**
   * Rounds of one cold pull, then eight concurrent ones, through `upstreamHost`, so a ratio
   * compares pulls measured a moment apart under the same load; every round's upstream bytes must
   * be 1x the blob (a round served from storage, not cold, would read 0x and is reported, not
   * hidden by another round's 1x). `first`: a cold pull of this blob already made (round 1's one).
   */
  const coldRows = async (
    label: string,
    upstreamHost: string,
    first?: { seconds: number; machineCpu: number },
  ) => {
    const blobUrl = `http://127.0.0.1:${port}/v2/${cacheHostSegment(upstreamHost)}/bench/big/blobs/${layer.digest}`;
    const repository = cacheRepository({ registry: upstreamHost, repository: "bench/big" });
    const stored = () => waitStored(`${storage?.url}/v2/${repository}/blobs/${layer.digest}`);
    let bestOne = first?.seconds ?? Number.POSITIVE_INFINITY;
    let bestEight = Number.POSITIVE_INFINITY;
    const multiples: number[] = [];
    const ratios: number[] = [];
    const machineFloors: number[] = [];
    for (let round = 0; round < coldRounds; round++) {
      let oneSeconds = first?.seconds ?? 0;
      let oneMachineCpu = first?.machineCpu ?? 0;
      if (round > 0 || !first) {
        await deleteBlob(storage as RunningRegistry, repository, layer.digest).catch(() => {});
        phase(`one cold pull, ${label}`);
        const oneBefore = await metric(healthUrl, "stowage_cache_upstream_bytes_total");
        const machineBefore = machineBusySeconds();
        const one = await timedGet(blobUrl);
        oneMachineCpu = machineBusySeconds() - machineBefore;
        if (one.bytes !== layer.size) throw new Error(`cold pull got ${one.bytes} of ${layer.size} bytes`);
        multiples.push(
          ((await metric(healthUrl, "stowage_cache_upstream_bytes_total")) - oneBefore) / layer.size,
        );
        oneSeconds = one.seconds;
        bestOne = Math.min(bestOne, one.seconds);
        phase("storing");
        await stored();
      }
      await deleteBlob(storage as RunningRegistry, repository, layer.digest);
      const upstreamBefore = await metric(healthUrl, "stowage_cache_upstream_bytes_total");
      phase(`eight cold pulls, ${label}`);
      const frontCpuBefore = processCpu(front?.pid as number);
      const started = performance.now();
      const eight = await Promise.all(Array.from({ length: 8 }, () => timedGet(blobUrl)));
      const eightSeconds = (performance.now() - started) / 1000;
      // A floor no code in the front can lower on this machine: the CPU the front and the eight
      // clients spent, spread perfectly over every core (the registries' share not even counted).
      const clientsCpu = eight.reduce((sum, result) => sum + result.cpuSeconds, 0);
      const frontCpu = processCpu(front?.pid as number) - frontCpuBefore;
      const floorSeconds = (clientsCpu + frontCpu) / cpus().length;
      // A floor for any front on this machine: the one pull's whole-machine CPU, plus, for each of
      // the seven more callers, only what sending the blob costs at the least: its curl's CPU and
      // the front's CPU on the hit path (a read from storage's files and a send, nothing fetched).
      const extraCaller = clientsCpu / 8 + hitFrontCpu;
      const machineFloor = (oneMachineCpu + 7 * extraCaller) / cpus().length;
      machineFloors.push(machineFloor / oneSeconds);
      if (eight.some((result) => result.bytes !== layer.size))
        throw new Error(`a concurrent cold pull came up short: ${JSON.stringify(eight)} of ${layer.size}`);
      const upstreamBytes = (await metric(healthUrl, "stowage_cache_upstream_bytes_total")) - upstreamBefore;
      multiples.push(upstreamBytes / layer.size);
      bestEight = Math.min(bestEight, eightSeconds);
      ratios.push(eightSeconds / oneSeconds);
      process.stdout.write(
        `  ${label} cold round ${round + 1}: one ${oneSeconds.toFixed(2)} s, eight concurrent ${eightSeconds.toFixed(2)} s (${(eightSeconds / oneSeconds).toFixed(2)}x, upstream ${(upstreamBytes / layer.size).toFixed(2)}x the blob); eight pulls' CPU: front ${frontCpu.toFixed(1)} s, curl clients ${clientsCpu.toFixed(1)} s, so at least ${floorSeconds.toFixed(2)} s on ${cpus().length} cores (${(floorSeconds / oneSeconds).toFixed(2)}x the one pull); the one pull took ${oneMachineCpu.toFixed(1)} CPU s of the machine, and with each of the seven more callers costing only its curl's ${(clientsCpu / 8).toFixed(2)} s and the front's hit-path ${hitFrontCpu.toFixed(2)} s, eight need at least ${machineFloor.toFixed(2)} s here (${(machineFloor / oneSeconds).toFixed(2)}x)\n`,
      );
      // The next round deletes the blob again once the front stored it and its flight is over.
      phase("storing");
      await stored();
    }
    const timeRatio = bestEight / bestOne;
    const allOnce = multiples.every((multiple) => Math.abs(multiple - 1) < 1e-9);
    process.stdout.write(
      `eight concurrent cold pulls, ${label}, best of ${coldRounds}: ${bestEight.toFixed(2)} s vs one cold pull ${bestOne.toFixed(2)} s, ${timeRatio.toFixed(2)}x  ${verdict(timeRatio <= 1.2)} (goal <= 1.2x; per round ${ratios.map((ratio) => ratio.toFixed(2)).join(", ")}; this machine's floor per round ${machineFloors.map((ratio) => ratio.toFixed(2)).join(", ")}x); upstream bytes per cold pull ${multiples.map((multiple) => multiple.toFixed(2)).join(", ")}x the blob  ${verdict(allOnce)} (goal 1x)\n`,
    );
  };
  await coldRows("upstream on loopback", upstream.host, { seconds: cold.seconds, machineCpu: oneMachineCpu });
  if (wan)
    await coldRows(
      `upstream over a WAN link (${wanRate / 1e6} MB/s per connection, ${wanLatencyMs} ms)`,
      wan.host,
    );

  const rssMB = ((await peakRssKiB(front.pid as number)) * 1024) / 1e6;
  sampler.phase = "end";
  sampler.stop();
  process.stdout.write(
    `front peak RSS: ${rssMB.toFixed(1)} MB  ${verdict(rssMB < 150)} (goal < 150 MB; ${readyRssMB.toFixed(1)} MB of it before serving anything)\n  highest sample per phase, MB: ${sampler.report()}\n  front CPU s per phase: ${sampler.cpuReport()}\n`,
  );
} finally {
  sampler?.stop();
  if (front && front.exitCode === null) {
    const exited = new Promise((resolve) => front?.once("exit", resolve));
    front.kill("SIGTERM");
    await exited;
  }
  await Promise.all([upstream?.stop(), storage?.stop(), wan?.stop()]);
  await rm(spoolDir, { recursive: true, force: true });
}
