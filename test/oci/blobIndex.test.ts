import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { DEFAULT_CONTROLLER_CONFIG } from "../../src/controller/config.ts";
import { createRegistries } from "../../src/controller/modelimage/registries.ts";
import { MemoryBlobIndex, rebuildBlobIndex, SqliteBlobIndex } from "../../src/oci/blobIndex.ts";
import { Copier } from "../../src/oci/copy.ts";
import { parseReference } from "../../src/oci/reference.ts";
import { RegistryClient } from "../../src/oci/registry.ts";
import { silentLogger } from "../../src/util/log.ts";
import { type PushedImage, pushSharedBaseImages } from "../../testkit/images.ts";
import { type RunningRegistry, startRegistry } from "../../testkit/registry.ts";
import { stowage } from "../support/run.ts";

const baseSize = 1024 * 1024;
let source: RunningRegistry;
let client: RegistryClient;
let dir: string;
let images: PushedImage[];

beforeAll(async () => {
  source = await startRegistry();
  dir = await mkdtemp(join(tmpdir(), "stowage-blobindex-"));
  client = new RegistryClient({ insecureHosts: [source.host] });
  images = await pushSharedBaseImages(client, source.host, { prefix: "base/app", count: 3, baseSize });
});

afterAll(async () => {
  await client?.close();
  await source?.stop();
  if (dir) await rm(dir, { recursive: true, force: true });
});

const sourceRef = (i: number) => `${source.host}/${images[i].repo.repository}:v1`;
const baseDigest = () => images[0].image.layers[0].descriptor.digest;

describe("SqliteBlobIndex", () => {
  it("remembers a blob's repository after the file is closed and opened again", () => {
    const path = join(dir, "reopen", "index.sqlite");
    const first = new SqliteBlobIndex(path);
    first.set("registry.example:5000", "sha256:aa", "team/base");
    first.set("registry.example:5000", "sha256:aa", "team/app");
    first.close();
    const second = new SqliteBlobIndex(path);
    expect(second.get("registry.example:5000", "sha256:aa")).toBe("team/app");
    expect(second.get("other.example", "sha256:aa")).toBeUndefined();
    second.close();
  });
});

describe("stowage mirror with a blob index file", () => {
  async function mirrorBoth(target: RunningRegistry, indexFlags: string[]) {
    const results = [];
    for (const i of [0, 1]) {
      const run = await stowage([
        "mirror",
        "--insecure-registry",
        source.host,
        "--insecure-registry",
        target.host,
        "--json",
        ...indexFlags,
        sourceRef(i),
        `${target.host}/mirror/app-${i}:v1`,
      ]);
      expect(run.stderr).toBe("");
      expect(run.code).toBe(0);
      results.push(JSON.parse(run.stdout));
    }
    return results;
  }

  it("mounts the shared base in a second run instead of uploading it again", async () => {
    const target = await startRegistry();
    try {
      const [first, second] = await mirrorBoth(target, ["--blob-index", join(dir, "cli.sqlite")]);
      expect(first.bytes.mounted).toBe(0);
      expect(second.bytes.mounted).toBeGreaterThanOrEqual(baseSize);
      expect(second.bytes.transferred).toBeLessThan(baseSize);
    } finally {
      await target.stop();
    }
  });

  it("uploads the base again when told to remember nothing (--no-blob-index)", async () => {
    const target = await startRegistry();
    try {
      const [, second] = await mirrorBoth(target, ["--no-blob-index"]);
      expect(second.bytes.mounted).toBe(0);
      expect(second.bytes.transferred).toBeGreaterThanOrEqual(baseSize);
    } finally {
      await target.stop();
    }
  });
});

describe("rebuildBlobIndex", () => {
  it("lets a restarted controller's copier mount a base an earlier process pushed", async () => {
    const target = await startRegistry();
    const targetClient = new RegistryClient({ insecureHosts: [source.host, target.host] });
    try {
      await new Copier({ client: targetClient }).copy(
        parseReference(sourceRef(0)),
        parseReference(`${target.host}/cache/app-0:v1`),
      );

      // A fresh copier knows nothing: it uploads the base.
      const forgetful = await new Copier({ client: targetClient }).copy(
        parseReference(sourceRef(1)),
        parseReference(`${target.host}/cache/app-1:v1`),
      );
      expect(forgetful.bytes.mounted).toBe(0);

      // After a restart, the index read back from the registry points at a repository holding it.
      const index = new MemoryBlobIndex();
      const rebuilt = await rebuildBlobIndex(targetClient, target.host, index);
      expect(rebuilt.repositories).toBe(2);
      expect(["cache/app-0", "cache/app-1"]).toContain(index.get(target.host, baseDigest()));
      const restarted = await new Copier({ client: targetClient, blobIndex: index }).copy(
        parseReference(sourceRef(2)),
        parseReference(`${target.host}/cache/app-2:v1`),
      );
      expect(restarted.bytes.mounted).toBeGreaterThanOrEqual(baseSize);
      expect(restarted.blobs.mounted).toBe(1);
    } finally {
      await targetClient.close();
      await target.stop();
    }
  });
});

describe("the controller's registries", () => {
  it("mount a base pushed before a restart, once the index is read back from the cache registry", async () => {
    const cache = await startRegistry();
    const start = () =>
      createRegistries({
        config: {
          ...DEFAULT_CONTROLLER_CONFIG,
          insecureRegistries: [source.host],
          cache: { registry: cache.host, insecure: true },
        },
        cacheCredentials: () => undefined,
        logger: silentLogger(),
      });
    const first = start();
    try {
      await first.blobIndexReady;
      await first.copier.copy(parseReference(sourceRef(0)), parseReference(`${cache.host}/ctl/app-0:v1`));
    } finally {
      await first.client.close();
    }
    const restarted = start();
    try {
      await restarted.blobIndexReady;
      const result = await restarted.copier.copy(
        parseReference(sourceRef(1)),
        parseReference(`${cache.host}/ctl/app-1:v1`),
      );
      expect(result.blobs.mounted).toBe(1);
      expect(result.bytes.mounted).toBeGreaterThanOrEqual(baseSize);
    } finally {
      await restarted.client.close();
      await cache.stop();
    }
  });
});
