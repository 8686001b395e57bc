/**
 * Runs `node bin/stowage.js controller ...` as a child process, the way a Deployment would:
 * its JSON log lines are collected from stderr, its health port (0 = free port) is read from
 * the "controller ready" line, and it can be stopped gracefully (SIGTERM) or killed (SIGKILL).
 */
import { type ChildProcess, spawn } from "node:child_process";
import { fileURLToPath } from "node:url";

const stowageBin = fileURLToPath(new URL("../bin/stowage.js", import.meta.url));

// Controllers still running when the test process exits are killed, never left holding leases.
const running = new Set<ChildProcess>();
process.once("exit", () => {
  for (const child of running) child.kill("SIGKILL");
});

export interface LogLine {
  /** pino's level label: "trace", "debug", "info", "warn", "error" or "fatal". */
  level: string;
  msg: string;
  [field: string]: unknown;
}

export interface ControllerProcessOptions {
  kubeconfig: string;
  /** e.g. http://127.0.0.1:5000 */
  cacheRegistry: string;
  /** Extra flags, appended after the defaults (a later flag wins for single-valued flags). */
  args?: string[];
  env?: Record<string, string>;
  identity?: string;
  /** Resolve only once the "controller ready" line is logged (default true). */
  waitReady?: boolean;
  /** How long to wait for readiness (default 30 s). */
  readyTimeoutMs?: number;
  /** Also copy the controller's stderr to ours (the sandbox shows its logs). */
  echo?: boolean;
}

export interface Exit {
  code: number | null;
  signal: NodeJS.Signals | null;
}

export interface ControllerProcess {
  pid: number;
  identity: string;
  /** Health server port, known once ready. */
  healthPort: number | undefined;
  /** JSON log lines so far (non-JSON stderr lines are kept in `stderr()`). */
  logs(): LogLine[];
  stderr(): string;
  stdout(): string;
  /** Resolves with the first (past or future) log line matching `predicate`. */
  waitForLog(predicate: (line: LogLine) => boolean, timeoutMs?: number): Promise<LogLine>;
  /** GET a path on the health port; resolves with status and body. */
  health(path: string): Promise<{ status: number; body: string }>;
  exited: Promise<Exit>;
  /** Send a signal and wait for the process to exit. */
  kill(signal?: NodeJS.Signals): Promise<Exit>;
}

export function controllerArgs(options: ControllerProcessOptions, identity: string): string[] {
  return [
    "controller",
    "--kubeconfig",
    options.kubeconfig,
    "--cache-registry",
    options.cacheRegistry,
    "--health-port",
    "0",
    "--identity",
    identity,
    "--leader-election-namespace",
    "stowage-system",
    ...(options.args ?? []),
  ];
}

let started = 0;

export async function startControllerProcess(options: ControllerProcessOptions): Promise<ControllerProcess> {
  const identity = options.identity ?? `controller-${process.pid}-${++started}`;
  return startControllerCommand(controllerArgs(options, identity), {
    ...options,
    identity,
    env: { ...process.env, STOWAGE_LOG_LEVEL: "", ...options.env },
  });
}

export interface ControllerCommandOptions {
  /** The whole environment of the process: nothing of this process's is added. */
  env: Record<string, string>;
  /** How the process is named in errors (its identity in the Lease, when it has one). */
  identity: string;
  waitReady?: boolean;
  readyTimeoutMs?: number;
  echo?: boolean;
}

/**
 * `node bin/stowage.js <argv>` with exactly `argv` and `env`, as a container runs its entrypoint
 * with the args and environment of its pod spec (test/real/helm-lifecycle.test.ts runs the flags the
 * chart renders this way); `argv` starts with the command, `controller`.
 */
export async function startControllerCommand(
  argv: string[],
  options: ControllerCommandOptions,
): Promise<ControllerProcess> {
  const identity = options.identity;
  const child = spawn(process.execPath, [stowageBin, ...argv], {
    env: options.env,
    stdio: ["ignore", "pipe", "pipe"],
  });
  running.add(child);
  const lines: LogLine[] = [];
  let stderrText = "";
  let stdoutText = "";
  let partial = "";
  const waiters: { predicate: (line: LogLine) => boolean; resolve: (line: LogLine) => void }[] = [];
  child.stdout?.on("data", (chunk: Buffer) => {
    stdoutText += chunk.toString();
  });
  child.stderr?.on("data", (chunk: Buffer) => {
    const text = chunk.toString();
    if (options.echo) process.stderr.write(chunk);
    stderrText += text;
    partial += text;
    const complete = partial.split("\n");
    partial = complete.pop() ?? "";
    for (const raw of complete) {
      if (!raw.startsWith("{")) continue;
      let line: LogLine;
      try {
        line = JSON.parse(raw) as LogLine;
      } catch {
        continue;
      }
      lines.push(line);
      for (const waiter of [...waiters]) {
        if (waiter.predicate(line)) {
          waiters.splice(waiters.indexOf(waiter), 1);
          waiter.resolve(line);
        }
      }
    }
  });
  const exited = new Promise<Exit>((resolve) => {
    child.once("exit", (code, signal) => {
      running.delete(child);
      resolve({ code, signal });
    });
  });

  const waitForLog = (predicate: (line: LogLine) => boolean, timeoutMs = 30_000): Promise<LogLine> => {
    const past = lines.find(predicate);
    if (past) return Promise.resolve(past);
    return new Promise<LogLine>((resolve, reject) => {
      const waiter = {
        predicate,
        resolve: (line: LogLine) => {
          clearTimeout(timer);
          resolve(line);
        },
      };
      const timer = setTimeout(() => {
        waiters.splice(waiters.indexOf(waiter), 1);
        reject(
          new Error(
            `controller ${identity}: no matching log line within ${timeoutMs} ms; stderr:\n${stderrText.slice(-4000)}`,
          ),
        );
      }, timeoutMs);
      waiters.push(waiter);
      void exited.then((exit) => {
        if (!waiters.includes(waiter)) return;
        waiters.splice(waiters.indexOf(waiter), 1);
        clearTimeout(timer);
        reject(
          new Error(
            `controller ${identity} exited (${exit.code ?? exit.signal}) before the expected log line; stderr:\n${stderrText.slice(-4000)}`,
          ),
        );
      });
    });
  };

  const proc: ControllerProcess = {
    pid: child.pid ?? 0,
    identity,
    healthPort: undefined,
    logs: () => [...lines],
    stderr: () => stderrText,
    stdout: () => stdoutText,
    waitForLog,
    async health(path) {
      if (proc.healthPort === undefined) throw new Error(`controller ${identity} is not ready yet`);
      const response = await fetch(`http://127.0.0.1:${proc.healthPort}${path}`);
      return { status: response.status, body: await response.text() };
    },
    exited,
    async kill(signal = "SIGTERM") {
      if (child.exitCode === null && child.signalCode === null) child.kill(signal);
      return exited;
    },
  };
  if (options.waitReady ?? true) {
    try {
      const ready = await waitForLog((line) => line.msg === "controller ready", options.readyTimeoutMs);
      proc.healthPort = Number(ready.healthPort);
    } catch (err) {
      await proc.kill("SIGKILL");
      throw err;
    }
  } else {
    void waitForLog((line) => line.msg === "controller ready", 600_000)
      .then((ready) => {
        proc.healthPort = Number(ready.healthPort);
      })
      .catch(() => {});
  }
  return proc;
}
