/**
 * A private declared image pre-pulled through the cache front on real containerd: the agent
 * passes its NodeCache's node token in CRI PullImage auth, addressed to the cache endpoint, so
 * containerd answers the front's challenge with it; a node without a token is refused by the
 * front and then by the private upstream it falls back to. The upstream is htpasswd-protected
 * and the front has no credentials of its own: the image is in storage, as the controller
 * mirrored it, and the token is the only thing that lets a node have it.
 */
import { randomBytes } from "node:crypto";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type RunningAgent, startAgent } from "../../src/agent/command.ts";
import { CriClient } from "../../src/agent/cri.ts";
import { containerdProgressProbe } from "../../src/agent/progress.ts";
import { defaultAgentConfig, pullAuthOf } from "../../src/agent/reconciler.ts";
import { loadCrd } from "../../src/api/crds.ts";
import { type NodeCache, NodeCacheResource, type NodeCacheSpec } from "../../src/api/nodeCache.ts";
import { cacheHostSegment } from "../../src/cache/layout.ts";
import { NODE_TOKEN_USER } from "../../src/cache/nodeToken.ts";
import { pullTokenFor } from "../../src/controller/prewarm/pullToken.ts";
import type { KubeClient } from "../../src/kube/client.ts";
import type { TestCluster } from "../../testkit/cluster.ts";
import { type RunningContainerd, startContainerd } from "../../testkit/containerd.ts";
import { type FaultProxy, startFaultProxy } from "../../testkit/faultProxy.ts";
import { type PushedImage, pushSinglePlatformImage } from "../../testkit/images.ts";
import { type CacheRig, rigClient, startRig } from "../cache/support.ts";
import { startCluster } from "../kube/helpers.ts";
import { eventually } from "../support/eventually.ts";

const users = [{ username: "alice", password: "alice-secret" }];
const secret = randomBytes(32);

let api: TestCluster;
let client: KubeClient;
let nodeA: RunningContainerd;
let nodeB: RunningContainerd;
let rig: CacheRig;
/** Between containerd and the front: records what containerd sends the mirror. */
let recorder: FaultProxy;
let image: PushedImage;
let imageRef: string;
const agents: RunningAgent[] = [];
const criClients: CriClient[] = [];

const nodeCaches = () => client.resource<NodeCache>(NodeCacheResource);

async function runAgent(nodeName: string, target: RunningContainerd): Promise<void> {
  const runtime = new CriClient(target.socketPath);
  criClients.push(runtime);
  agents.push(
    await startAgent({
      config: {
        ...defaultAgentConfig,
        nodeName,
        agentVersion: "0.0.0-test",
        containerdConfigPath: target.certsDir,
        containerdConfigFile: target.configFile,
        stallTimeoutMs: 20_000,
        heartbeatIntervalMs: 60_000,
        resyncIntervalMs: 2_000,
        retryInitialMs: 60_000,
        retryMaxMs: 60_000,
      },
      client,
      runtime,
      progress: containerdProgressProbe(runtime, join(target.dir, "root")),
    }),
  );
}

function specFor(nodeName: string): NodeCacheSpec {
  return {
    nodeName,
    cacheEndpoint: recorder.url,
    mirrorHosts: [rig.proxy.host],
    images: [{ image: imageRef, digest: image.digest }],
  };
}

async function settled(nodeName: string) {
  return eventually(`NodeCache ${nodeName} to settle`, async () => {
    const got = await nodeCaches().get(nodeName);
    const state = got.status?.images?.[0]?.state;
    return state === "Present" || state === "Failed" ? got.status?.images?.[0] : undefined;
  });
}

beforeAll(async () => {
  [{ cluster: api, client }, nodeA, nodeB, rig] = await Promise.all([
    startCluster({ crds: [loadCrd("stowage.dev_nodecaches") as never] }),
    startContainerd(),
    startContainerd(),
    startRig({ upstream: { auth: "htpasswd", users }, config: { nodeTokenSecret: secret } }),
  ]);
  recorder = await startFaultProxy(rig.front.url);
  const upstreamClient = rigClient(rig, users[0]);
  const spec = { layerSizes: [512 * 1024, 64 * 1024], seed: "team-a/model:v1" };
  image = await pushSinglePlatformImage(
    upstreamClient,
    { registry: rig.upstream.host, repository: "team-a/model" },
    "v1",
    spec,
  );
  // What the controller's mirror did: the same bytes in storage, under the cache layout.
  const stored = await pushSinglePlatformImage(
    upstreamClient,
    { registry: rig.storage.host, repository: `${cacheHostSegment(rig.proxy.host)}/team-a/model` },
    "v1",
    spec,
  );
  expect(stored.digest).toBe(image.digest);
  await upstreamClient.close();
  imageRef = `${rig.proxy.host}/team-a/model:v1`;
}, 120_000);

afterAll(async () => {
  for (const agent of agents) await agent.stop();
  for (const c of criClients) c.close();
  await recorder?.stop();
  await Promise.all([nodeA?.dispose(), nodeB?.dispose(), rig?.stop(), api?.stop()]);
});

describe("pre-warm of a private image through the cache front with a node token", () => {
  it("addresses the token to the cache endpoint only, as user stowage-node", () => {
    expect(
      pullAuthOf({
        nodeName: "n",
        cacheEndpoint: "http://10.0.0.5:5002/",
        pullToken: { token: "stwn1.a.b", expiresAt: "x" },
      }),
    ).toEqual({
      username: NODE_TOKEN_USER,
      password: "stwn1.a.b",
      serverAddress: "http://10.0.0.5:5002",
    });
    expect(pullAuthOf({ nodeName: "n", cacheEndpoint: "http://10.0.0.5:5002" })).toBeUndefined();
  });

  it("pulls it on the node whose NodeCache carries a token for its digest, served from storage", async () => {
    const spec = specFor("node-a");
    const pullToken = pullTokenFor(spec, undefined, { secret, ttlMs: 3_600_000 }, Date.now());
    await nodeCaches().create({
      apiVersion: "stowage.dev/v1alpha1",
      kind: "NodeCache",
      metadata: { name: "node-a" },
      spec: { ...spec, pullToken },
    });
    const blobGetsBefore = rig.proxy
      .seen()
      .filter((s) => s.method === "GET" && s.path.includes("/blobs/")).length;
    await runAgent("node-a", nodeA);

    const pulled = await settled("node-a");
    expect(pulled, JSON.stringify(pulled)).toMatchObject({ state: "Present", digest: image.digest });
    // containerd answered the front's challenge with the token, and the front served the bytes.
    const seen = recorder.seen();
    expect(seen.some((s) => s.authorized && s.status === 200 && s.path.includes("/blobs/"))).toBe(true);
    // Every request by digest that carried the token was served. (The agent's later pull by
    // tag is not: the front resolves a tag upstream, which it holds no credentials for here.)
    const byDigest = seen.filter((s) => s.authorized && /\/(manifests|blobs)\/sha256:/.test(s.path));
    expect(byDigest.length).toBeGreaterThanOrEqual(1 + image.image.blobs.length);
    expect(byDigest.every((s) => s.status === 200)).toBe(true);
    // From storage: the private upstream was asked for no blob (the front holds no credentials for it).
    expect(rig.proxy.seen().filter((s) => s.method === "GET" && s.path.includes("/blobs/")).length).toBe(
      blobGetsBefore,
    );
    const runtime = new CriClient(nodeA.socketPath);
    criClients.push(runtime);
    expect((await runtime.imageStatus(`${rig.proxy.host}/team-a/model@${image.digest}`))?.id).toMatch(
      /^sha256:/,
    );
  });

  it("fails on a node whose NodeCache has no token: refused by the front, then by the upstream", async () => {
    const before = recorder.seen().length;
    await nodeCaches().create({
      apiVersion: "stowage.dev/v1alpha1",
      kind: "NodeCache",
      metadata: { name: "node-b" },
      spec: specFor("node-b"),
    });
    await runAgent("node-b", nodeB);

    const failed = await settled("node-b");
    expect(failed?.state).toBe("Failed");
    const seen = recorder.seen().slice(before);
    expect(seen.length).toBeGreaterThan(0);
    expect(seen.every((s) => !s.authorized && s.status === 401)).toBe(true);
    const runtime = new CriClient(nodeB.socketPath);
    criClients.push(runtime);
    expect(await runtime.imageStatus(`${rig.proxy.host}/team-a/model@${image.digest}`)).toBeUndefined();
  });
});

describe("a private image through a front with credentials of its own", () => {
  let credentialedRig: CacheRig;
  let credentialedRecorder: FaultProxy;

  beforeAll(async () => {
    credentialedRig = await startRig({
      upstream: { auth: "htpasswd", users },
      config: { nodeTokenSecret: secret },
      frontCredentials: users[0],
    });
    credentialedRecorder = await startFaultProxy(credentialedRig.front.url);
  }, 60_000);

  afterAll(async () => {
    await credentialedRecorder?.stop();
    await credentialedRig?.stop();
  });

  it("pre-pulls it by digest and by tag with the node token, the front fetching it upstream on the miss", async () => {
    const upstreamClient = rigClient(credentialedRig, users[0]);
    const pushed = await pushSinglePlatformImage(
      upstreamClient,
      { registry: credentialedRig.upstream.host, repository: "team-b/model" },
      "v2",
      { layerSizes: [256 * 1024] },
    );
    await upstreamClient.close();
    const ref = `${credentialedRig.proxy.host}/team-b/model:v2`;
    const spec: NodeCacheSpec = {
      nodeName: "node-c",
      cacheEndpoint: credentialedRecorder.url,
      mirrorHosts: [credentialedRig.proxy.host],
      images: [{ image: ref, digest: pushed.digest }],
    };
    const pullToken = pullTokenFor(spec, undefined, { secret, ttlMs: 3_600_000 }, Date.now());
    await nodeCaches().create({
      apiVersion: "stowage.dev/v1alpha1",
      kind: "NodeCache",
      metadata: { name: "node-c" },
      spec: { ...spec, pullToken },
    });
    const node = await startContainerd();
    try {
      await runAgent("node-c", node);
      const pulled = await settled("node-c");
      expect(pulled, JSON.stringify(pulled)).toMatchObject({ state: "Present", digest: pushed.digest });
      const runtime = new CriClient(node.socketPath);
      criClients.push(runtime);
      // The tag the kubelet will ask for is on the node too: the front granted it to the token.
      const byTag = await eventually("the tag on the node", async () => runtime.imageStatus(ref));
      expect(byTag.repoDigests).toContain(`${credentialedRig.proxy.host}/team-b/model@${pushed.digest}`);
      const seen = credentialedRecorder.seen();
      expect(seen.filter((s) => s.authorized).every((s) => s.status === 200)).toBe(true);
      expect(seen.some((s) => s.authorized && s.path.includes("/manifests/v2"))).toBe(true);
    } finally {
      for (const agent of agents.splice(0)) await agent.stop();
      await node.dispose();
    }
  });
});
