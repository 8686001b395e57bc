/**
 * `stowage uninstall` (the chart's pre-delete hook) with real agents on real containerd nodes:
 * each agent removes the hosts.toml files it wrote when its NodeCache is annotated, restoring the
 * one it had merged with, and the command removes the warm labels and the warming taint from the
 * nodes, waiting for every live agent and not for one whose heartbeat is old.
 */
import { mkdir, readdir, readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type RunningAgent, startAgent } from "../../src/agent/command.ts";
import { CriClient } from "../../src/agent/cri.ts";
import { BACKUP_NAME, STOWAGE_MARKER } from "../../src/agent/hostsToml.ts";
import { defaultAgentConfig } from "../../src/agent/reconciler.ts";
import { uninstall } from "../../src/agent/uninstall.ts";
import { loadCrd } from "../../src/api/crds.ts";
import { UNINSTALL_ANNOTATION, WARMING_TAINT_KEY } from "../../src/api/labels.ts";
import { type NodeCache, NodeCacheResource } from "../../src/api/nodeCache.ts";
import { type KubeClient, type KubeObject, Resources } from "../../src/kube/client.ts";
import { getCondition } from "../../src/kube/conditions.ts";
import type { TestCluster } from "../../testkit/cluster.ts";
import { type RunningContainerd, startContainerd } from "../../testkit/containerd.ts";
import { startCluster } from "../kube/helpers.ts";
import { eventually } from "../support/eventually.ts";

interface NodeObject extends KubeObject {
  spec?: { taints?: { key: string; value?: string; effect: string }[] };
}

let api: TestCluster;
let client: KubeClient;
let nodeA: RunningContainerd;
let nodeB: RunningContainerd;
const agents: RunningAgent[] = [];
const runtimes: CriClient[] = [];
const upstream = "registry.example.com:5000";
const merged = "ghcr.io";
const foreignToml =
  'server = "https://ghcr.io"\n\n[host."https://mirror.corp.example"]\n  capabilities = ["pull"]\n';

const nodeCaches = () => client.resource<NodeCache>(NodeCacheResource);
const nodes = () => client.resource<NodeObject>(Resources.Node);

beforeAll(async () => {
  [{ cluster: api, client }, nodeA, nodeB] = await Promise.all([
    startCluster({ crds: [loadCrd("stowage.dev_nodecaches") as never] }),
    startContainerd(),
    startContainerd(),
  ]);
});

afterAll(async () => {
  for (const agent of agents) await agent.stop();
  for (const runtime of runtimes) runtime.close();
  await Promise.all([nodeA?.dispose(), nodeB?.dispose(), api?.stop()]);
});

async function nodeWithAgent(name: string, target: RunningContainerd): Promise<void> {
  await nodes().create({
    apiVersion: "v1",
    kind: "Node",
    metadata: {
      name,
      labels: { "warm.stowage.dev/ml.llama": "true", "kubernetes.io/hostname": name },
    },
    spec: {
      taints: [
        { key: WARMING_TAINT_KEY, effect: "NoSchedule" },
        { key: "nvidia.com/gpu", value: "present", effect: "NoSchedule" },
      ],
    },
  });
  await nodeCaches().create({
    apiVersion: "stowage.dev/v1alpha1",
    kind: "NodeCache",
    metadata: { name },
    spec: {
      nodeName: name,
      cacheEndpoint: "http://127.0.0.1:5999",
      mirrorHosts: [upstream, merged],
      images: [],
    },
  });
  const runtime = new CriClient(target.socketPath);
  runtimes.push(runtime);
  agents.push(
    await startAgent({
      config: {
        ...defaultAgentConfig,
        nodeName: name,
        agentVersion: "0.0.0-test",
        containerdConfigPath: target.certsDir,
        containerdConfigFile: target.configFile,
        resyncIntervalMs: 2_000,
      },
      client,
      runtime,
    }),
  );
}

describe("stowage uninstall with live agents", () => {
  it("leaves the nodes as they were: hosts.toml removed or restored, warm labels and the warming taint gone, other taints kept", async () => {
    // A hosts.toml of the node's own for ghcr.io, which the agent merges with and must give back.
    await mkdir(join(nodeA.certsDir, merged), { recursive: true });
    await writeFile(join(nodeA.certsDir, merged, "hosts.toml"), foreignToml);
    await nodeWithAgent("node-a", nodeA);
    await nodeWithAgent("node-b", nodeB);
    for (const target of [nodeA, nodeB])
      await eventually("the agent's hosts.toml files", async () => {
        const text = await readFile(join(target.certsDir, upstream, "hosts.toml"), "utf8").catch(() => "");
        const ghcr = await readFile(join(target.certsDir, merged, "hosts.toml"), "utf8").catch(() => "");
        return text.startsWith(STOWAGE_MARKER) && ghcr.startsWith(STOWAGE_MARKER) ? true : undefined;
      });
    expect(await readdir(join(nodeA.certsDir, merged))).toContain(BACKUP_NAME);
    // A NodeCache whose agent is long gone: not waited for.
    await nodeCaches().create({
      apiVersion: "stowage.dev/v1alpha1",
      kind: "NodeCache",
      metadata: { name: "node-gone" },
      spec: { nodeName: "node-gone", images: [] },
    });

    const report = await uninstall({ client, timeoutMs: 60_000, heartbeatWindowMs: 300_000, pollMs: 200 });

    expect(report).toEqual({
      nodeCaches: ["node-a", "node-b", "node-gone"],
      nodesCleaned: ["node-a", "node-b"],
      agentsDone: ["node-a", "node-b"],
      agentsTimedOut: [],
      agentsAbsent: ["node-gone"],
    });
    expect(await readdir(nodeB.certsDir)).toEqual([]);
    expect(await readdir(nodeA.certsDir)).toEqual([merged]);
    expect(await readdir(join(nodeA.certsDir, merged))).toEqual(["hosts.toml"]);
    expect(await readFile(join(nodeA.certsDir, merged, "hosts.toml"), "utf8")).toBe(foreignToml);
    for (const name of ["node-a", "node-b"]) {
      const node = await nodes().get(name);
      expect(Object.keys(node.metadata?.labels ?? {})).toEqual(["kubernetes.io/hostname"]);
      expect(node.spec?.taints).toEqual([{ key: "nvidia.com/gpu", value: "present", effect: "NoSchedule" }]);
      const nc = await nodeCaches().get(name);
      expect(nc.metadata?.annotations?.[UNINSTALL_ANNOTATION]).toBeDefined();
      expect(getCondition(nc.status?.conditions, "MirrorConfigured")).toMatchObject({
        status: "False",
        reason: "Uninstalled",
      });
      expect(getCondition(nc.status?.conditions, "MirrorConfigured")?.message).toContain(
        "removed the hosts.toml of 2 host(s)",
      );
    }
    // The agents stay idle: another pass (as a spec change would bring) writes no hosts.toml and no status.
    const before = (await nodeCaches().get("node-b")).metadata?.resourceVersion;
    await agents[1].reconciler.reconcile();
    expect(await readdir(nodeB.certsDir)).toEqual([]);
    expect((await nodeCaches().get("node-b")).metadata?.resourceVersion).toBe(before);
  });
});
