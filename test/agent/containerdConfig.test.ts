/**
 * The agent without containerd's config.toml (the chart mounts none by default: k3s, RKE2 and
 * Bottlerocket keep it elsewhere): it asks the real containerd through CRI Status which registry
 * config_path it reads, and says in MirrorConfigured what is wrong when that is not the agent's.
 */
import { readdir, readFile } from "node:fs/promises";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type RunningAgent, startAgent } from "../../src/agent/command.ts";
import { CriClient } from "../../src/agent/cri.ts";
import { STOWAGE_MARKER } from "../../src/agent/hostsToml.ts";
import { type AgentConfig, defaultAgentConfig } from "../../src/agent/reconciler.ts";
import { loadCrd } from "../../src/api/crds.ts";
import { type NodeCache, NodeCacheResource } from "../../src/api/nodeCache.ts";
import type { KubeClient } from "../../src/kube/client.ts";
import { getCondition } from "../../src/kube/conditions.ts";
import type { TestCluster } from "../../testkit/cluster.ts";
import { type RunningContainerd, startContainerd } from "../../testkit/containerd.ts";
import { startCluster } from "../kube/helpers.ts";
import { eventually } from "../support/eventually.ts";

let api: TestCluster;
let client: KubeClient;
let configured: RunningContainerd;
let bare: RunningContainerd;
const agents: RunningAgent[] = [];
const runtimes: CriClient[] = [];
const upstreamHost = "registry.example.com:5000";

beforeAll(async () => {
  [{ cluster: api, client }, configured, bare] = await Promise.all([
    startCluster({ crds: [loadCrd("stowage.dev_nodecaches") as never] }),
    startContainerd(),
    startContainerd({ withoutConfigPath: true }),
  ]);
});

afterAll(async () => {
  for (const agent of agents) await agent.stop();
  for (const runtime of runtimes) runtime.close();
  await Promise.all([configured?.dispose(), bare?.dispose(), api?.stop()]);
});

async function agentFor(name: string, target: RunningContainerd, overrides: Partial<AgentConfig> = {}) {
  await client.resource<NodeCache>(NodeCacheResource).create({
    apiVersion: "stowage.dev/v1alpha1",
    kind: "NodeCache",
    metadata: { name },
    spec: { nodeName: name, cacheEndpoint: "http://127.0.0.1:5999", mirrorHosts: [upstreamHost], images: [] },
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
        // no containerdConfigFile: as the chart runs it by default
        resyncIntervalMs: 2_000,
        ...overrides,
      },
      client,
      runtime,
    }),
  );
  return eventually(`${name}: MirrorConfigured`, async () => {
    const status = (await client.resource<NodeCache>(NodeCacheResource).get(name)).status;
    const condition = getCondition(status?.conditions, "MirrorConfigured");
    return condition ? { status, condition } : undefined;
  });
}

describe("the agent without containerd's config.toml", () => {
  it("reads containerd's registry config_path from CRI Status on the real containerd", async () => {
    const runtime = new CriClient(configured.socketPath);
    runtimes.push(runtime);
    expect(await runtime.runtimeConfig()).toEqual({
      registryConfigPath: configured.certsDir,
      rootDir: join(configured.dir, "root"),
    });
    const none = new CriClient(bare.socketPath);
    runtimes.push(none);
    expect((await none.runtimeConfig())?.registryConfigPath).toBe("");
  });

  it("writes hosts.toml when the runtime reads the agent's config_path", async () => {
    const { status, condition } = await agentFor("node-ok", configured);
    expect(condition).toMatchObject({ status: "True", reason: "Configured" });
    expect(status?.containerdConfigPath).toBe(configured.certsDir);
    const written = await readFile(join(configured.certsDir, upstreamHost, "hosts.toml"), "utf8");
    expect(written.startsWith(STOWAGE_MARKER)).toBe(true);
  });

  it("reports ConfigPathNotSet, naming CRI status, when containerd has no config_path, and writes nothing", async () => {
    const { status, condition } = await agentFor("node-bare", bare);
    expect(condition).toMatchObject({ status: "False", reason: "ConfigPathNotSet" });
    expect(condition.message).toContain("containerd (CRI status) has no");
    expect(condition.message).toContain(bare.certsDir);
    expect(status?.containerdConfigPath).toBe("");
    expect(await readdir(bare.certsDir)).toEqual([]);
  });

  it("reports ConfigPathNotSet when containerd reads hosts from another directory than the agent's", async () => {
    const elsewhere = join(configured.dir, "elsewhere");
    const { condition } = await agentFor("node-mismatch", configured, { containerdConfigPath: elsewhere });
    expect(condition).toMatchObject({ status: "False", reason: "ConfigPathNotSet" });
    expect(condition.message).toContain(`reads registry hosts from ${configured.certsDir}`);
    expect(condition.message).toContain(elsewhere);
  });
});
