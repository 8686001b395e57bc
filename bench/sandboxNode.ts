/**
 * What the benchmarks that start sandbox nodes (bench:prewarm, bench:fanout) share: the Node
 * object a kubelet would have registered, and waiting for an agent's log line.
 */
import { readFileSync } from "node:fs";

/** A Ready linux/amd64 Node as a kubelet registers it; with `internalIp`, its InternalIP address. */
export function benchNodeObject(name: string, internalIp?: string) {
  const now = new Date().toISOString().replace(/\.\d+Z$/, "Z");
  return {
    apiVersion: "v1",
    kind: "Node",
    metadata: {
      name,
      labels: { "kubernetes.io/hostname": name, "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64" },
    },
    spec: {},
    status: {
      ...(internalIp
        ? {
            addresses: [
              { type: "InternalIP", address: internalIp },
              { type: "Hostname", address: name },
            ],
          }
        : {}),
      conditions: [
        {
          type: "Ready",
          status: "True",
          reason: "KubeletReady",
          message: "bench node",
          lastHeartbeatTime: now,
          lastTransitionTime: now,
        },
      ],
      nodeInfo: { architecture: "amd64", operatingSystem: "linux" },
    },
  };
}

/** Whether `text` appears in `file` within `ms` (polled every 100 ms). */
export async function waitForLogLine(file: string, text: string, ms: number): Promise<boolean> {
  const deadline = Date.now() + ms;
  while (Date.now() < deadline) {
    try {
      if (readFileSync(file, "utf8").includes(text)) return true;
    } catch {
      // not written yet
    }
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  return false;
}
