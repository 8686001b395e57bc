/**
 * Issue 14: an unchanged `stowage mirror` re-run answers from the plan's requests and loads
 * nothing that path does not need (no worker thread, no SQLite, no pino, no more of undici than
 * its Agent and request API), against real distribution registries. What a run loaded is read
 * at its exit by a preloaded probe (CommonJS files from require.cache, Node built-ins from
 * process.moduleLoadList); timings are bench/mirror.ts's.
 */
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { CopyResult } from "../../src/oci/copy.ts";
import { deferredLogger } from "../../src/oci/mirrorCommand.ts";
import { RegistryClient } from "../../src/oci/registry.ts";
import { createLogger } from "../../src/util/log.ts";
import { pushSharedBaseImages, pushSinglePlatformImage } from "../../testkit/images.ts";
import { type RunningRegistry, startRegistry } from "../../testkit/registry.ts";
import { stowage } from "../support/run.ts";

let source: RunningRegistry;
let target: RunningRegistry;
let dir: string;
let probe: string;

beforeAll(async () => {
  [source, target] = await Promise.all([startRegistry(), startRegistry()]);
  dir = await mkdtemp(join(tmpdir(), "stowage-noop-"));
  probe = join(dir, "probe.cjs");
  await writeFile(
    probe,
    `const { writeFileSync } = require("node:fs");
process.on("exit", () => {
  if (!process.env.PROBE_OUT) return;
  writeFileSync(process.env.PROBE_OUT, JSON.stringify({
    files: Object.keys(require.cache),
    builtins: process.moduleLoadList.filter((m) => m.startsWith("NativeModule ")).map((m) => m.slice(13)),
  }));
});
`,
  );
  const client = new RegistryClient({ insecureHosts: [source.host] });
  try {
    await pushSinglePlatformImage(client, { registry: source.host, repository: "noop/app" }, "v1");
  } finally {
    await client.close();
  }
});

afterAll(async () => {
  await Promise.all([source?.stop(), target?.stop()]);
  if (dir) await rm(dir, { recursive: true, force: true });
});

async function mirrorProbed(name: string, env: Record<string, string> = {}, repository = "noop/app") {
  const out = join(dir, `${name}.json`);
  const run = await stowage(
    [
      "mirror",
      "--json",
      "--blob-index",
      join(dir, "index.sqlite"),
      "--insecure-registry",
      source.host,
      "--insecure-registry",
      target.host,
      `${source.host}/${repository}:v1`,
      `${target.host}/${repository}:v1`,
    ],
    { NODE_OPTIONS: `--require ${probe}`, PROBE_OUT: out, ...env },
  );
  expect(run.code, run.stderr).toBe(0);
  if (!env.STOWAGE_LOG_LEVEL) expect(run.stderr).toBe("");
  const loaded = JSON.parse(await readFile(out, "utf8")) as { files: string[]; builtins: string[] };
  return { result: JSON.parse(run.stdout) as CopyResult, loaded };
}

const loadsPino = (files: string[]) => files.some((f) => f.includes("/node_modules/pino/"));

describe("an unchanged stowage mirror re-run", () => {
  it("answers without a worker thread, SQLite or pino, where the copy before it loaded SQLite and pino", async () => {
    // The copy, logging at info: the probe sees pino and SQLite loaded.
    const copy = await mirrorProbed("copy", { STOWAGE_LOG_LEVEL: "info" });
    expect(copy.result.bytes.transferred).toBeGreaterThan(0);
    expect(loadsPino(copy.loaded.files)).toBe(true);
    expect(copy.loaded.builtins).toContain("sqlite");

    const noop = await mirrorProbed("noop");
    expect(noop.result.bytes.transferred).toBe(0);
    expect(noop.result.manifests.pushed).toBe(0);
    expect(noop.result.targetDigest).toBe(copy.result.targetDigest);
    expect(loadsPino(noop.loaded.files)).toBe(false);
    expect(noop.loaded.builtins).not.toContain("sqlite");
    expect(noop.loaded.builtins).not.toContain("worker_threads");
    // undici is loaded part by part (transport.ts): none of its fetch, WebSocket or mock files.
    const undici = noop.loaded.files.filter((f) => f.includes("/node_modules/undici/"));
    expect(undici.length).toBeGreaterThan(0);
    expect(undici.filter((f) => /\/lib\/(web|mock)\//.test(f))).toEqual([]);
  });
});

describe("stowage mirror runs one after another", () => {
  it("mount the base an earlier run uploaded, remembered in the blob index", async () => {
    const client = new RegistryClient({ insecureHosts: [source.host] });
    try {
      await pushSharedBaseImages(client, source.host, {
        prefix: "noop/shared",
        count: 2,
        baseSize: 2 * 1024 * 1024,
        topSize: 16 * 1024,
      });
    } finally {
      await client.close();
    }
    const first = await mirrorProbed("shared-0", {}, "noop/shared-0");
    expect(first.result.bytes.transferred).toBeGreaterThan(2 * 1024 * 1024);

    const second = await mirrorProbed("shared-1", {}, "noop/shared-1");
    expect(second.result.bytes.mounted).toBeGreaterThanOrEqual(2 * 1024 * 1024);
    expect(second.result.bytes.transferred).toBeLessThan(64 * 1024);
  });
});

describe("the mirror command's deferred logger", () => {
  it("makes the logger only for a message at an enabled level, then hands every call to it", () => {
    const lines: string[] = [];
    let made = 0;
    const logger = deferredLogger("warn", () => {
      made++;
      return createLogger({ level: "warn", destination: { write: (line: string) => lines.push(line) } });
    });
    logger.debug({ blob: "sha256:1" }, "resuming blob");
    logger.info("mirrored");
    expect(made).toBe(0);
    expect(logger.level).toBe("warn");
    logger.warn({ path: "/x" }, "blob index unusable");
    logger.info("not at warn");
    expect(made).toBe(1);
    expect(lines.map((line) => JSON.parse(line).msg)).toEqual(["blob index unusable"]);
    expect(JSON.parse(lines[0]).level).toBe("warn");
  });

  it("makes the logger at once for a level pino does not know, so pino reports it", () => {
    expect(() => deferredLogger("loud", () => createLogger({ level: "loud" }))).toThrow(/loud/);
  });
});
