/**
 * A sandbox "node": its own containerd and a real `stowage agent` process reporting on the
 * node's NodeCache. The sandbox, the pre-warm end-to-end tests and `bench:prewarm` all start
 * nodes the same way through here.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { open } from "node:fs/promises";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { type RunningContainerd, startContainerd } from "./containerd.ts";

const stowageBin = fileURLToPath(new URL("../bin/stowage.js", import.meta.url));

// Children still running when this process exits are killed, never left behind.
const running = new Set<ChildProcess>();
process.once("exit", () => {
  for (const child of running) child.kill("SIGKILL");
});

/** `stowage <args>` as a child process, its stdout and stderr appended to `logFile`. */
export async function spawnStowage(args: string[], logFile: string): Promise<ChildProcess> {
  const log = await open(logFile, "a");
  const child = spawn(process.execPath, [stowageBin, ...args], {
    env: { ...process.env, STOWAGE_LOG_LEVEL: "" },
    stdio: ["ignore", log.fd, log.fd],
  });
  running.add(child);
  child.once("exit", () => {
    running.delete(child);
    void log.close().catch(() => {});
  });
  return child;
}

/** SIGTERM, then SIGKILL after 5 s; resolves once the process is gone. */
export async function stopChild(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()));
  child.kill("SIGTERM");
  const timer = setTimeout(() => child.kill("SIGKILL"), 5_000);
  await exited;
  clearTimeout(timer);
}

export interface AgentNode {
  name: string;
  containerd: RunningContainerd;
  agent: ChildProcess;
  logFile: string;
  /** Stops the agent, then containerd (unless the caller passed it in), and removes containerd's temp state. */
  stop(): Promise<void>;
}

/**
 * A fresh containerd plus `stowage agent --node-name NAME` against the cluster in `kubeconfig`;
 * with `containerd`, a new agent beside that running containerd (an agent restarted on its node),
 * which `stop()` then leaves running.
 */
export async function startAgentNode(
  name: string,
  options: {
    kubeconfig: string;
    logsDir: string;
    containerd?: RunningContainerd;
    /** More `stowage agent` flags, after the defaults (a later flag wins): bench:fanout's --fanout-* flags. */
    extraArgs?: string[];
  },
): Promise<AgentNode> {
  const ownsContainerd = !options.containerd;
  const containerd = options.containerd ?? (await startContainerd());
  const logFile = join(options.logsDir, `agent-${name}.log`);
  let agent: ChildProcess;
  try {
    agent = await spawnStowage(
      [
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
        options.kubeconfig,
        "--health-port",
        "0",
        "--heartbeat-interval",
        "15s",
        "--retry-initial",
        "2s",
        ...(options.extraArgs ?? []),
      ],
      logFile,
    );
  } catch (err) {
    if (ownsContainerd) await containerd.dispose();
    throw err;
  }
  return {
    name,
    containerd,
    agent,
    logFile,
    async stop() {
      await stopChild(agent);
      if (ownsContainerd) await containerd.dispose();
    },
  };
}
