/**
 * Mirror benchmark (issue 14): `stowage mirror` against skopeo and crane on the same synthetic
 * images in the same run, alternating, between real distribution registries on 127.0.0.1.
 *
 *   npm run bench:mirror                  # full size: a 2 GiB single-layer image + 3 images sharing a 512 MiB base
 *   node bench/mirror.ts --scale 0.1      # quick run (also STOWAGE_BENCH_SCALE)
 *
 * Rows: (a) loopback cold copy, next to the target registry's own ingest rate measured in the
 * same run; (b) the same copy from behind the fault proxy limiting each connection to 40 MB/s
 * with 20 ms latency (a WAN registry); (c) three images sharing a base, copied by three
 * separate processes into one registry (the base should be uploaded once); the unchanged
 * re-run (no-op), whole-process time and peak RSS from /usr/bin/time -v. Where stowage's time
 * goes is shown as the rates of its parts: upstream download, hashing, target ingest.
 *
 * crane is built from the pinned module in tools/bench by scripts/build-bench-tools.sh (once;
 * later runs reuse it). Layers are uncompressed tar, so skopeo runs with --preserve-digests:
 * without it skopeo gzips them on the way (new digests, CPU-bound), which is not the same job.
 * Every cold copy goes into a fresh registry of its own, so no tool finds blobs from a round before.
 */
import { execFileSync, spawn } from "node:child_process";
import { createHash } from "node:crypto";
import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import type { CopyResult } from "../src/oci/copy.ts";
import { RegistryClient } from "../src/oci/registry.ts";
import { type FaultProxy, startFaultProxy } from "../testkit/faultProxy.ts";
import { drain, type PushedImage, pushSharedBaseImages, pushSinglePlatformImage } from "../testkit/images.ts";
import { type RunningRegistry, startRegistry } from "../testkit/registry.ts";
import { procCpuSeconds } from "./procStatus.ts";

const MiB = 1024 * 1024;
const root = fileURLToPath(new URL("..", import.meta.url));
const timeBinary = "/usr/bin/time";

const { values } = parseArgs({
  options: {
    scale: { type: "string" },
    rounds: { type: "string" },
    "wan-rounds": { type: "string" },
    "skip-peers": { type: "boolean" },
  },
});
const scale = Number(values.scale ?? process.env.STOWAGE_BENCH_SCALE ?? "1");
if (!(scale > 0)) throw new Error(`--scale must be a positive number, got ${values.scale}`);
// Three: the order rotates, and each tool then leads one round.
const rounds = Number(values.rounds ?? "3");
const wanRounds = Number(values["wan-rounds"] ?? "1");
const size = (bytes: number) => Math.max(1024, Math.round(bytes * scale));

const bigLayer = size(2048 * MiB);
const sharedBase = size(512 * MiB);
const sharedTop = size(32 * MiB);
const sharedCount = 3;
const wanBytesPerSecond = 40e6;
const wanLatencyMs = 20;

interface ProcessRun {
  code: number | null;
  stdout: string;
  stderr: string;
  wallMs: number;
  peakRssKiB?: number;
}

/** Runs a command under /usr/bin/time -v when present (peak RSS), else polls /proc/<pid>/status VmHWM. */
function runMeasured(command: string, args: string[], env: Record<string, string> = {}): Promise<ProcessRun> {
  const useTime = existsSync(timeBinary);
  const [file, argv] = useTime ? [timeBinary, ["-v", command, ...args]] : [command, args];
  const started = performance.now();
  return new Promise((resolve, reject) => {
    const child = spawn(file, argv, {
      cwd: root,
      stdio: ["ignore", "pipe", "pipe"],
      env: { ...process.env, ...env },
    });
    let stdout = "";
    let stderr = "";
    let polledPeak = 0;
    const poll = useTime
      ? undefined
      : setInterval(() => {
          try {
            const match = /VmHWM:\s+(\d+) kB/.exec(readFileSync(`/proc/${child.pid}/status`, "utf8"));
            if (match) polledPeak = Math.max(polledPeak, Number(match[1]));
          } catch {
            // process gone
          }
        }, 50);
    child.stdout.on("data", (chunk) => {
      stdout += chunk;
    });
    child.stderr.on("data", (chunk) => {
      stderr += chunk;
    });
    child.on("error", reject);
    child.on("close", (code) => {
      if (poll) clearInterval(poll);
      const wallMs = performance.now() - started;
      const rss = /Maximum resident set size \(kbytes\): (\d+)/.exec(stderr);
      resolve({ code, stdout, stderr, wallMs, peakRssKiB: rss ? Number(rss[1]) : polledPeak || undefined });
    });
  });
}

/**
 * Writes back what earlier steps left dirty in the page cache (the seeded source, the previous
 * copy's target), untimed, before each timed run. Otherwise the kernel may flush it during the
 * next run, which then pays for its predecessor's writes. With `warm`, the source registry's
 * storage is also read once: every tool then starts with the source in the page cache, not only
 * those that follow another tool's copy (the kernel may drop the source's pages while an ingest
 * PUT writes 2 GiB).
 */
function settleDisk(warm?: string): void {
  execFileSync("sync");
  if (warm) execFileSync("sh", ["-c", 'find "$1" -type f -exec cat {} + > /dev/null', "warm", warm]);
}

const median = (numbers: number[]): number => {
  const sorted = [...numbers].sort((a, b) => a - b);
  const mid = Math.floor(sorted.length / 2);
  return sorted.length % 2 === 1 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
};
const mbps = (bytes: number, ms: number) => bytes / 1e6 / (ms / 1000);
const fmtMB = (bytes: number) => `${(bytes / 1e6).toFixed(1)} MB`;
const fmtRss = (kib: number | undefined) => (kib === undefined ? "n/a" : `${(kib / 1024).toFixed(0)} MiB`);
const imageBytes = (image: PushedImage) => image.image.blobs.reduce((sum, b) => sum + b.descriptor.size, 0);

const verdicts: { name: string; pass: boolean; detail: string }[] = [];
const verdict = (name: string, pass: boolean, detail: string) => verdicts.push({ name, pass, detail });

type Tool = "stowage" | "skopeo" | "crane";

function craneBinary(): string {
  const bin = execFileSync(join(root, "scripts/build-bench-tools.sh"), {
    encoding: "utf8",
    stdio: ["ignore", "pipe", "inherit"],
  }).trim();
  return join(bin, "crane");
}

async function main(): Promise<void> {
  console.log(`stowage mirror benchmark, scale ${scale}, node ${process.version}`);
  const peers: Tool[] = values["skip-peers"] ? [] : ["skopeo", "crane"];
  const crane = peers.includes("crane") ? craneBinary() : "crane";
  const tools: Tool[] = ["stowage", ...peers];
  const registries = new Set<RunningRegistry>();
  const proxies: FaultProxy[] = [];
  const scratch = mkdtempSync(join(tmpdir(), "stowage-bench-"));
  const fresh = async () => {
    const registry = await startRegistry();
    registries.add(registry);
    return registry;
  };
  const stop = async (registry: RunningRegistry) => {
    registries.delete(registry);
    await registry.stop();
  };
  try {
    const source = await fresh();
    const seeding = new RegistryClient({ insecureHosts: [source.host] });
    let started = performance.now();
    const big = await pushSinglePlatformImage(
      seeding,
      { registry: source.host, repository: "bench/big" },
      "v1",
      {
        layers: [{ seed: "bench/big/0", size: bigLayer }],
      },
    );
    const shared = await pushSharedBaseImages(seeding, source.host, {
      prefix: "bench/shared",
      count: sharedCount,
      baseSize: sharedBase,
      topSize: sharedTop,
    });
    const bigBytes = imageBytes(big);
    console.log(
      `seeded source: ${fmtMB(bigBytes)} single-layer image, ${sharedCount} images sharing a ${fmtMB(sharedBase)} base, ` +
        `in ${((performance.now() - started) / 1000).toFixed(1)} s`,
    );

    /** One cold copy by `tool` from `from` (a registry host or the WAN proxy) into a fresh registry. */
    const copyOnce = async (
      tool: Tool,
      from: string,
      repository: string,
      target: RunningRegistry,
      env = {},
    ) => {
      const src = `${from}/${repository}:v1`;
      const dst = `${target.host}/${repository}:v1`;
      settleDisk(source.storageDir);
      const targetCpuBefore = procCpuSeconds(target.pid);
      let run: ProcessRun;
      if (tool === "stowage") {
        run = await runMeasured(
          process.execPath,
          [
            "bin/stowage.js",
            "mirror",
            "--json",
            "--blob-index",
            join(scratch, `${target.host.replace(":", "_")}.sqlite`),
            "--insecure-registry",
            from,
            "--insecure-registry",
            target.host,
            src,
            dst,
          ],
          env,
        );
      } else if (tool === "skopeo") {
        run = await runMeasured("skopeo", [
          "copy",
          "--quiet",
          "--preserve-digests",
          "--src-tls-verify=false",
          "--dest-tls-verify=false",
          `docker://${src}`,
          `docker://${dst}`,
        ]);
      } else {
        run = await runMeasured(crane, ["copy", "--insecure", src, dst]);
      }
      if (run.code !== 0) throw new Error(`${tool} failed: ${run.stderr.slice(-2000)}`);
      const result = tool === "stowage" ? (JSON.parse(run.stdout) as CopyResult) : undefined;
      // How busy the target registry was: near one core, its upload handler (which hashes every
      // byte on one goroutine) is what limits the copy, whichever client sends the bytes.
      const targetCores = (procCpuSeconds(target.pid) - targetCpuBefore) / (run.wallMs / 1000);
      return { run, result, targetCores };
    };

    // Target ingest: one monolithic PUT of the big layer from the generator into a fresh
    // registry. Measured again in every loopback round, between the tools' copies: on a shared
    // machine one measurement at the start says more about that moment's load than the target.
    const layer = big.image.layers[0];
    const measureIngest = async () => {
      const ingestTarget = await fresh();
      settleDisk();
      const ingestStarted = performance.now();
      const cpuBefore = procCpuSeconds(ingestTarget.pid);
      const ingestClient = new RegistryClient({ insecureHosts: [ingestTarget.host] });
      await ingestClient.pushBlob(
        { registry: ingestTarget.host, repository: "bench/ingest" },
        layer.descriptor,
        layer.open,
      );
      await ingestClient.close();
      const ms = performance.now() - ingestStarted;
      const cores = (procCpuSeconds(ingestTarget.pid) - cpuBefore) / (ms / 1000);
      await stop(ingestTarget);
      return { rate: mbps(layer.descriptor.size, ms), cores };
    };
    const firstIngest = await measureIngest();
    const ingestRates = [firstIngest.rate];
    started = performance.now();
    const generated = await drain(layer.open());
    const generateRate = mbps(generated, performance.now() - started);
    const hashBuffer = Buffer.alloc(256 * MiB, 7);
    started = performance.now();
    createHash("sha256").update(hashBuffer).digest();
    const hashRate = mbps(hashBuffer.length, performance.now() - started);
    console.log(
      `target registry ingest (one PUT from the generator): ${ingestRates[0].toFixed(0)} MB/s, the registry busy ${firstIngest.cores.toFixed(2)} cores; generator alone ${generateRate.toFixed(0)} MB/s; sha256 ${hashRate.toFixed(0)} MB/s`,
    );

    const coldRows = async (label: string, from: string, count: number, withIngest = false) => {
      const rates = new Map<Tool, number[]>(tools.map((t) => [t, []]));
      const rss = new Map<Tool, number[]>(tools.map((t) => [t, []]));
      for (let round = 0; round < count; round++) {
        // Rotate the order so machine load from other processes hits every tool alike.
        const order = tools.map((_, i) => tools[(i + round) % tools.length]);
        for (const tool of order) {
          const target = await fresh();
          const { run, result, targetCores } = await copyOnce(tool, from, "bench/big", target);
          const rate = mbps(bigBytes, run.wallMs);
          rates.get(tool)?.push(rate);
          rss.get(tool)?.push(run.peakRssKiB ?? 0);
          console.log(
            `  ${label} round ${round + 1} ${tool.padEnd(7)} ${(run.wallMs / 1000).toFixed(2)} s → ${rate.toFixed(1)} MB/s, peak RSS ${fmtRss(run.peakRssKiB)}, target registry busy ${targetCores.toFixed(2)} cores` +
              (result ? ` (uploaded ${fmtMB(result.bytes.transferred)})` : ""),
          );
          await stop(target);
        }
        if (withIngest) {
          const { rate, cores } = await measureIngest();
          ingestRates.push(rate);
          console.log(
            `  ${label} round ${round + 1} target ingest (one PUT from the generator) ${rate.toFixed(1)} MB/s, the registry busy ${cores.toFixed(2)} cores`,
          );
        }
      }
      const medians = new Map(tools.map((t) => [t, median(rates.get(t) ?? [0])]));
      const bestPeer = Math.max(...peers.map((p) => medians.get(p) ?? 0), 0);
      if (peers.length > 0) {
        // Each round's tools share that moment's machine: the ratio within a round is steadier
        // than the ratio of medians when the whole machine drifts during the run. Printed
        // beside the verdict, which keeps the ratio of medians.
        const paired = Array.from({ length: count }, (_, round) => {
          const fastestPeer = Math.max(...peers.map((p) => rates.get(p)?.[round] ?? 0));
          return (rates.get("stowage")?.[round] ?? 0) / fastestPeer;
        });
        console.log(
          `${label}: per round, stowage / that round's faster peer ${paired.map((r) => `${r.toFixed(2)}x`).join(", ")} (median ${median(paired).toFixed(2)}x)`,
        );
      }
      console.log(
        `${label}: median MB/s ${tools.map((t) => `${t} ${(medians.get(t) ?? 0).toFixed(1)} (RSS ${fmtRss(Math.max(...(rss.get(t) ?? [0])))})`).join(", ")}` +
          (bestPeer > 0
            ? `; stowage / faster peer = ${((medians.get("stowage") ?? 0) / bestPeer).toFixed(2)}x`
            : ""),
      );
      return { stowage: medians.get("stowage") ?? 0, bestPeer };
    };

    // (a) loopback.
    console.log(`(a) loopback cold copy of the ${fmtMB(bigBytes)} image, ${rounds} rounds:`);
    const loopback = await coldRows("(a) loopback", source.host, rounds, true);
    const ingestRate = median(ingestRates);
    console.log(`(a) target ingest: median ${ingestRate.toFixed(1)} MB/s of ${ingestRates.length} PUTs`);
    if (peers.length > 0)
      verdict(
        "(a) loopback >= 1.0x the faster peer",
        loopback.stowage >= loopback.bestPeer,
        `${(loopback.stowage / loopback.bestPeer).toFixed(2)}x`,
      );
    verdict(
      "(a) loopback within 10% of the target's ingest rate",
      loopback.stowage >= 0.9 * ingestRate,
      `${loopback.stowage.toFixed(0)} of ${ingestRate.toFixed(0)} MB/s = ${((100 * loopback.stowage) / ingestRate).toFixed(0)}%`,
    );

    // --wan-rounds 0 skips (b) and the WAN download.
    let wanDownload: number | undefined;
    if (wanRounds > 0) {
      // Upstream alone over the WAN link: what stowage's ranged download gets with no target.
      const wan = await startFaultProxy(source.url);
      proxies.push(wan);
      wan.addRule({
        times: Number.POSITIVE_INFINITY,
        action: { kind: "throttle", bytesPerSecond: wanBytesPerSecond, latencyMs: wanLatencyMs },
      });
      const wanClient = new RegistryClient({ insecureHosts: [wan.host] });
      started = performance.now();
      await drain(wanClient.getBlob({ registry: wan.host, repository: "bench/big" }, layer.descriptor));
      wanDownload = mbps(layer.descriptor.size, performance.now() - started);
      await wanClient.close();
      console.log(
        `stowage download alone through the WAN proxy (ranged, verified, no target): ${wanDownload.toFixed(0)} MB/s`,
      );

      // (b) behind the WAN proxy.
      console.log(
        `(b) through the fault proxy (${wanBytesPerSecond / 1e6} MB/s per connection, ${wanLatencyMs} ms latency), ${wanRounds} round(s):`,
      );
      const throttled = await coldRows("(b) WAN", wan.host, wanRounds);
      if (peers.length > 0)
        verdict(
          "(b) WAN >= 3x the faster peer",
          throttled.stowage >= 3 * throttled.bestPeer,
          `${(throttled.stowage / throttled.bestPeer).toFixed(2)}x`,
        );
    }

    // (c) three images sharing a base, one process each, one target per tool.
    console.log(
      `(c) ${sharedCount} images sharing a ${fmtMB(sharedBase)} base, one process per image into one registry:`,
    );
    const uniqueBlobs = new Map<string, number>();
    for (const image of shared)
      for (const b of image.image.blobs) uniqueBlobs.set(b.descriptor.digest, b.descriptor.size);
    const uniqueBytes = [...uniqueBlobs.values()].reduce((a, b) => a + b, 0);
    const sharedTimes = new Map<Tool, number>();
    let stowageUploaded = 0;
    let stowageMounted = 0;
    let noopTarget: RunningRegistry | undefined;
    for (const tool of tools) {
      const target = await fresh();
      started = performance.now();
      for (const image of shared) {
        const { result } = await copyOnce(tool, source.host, image.repo.repository, target);
        if (result) {
          stowageUploaded += result.bytes.transferred;
          stowageMounted += result.bytes.mounted;
        }
      }
      sharedTimes.set(tool, performance.now() - started);
      if (tool === "stowage") noopTarget = target;
      else await stop(target);
    }
    console.log(
      `(c) shared set: ${tools.map((t) => `${t} ${((sharedTimes.get(t) ?? 0) / 1000).toFixed(2)} s`).join(", ")}; ` +
        `stowage uploaded ${fmtMB(stowageUploaded)}, mounted ${fmtMB(stowageMounted)}, unique bytes ${fmtMB(uniqueBytes)}`,
    );
    verdict(
      "(c) base uploaded once",
      stowageUploaded === uniqueBytes,
      `uploaded ${stowageUploaded} bytes, unique ${uniqueBytes}`,
    );

    // No-op: the unchanged re-run of the last shared image, whole process, alternating.
    if (!noopTarget) throw new Error("no stowage target for the no-op");
    const last = shared[shared.length - 1].repo.repository;
    const noop = new Map<Tool, { ms: number[]; rss: number[] }>(tools.map((t) => [t, { ms: [], rss: [] }]));
    for (let i = 0; i < 5; i++) {
      for (const tool of tools) {
        const { run, result } = await copyOnce(tool, source.host, last, noopTarget);
        if (result && result.bytes.transferred > 0) throw new Error("the no-op re-run transferred bytes");
        noop.get(tool)?.ms.push(run.wallMs);
        noop.get(tool)?.rss.push(run.peakRssKiB ?? 0);
      }
    }
    const noopMs = (t: Tool) => median(noop.get(t)?.ms ?? [0]);
    console.log(
      `no-op re-run (median of 5, whole process): ${tools.map((t) => `${t} ${noopMs(t).toFixed(0)} ms / ${fmtRss(Math.max(...(noop.get(t)?.rss ?? [0])))}`).join(", ")}`,
    );
    const stowageNoopRss = Math.max(...(noop.get("stowage")?.rss ?? [0]));
    verdict("no-op ~100 ms", noopMs("stowage") <= 120, `${noopMs("stowage").toFixed(0)} ms`);
    verdict(
      "no-op peak RSS < 80 MB",
      stowageNoopRss * 1024 < 80e6,
      `${((stowageNoopRss * 1024) / 1e6).toFixed(0)} MB`,
    );
    if (peers.includes("skopeo"))
      verdict(
        "no-op <= 3.5x skopeo",
        noopMs("stowage") <= 3.5 * noopMs("skopeo"),
        `${(noopMs("stowage") / noopMs("skopeo")).toFixed(2)}x`,
      );
    console.log(
      `where stowage's time goes: upstream over loopback is the source registry (one stream, split into ranges only if it starves)${wanDownload === undefined ? "" : `, over the WAN ${wanDownload.toFixed(0)} MB/s`}; ` +
        `hashing ${hashRate.toFixed(0)} MB/s; target ingest ${ingestRate.toFixed(0)} MB/s (one PUT: distribution cannot take parallel chunks)`,
    );
    await seeding.close();
  } finally {
    await Promise.all(proxies.map((p) => p.stop()));
    await Promise.all([...registries].map((r) => r.stop()));
    rmSync(scratch, { recursive: true, force: true });
  }

  console.log("");
  for (const v of verdicts) console.log(`${v.pass ? "PASS" : "FAIL"} ${v.name} (${v.detail})`);
  if (verdicts.some((v) => !v.pass)) process.exitCode = 1;
}

await main();
