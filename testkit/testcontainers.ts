/**
 * The container tier: real components as containers through `testcontainers`, for a developer
 * whose laptop has Docker but not Debian's docker-registry. Everything runs on a Docker engine the
 * tests start themselves (testkit/docker.ts: private data root and socket, no bridge), from images
 * built here (testkit/registryImage.ts), with host networking on 127.0.0.1 only.
 *
 * Two settings of testcontainers are made for such an engine:
 * - Ryuk (its reaper container) is off: its image cannot be pulled here. The equivalent is this
 *   file's: every container carries a session label; `stop()` removes them, a process exit
 *   removes whatever a failed test left (synchronously, with the docker CLI), a detached reaper
 *   does the same when this process is killed outright, and disposing of the private engine
 *   removes everything it ever ran.
 * - The host is given (127.0.0.1): testcontainers otherwise asks the engine for the gateway of
 *   its `bridge` network, which this engine does not have.
 *
 * The process tier (testkit/registry.ts) stays for machines without Docker; the README says
 * which tier needs what.
 */
import { type ChildProcess, execFile, spawn, spawnSync } from "node:child_process";
import { randomUUID } from "node:crypto";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import type { StartedTestContainer, WaitStrategy } from "testcontainers";
import { DOCKER_CLIENT, type RunningDocker, startDocker } from "./docker.ts";
import { freePort } from "./ports.ts";
import { buildRegistryImage } from "./registryImage.ts";

const run = promisify(execFile);
export const SESSION_LABEL = "dev.stowage.test-session";

export interface ContainerEngine {
  docker: RunningDocker;
  /** The label value every container of this engine's session carries. */
  session: string;
  /** Ids of the session's containers the engine still has (running or not). */
  containers(): Promise<string[]>;
  /** Removes the session's containers, then stops the engine and deletes its dirs. */
  dispose(): Promise<void>;
}

const liveSessions = new Map<string, NodeJS.ProcessEnv>();
process.once("exit", () => {
  // A normal exit (or an uncaught error) removes the session's containers at once, before the
  // engine goes; the reaper below covers deaths that run no handler (SIGKILL, OOM).
  for (const [session, env] of liveSessions) {
    const listed = spawnSync(DOCKER_CLIENT, ["ps", "-aq", "--filter", `label=${SESSION_LABEL}=${session}`], {
      env,
      encoding: "utf8",
      timeout: 10_000,
    });
    const ids = (listed.stdout ?? "").split("\n").filter(Boolean);
    if (ids.length > 0) spawnSync(DOCKER_CLIENT, ["rm", "-f", ...ids], { env, timeout: 20_000 });
  }
});

/**
 * Ryuk's job without its image: a detached process holding a pipe from this one. When the pipe
 * closes (this process ended, however it died), it removes the session's containers.
 */
const REAPER = `
const { spawnSync } = require("node:child_process");
const [docker, filter] = process.argv.slice(1);
process.stdin.resume();
process.stdin.on("close", () => {
  const listed = spawnSync(docker, ["ps", "-aq", "--filter", filter], { encoding: "utf8", timeout: 10000 });
  const ids = (listed.stdout || "").split("\\n").filter(Boolean);
  if (ids.length > 0) spawnSync(docker, ["rm", "-f", ...ids], { timeout: 20000 });
  process.exit(0);
});
`;

function startReaper(env: NodeJS.ProcessEnv, session: string): ChildProcess {
  const reaper = spawn(process.execPath, ["-e", REAPER, DOCKER_CLIENT, `label=${SESSION_LABEL}=${session}`], {
    env,
    detached: true,
    stdio: ["pipe", "ignore", "ignore"],
  });
  // Neither the process nor its pipe may keep this one alive.
  reaper.unref();
  (reaper.stdin as unknown as { unref(): void }).unref();
  return reaper;
}

/**
 * Points testcontainers at `docker` (an engine someone else owns and disposes of) and opens a
 * session on it: `dispose()` removes the session's containers and leaves the engine running.
 */
export function useContainerEngine(docker: RunningDocker): ContainerEngine {
  // Read by testcontainers when it first needs a client (the first container started).
  process.env.DOCKER_HOST = docker.env.DOCKER_HOST;
  process.env.TESTCONTAINERS_RYUK_DISABLED = "true";
  process.env.TESTCONTAINERS_HOST_OVERRIDE = "127.0.0.1";
  const session = randomUUID();
  liveSessions.set(session, docker.env);
  const reaper = startReaper(docker.env, session);
  const containers = async () => {
    const listed = await docker.docker(["ps", "-aq", "--filter", `label=${SESSION_LABEL}=${session}`]);
    return listed.out.split("\n").filter(Boolean);
  };
  return {
    docker,
    session,
    containers,
    async dispose() {
      const ids = await containers().catch(() => []);
      if (ids.length > 0) await docker.docker(["rm", "-f", ...ids]);
      liveSessions.delete(session);
      reaper.stdin?.end();
    },
  };
}

/**
 * Starts a private Docker engine and points testcontainers at it. One engine per test file:
 * testcontainers keeps its client for the life of the module, and vitest gives each file its own.
 * Disposing of it removes the session's containers, then the engine with everything it ran.
 */
export async function startContainerEngine(): Promise<ContainerEngine> {
  const docker = await startDocker();
  const session = useContainerEngine(docker);
  return {
    ...session,
    async dispose() {
      await session.dispose();
      await docker.dispose();
    },
  };
}

export interface ContainerRegistryOptions {
  auth?: "none" | "htpasswd";
  users?: { username: string; password: string }[];
}

/** A distribution registry in a container, shaped like testkit/registry.ts's RunningRegistry. */
export interface ContainerRegistry {
  host: string;
  url: string;
  users: { username: string; password: string }[];
  container: StartedTestContainer;
  /** Request lines from the registry's access log, oldest first. */
  requests(): Promise<{ method: string; path: string; status: number }[]>;
  /** Removes the container (and its htpasswd file); a second call does nothing. */
  stop(): Promise<void>;
}

/**
 * Ready when GET /v2/ answers 200 or 401. Written here because testcontainers' Wait.forHttp
 * needs a mapped port, and a container on the host network has none: it listens on the
 * host's address itself. Fails at once, with the container's exit code, if it exits.
 */
class RegistryAnswers implements WaitStrategy {
  private timeoutMs = 60_000;
  private timeoutSet = false;
  private readonly v2Url: string;
  constructor(v2Url: string) {
    this.v2Url = v2Url;
  }

  async waitUntilReady(container: Parameters<WaitStrategy["waitUntilReady"]>[0]): Promise<void> {
    const deadline = Date.now() + this.timeoutMs;
    for (;;) {
      const status = await fetch(this.v2Url, { signal: AbortSignal.timeout(5_000) }).then(
        (res) => res.status,
        () => 0,
      );
      if (status === 200 || status === 401) return;
      const { State } = await container.inspect();
      if (!State.Running)
        throw new Error(`registry container exited (${State.ExitCode}) before ${this.v2Url} answered`);
      if (Date.now() > deadline) throw new Error(`${this.v2Url} did not answer within ${this.timeoutMs} ms`);
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
  }

  withStartupTimeout(startupTimeoutMs: number): this {
    this.timeoutMs = startupTimeoutMs;
    this.timeoutSet = true;
    return this;
  }

  isStartupTimeoutSet(): boolean {
    return this.timeoutSet;
  }

  getStartupTimeout(): number {
    return this.timeoutMs;
  }
}

// Combined log format of the access log: "GET /v2/ HTTP/1.1" 200 2 ...
const ACCESS_LINE = /"([A-Z]+) (\S+) HTTP\/[\d.]+" (\d{3}) /;

export async function startContainerRegistry(
  engine: ContainerEngine,
  options: ContainerRegistryOptions = {},
): Promise<ContainerRegistry> {
  const { GenericContainer } = await import("testcontainers");
  const image = await buildRegistryImage(engine.docker);
  const users = options.users ?? [{ username: "stowage", password: "s3cret" }];
  const port = await freePort();
  const host = `127.0.0.1:${port}`;
  const environment: Record<string, string> = {
    REGISTRY_HTTP_ADDR: host,
    REGISTRY_STORAGE_DELETE_ENABLED: "true",
    REGISTRY_LOG_ACCESSLOG_DISABLED: "false",
    REGISTRY_LOG_FORMATTER: "text",
  };
  const bindMounts: { source: string; target: string; mode: "ro" }[] = [];
  // Only htpasswd needs a file on the host; nothing else is left to clean up after a crash.
  const work = options.auth === "htpasswd" ? await mkdtemp(join(tmpdir(), "container-registry-")) : undefined;
  if (work) {
    const lines: string[] = [];
    for (const user of users)
      lines.push((await run("htpasswd", ["-Bbn", user.username, user.password])).stdout.trim());
    await writeFile(join(work, "htpasswd"), `${lines.join("\n")}\n`);
    bindMounts.push({ source: join(work, "htpasswd"), target: "/auth/htpasswd", mode: "ro" });
    Object.assign(environment, {
      REGISTRY_AUTH: "htpasswd",
      REGISTRY_AUTH_HTPASSWD_REALM: "stowage-test",
      REGISTRY_AUTH_HTPASSWD_PATH: "/auth/htpasswd",
    });
  }
  const accessLines: string[] = [];
  let started: StartedTestContainer;
  try {
    started = await new GenericContainer(image)
      .withNetworkMode("host")
      .withEnvironment(environment)
      .withBindMounts(bindMounts)
      .withLabels({ [SESSION_LABEL]: engine.session })
      .withLogConsumer((stream) => {
        let rest = "";
        stream.on("data", (chunk: Buffer | string) => {
          const parts = (rest + chunk.toString()).split("\n");
          rest = parts.pop() ?? "";
          for (const line of parts) if (ACCESS_LINE.test(line)) accessLines.push(line);
        });
      })
      .withWaitStrategy(new RegistryAnswers(`http://${host}/v2/`))
      .withStartupTimeout(60_000)
      .start();
  } catch (err) {
    if (work) await rm(work, { recursive: true, force: true });
    throw err;
  }
  const url = `http://${host}`;
  let stopped = false;
  return {
    host,
    url,
    users,
    container: started,
    async requests() {
      // The access line follows the response by a moment, and comes through the log stream.
      await new Promise((resolve) => setTimeout(resolve, 300));
      return accessLines.flatMap((line) => {
        const match = ACCESS_LINE.exec(line);
        return match ? [{ method: match[1], path: match[2], status: Number(match[3]) }] : [];
      });
    },
    async stop() {
      if (stopped) return;
      stopped = true;
      await started.stop({ remove: true, timeout: 5_000 });
      if (work) await rm(work, { recursive: true, force: true });
    },
  };
}
