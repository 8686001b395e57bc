/**
 * The node agent's RBAC proved: `stowage agent` runs as the chart's agent ServiceAccount, bound to
 * exactly charts/stowage/files/rbac/agent.yaml, against an API double that enforces RBAC and a real
 * containerd, and brings its NodeCache's image to Present without a single 403.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { mkdtemp, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { parse } from "yaml";
import { loadCrd } from "../../src/api/crds.ts";
import { type NodeCache, NodeCacheResource } from "../../src/api/nodeCache.ts";
import { KubeClient } from "../../src/kube/client.ts";
import { RegistryClient } from "../../src/oci/registry.ts";
import { type KubeObject, startApiServer, type TestApiServer } from "../../testkit/apiserver/index.ts";
import { addServiceAccountUser } from "../../testkit/apiserver/rbac.ts";
import { type RunningContainerd, startContainerd } from "../../testkit/containerd.ts";
import { pushSinglePlatformImage } from "../../testkit/images.ts";
import { freePort } from "../../testkit/ports.ts";
import { type RunningRegistry, startRegistry } from "../../testkit/registry.ts";
import { eventually, root } from "./helpers.ts";

const releaseNamespace = "stowage-system";
const serviceAccount = "stowage-agent";
const rbacGroup = "rbac.authorization.k8s.io";

let api: TestApiServer;
let admin: KubeClient;
let node: RunningContainerd;
let cache: RunningRegistry;
let dir: string;
let agent: ChildProcess | undefined;
let agentLog = "";

beforeAll(async () => {
  [api, node, cache] = await Promise.all([
    startApiServer({ rbac: true, crds: [loadCrd("stowage.dev_nodecaches") as unknown as KubeObject] }),
    startContainerd(),
    startRegistry(),
  ]);
  dir = await mkdtemp(join(tmpdir(), "stowage-rbac-agent-"));
  admin = KubeClient.load({ path: api.kubeconfigPath });
  const rules = parse(await readFile(join(root, "charts/stowage/files/rbac/agent.yaml"), "utf8")) as object[];
  // what templates/agent-rbac.yaml renders for release "stowage"
  for (const object of [
    { apiVersion: "v1", kind: "Namespace", metadata: { name: releaseNamespace } },
    { apiVersion: `${rbacGroup}/v1`, kind: "ClusterRole", metadata: { name: "stowage-agent" }, rules },
    {
      apiVersion: `${rbacGroup}/v1`,
      kind: "ClusterRoleBinding",
      metadata: { name: "stowage-agent" },
      roleRef: { apiGroup: rbacGroup, kind: "ClusterRole", name: "stowage-agent" },
      subjects: [{ kind: "ServiceAccount", name: serviceAccount, namespace: releaseNamespace }],
    },
  ])
    await api.create(object as KubeObject);
});

afterAll(async () => {
  if (agent && agent.exitCode === null) {
    const exited = new Promise((resolve) => agent?.once("exit", resolve));
    agent.kill("SIGTERM");
    await exited;
  }
  await Promise.all([node?.dispose(), cache?.stop(), api?.stop()]);
  if (dir) await rm(dir, { recursive: true, force: true });
});

describe("the node agent with exactly the chart's RBAC", () => {
  it("pulls its NodeCache's image to Present and writes only status, without a single 403", async () => {
    const upstreamHost = `127.0.0.1:${await freePort()}`; // nothing listens: the pull must come from the cache
    const owner = new RegistryClient({ insecureHosts: [cache.host] });
    const pushed = await pushSinglePlatformImage(
      owner,
      { registry: cache.host, repository: `${upstreamHost.replace(":", "_")}/acme/model` },
      "1.0",
      { layerSizes: [256 * 1024], seed: "rbac-agent" },
    );
    await owner.close();
    await admin.resource<NodeCache>(NodeCacheResource).create({
      apiVersion: "stowage.dev/v1alpha1",
      kind: "NodeCache",
      metadata: { name: "gpu-1" },
      spec: {
        nodeName: "gpu-1",
        cacheEndpoint: cache.url,
        mirrorHosts: [upstreamHost],
        images: [{ image: `${upstreamHost}/acme/model:1.0`, digest: pushed.digest, sizeBytes: 256 * 1024 }],
      },
    } as NodeCache);
    const kubeconfig = addServiceAccountUser(
      api,
      releaseNamespace,
      serviceAccount,
      join(dir, "agent.kubeconfig"),
    );
    api.resetRequestLog();
    agent = spawn(
      process.execPath,
      [
        join(root, "bin/stowage.js"),
        "agent",
        "--kubeconfig",
        kubeconfig,
        "--node-name",
        "gpu-1",
        "--cri-socket",
        node.socketPath,
        "--containerd-config-path",
        node.certsDir,
        "--containerd-config",
        node.configFile,
        "--containerd-root",
        join(node.dir, "root"),
        "--health-port",
        "0",
      ],
      { stdio: ["ignore", "ignore", "pipe"] },
    );
    agent.stderr?.on("data", (chunk: Buffer) => {
      agentLog += chunk.toString();
    });
    const present = await eventually(
      "NodeCache gpu-1 image Present",
      async () => {
        const nc = await admin.resource<NodeCache>(NodeCacheResource).get("gpu-1");
        return nc.status?.images?.find((i) => i.digest === pushed.digest)?.state === "Present"
          ? nc
          : undefined;
      },
      90_000,
    ).catch((err: Error) => {
      throw new Error(`${err.message}; agent log: ${agentLog.slice(-2000)}`);
    });
    expect(present.status?.heartbeatTime).toBeTruthy();
    expect(api.requestLog().filter((entry) => entry.status === 403)).toEqual([]);

    // the same identity cannot touch the spec the planner owns, nor read Secrets
    const token = (await readFile(kubeconfig, "utf8")).match(/token: (\S+)/)?.[1];
    const specWrite = await fetch(`${api.url}/apis/stowage.dev/v1alpha1/nodecaches/gpu-1`, {
      method: "PATCH",
      headers: { authorization: `Bearer ${token}`, "content-type": "application/merge-patch+json" },
      body: JSON.stringify({ spec: { images: [] } }),
    });
    expect(specWrite.status).toBe(403);
    const secrets = await fetch(`${api.url}/api/v1/namespaces/${releaseNamespace}/secrets`, {
      headers: { authorization: `Bearer ${token}` },
    });
    expect(secrets.status).toBe(403);
  });
});
