/**
 * Real containerd pulling through the front, configured as the agent configures it
 * (hosts.toml from src/agent/hostsToml.ts). A fault proxy between containerd and the front
 * records exactly what containerd sends a mirror host; another between the front and the
 * upstream records what the upstream is asked.
 */
import { writeFile } from "node:fs/promises";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { CriClient } from "../../src/agent/cri.ts";
import { applyMirrorConfig } from "../../src/agent/hostsToml.ts";
import { cacheHostSegment } from "../../src/cache/layout.ts";
import type { RegistryClient } from "../../src/oci/registry.ts";
import { type RunningContainerd, startContainerd } from "../../testkit/containerd.ts";
import { type FaultProxy, startFaultProxy } from "../../testkit/faultProxy.ts";
import { pushSinglePlatformImage } from "../../testkit/images.ts";
import { type CacheRig, metricValue, rigClient, startRig } from "./support.ts";

const users = [
  { username: "front", password: "front-secret" },
  { username: "alice", password: "alice-secret" },
];

let nodeA: RunningContainerd;
let nodeB: RunningContainerd;
const clients: CriClient[] = [];

function cri(node: RunningContainerd): CriClient {
  const client = new CriClient(node.socketPath);
  clients.push(client);
  return client;
}

beforeAll(async () => {
  [nodeA, nodeB] = await Promise.all([startContainerd(), startContainerd()]);
});

afterAll(async () => {
  for (const client of clients) client.close();
  await Promise.all([nodeA?.dispose(), nodeB?.dispose()]);
});

/** A rig whose front containerd reaches through a recording proxy, mirrored for the upstream host. */
async function mirrorRig(rig: CacheRig): Promise<FaultProxy> {
  const recorder = await startFaultProxy(rig.front.url);
  for (const node of [nodeA, nodeB]) {
    await applyMirrorConfig(node.certsDir, [rig.proxy.host], { cacheEndpoint: recorder.url });
  }
  return recorder;
}

describe("stowage cache with real containerd", () => {
  let rig: CacheRig;
  let recorder: FaultProxy;
  let client: RegistryClient;

  beforeAll(async () => {
    rig = await startRig({ config: { tagTtlMs: 600_000, accessTtlMs: 600_000 } });
    recorder = await mirrorRig(rig);
    client = rigClient(rig);
  });

  afterAll(async () => {
    await client?.close();
    await recorder?.stop();
    await rig?.stop();
  });

  it("pulls an undeclared image through the front; a second node's pull reads nothing from the upstream", async () => {
    const pushed = await pushSinglePlatformImage(
      client,
      { registry: rig.upstream.host, repository: "acme/undeclared" },
      "v1",
      { layerSizes: [2 * 1024 * 1024, 128 * 1024] },
    );
    const image = `${rig.proxy.host}/acme/undeclared:v1`;
    const refA = await cri(nodeA).pullImage(image);
    expect(refA).toMatch(/^sha256:/);
    const upstreamAfterFirst = rig.proxy.seen().length;
    expect(
      rig.proxy.seen().filter((seen) => seen.method === "GET" && seen.path.includes("/blobs/")),
    ).toHaveLength(pushed.image.blobs.length);
    const refB = await cri(nodeB).pullImage(image);
    expect(refB).toBe(refA);
    expect(rig.proxy.seen().slice(upstreamAfterFirst)).toEqual([]);
    expect(await metricValue(rig.front, "stowage_cache_hits_total", { kind: "blob" })).toBe(
      pushed.image.blobs.length,
    );
    expect((await cri(nodeB).imageStatus(image))?.repoDigests).toContain(
      `${rig.proxy.host}/acme/undeclared@${pushed.digest}`,
    );

    // What containerd 1.6 sends a mirror host with override_path: the cache layout path
    // and ?ns=<upstream host>, no Authorization unless challenged.
    const seen = recorder.seen();
    const segment = cacheHostSegment(rig.proxy.host);
    expect(seen.length).toBeGreaterThan(0);
    for (const request of seen) {
      expect(request.path.startsWith(`/v2/${segment}/acme/undeclared/`)).toBe(true);
      expect(request.path).toContain(`?ns=${encodeURIComponent(rig.proxy.host)}`);
      expect(request.authorized).toBe(false);
    }
    expect(seen.some((request) => request.method === "HEAD" && request.path.includes("/manifests/v1?"))).toBe(
      true,
    );
  });

  it("serves containerd configured as a plain mirror (no path), which names the upstream only in ?ns=", async () => {
    const pushed = await pushSinglePlatformImage(
      client,
      { registry: rig.upstream.host, repository: "acme/plain" },
      "v1",
      { layerSizes: [64 * 1024] },
    );
    const hostsToml = [
      `server = "http://${rig.proxy.host}"`,
      `[host."${recorder.url}"]`,
      `  capabilities = ["pull", "resolve"]`,
      "",
    ].join("\n");
    await writeFile(join(nodeA.certsDir, rig.proxy.host, "hosts.toml"), hostsToml);
    const before = recorder.seen().length;
    const ref = await cri(nodeA).pullImage(`${rig.proxy.host}/acme/plain:v1`);
    expect(ref).toMatch(/^sha256:/);
    const seen = recorder.seen().slice(before);
    expect(seen.length).toBeGreaterThan(0);
    for (const request of seen) {
      expect(request.path.startsWith("/v2/acme/plain/")).toBe(true);
      expect(request.path).toContain(`?ns=${encodeURIComponent(rig.proxy.host)}`);
      expect(request.status).toBe(200);
    }
    expect(seen.filter((request) => request.path.includes("/blobs/"))).toHaveLength(
      pushed.image.blobs.length,
    );
    await applyMirrorConfig(nodeA.certsDir, [rig.proxy.host], { cacheEndpoint: recorder.url });
  });
});

describe("stowage cache with real containerd and a private upstream", () => {
  let rig: CacheRig;
  let recorder: FaultProxy;
  let client: RegistryClient;

  beforeAll(async () => {
    // No credentials of its own: it fetches with those containerd sends (the pod's pull secret).
    rig = await startRig({ upstream: { auth: "htpasswd", users } });
    recorder = await mirrorRig(rig);
    client = rigClient(rig, users[0]);
  });

  afterAll(async () => {
    await client?.close();
    await recorder?.stop();
    await rig?.stop();
  });

  it("answers the front's Basic challenge with the pull's CRI credentials, and is refused without them", async () => {
    await pushSinglePlatformImage(
      client,
      { registry: rig.upstream.host, repository: "team-a/secret" },
      "v1",
      { layerSizes: [256 * 1024] },
    );
    const image = `${rig.proxy.host}/team-a/secret:v1`;
    await expect(cri(nodeA).pullImage(image)).rejects.toThrow();
    const refused = recorder.seen();
    expect(refused.length).toBeGreaterThan(0);
    expect(refused.every((request) => request.status === 401 && !request.authorized)).toBe(true);
    expect(rig.proxy.seen().filter((seen) => seen.path.includes("/blobs/"))).toEqual([]);

    const ref = await cri(nodeA).pullImage(image, { auth: { username: "alice", password: "alice-secret" } });
    expect(ref).toMatch(/^sha256:/);
    const withCredentials = recorder.seen().slice(refused.length);
    // containerd sends nothing until challenged, then Basic; resolve (HEAD) and fetch (GET)
    // are each challenged once, after which every request carries the credentials.
    expect(withCredentials[0]).toMatchObject({ authorized: false, status: 401 });
    for (const request of withCredentials) {
      expect(request.status, request.path).toBe(request.authorized ? 200 : 401);
    }
    expect(withCredentials.filter((request) => !request.authorized).length).toBeLessThanOrEqual(2);
    expect(
      withCredentials.some((request) => request.path.includes("/blobs/") && request.status === 200),
    ).toBe(true);
  });

  it("sends CRI credentials to the mirror only when their serverAddress is empty or names the mirror", async () => {
    await pushSinglePlatformImage(
      client,
      { registry: rig.upstream.host, repository: "team-a/addressed" },
      "v1",
      { layerSizes: [8 * 1024] },
    );
    const image = `${rig.proxy.host}/team-a/addressed:v1`;
    const credentials = { username: "alice", password: "alice-secret" };
    // Addressed to the upstream (what a docker config key would name): withheld from the mirror.
    const before = recorder.seen().length;
    await expect(
      cri(nodeB).pullImage(image, { auth: { ...credentials, serverAddress: `https://${rig.proxy.host}` } }),
    ).rejects.toThrow();
    const withheld = recorder.seen().slice(before);
    expect(withheld.length).toBeGreaterThan(0);
    expect(withheld.every((request) => !request.authorized)).toBe(true);
    // Addressed to the mirror, with its scheme (containerd 1.6 cannot parse a bare host:port here).
    const ref = await cri(nodeB).pullImage(image, {
      auth: { ...credentials, serverAddress: `http://${recorder.host}` },
    });
    expect(ref).toMatch(/^sha256:/);
  });
});
