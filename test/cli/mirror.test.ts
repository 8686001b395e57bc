import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { RegistryClient } from "../../src/oci/registry.ts";
import { startFaultProxy } from "../../testkit/faultProxy.ts";
import { pushMultiArchIndex, pushSinglePlatformImage } from "../../testkit/images.ts";
import { type RunningRegistry, startRegistry } from "../../testkit/registry.ts";
import { stowage } from "../support/run.ts";

let source: RunningRegistry;
let target: RunningRegistry;
let secured: RunningRegistry;
let tls: RunningRegistry;
let client: RegistryClient;
let dir: string;
let indexDigest: string;
const insecure = () => ["--insecure-registry", source.host, "--insecure-registry", `http://${target.host}`];

beforeAll(async () => {
  [source, target, secured, tls] = await Promise.all([
    startRegistry(),
    startRegistry(),
    startRegistry({ auth: "htpasswd" }),
    startRegistry({ tls: true }),
  ]);
  dir = await mkdtemp(join(tmpdir(), "stowage-cli-"));
  client = new RegistryClient({ insecureHosts: [source.host, target.host] });
  indexDigest = (await pushMultiArchIndex(client, { registry: source.host, repository: "cli/app" }, "v1"))
    .digest;
  await pushSinglePlatformImage(client, { registry: source.host, repository: "cli/small" }, "v1");
});

afterAll(async () => {
  await client?.close();
  await Promise.all([source?.stop(), target?.stop(), secured?.stop(), tls?.stop()]);
  if (dir) await rm(dir, { recursive: true, force: true });
});

describe("stowage mirror", () => {
  it("copies an image, exits 0 and prints one JSON object with the result", async () => {
    const run = await stowage([
      "mirror",
      ...insecure(),
      "--json",
      `${source.host}/cli/app:v1`,
      `${target.host}/cli/app:v1`,
    ]);
    expect(run.stderr).toBe("");
    expect(run.code).toBe(0);
    const result = JSON.parse(run.stdout);
    expect(run.stdout.trim().split("\n")).toHaveLength(1);
    expect(result).toMatchObject({
      source: `${source.host}/cli/app:v1`,
      target: `${target.host}/cli/app:v1`,
      sourceDigest: indexDigest,
      targetDigest: indexDigest,
      mediaType: "application/vnd.oci.image.index.v1+json",
      platforms: ["linux/amd64", "linux/arm64/v8"],
      bytes: { mounted: 0, skipped: 0 },
      blobs: { mounted: 0, skipped: 0 },
    });
    expect(result.bytes.transferred).toBeGreaterThan(0);
    expect(result.blobs.transferred).toBe(6);
    expect(typeof result.durationMs).toBe("number");
  });

  it("filters platforms given as repeated flags or comma lists and keeps the tag when DST has none", async () => {
    const run = await stowage([
      "mirror",
      ...insecure(),
      "--json",
      "--platform",
      "linux/arm64",
      `${source.host}/cli/app:v1`,
      `${target.host}/cli/arm-only`,
    ]);
    expect(run.code).toBe(0);
    const result = JSON.parse(run.stdout);
    expect(result.platforms).toEqual(["linux/arm64/v8"]);
    expect(result.target).toBe(`${target.host}/cli/arm-only:v1`);
    expect(result.targetDigest).not.toBe(indexDigest);
  });

  it("downloads a large layer on a connection of its own, and through the pooled client with --no-bulk", async () => {
    const pushed = await pushSinglePlatformImage(
      client,
      { registry: source.host, repository: "cli/large" },
      "v1",
      {
        layers: [{ seed: "cli/large/0", size: 17 * 1024 * 1024 }],
      },
    );
    const { digest: layer, size: layerSize } = pushed.image.layers[0].descriptor;
    const proxy = await startFaultProxy(source.url);
    try {
      const layerGets = () => proxy.seen().filter((r) => r.method === "GET" && r.path.endsWith(layer));
      for (const [flags, repository, closes] of [
        [[], "cli/large-bulk", true],
        [["--no-bulk"], "cli/large-pooled", false],
      ] as const) {
        const since = layerGets().length;
        const run = await stowage([
          "mirror",
          ...insecure(),
          "--insecure-registry",
          proxy.host,
          "--no-blob-index",
          "--json",
          ...flags,
          `${proxy.host}/cli/large:v1`,
          `${target.host}/${repository}:v1`,
        ]);
        expect(run.stderr).toBe("");
        expect(run.code).toBe(0);
        expect(JSON.parse(run.stdout).targetDigest).toBe(pushed.digest);
        expect(
          layerGets()
            .slice(since)
            .map((r) => [r.status, r.closes]),
        ).toEqual([[200, closes]]);
        expect(await client.hasBlob({ registry: target.host, repository }, layer)).toBe(layerSize);
      }
    } finally {
      await proxy.stop();
    }
  });

  it("prints plain progress lines on stderr when not a TTY, and nothing with --quiet", async () => {
    const loud = await stowage([
      "mirror",
      ...insecure(),
      `${source.host}/cli/small:v1`,
      `${target.host}/cli/loud:v1`,
    ]);
    expect(loud.code).toBe(0);
    expect(loud.stderr).toContain(`${target.host}/cli/loud:v1: 3 blobs`);
    expect(loud.stdout).toContain("mirrored");
    const quiet = await stowage([
      "mirror",
      ...insecure(),
      "--quiet",
      `${source.host}/cli/small:v1`,
      `${target.host}/cli/quiet:v1`,
    ]);
    expect(quiet.code).toBe(0);
    expect(quiet.stderr).toBe("");
    expect(quiet.stdout).toBe("");
  });

  it("uses --dest-creds for a registry that requires authentication", async () => {
    const { username, password } = secured.users[0];
    const run = await stowage([
      "mirror",
      ...insecure(),
      "--insecure-registry",
      secured.host,
      "--dest-creds",
      `${username}:${password}`,
      "--json",
      `${source.host}/cli/small:v1`,
      `${secured.host}/cli/small:v1`,
    ]);
    expect(run.stderr).toBe("");
    expect(run.code).toBe(0);
  });

  it("reads credentials from --authfile", async () => {
    const { username, password } = secured.users[0];
    const authfile = join(dir, "config.json");
    await writeFile(
      authfile,
      JSON.stringify({
        auths: { [secured.host]: { auth: Buffer.from(`${username}:${password}`).toString("base64") } },
      }),
    );
    const run = await stowage([
      "mirror",
      ...insecure(),
      "--insecure-registry",
      secured.host,
      "--authfile",
      authfile,
      "--quiet",
      `${source.host}/cli/small:v1`,
      `${secured.host}/cli/from-authfile:v1`,
    ]);
    expect(run.stderr).toBe("");
    expect(run.code).toBe(0);
  });

  it("trusts a registry's private CA given with --ca-file, and fails without it", async () => {
    const caFile = join(dir, "ca.pem");
    await writeFile(caFile, tls.caPem ?? "");
    const args = [
      "--insecure-registry",
      source.host,
      "--quiet",
      `${source.host}/cli/small:v1`,
      `${tls.host}/cli/tls:v1`,
    ];
    const trusted = await stowage(["mirror", "--ca-file", caFile, ...args]);
    expect(trusted.stderr).toBe("");
    expect(trusted.code).toBe(0);
    const untrusted = await stowage(["mirror", ...args]);
    expect(untrusted.code).toBe(1);
    expect(untrusted.stderr.trim().split("\n")).toHaveLength(1);
    expect(untrusted.stderr).toMatch(/^stowage: \w+: .*127\.0\.0\.1/);
  });

  it("exits 1 with AuthFailed naming the host when credentials are wrong", async () => {
    const run = await stowage([
      "mirror",
      ...insecure(),
      "--insecure-registry",
      secured.host,
      "--dest-creds",
      "stowage:wrong",
      `${source.host}/cli/small:v1`,
      `${secured.host}/cli/denied:v1`,
    ]);
    expect(run.code).toBe(1);
    const lines = run.stderr.trim().split("\n");
    expect(lines.at(-1)).toMatch(new RegExp(`^stowage: AuthFailed: .*${secured.host.replace(".", "\\.")}`));
  });

  it("exits 1 with ImageNotFound on stderr for an unknown tag", async () => {
    const run = await stowage([
      "mirror",
      ...insecure(),
      `${source.host}/cli/app:missing`,
      `${target.host}/cli/x:1`,
    ]);
    expect(run.code).toBe(1);
    expect(run.stdout).toBe("");
    expect(run.stderr.trim().split("\n").at(-1)).toMatch(/^stowage: ImageNotFound: /);
  });

  it("exits 2 with one InvalidReference line for an invalid reference", async () => {
    const run = await stowage(["mirror", "Foo//bar", `${target.host}/cli/x:1`]);
    expect(run.code).toBe(2);
    expect(run.stderr.trim().split("\n")).toHaveLength(1);
    expect(run.stderr).toMatch(/^stowage: InvalidReference: invalid reference "Foo\/\/bar"/);
  });

  it("exits 2 on an unknown flag, missing arguments, or a malformed platform", async () => {
    const unknown = await stowage(["mirror", "--frobnicate", "a/b:1", "c/d:1"]);
    expect(unknown.code).toBe(2);
    expect(unknown.stderr).toMatch(/^stowage: InvalidArgument: .*--frobnicate/);
    const missing = await stowage(["mirror", "a/b:1"]);
    expect(missing.code).toBe(2);
    expect(missing.stderr).toMatch(/^stowage: InvalidArgument: expected SRC and DST/);
    const platform = await stowage(["mirror", "--platform", "linux", "a/b:1", "c/d:1"]);
    expect(platform.code).toBe(2);
    expect(platform.stderr).toMatch(/^stowage: InvalidArgument: invalid platform "linux"/);
    for (const run of [unknown, missing, platform]) expect(run.stderr.trim().split("\n")).toHaveLength(1);
  });

  it("prints help and exits 0 with --help", async () => {
    const run = await stowage(["mirror", "--help"]);
    expect(run.code).toBe(0);
    expect(run.stdout).toContain("Usage: stowage mirror");
    expect(run.stdout).toContain("--platform");
  });
});
