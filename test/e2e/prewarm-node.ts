/**
 * Helpers for test/e2e/prewarm.test.ts: kubectl against the sandbox, polling, and a containerd
 * "node" with a real `stowage agent` started after the sandbox (a node that joins later).
 */
import { type ChildProcess, execFile, spawn } from "node:child_process";
import { open } from "node:fs/promises";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { CriClient } from "../../src/agent/cri.ts";
import { type RunningContainerd, startContainerd } from "../../testkit/containerd.ts";

const stowageBin = fileURLToPath(new URL("../../bin/stowage.js", import.meta.url));

export interface KubectlRun {
  code: number;
  stdout: string;
  stderr: string;
}

export function kubectl(kubeconfig: string, home: string, args: string[]): Promise<KubectlRun> {
  return new Promise((resolve) => {
    execFile(
      "/usr/bin/kubectl",
      ["--kubeconfig", kubeconfig, "--cache-dir", join(home, "kube-cache"), ...args],
      { env: { ...process.env, HOME: home, KUBECONFIG: "" }, timeout: 60_000 },
      (error, stdout, stderr) => {
        const code = error ? (typeof error.code === "number" ? error.code : 1) : 0;
        resolve({ code, stdout, stderr });
      },
    );
  });
}

/** Polls `probe` until it returns a value other than undefined; throws with `what` and the last error on timeout. */
export async function waitFor<T>(
  what: string,
  probe: () => Promise<T | undefined>,
  timeoutMs = 90_000,
  intervalMs = 250,
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let last: unknown;
  for (;;) {
    try {
      const value = await probe();
      if (value !== undefined) return value;
    } catch (err) {
      last = err;
    }
    if (Date.now() > deadline)
      throw new Error(`timed out waiting for ${what}${last ? `: ${(last as Error).message}` : ""}`);
    await new Promise((r) => setTimeout(r, intervalMs));
  }
}

/** Whether containerd at `socket` holds `ref` (CRI ImageStatus). */
export async function criHas(socket: string, ref: string): Promise<boolean> {
  const cri = new CriClient(socket);
  try {
    return (await cri.imageStatus(ref)) !== undefined;
  } finally {
    cri.close();
  }
}

/** Every repo digest containerd at `socket` holds (CRI ListImages). */
export async function criRepoDigests(socket: string): Promise<string[]> {
  const cri = new CriClient(socket);
  try {
    return (await cri.listImages()).flatMap((i) => i.repoDigests);
  } finally {
    cri.close();
  }
}

export interface LateNode {
  containerd: RunningContainerd;
  agent: ChildProcess;
  logFile: string;
  stop(): Promise<void>;
}

/** A containerd and a `stowage agent` for node `name`, as the sandbox runs them. */
export async function startLateNode(name: string, kubeconfig: string, logsDir: string): Promise<LateNode> {
  const containerd = await startContainerd();
  const logFile = join(logsDir, `agent-${name}.log`);
  const log = await open(logFile, "a");
  const agent = spawn(
    process.execPath,
    [
      stowageBin,
      "agent",
      "--node-name",
      name,
      "--cri-socket",
      containerd.socketPath,
      "--containerd-config-path",
      containerd.certsDir,
      "--containerd-config",
      containerd.configFile,
      "--containerd-root",
      join(containerd.dir, "root"),
      "--kubeconfig",
      kubeconfig,
      "--health-port",
      "0",
      "--heartbeat-interval",
      "15s",
      "--retry-initial",
      "2s",
    ],
    { env: { ...process.env, STOWAGE_LOG_LEVEL: "" }, stdio: ["ignore", log.fd, log.fd] },
  );
  agent.once("exit", () => void log.close().catch(() => {}));
  const killOnExit = () => agent.kill("SIGKILL");
  process.once("exit", killOnExit);
  return {
    containerd,
    agent,
    logFile,
    async stop() {
      process.off("exit", killOnExit);
      if (agent.exitCode === null && agent.signalCode === null) {
        const exited = new Promise<void>((resolve) => agent.once("exit", () => resolve()));
        agent.kill("SIGTERM");
        const timer = setTimeout(() => agent.kill("SIGKILL"), 5_000);
        await exited;
        clearTimeout(timer);
      }
      await containerd.dispose();
    },
  };
}
