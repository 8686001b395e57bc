/**
 * `npm run demo`: the local sandbox. Starts an "upstream" registry seeded with a synthetic
 * model image (a CUDA amd64 and a CPU arm64 variant in one index, generated on the spot)
 * and an empty cache registry, then runs `stowage mirror` into the cache layout the
 * controller uses (DESIGN.md "Cache layout") and shows what happened.
 *
 * The controller, node agents and the API test double join this sandbox as they land; until
 * then it exercises the mirror engine end to end, which is what Stowage does first for
 * every ModelImage.
 *
 *   --ci    headless: exit 0 only when the cache holds the image, byte-exact
 *   --keep  leave the registries running until Ctrl-C
 */
import { spawn } from "node:child_process";
import { access } from "node:fs/promises";
import { parseArgs } from "node:util";
import { cacheRepository, formatReference, parseReference } from "../src/oci/reference.ts";
import { RegistryClient } from "../src/oci/registry.ts";
import { pushMultiArchIndex } from "./images.ts";
import { type RunningRegistry, startRegistry } from "./registry.ts";

const MiB = 1024 * 1024;

interface MirrorJson {
  sourceDigest: string;
  targetDigest: string;
  platforms: string[];
  bytes: { transferred: number; mounted: number; skipped: number };
  blobs: { transferred: number; mounted: number; skipped: number };
  durationMs: number;
}

function say(line = ""): void {
  process.stdout.write(`${line}\n`);
}

function mb(bytes: number): string {
  return `${(bytes / MiB).toFixed(1)} MiB`;
}

/** Runs the real CLI, as a user would: progress on our stderr, the JSON result captured. */
function runMirror(args: string[]): Promise<MirrorJson> {
  return new Promise((resolve, reject) => {
    const child = spawn(
      process.execPath,
      [new URL("../bin/stowage.js", import.meta.url).pathname, "mirror", ...args],
      {
        stdio: ["ignore", "pipe", "inherit"],
      },
    );
    let out = "";
    child.stdout.on("data", (chunk: Buffer) => {
      out += chunk.toString();
    });
    child.on("error", reject);
    child.on("close", (code) => {
      if (code !== 0) reject(new Error(`stowage mirror exited with ${code}`));
      else resolve(JSON.parse(out) as MirrorJson);
    });
  });
}

async function main(): Promise<number> {
  const { values } = parseArgs({
    options: { ci: { type: "boolean", default: false }, keep: { type: "boolean", default: false } },
  });
  try {
    await access("/usr/bin/docker-registry");
  } catch {
    process.stderr.write("demo: /usr/bin/docker-registry is missing; run `bash scripts/setup.sh` first\n");
    return 1;
  }

  const registries: RunningRegistry[] = [];
  const stopAll = async () => {
    await Promise.allSettled(registries.map((r) => r.stop()));
  };
  process.once("SIGINT", () => {
    say("\nstopping the sandbox and removing its temporary state…");
    void stopAll().then(() => process.exit(130));
  });

  try {
    say("Stowage sandbox: mirror engine");
    const upstream = await startRegistry();
    registries.push(upstream);
    const cache = await startRegistry();
    registries.push(cache);
    say(`  upstream registry  ${upstream.url}`);
    say(`  cache registry     ${cache.url}`);

    const client = new RegistryClient({ insecureHosts: [upstream.host, cache.host] });
    const source = parseReference(`${upstream.host}/acme/llama-serve:1.0`);
    say(`\nseeding ${formatReference(source)} (CUDA linux/amd64 + CPU linux/arm64, shared base layer)…`);
    const seeded = await pushMultiArchIndex(
      client,
      { registry: source.registry, repository: source.repository },
      source.tag!,
      { cuda: true, layerSizes: [48 * MiB, 8 * MiB], sharedBaseSize: 16 * MiB, seed: "stowage-demo" },
    );
    const target = parseReference(`${cache.host}/${cacheRepository(source)}:${source.tag}`);
    const insecure = ["--insecure-registry", upstream.host, "--insecure-registry", cache.host];

    say(`\nmirroring into the cache as ${formatReference(target)}`);
    const cold = await runMirror([formatReference(source), formatReference(target), ...insecure, "--json"]);
    say(
      `  copied ${cold.blobs.transferred} blobs (${mb(cold.bytes.transferred)}), mounted ${cold.blobs.mounted}, ` +
        `in ${(cold.durationMs / 1000).toFixed(1)} s; platforms ${cold.platforms.join(", ")}`,
    );

    say("\nre-syncing the unchanged image (what the controller does every sync interval)…");
    const warm = await runMirror([
      formatReference(source),
      formatReference(target),
      ...insecure,
      "--json",
      "--quiet",
    ]);
    say(
      `  ${warm.blobs.transferred} blobs transferred, ${mb(warm.bytes.skipped)} skipped, ${warm.durationMs} ms`,
    );

    const held = await client.headManifest(
      { registry: target.registry, repository: target.repository },
      target.tag!,
    );
    const ok =
      held?.digest === seeded.digest && cold.targetDigest === seeded.digest && warm.blobs.transferred === 0;

    say("\nsummary");
    say(`  upstream digest  ${seeded.digest}`);
    say(`  cache digest     ${held?.digest ?? "(missing)"}`);
    say(`  bytes mirrored   ${mb(cold.bytes.transferred)}`);
    say(`  where            ${cache.url}/v2/${target.repository}/manifests/${target.tag}`);
    say(
      ok ? "  result           the cache holds the upstream image, byte-exact" : "  result           FAILED",
    );

    if (values.keep) {
      say("\nexplore (Ctrl-C stops everything and removes temp state):");
      say(`  curl -s ${cache.url}/v2/_catalog`);
      say(`  skopeo inspect --tls-verify=false docker://${formatReference(target)}`);
      say(
        `  npx stowage mirror ${formatReference(source)} ${cache.host}/copy/llama:arm64 --platform linux/arm64 ` +
          `--insecure-registry ${upstream.host} --insecure-registry ${cache.host}`,
      );
      await new Promise(() => {});
    }
    await client.close();
    return ok ? 0 : 1;
  } finally {
    if (!values.keep) await stopAll();
  }
}

process.exitCode = await main();
