import { createHash, randomBytes } from "node:crypto";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { AccessControl } from "../../src/cache/access.ts";
import { issueNodeToken, NODE_TOKEN_USER } from "../../src/cache/nodeToken.ts";
import type { RegistryClient } from "../../src/oci/registry.ts";
import { Transport } from "../../src/oci/transport.ts";
import { systemClock } from "../../src/util/clock.ts";
import { type PushedImage, pushMultiArchIndex, pushSinglePlatformImage } from "../../testkit/images.ts";
import { startScopedUpstream } from "./scopedRealm.ts";
import {
  basic,
  type CacheRig,
  type Fetched,
  fetchFrom,
  metricValue,
  rigClient,
  startRig,
  upstreamBlobGets,
} from "./support.ts";

const users = [
  { username: "front", password: "front-secret" },
  { username: "alice", password: "alice-secret" },
  { username: "bob", password: "bob-secret" },
];

function sha256(bytes: Buffer): string {
  return `sha256:${createHash("sha256").update(bytes).digest("hex")}`;
}

/** A refusal: the status, a challenge on 401, an OCI error body and not one byte of the object. */
function expectRefused(got: Fetched, status: 401 | 403, object: Buffer | undefined): void {
  expect(got.status).toBe(status);
  if (status === 401) expect(got.headers["www-authenticate"]).toMatch(/^Basic realm=/);
  const body = JSON.parse(got.body.toString("utf8"));
  expect(body.errors[0].code).toBe(status === 401 ? "UNAUTHORIZED" : "DENIED");
  if (object) expect(got.body.includes(object.subarray(0, 64))).toBe(false);
}

async function layerBytes(image: PushedImage, index: number): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const chunk of image.image.layers[index].open()) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks);
}

describe("stowage cache: private stays private (htpasswd upstream)", () => {
  let rig: CacheRig;
  let client: RegistryClient;
  let image: PushedImage;
  const secret = randomBytes(32);

  beforeAll(async () => {
    rig = await startRig({
      upstream: { auth: "htpasswd", users },
      frontCredentials: users[0],
      config: { nodeTokenSecret: secret },
    });
    client = rigClient(rig, users[0]);
    image = await pushSinglePlatformImage(
      client,
      { registry: rig.upstream.host, repository: "team-a/private" },
      "v1",
      { layerSizes: [512 * 1024] },
    );
  });

  afterAll(async () => {
    await client?.close();
    await rig?.stop();
  });

  it("hands only anonymous answers to what outlives a restart, never one given to credentials", async () => {
    const told: [string, string, boolean][] = [];
    const transport = new Transport({ insecureHosts: [rig.upstream.host] });
    const access = new AccessControl({
      transport,
      clock: systemClock,
      ttlMs: 60_000,
      referencesOf: async () => [],
      onAnonymousVerdict: (upstream, repository, served) => told.push([upstream, repository, served]),
    });
    const target = {
      upstream: rig.upstream.host,
      repository: "team-a/private",
      cacheRepository: `${rig.upstream.host}/team-a/private`,
      kind: "manifest" as const,
      reference: "v1",
    };
    try {
      await expect(access.authorize(undefined, target)).rejects.toThrow(/not public upstream/);
      const grant = await access.authorize(basic(users[1].username, users[1].password), target);
      expect(grant.via).toBe("credentials");
      expect(told).toEqual([[rig.upstream.host, "team-a/private", false]]);
    } finally {
      await transport.close();
    }
  });

  it("refuses a caller without credentials with 401 and a Basic challenge, and sends no bytes", async () => {
    const prefix = rig.prefix("team-a/private");
    const layer = await layerBytes(image, 0);
    expectRefused(await fetchFrom(rig.front.url, `${prefix}/manifests/v1`), 401, image.image.manifest.bytes);
    expectRefused(
      await fetchFrom(rig.front.url, `${prefix}/blobs/${image.image.layers[0].descriptor.digest}`),
      401,
      layer,
    );
    expect(upstreamBlobGets(rig.proxy)).toEqual([]);
  });

  it("refuses wrong credentials with 401", async () => {
    const got = await fetchFrom(rig.front.url, `${rig.prefix("team-a/private")}/manifests/v1`, {
      authorization: basic("alice", "not-her-password"),
    });
    expectRefused(got, 401, image.image.manifest.bytes);
    expect(
      await metricValue(rig.front, "stowage_cache_refused_total", { status: "401" }),
    ).toBeGreaterThanOrEqual(3);
  });

  it("serves a caller whose credentials the upstream accepts, the second time from storage alone", async () => {
    const prefix = rig.prefix("team-a/private");
    const authorization = basic("alice", "alice-secret");
    const pull = async () => {
      const manifest = await fetchFrom(rig.front.url, `${prefix}/manifests/v1`, { authorization });
      expect(manifest.status).toBe(200);
      expect(sha256(manifest.body)).toBe(image.digest);
      for (const blob of image.image.blobs) {
        const got = await fetchFrom(rig.front.url, `${prefix}/blobs/${blob.descriptor.digest}`, {
          authorization,
        });
        expect(got.status).toBe(200);
        expect(sha256(got.body)).toBe(blob.descriptor.digest);
      }
    };
    await pull();
    const blobGets = upstreamBlobGets(rig.proxy).length;
    expect(blobGets).toBe(image.image.blobs.length);
    await pull();
    expect(upstreamBlobGets(rig.proxy).length).toBe(blobGets);
    // A cached object is still refused to a caller without credentials.
    expectRefused(
      await fetchFrom(rig.front.url, `${prefix}/blobs/${image.image.layers[0].descriptor.digest}`),
      401,
      await layerBytes(image, 0),
    );
  });

  it("serves a node whose token names the image, and only that image", async () => {
    const prefix = rig.prefix("team-a/private");
    const other = await pushSinglePlatformImage(
      client,
      { registry: rig.upstream.host, repository: "team-a/other" },
      "v1",
      { layerSizes: [64 * 1024] },
    );
    const exp = Math.floor(Date.now() / 1000) + 600;
    const token = issueNodeToken(secret, { node: "gpu-1", digests: [image.digest], exp });
    const authorization = basic(NODE_TOKEN_USER, token);
    const manifest = await fetchFrom(rig.front.url, `${prefix}/manifests/v1`, { authorization });
    expect(manifest.status).toBe(200);
    expect(sha256(manifest.body)).toBe(image.digest);
    for (const blob of image.image.blobs) {
      const got = await fetchFrom(rig.front.url, `${prefix}/blobs/${blob.descriptor.digest}`, {
        authorization: `Bearer ${token}`,
      });
      expect(got.status).toBe(200);
      expect(sha256(got.body)).toBe(blob.descriptor.digest);
    }
    const otherPrefix = rig.prefix("team-a/other");
    expectRefused(
      await fetchFrom(rig.front.url, `${otherPrefix}/manifests/v1`, { authorization }),
      403,
      other.image.manifest.bytes,
    );
    expectRefused(
      await fetchFrom(rig.front.url, `${otherPrefix}/blobs/${other.image.layers[0].descriptor.digest}`, {
        authorization,
      }),
      403,
      await layerBytes(other, 0),
    );
    const forged = issueNodeToken(randomBytes(32), { node: "gpu-1", digests: [other.digest], exp });
    expectRefused(
      await fetchFrom(rig.front.url, `${otherPrefix}/manifests/v1`, {
        authorization: basic(NODE_TOKEN_USER, forged),
      }),
      401,
      other.image.manifest.bytes,
    );
    const expired = issueNodeToken(secret, {
      node: "gpu-1",
      digests: [image.digest],
      exp: Math.floor(Date.now() / 1000) - 1,
    });
    expectRefused(
      await fetchFrom(rig.front.url, `${prefix}/manifests/${image.digest}`, {
        authorization: basic(NODE_TOKEN_USER, expired),
      }),
      401,
      image.image.manifest.bytes,
    );
  });
  it("lets a node token naming an index reach the index's platform manifests and their blobs", async () => {
    const index = await pushMultiArchIndex(
      client,
      { registry: rig.upstream.host, repository: "team-a/multi" },
      "v1",
      { layerSizes: [32 * 1024] },
    );
    const exp = Math.floor(Date.now() / 1000) + 600;
    const authorization = basic(
      NODE_TOKEN_USER,
      issueNodeToken(secret, { node: "arm-1", digests: [index.digest], exp }),
    );
    const prefix = rig.prefix("team-a/multi");
    const top = await fetchFrom(rig.front.url, `${prefix}/manifests/v1`, { authorization });
    expect(top.status).toBe(200);
    expect(sha256(top.body)).toBe(index.digest);
    const arm = index.images[1];
    const child = await fetchFrom(rig.front.url, `${prefix}/manifests/${arm.manifest.digest}`, {
      authorization,
    });
    expect(child.status).toBe(200);
    expect(sha256(child.body)).toBe(arm.manifest.digest);
    const layer = arm.layers[0].descriptor;
    const blob = await fetchFrom(rig.front.url, `${prefix}/blobs/${layer.digest}`, { authorization });
    expect(blob.status).toBe(200);
    expect(sha256(blob.body)).toBe(layer.digest);
  });
});

describe("stowage cache: private stays private (token upstream, per-repository access)", () => {
  let rig: CacheRig;
  let client: RegistryClient;
  let image: PushedImage;

  beforeAll(async () => {
    rig = await startRig({
      upstream: { auth: "token", users },
      wrapUpstream: (upstream) => startScopedUpstream(upstream, { alice: ["team-a/"], bob: ["team-b/"] }),
      frontCredentials: users[0],
    });
    client = rigClient(rig, users[0]);
    image = await pushSinglePlatformImage(
      client,
      { registry: rig.upstream.host, repository: "team-a/model" },
      "v1",
      { layerSizes: [256 * 1024] },
    );
  });

  afterAll(async () => {
    await client?.close();
    await rig?.stop();
  });

  it("refuses credentials that the upstream accepts only for another repository with 403", async () => {
    const prefix = rig.prefix("team-a/model");
    const got = await fetchFrom(rig.front.url, `${prefix}/manifests/v1`, {
      authorization: basic("bob", "bob-secret"),
    });
    expectRefused(got, 403, image.image.manifest.bytes);
    const blob = await fetchFrom(
      rig.front.url,
      `${prefix}/blobs/${image.image.layers[0].descriptor.digest}`,
      {
        authorization: basic("bob", "bob-secret"),
      },
    );
    expectRefused(blob, 403, await layerBytes(image, 0));
    expectRefused(await fetchFrom(rig.front.url, `${prefix}/manifests/v1`), 401, image.image.manifest.bytes);
    expectRefused(
      await fetchFrom(rig.front.url, `${prefix}/manifests/v1`, { authorization: basic("alice", "wrong") }),
      401,
      image.image.manifest.bytes,
    );
    expect(upstreamBlobGets(rig.proxy)).toEqual([]);
  });

  it("serves the repository's own users through the token dance", async () => {
    const prefix = rig.prefix("team-a/model");
    const authorization = basic("alice", "alice-secret");
    const manifest = await fetchFrom(rig.front.url, `${prefix}/manifests/v1`, { authorization });
    expect(manifest.status).toBe(200);
    expect(sha256(manifest.body)).toBe(image.digest);
    const layer = image.image.layers[0].descriptor;
    const blob = await fetchFrom(rig.front.url, `${prefix}/blobs/${layer.digest}`, { authorization });
    expect(blob.status).toBe(200);
    expect(sha256(blob.body)).toBe(layer.digest);
  });
});

describe("stowage cache: a private upstream the cache itself has no credentials for", () => {
  let rig: CacheRig;
  let client: RegistryClient;
  const secret = randomBytes(32);

  beforeAll(async () => {
    rig = await startRig({ upstream: { auth: "htpasswd", users }, config: { nodeTokenSecret: secret } });
    client = rigClient(rig, users[0]);
  });

  afterAll(async () => {
    await client?.close();
    await rig?.stop();
  });

  it("fetches with the caller's own verified credentials, and keeps the result private", async () => {
    const image = await pushSinglePlatformImage(
      client,
      { registry: rig.upstream.host, repository: "team-a/unconfigured" },
      "v1",
      { layerSizes: [128 * 1024] },
    );
    const prefix = rig.prefix("team-a/unconfigured");
    const authorization = basic("alice", "alice-secret");
    const manifest = await fetchFrom(rig.front.url, `${prefix}/manifests/v1`, { authorization });
    expect(manifest.status).toBe(200);
    expect(sha256(manifest.body)).toBe(image.digest);
    const layer = image.image.layers[0].descriptor;
    const blob = await fetchFrom(rig.front.url, `${prefix}/blobs/${layer.digest}`, { authorization });
    expect(blob.status).toBe(200);
    expect(sha256(blob.body)).toBe(layer.digest);
    expect(upstreamBlobGets(rig.proxy)).toHaveLength(1);
    expect(
      rig.proxy
        .seen()
        .filter((seen) => seen.path.includes("/blobs/"))
        .every((seen) => seen.authorized || seen.status === 401),
    ).toBe(true);
    // Cached now, and still not for anyone else.
    expectRefused(
      await fetchFrom(rig.front.url, `${prefix}/blobs/${layer.digest}`),
      401,
      await layerBytes(image, 0),
    );
    const again = await fetchFrom(rig.front.url, `${prefix}/blobs/${layer.digest}`, {
      authorization: basic("bob", "bob-secret"),
    });
    expect(sha256(again.body)).toBe(layer.digest);
    expect(upstreamBlobGets(rig.proxy)).toHaveLength(1);
  });

  it("answers a node whose image it cannot fetch 403 naming the missing cache credentials, not a challenge", async () => {
    const image = await pushSinglePlatformImage(
      client,
      { registry: rig.upstream.host, repository: "team-a/uncached" },
      "v1",
      { layerSizes: [16 * 1024] },
    );
    const token = issueNodeToken(secret, {
      node: "gpu-2",
      digests: [image.digest],
      exp: Math.floor(Date.now() / 1000) + 600,
    });
    const got = await fetchFrom(rig.front.url, `${rig.prefix("team-a/uncached")}/manifests/${image.digest}`, {
      authorization: basic(NODE_TOKEN_USER, token),
    });
    expect(got.status).toBe(403);
    expect(got.headers["www-authenticate"]).toBeUndefined();
    expect(JSON.parse(got.body.toString()).errors[0]).toMatchObject({ code: "DENIED" });
    expect(JSON.parse(got.body.toString()).errors[0].message).toContain("refuses its credentials");
    expect(got.body.includes(image.image.manifest.bytes.subarray(0, 32))).toBe(false);
  });
});
