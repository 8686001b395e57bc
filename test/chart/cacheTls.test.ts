/**
 * A cache registry served over HTTPS with a private CA: the chart gives the CA (the TLS Secret's
 * ca.crt, optional) to the controller and to the node agents, and the agent hands it to
 * containerd in hosts.toml, so nodes pull through the cache. The chart is rendered by the real
 * helm; the agent runs with the flags the DaemonSet renders against a real containerd and a real
 * HTTPS registry.
 */
import { access, mkdir, mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { parseAgentArgs, type RunningAgent, startAgent } from "../../src/agent/command.ts";
import { CriClient } from "../../src/agent/cri.ts";
import { applyMirrorConfig, CACHE_CA_NAME } from "../../src/agent/hostsToml.ts";
import { loadCrd } from "../../src/api/crds.ts";
import { type NodeCache, NodeCacheResource } from "../../src/api/nodeCache.ts";
import { KubeClient } from "../../src/kube/client.ts";
import { getCondition } from "../../src/kube/conditions.ts";
import { RegistryClient } from "../../src/oci/registry.ts";
import { startApiServer, type TestApiServer } from "../../testkit/apiserver/index.ts";
import { type RunningContainerd, startContainerd } from "../../testkit/containerd.ts";
import { pushSinglePlatformImage } from "../../testkit/images.ts";
import { freePort } from "../../testkit/ports.ts";
import { type RunningRegistry, startRegistry } from "../../testkit/registry.ts";
import { eventually as waitFor } from "../support/eventually.ts";
import {
  type Container,
  containerOf,
  flagValues,
  getObject,
  podOf,
  RELEASE,
  type RenderedObject,
  render,
  volumeFor,
} from "./render.ts";

const tlsValues = { cache: { tls: { enabled: true, secretName: "cache-tls" } } };

/** The CA file a component is told about, and the volume it comes from. */
function caFileOf(workload: RenderedObject, container: Container) {
  const path = flagValues(container.args ?? []).get("cache-ca-file")?.[0];
  if (!path) throw new Error(`${workload.kind} ${workload.metadata.name} gets no --cache-ca-file`);
  const mounted = volumeFor(workload, container, path);
  return { path, ...mounted };
}

describe("the chart with cache.tls", () => {
  let objects: RenderedObject[];
  beforeAll(async () => {
    objects = await render({ values: [tlsValues] });
  });

  it.each([
    ["Deployment", "controller"],
    ["DaemonSet", "agent"],
  ])("gives the %s's %s the Secret's ca.crt, only it, and only when the Secret has one", (kind, name) => {
    const workload = getObject(objects, kind, `${RELEASE}-${name}`);
    const { path, volume, file } = caFileOf(workload, containerOf(workload, name));
    expect(path).toMatch(/^\//);
    expect(file).toBe("ca.crt");
    expect(volume?.secret).toEqual({
      secretName: "cache-tls",
      items: [{ key: "ca.crt", path: "ca.crt" }],
      optional: true,
    });
  });

  it("serves the cache from tls.crt and tls.key without requiring a ca.crt", () => {
    const statefulSet = getObject(objects, "StatefulSet", `${RELEASE}-cache`);
    const tls = podOf(statefulSet).volumes.find((v) => v.secret?.secretName === "cache-tls");
    expect(tls?.secret?.items ?? []).toEqual([]);
  });

  it("gives no CA to anyone without cache.tls", async () => {
    const plain = await render();
    for (const [kind, name] of [
      ["Deployment", "controller"],
      ["DaemonSet", "agent"],
    ]) {
      const container = containerOf(getObject(plain, kind, `${RELEASE}-${name}`), name);
      expect(flagValues(container.args ?? []).has("cache-ca-file")).toBe(false);
    }
  });
});

describe("a node agent started with the DaemonSet's flags, on a real containerd, with an HTTPS cache", () => {
  let api: TestApiServer;
  let client: KubeClient;
  let node: RunningContainerd;
  let cache: RunningRegistry;
  let runtime: CriClient;
  let agent: RunningAgent | undefined;
  let podRoot: string;
  /** An upstream nothing listens on: a pull can only come from the cache. */
  let upstreamHost: string;

  beforeAll(async () => {
    [api, node, cache, podRoot] = await Promise.all([
      startApiServer({ crds: [loadCrd("nodecaches.stowage.dev")] }),
      startContainerd(),
      startRegistry({ tls: true }),
      mkdtemp(join(tmpdir(), "stowage-agent-pod-")),
    ]);
    client = KubeClient.load({ path: api.kubeconfigPath });
    runtime = new CriClient(node.socketPath);
    upstreamHost = `127.0.0.1:${await freePort()}`;
  });

  afterAll(async () => {
    await agent?.stop();
    runtime?.close();
    client?.close();
    await Promise.all([api?.stop(), node?.dispose(), cache?.stop()]);
    if (podRoot) await rm(podRoot, { recursive: true, force: true });
  });

  it("writes the CA into hosts.toml once the Secret's ca.crt appears, and containerd then pulls through the cache", async () => {
    const pushClient = new RegistryClient({ caPem: cache.caPem });
    const pushed = await pushSinglePlatformImage(
      pushClient,
      { registry: cache.host, repository: `${upstreamHost.replace(":", "_")}/acme/model` },
      "1.0",
      { layerSizes: [256 * 1024], seed: "cache-tls" },
    );
    await pushClient.close();

    // The agent as the chart runs it; paths inside the pod live under podRoot here.
    const daemonSet = getObject(await render({ values: [tlsValues] }), "DaemonSet", `${RELEASE}-agent`);
    const container = containerOf(daemonSet, "agent");
    const invocation = parseAgentArgs((container.args ?? []).slice(1), { NODE_NAME: "tls-node" });
    if (invocation === "help") throw new Error("unexpected help");
    const caInPod = invocation.config.cacheCaFile;
    expect(caInPod).toBe(caFileOf(daemonSet, container).path);
    const caFile = join(podRoot, caInPod ?? "");

    await client.resource<NodeCache>(NodeCacheResource).create({
      apiVersion: "stowage.dev/v1alpha1",
      kind: "NodeCache",
      metadata: { name: "tls-node" },
      spec: { nodeName: "tls-node", cacheEndpoint: cache.url, mirrorHosts: [upstreamHost], images: [] },
    });
    agent = await startAgent({
      config: {
        ...invocation.config,
        agentVersion: "0.0.0-test",
        containerdConfigPath: node.certsDir,
        containerdConfigFile: node.configFile,
        cacheCaFile: caFile,
        resyncIntervalMs: 500,
      },
      client,
      runtime,
    });

    const hostsToml = join(node.certsDir, upstreamHost, "hosts.toml");
    const caOnNode = join(node.certsDir, upstreamHost, CACHE_CA_NAME);
    const mirrorCondition = async () =>
      getCondition(
        (await client.resource<NodeCache>(NodeCacheResource).get("tls-node")).status?.conditions,
        "MirrorConfigured",
      );

    // The Secret has no ca.crt yet: the mount is empty, the agent runs and names no CA.
    const before = await waitFor(
      "hosts.toml",
      async () => (await mirrorCondition())?.status === "True" && readFile(hostsToml, "utf8"),
    );
    expect(before).toContain(`[host."${cache.url}/v2/${upstreamHost.replace(":", "_")}"]`);
    expect(before).not.toMatch(/^\s*ca = /m);
    await expect(runtime.pullImage(`${upstreamHost}/acme/model:1.0`)).rejects.toThrow();

    // kubelet fills the mount when the Secret gains ca.crt; the next pass hands it to containerd.
    await mkdir(dirname(caFile), { recursive: true });
    await writeFile(caFile, cache.caPem ?? "");
    const after = await waitFor("a ca line in hosts.toml", async () => {
      const text = await readFile(hostsToml, "utf8");
      return text.includes("ca = ") && text;
    });
    expect(after).toContain(`  ca = ${JSON.stringify(caOnNode)}`);
    expect(await readFile(caOnNode, "utf8")).toBe(cache.caPem);
    expect((await mirrorCondition())?.message).toContain(caFile);

    const imageRef = await runtime.pullImage(`${upstreamHost}/acme/model:1.0`);
    const status = await runtime.imageStatus(`${upstreamHost}/acme/model:1.0`);
    expect(status?.id).toBe(imageRef);
    expect(status?.repoDigests).toContain(`${upstreamHost}/acme/model@${pushed.digest}`);
  });
});

describe("the CA the agent writes for containerd", () => {
  const caPem = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
  const exists = (path: string) =>
    access(path).then(
      () => true,
      () => false,
    );

  it("is only for an HTTPS cache, goes when the Secret loses ca.crt, and goes with the host", async () => {
    const configPath = await mkdtemp(join(tmpdir(), "stowage-certs-"));
    try {
      const caFile = join(configPath, "nvcr.io", CACHE_CA_NAME);
      const hostsToml = join(configPath, "nvcr.io", "hosts.toml");
      await applyMirrorConfig(configPath, ["nvcr.io"], { cacheEndpoint: "http://10.0.0.5:30500", caPem });
      expect(await exists(caFile)).toBe(false);
      expect(await readFile(hostsToml, "utf8")).not.toContain("ca = ");

      const https = { cacheEndpoint: "https://10.0.0.5:30500", caPem };
      expect((await applyMirrorConfig(configPath, ["nvcr.io"], https)).hosts["nvcr.io"]).toBe("written");
      expect(await readFile(caFile, "utf8")).toBe(caPem);
      expect(await readFile(hostsToml, "utf8")).toContain(`ca = ${JSON.stringify(caFile)}`);
      expect((await applyMirrorConfig(configPath, ["nvcr.io"], https)).hosts["nvcr.io"]).toBe("unchanged");
      // A renewed CA is a change even though hosts.toml stays the same.
      const renewed = { ...https, caPem: caPem.replace("MIIB", "MIIC") };
      expect((await applyMirrorConfig(configPath, ["nvcr.io"], renewed)).hosts["nvcr.io"]).toBe("written");
      expect(await readFile(caFile, "utf8")).toBe(renewed.caPem);

      await applyMirrorConfig(configPath, ["nvcr.io"], { cacheEndpoint: https.cacheEndpoint });
      expect(await exists(caFile)).toBe(false);
      expect(await readFile(hostsToml, "utf8")).not.toContain("ca = ");

      await applyMirrorConfig(configPath, ["nvcr.io"], https);
      expect((await applyMirrorConfig(configPath, [], https)).hosts["nvcr.io"]).toBe("removed");
      expect(await exists(caFile)).toBe(false);
      expect(await exists(hostsToml)).toBe(false);
    } finally {
      await rm(configPath, { recursive: true, force: true });
    }
  });
});
