import { spawn } from "node:child_process";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { parseAgentArgs } from "../../src/agent/command.ts";
import { loadCrd } from "../../src/api/crds.ts";
import { type NodeCache, NodeCacheResource } from "../../src/api/nodeCache.ts";
import { KubeClient } from "../../src/kube/client.ts";
import { getCondition } from "../../src/kube/conditions.ts";
import { startTestCluster, type TestCluster } from "../../testkit/cluster.ts";
import { type RunningContainerd, startContainerd } from "../../testkit/containerd.ts";

const root = fileURLToPath(new URL("../../", import.meta.url));
const packageVersion = JSON.parse(readFileSync(join(root, "package.json"), "utf8")).version as string;

describe("stowage agent flags", () => {
  it("reads the node from NODE_NAME and applies the documented defaults", () => {
    const parsed = parseAgentArgs([], { NODE_NAME: "gpu-node-1" });
    if (parsed === "help") throw new Error("unexpected help");
    expect(parsed.config).toMatchObject({
      nodeName: "gpu-node-1",
      mirrorConfig: true,
      containerdConfigPath: "/etc/containerd/certs.d",
      maxConcurrentPulls: 2,
      stallTimeoutMs: 5 * 60_000,
      heartbeatIntervalMs: 60_000,
    });
    expect(parsed.criSocket).toBe("/run/containerd/containerd.sock");
  });

  it("takes flags over the environment, including --mirror-config=false and durations", () => {
    const parsed = parseAgentArgs(
      [
        "--node-name",
        "cpu-1",
        "--mirror-config=false",
        "--stall-timeout",
        "90s",
        "--max-concurrent-pulls",
        "4",
        "--cri-socket",
        "/var/run/crio/crio.sock",
      ],
      { NODE_NAME: "ignored" },
    );
    if (parsed === "help") throw new Error("unexpected help");
    expect(parsed.config).toMatchObject({
      nodeName: "cpu-1",
      mirrorConfig: false,
      stallTimeoutMs: 90_000,
      maxConcurrentPulls: 4,
    });
    expect(parsed.criSocket).toBe("/var/run/crio/crio.sock");
  });

  it("refuses a missing node name and malformed values with a message naming the flag", () => {
    expect(() => parseAgentArgs([], {})).toThrow(/--node-name/);
    expect(() => parseAgentArgs(["--node-name", "n", "--stall-timeout", "soon"], {})).toThrow(
      /--stall-timeout/,
    );
    expect(() => parseAgentArgs(["--node-name", "n", "--max-concurrent-pulls", "0"], {})).toThrow(
      /--max-concurrent-pulls/,
    );
  });
});

describe("stowage agent process", () => {
  let api: TestCluster;
  let node: RunningContainerd;

  beforeAll(async () => {
    [api, node] = await Promise.all([
      startTestCluster({ crds: [loadCrd("stowage.dev_nodecaches") as never] }),
      startContainerd(),
    ]);
  });

  afterAll(async () => {
    await Promise.all([api?.stop(), node?.dispose()]);
  });

  it("exits 2 on bad usage", async () => {
    const child = spawn(process.execPath, [join(root, "bin/stowage.js"), "agent", "--bogus"], {
      env: { ...process.env, NODE_NAME: "" },
      stdio: ["ignore", "ignore", "pipe"],
    });
    let stderr = "";
    child.stderr?.on("data", (chunk: Buffer) => {
      stderr += chunk.toString();
    });
    const code = await new Promise<number | null>((resolve) => child.once("exit", resolve));
    expect(code).toBe(2);
    expect(stderr).toContain("--bogus");
  });

  it("reports on its own NodeCache through the real CRI socket and stops cleanly on SIGTERM", async () => {
    const client = KubeClient.load({ path: api.kubeconfigPath });
    const nodeCaches = client.resource<NodeCache>(NodeCacheResource);
    for (const name of ["worker-1", "worker-2"]) {
      await nodeCaches.create({
        apiVersion: "stowage.dev/v1alpha1",
        kind: "NodeCache",
        metadata: { name },
        spec: {
          nodeName: name,
          cacheEndpoint: "http://127.0.0.1:5000",
          mirrorHosts: ["docker.io"],
          images: [],
        },
      });
    }
    const child = spawn(
      process.execPath,
      [
        join(root, "bin/stowage.js"),
        "agent",
        "--cri-socket",
        node.socketPath,
        "--containerd-config-path",
        node.certsDir,
        "--containerd-config",
        node.configFile,
        "--kubeconfig",
        api.kubeconfigPath,
        "--health-port",
        "0",
      ],
      { env: { ...process.env, NODE_NAME: "worker-1" }, stdio: ["ignore", "ignore", "pipe"] },
    );
    const exited = new Promise<number | null>((resolve) => child.once("exit", resolve));
    try {
      let reported: NodeCache | undefined;
      const deadline = Date.now() + 30_000;
      while (Date.now() < deadline && !reported?.status?.heartbeatTime) {
        await new Promise((resolve) => setTimeout(resolve, 100));
        reported = await nodeCaches.get("worker-1");
      }
      expect(reported?.status?.agentVersion).toBe(packageVersion);
      expect(reported?.status?.containerdConfigPath).toBe(node.certsDir);
      expect(getCondition(reported?.status?.conditions, "Ready")?.status).toBe("True");
      expect(getCondition(reported?.status?.conditions, "MirrorConfigured")?.status).toBe("True");
      // Only its own NodeCache: the other node's is untouched.
      expect((await nodeCaches.get("worker-2")).status).toBeUndefined();
    } finally {
      child.kill("SIGTERM");
    }
    expect(await exited).toBe(0);
  });
});
