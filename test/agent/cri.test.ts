import { mkdir, readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { CriClient } from "../../src/agent/cri.ts";
import {
  applyMirrorConfig,
  BACKUP_NAME,
  checkConfigPath,
  STOWAGE_MARKER,
} from "../../src/agent/hostsToml.ts";
import { RegistryClient } from "../../src/oci/registry.ts";
import { type RunningContainerd, startContainerd } from "../../testkit/containerd.ts";
import { pushSinglePlatformImage } from "../../testkit/images.ts";
import { type RunningRegistry, startRegistry } from "../../testkit/registry.ts";

let nodeA: RunningContainerd;
let nodeB: RunningContainerd;
let upstream: RunningRegistry;
let cache: RunningRegistry;
let registryClient: RegistryClient;
const clients: CriClient[] = [];

function cri(node: RunningContainerd): CriClient {
  const client = new CriClient(node.socketPath);
  clients.push(client);
  return client;
}

/** containerd speaks HTTPS to 127.0.0.1 registries unless a hosts.toml says otherwise. */
async function plainHttp(node: RunningContainerd, registry: RunningRegistry): Promise<void> {
  await mkdir(join(node.certsDir, registry.host), { recursive: true });
  await writeFile(join(node.certsDir, registry.host, "hosts.toml"), `server = "http://${registry.host}"\n`);
}

beforeAll(async () => {
  [nodeA, nodeB, upstream, cache] = await Promise.all([
    startContainerd(),
    startContainerd(),
    startRegistry(),
    startRegistry(),
  ]);
  registryClient = new RegistryClient({ insecureHosts: [upstream.host, cache.host], retry: { attempts: 2 } });
});

afterAll(async () => {
  for (const client of clients) client.close();
  await registryClient?.close();
  await Promise.all([nodeA?.dispose(), nodeB?.dispose(), upstream?.stop(), cache?.stop()]);
});

describe("containerd fixture", () => {
  it("runs two containerd at once on separate sockets, each answering CRI Version and ImageFsInfo", async () => {
    expect(nodeA.socketPath).not.toBe(nodeB.socketPath);
    for (const node of [nodeA, nodeB]) {
      const client = cri(node);
      const version = await client.version();
      expect(version.runtimeName).toBe("containerd");
      expect(version.runtimeApiVersion).toBe("v1");
      const filesystems = await client.imageFsInfo();
      expect(filesystems.length).toBeGreaterThan(0);
      expect(filesystems[0].mountpoint).toContain(node.dir);
    }
  });
});

describe("containerd fixture without overlayfs", () => {
  it("pulls with the native snapshotter, as on kernels without an overlay filesystem", async () => {
    const native = await startContainerd({ snapshotter: "native" });
    try {
      expect(native.snapshotter).toBe("native");
      const pushed = await pushSinglePlatformImage(
        registryClient,
        { registry: upstream.host, repository: "acme/native" },
        "1.0",
        { layerSizes: [128 * 1024] },
      );
      await plainHttp(native, upstream);
      const client = cri(native);
      const ref = `${upstream.host}/acme/native@${pushed.digest}`;
      await client.pullImage(ref);
      expect(await client.imageStatus(ref)).toBeDefined();
    } finally {
      await native.dispose();
    }
  });
});

describe("CRI image client", () => {
  it("pulls by name@digest and by name:tag, finds both with ImageStatus, and removes the image", async () => {
    const pushed = await pushSinglePlatformImage(
      registryClient,
      { registry: upstream.host, repository: "acme/small" },
      "1.0",
      { layerSizes: [512 * 1024, 1024 * 1024] },
    );
    await plainHttp(nodeA, upstream);
    const client = cri(nodeA);
    const byDigest = `${upstream.host}/acme/small@${pushed.digest}`;
    const byTag = `${upstream.host}/acme/small:1.0`;

    const imageRef = await client.pullImage(byDigest);
    expect(imageRef).toMatch(/^sha256:/);
    const status = await client.imageStatus(byDigest);
    expect(status?.id).toBe(imageRef);
    expect(status?.repoDigests).toContain(byDigest);
    expect(status?.sizeBytes).toBeGreaterThan(1024 * 1024);

    await client.pullImage(byTag);
    const tagged = await client.imageStatus(byTag);
    expect(tagged?.id).toBe(imageRef);
    expect(tagged?.repoTags).toContain(byTag);
    expect((await client.listImages()).map((i) => i.id)).toContain(imageRef);

    await client.removeImage(byDigest);
    expect(await client.imageStatus(byDigest)).toBeUndefined();
    expect(await client.imageStatus(byTag)).toBeUndefined();
  });

  it("answers undefined, not an error, for an image the runtime does not have", async () => {
    const client = cri(nodeB);
    expect(await client.imageStatus(`${upstream.host}/acme/never:1.0`)).toBeUndefined();
  });

  it("reports the runtime's own message when a pull fails", async () => {
    await plainHttp(nodeB, upstream);
    const client = cri(nodeB);
    const missing = `${upstream.host}/acme/small@sha256:${"0".repeat(64)}`;
    await expect(client.pullImage(missing)).rejects.toMatchObject({
      message: expect.stringContaining("not found"),
    });
  });
});

describe("containerd mirror configuration (hosts.toml)", () => {
  it("serves a pull of UPSTREAM/acme/model:1.0 from the cache with the upstream stopped", async () => {
    const mirrorUpstream = await startRegistry();
    const repo = "acme/model";
    // The cache holds the image under the cache layout: host_port/acme/model.
    const cacheRepo = `${mirrorUpstream.host.replace(":", "_")}/${repo}`;
    const pushed = await pushSinglePlatformImage(
      registryClient,
      { registry: cache.host, repository: cacheRepo },
      "1.0",
      { layerSizes: [256 * 1024] },
    );
    await mirrorUpstream.stop();

    const result = await applyMirrorConfig(nodeB.certsDir, [mirrorUpstream.host], {
      cacheEndpoint: `http://${cache.host}`,
    });
    expect(result.hosts[mirrorUpstream.host]).toBe("written");
    const client = cri(nodeB);
    const imageRef = await client.pullImage(`${mirrorUpstream.host}/${repo}:1.0`);
    const status = await client.imageStatus(`${mirrorUpstream.host}/${repo}:1.0`);
    expect(status?.id).toBe(imageRef);
    expect(status?.repoDigests).toContain(`${mirrorUpstream.host}/${repo}@${pushed.digest}`);
    const cacheRequests = await cache.requests();
    expect(cacheRequests.some((r) => r.path.startsWith(`/v2/${cacheRepo}/manifests/1.0`))).toBe(true);
  });

  it("backs up a hosts.toml it did not write and merges it, cache first and the old hosts kept", async () => {
    const dir = join(nodeA.certsDir, "nvcr.io");
    await mkdir(dir, { recursive: true });
    const foreign = [
      'server = "https://nvcr.io"',
      "",
      '[host."https://mirror.example.internal"]',
      '  capabilities = ["pull"]',
      "",
    ].join("\n");
    await writeFile(join(dir, "hosts.toml"), foreign);

    const options = { cacheEndpoint: "http://10.0.0.5:5000" };
    const first = await applyMirrorConfig(nodeA.certsDir, ["nvcr.io"], options);
    expect(first.hosts["nvcr.io"]).toBe("merged");
    expect(await readFile(join(dir, BACKUP_NAME), "utf8")).toBe(foreign);
    const merged = await readFile(join(dir, "hosts.toml"), "utf8");
    expect(merged.startsWith(STOWAGE_MARKER)).toBe(true);
    const cacheAt = merged.indexOf('[host."http://10.0.0.5:5000/v2/nvcr.io"]');
    const theirsAt = merged.indexOf('[host."https://mirror.example.internal"]');
    expect(cacheAt).toBeGreaterThan(0);
    expect(theirsAt).toBeGreaterThan(cacheAt);
    expect(merged).toContain('server = "https://nvcr.io"');
    expect(merged).toContain("override_path = true");

    // A second pass changes nothing and keeps the original backup.
    const second = await applyMirrorConfig(nodeA.certsDir, ["nvcr.io"], options);
    expect(second.hosts["nvcr.io"]).toBe("unchanged");
    expect(await readFile(join(dir, BACKUP_NAME), "utf8")).toBe(foreign);

    // Dropping the host puts the original back.
    const dropped = await applyMirrorConfig(nodeA.certsDir, [], options);
    expect(dropped.hosts["nvcr.io"]).toBe("restored");
    expect(await readFile(join(dir, "hosts.toml"), "utf8")).toBe(foreign);
  });

  it("tells when containerd's config does not set config_path or points elsewhere", async () => {
    const bare = await startContainerd({ withoutConfigPath: true });
    try {
      const unset = await checkConfigPath(bare.certsDir, bare.configFile);
      expect(unset).toMatchObject({ ok: false, configPath: "" });
      expect(unset.ok ? "" : unset.message).toContain("config_path");
      const elsewhere = await checkConfigPath("/etc/containerd/certs.d", nodeA.configFile);
      expect(elsewhere.ok ? "" : elsewhere.message).toContain(nodeA.certsDir);
      expect(await checkConfigPath(nodeA.certsDir, nodeA.configFile)).toEqual({
        ok: true,
        configPath: nodeA.certsDir,
      });
      expect((await checkConfigPath(join(nodeA.dir, "missing"))).ok).toBe(false);
    } finally {
      await bare.dispose();
    }
  });

  it("points docker.io at the cache's docker.io prefix with registry-1.docker.io as the fallback", async () => {
    await applyMirrorConfig(nodeA.certsDir, ["docker.io"], {
      cacheEndpoint: "https://cache.local:5000/",
      skipVerify: true,
    });
    const text = await readFile(join(nodeA.certsDir, "docker.io", "hosts.toml"), "utf8");
    expect(text).toContain('server = "https://registry-1.docker.io"');
    expect(text).toContain('[host."https://cache.local:5000/v2/docker.io"]');
    expect(text).toContain('capabilities = ["pull", "resolve"]');
    expect(text).toContain("skip_verify = true");
  });
});
