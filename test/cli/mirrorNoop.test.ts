/**
 * Issue 14: an unchanged `stowage mirror` re-run is answered by src/oci/headCheck.ts on
 * node:http(s) and loads nothing else (no undici, so no node:http2; no worker thread, SQLite or
 * pino), against real distribution registries (plain, token auth, htpasswd over TLS). Anything
 * that is not up to date, or any odd answer, is handed to the full path, which answers exactly
 * as a run that never tried the light check (forced here by STOWAGE_LOG_LEVEL=info). What a
 * run loaded is read at its exit by a preloaded probe (CommonJS files from require.cache, Node
 * built-ins from process.moduleLoadList); timings are bench/mirror.ts's.
 */
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { CopyResult } from "../../src/oci/copy.ts";
import { deferredLogger } from "../../src/oci/mirrorCommand.ts";
import { RegistryClient } from "../../src/oci/registry.ts";
import { createLogger } from "../../src/util/log.ts";
import { type FaultProxy, startFaultProxy } from "../../testkit/faultProxy.ts";
import { pushMultiArchIndex, pushSharedBaseImages, pushSinglePlatformImage } from "../../testkit/images.ts";
import { type RunningRegistry, startRegistry } from "../../testkit/registry.ts";
import { stowage } from "../support/run.ts";

let source: RunningRegistry;
let target: RunningRegistry;
/** Token auth (Bearer challenge, a token issuer) on plain HTTP. */
let tokenSource: RunningRegistry;
/** htpasswd (Basic challenge) over TLS with its own CA. */
let basicTarget: RunningRegistry;
let dir: string;
let probe: string;
let caFile: string;

beforeAll(async () => {
  [source, target, tokenSource, basicTarget] = await Promise.all([
    startRegistry(),
    startRegistry(),
    startRegistry({ auth: "token" }),
    startRegistry({ auth: "htpasswd", tls: true }),
  ]);
  dir = await mkdtemp(join(tmpdir(), "stowage-noop-"));
  probe = join(dir, "probe.cjs");
  caFile = join(dir, "ca.pem");
  await writeFile(caFile, basicTarget.caPem ?? "");
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
  const [user] = tokenSource.users;
  const tokenClient = new RegistryClient({ insecureHosts: [tokenSource.host], credentials: () => user });
  try {
    await pushSinglePlatformImage(client, { registry: source.host, repository: "noop/app" }, "v1");
    await pushMultiArchIndex(tokenClient, { registry: tokenSource.host, repository: "noop/multi" }, "v1");
  } finally {
    await Promise.all([client.close(), tokenClient.close()]);
  }
});

afterAll(async () => {
  await Promise.all([source?.stop(), target?.stop(), tokenSource?.stop(), basicTarget?.stop()]);
  if (dir) await rm(dir, { recursive: true, force: true });
});

interface Loaded {
  files: string[];
  builtins: string[];
}

let runs = 0;

/** One `stowage mirror --json` run with the probe; `args` go before SRC and DST. */
async function probed(args: string[], src: string, dst: string, env: Record<string, string> = {}) {
  const out = join(dir, `run-${runs++}.json`);
  const run = await stowage(
    ["mirror", "--json", "--blob-index", join(dir, "index.sqlite"), ...args, src, dst],
    { NODE_OPTIONS: `--require ${probe}`, PROBE_OUT: out, ...env },
  );
  const loaded = JSON.parse(await readFile(out, "utf8")) as Loaded;
  return { ...run, loaded };
}

async function mirrorProbed(name: string, env: Record<string, string> = {}, repository = "noop/app") {
  const run = await probed(
    ["--insecure-registry", source.host, "--insecure-registry", target.host],
    `${source.host}/${repository}:v1`,
    `${target.host}/${repository}:v1`,
    env,
  );
  expect(run.code, `${name}: ${run.stderr}`).toBe(0);
  if (!env.STOWAGE_LOG_LEVEL) expect(run.stderr).toBe("");
  return { result: JSON.parse(run.stdout) as CopyResult, loaded: run.loaded };
}

const loadsPino = (files: string[]) => files.some((f) => f.includes("/node_modules/pino/"));
const loadsUndici = (loaded: Loaded) => loaded.files.some((f) => f.includes("/node_modules/undici/"));
const withoutDuration = (stdout: string) => {
  const { durationMs: _, ...rest } = JSON.parse(stdout) as CopyResult;
  return rest;
};
/** The `stowage: Reason: message` line (a forced full run's stderr also has pino's lines). */
const errorLine = (stderr: string) => stderr.split("\n").find((line) => line.startsWith("stowage: "));

/**
 * Runs the mirror twice: as is (light check first) and with the light check off (info logging
 * makes the full path answer, as it did before the light check existed). Both must agree.
 */
async function bothWays(args: string[], src: string, dst: string) {
  const light = await probed(args, src, dst);
  const full = await probed(args, src, dst, { STOWAGE_LOG_LEVEL: "info" });
  expect(loadsUndici(full.loaded)).toBe(true);
  expect(light.code, light.stderr).toBe(full.code);
  if (full.code === 0) expect(withoutDuration(light.stdout)).toEqual(withoutDuration(full.stdout));
  else expect(errorLine(light.stderr)).toBe(errorLine(full.stderr));
  return { light, full };
}

describe("an unchanged stowage mirror re-run", () => {
  it("answers without undici, node:http2, a worker thread, SQLite or pino, where the copy before it loaded them", async () => {
    // The copy, logging at info: the probe sees pino and SQLite loaded.
    const copy = await mirrorProbed("copy", { STOWAGE_LOG_LEVEL: "info" });
    expect(copy.result.bytes.transferred).toBeGreaterThan(0);
    expect(loadsPino(copy.loaded.files)).toBe(true);
    expect(copy.loaded.builtins).toContain("sqlite");
    expect(loadsUndici(copy.loaded)).toBe(true);

    const noop = await mirrorProbed("noop");
    expect(noop.result.bytes.transferred).toBe(0);
    expect(noop.result.manifests.pushed).toBe(0);
    expect(noop.result.targetDigest).toBe(copy.result.targetDigest);
    expect(noop.result.bytes.skipped).toBe(copy.result.bytes.transferred);
    expect(loadsPino(noop.loaded.files)).toBe(false);
    expect(loadsUndici(noop.loaded)).toBe(false);
    expect(noop.loaded.builtins).not.toContain("http2");
    // Plain-HTTP registries: not even TLS.
    expect(noop.loaded.builtins).not.toContain("tls");
    expect(noop.loaded.builtins).not.toContain("sqlite");
    expect(noop.loaded.builtins).not.toContain("worker_threads");
  });

  it("asks the source one HEAD and no GET (a pull, to Docker Hub's rate limit), as the full path does", async () => {
    const upstream = await startFaultProxy(source.url);
    try {
      const args = ["--insecure-registry", upstream.host, "--insecure-registry", target.host];
      const src = `${upstream.host}/noop/app:v1`;
      const dst = `${target.host}/noop/headonly:v1`;
      /** One run, and what it asked the source. */
      const watched = async (env: Record<string, string> = {}) => {
        const before = upstream.seen().length;
        const run = await probed(args, src, dst, env);
        expect(run.code, run.stderr).toBe(0);
        return {
          run,
          asked: upstream
            .seen()
            .slice(before)
            .map((r) => `${r.method} ${r.path}`),
        };
      };
      const copy = await watched();
      expect(copy.asked).toContain("GET /v2/noop/app/manifests/v1");

      const light = await watched();
      const full = await watched({ STOWAGE_LOG_LEVEL: "info" });
      expect(light.asked).toEqual(["HEAD /v2/noop/app/manifests/v1"]);
      expect(full.asked).toEqual(["HEAD /v2/noop/app/manifests/v1"]);
      expect(loadsUndici(light.run.loaded)).toBe(false);
      expect((JSON.parse(light.run.stdout) as CopyResult).bytes.transferred).toBe(0);
      expect(withoutDuration(light.run.stdout)).toEqual(withoutDuration(full.run.stdout));
    } finally {
      await upstream.stop();
    }
  });

  it("answers a multi-platform index from a token-auth source to an htpasswd TLS target as the full path does, without undici", async () => {
    const [tokenUser] = tokenSource.users;
    const [basicUser] = basicTarget.users;
    const args = [
      "--insecure-registry",
      tokenSource.host,
      "--src-creds",
      `${tokenUser.username}:${tokenUser.password}`,
      "--dest-creds",
      `${basicUser.username}:${basicUser.password}`,
      "--ca-file",
      caFile,
    ];
    const src = `${tokenSource.host}/noop/multi:v1`;
    const dst = `${basicTarget.host}/noop/multi:v1`;
    const copy = await probed(args, src, dst);
    expect(copy.code, copy.stderr).toBe(0);
    expect((JSON.parse(copy.stdout) as CopyResult).bytes.transferred).toBeGreaterThan(0);

    const { light } = await bothWays(args, src, dst);
    const result = JSON.parse(light.stdout) as CopyResult;
    expect(result.bytes.transferred).toBe(0);
    expect(result.platforms.length).toBeGreaterThan(1);
    expect(loadsUndici(light.loaded)).toBe(false);
    expect(light.loaded.builtins).not.toContain("http2");
  });
});

describe("a re-run the light check cannot answer goes to the full path", () => {
  const plain = () => ["--insecure-registry", source.host, "--insecure-registry", target.host];

  it("copies a tag changed upstream", async () => {
    const src = `${source.host}/noop/changing:v1`;
    const dst = `${target.host}/noop/changing:v1`;
    const client = new RegistryClient({ insecureHosts: [source.host] });
    try {
      const repo = { registry: source.host, repository: "noop/changing" };
      await pushSinglePlatformImage(client, repo, "v1", { seed: "first" });
      expect((await probed(plain(), src, dst)).code).toBe(0);
      const changed = await pushSinglePlatformImage(client, repo, "v1", { seed: "second" });
      const run = await probed(plain(), src, dst);
      expect(run.code, run.stderr).toBe(0);
      const result = JSON.parse(run.stdout) as CopyResult;
      expect(result.targetDigest).toBe(changed.digest);
      expect(result.bytes.transferred).toBeGreaterThan(0);
      expect(loadsUndici(run.loaded)).toBe(true);
    } finally {
      await client.close();
    }
  });

  it("gives the full path's answer when the target lost the image's config blob", async () => {
    const src = `${source.host}/noop/lost:v1`;
    const dst = `${target.host}/noop/lost:v1`;
    const client = new RegistryClient({ insecureHosts: [source.host, target.host] });
    try {
      const pushed = await pushSinglePlatformImage(
        client,
        { registry: source.host, repository: "noop/lost" },
        "v1",
        {
          seed: "lost",
        },
      );
      expect((await probed(plain(), src, dst)).code).toBe(0);
      const config = pushed.image.config.descriptor.digest;
      expect(await client.deleteBlob({ registry: target.host, repository: "noop/lost" }, config)).toBe(true);
    } finally {
      await client.close();
    }
    const { light } = await bothWays(plain(), src, dst);
    expect(loadsUndici(light.loaded)).toBe(true);
  });

  it("fails as the full path does for wrong destination credentials (a 401)", async () => {
    const [tokenUser] = tokenSource.users;
    const args = [
      "--insecure-registry",
      tokenSource.host,
      "--src-creds",
      `${tokenUser.username}:${tokenUser.password}`,
      "--dest-creds",
      "stowage:wrong",
      "--ca-file",
      caFile,
    ];
    const { light } = await bothWays(
      args,
      `${tokenSource.host}/noop/multi:v1`,
      `${basicTarget.host}/noop/multi:v1`,
    );
    expect(light.code).toBe(1);
    expect(errorLine(light.stderr)).toMatch(/^stowage: AuthFailed: /);
    expect(loadsUndici(light.loaded)).toBe(true);
  });

  describe("behind a proxy that redirects", () => {
    let front: FaultProxy;
    beforeAll(async () => {
      front = await startFaultProxy(target.url);
    });
    afterAll(async () => {
      await front?.stop();
    });

    it("answers as the full path does when the target's manifest requests are redirected", async () => {
      front.addRule({
        match: { path: /\/manifests\// },
        times: Number.POSITIVE_INFINITY,
        action: { kind: "redirect", to: target.url },
      });
      const args = ["--insecure-registry", source.host, "--insecure-registry", front.host];
      const { light } = await bothWays(args, `${source.host}/noop/app:v1`, `${front.host}/noop/app:v1`);
      expect(loadsUndici(light.loaded)).toBe(true);
      expect(front.seen().filter((r) => r.fault === "redirect").length).toBeGreaterThanOrEqual(2);
    });
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
