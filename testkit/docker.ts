/**
 * A real Docker engine (Debian's docker.io: /usr/sbin/dockerd) for tests, owned by the test: its
 * own data root, exec root, pid file, config and unix socket in a temp dir, no bridge and no
 * iptables (containers and builds use the host network), and its own supervised containerd.
 * Nothing of a Docker the machine may already run is touched, the client's config included.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { unmountUnder } from "./mounts.ts";

export const DOCKERD_BINARY = "/usr/sbin/dockerd";
export const DOCKER_CLIENT = "/usr/bin/docker";

/** Why a Docker engine cannot run on this machine (not root, docker.io missing), or undefined. */
export function dockerUnavailableHere(): string | undefined {
  if (!existsSync(DOCKERD_BINARY) || !existsSync(DOCKER_CLIENT))
    return `${DOCKERD_BINARY} is not installed (Debian package docker.io; scripts/setup.sh installs it)`;
  if (process.getuid?.() !== 0) return "dockerd needs root (overlay mounts, namespaces)";
  return undefined;
}

export interface CommandResult {
  code: number | null;
  out: string;
  err: string;
}

export interface RunningDocker {
  dir: string;
  /** Environment for a docker client (or a script using one) talking to this engine. */
  env: NodeJS.ProcessEnv;
  /** Runs the docker client against this engine; never throws on a non-zero exit. */
  docker(args: string[], timeoutMs?: number): Promise<CommandResult>;
  /** dockerd's log so far. */
  log(): string;
  /** Stops dockerd (and its containerd), unmounts what is left under its dirs, deletes them. */
  dispose(): Promise<void>;
}

const running = new Set<ChildProcess>();
process.once("exit", () => {
  for (const child of running) child.kill("SIGKILL");
});

/** Runs a command to completion with a deadline (SIGKILL after it), collecting both streams. */
export function runCommand(
  command: string,
  args: string[],
  options: { env?: NodeJS.ProcessEnv; timeoutMs: number },
): Promise<CommandResult> {
  return new Promise((resolve) => {
    const child = spawn(command, args, { env: options.env, stdio: ["ignore", "pipe", "pipe"] });
    let out = "";
    let err = "";
    child.stdout.on("data", (chunk: Buffer) => {
      out += chunk.toString();
    });
    child.stderr.on("data", (chunk: Buffer) => {
      err += chunk.toString();
    });
    const timer = setTimeout(() => {
      err += `\n${command} killed after ${options.timeoutMs} ms`;
      child.kill("SIGKILL");
    }, options.timeoutMs);
    child.once("error", (error) => {
      clearTimeout(timer);
      resolve({ code: 127, out, err: `${err}${error.message}` });
    });
    child.once("close", (code) => {
      clearTimeout(timer);
      resolve({ code, out, err });
    });
  });
}

export async function startDocker(): Promise<RunningDocker> {
  const unavailable = dockerUnavailableHere();
  if (unavailable) throw new Error(`docker fixture: ${unavailable}`);
  // Short path: unix socket paths are limited to 108 bytes.
  const dir = await mkdtemp(join(tmpdir(), "dockerd-"));
  const socketPath = join(dir, "docker.sock");
  const configFile = join(dir, "daemon.json");
  await writeFile(configFile, "{}\n");
  const env: NodeJS.ProcessEnv = {
    ...process.env,
    DOCKER_HOST: `unix://${socketPath}`,
    DOCKER_CONFIG: join(dir, "client"),
    DOCKER: DOCKER_CLIENT,
  };
  const docker = (args: string[], timeoutMs = 60_000) => runCommand(DOCKER_CLIENT, args, { env, timeoutMs });

  const proc = spawn(
    DOCKERD_BINARY,
    [
      `--config-file=${configFile}`,
      `--data-root=${join(dir, "data")}`,
      `--exec-root=${join(dir, "exec")}`,
      `--pidfile=${join(dir, "dockerd.pid")}`,
      `-H`,
      `unix://${socketPath}`,
      "--bridge=none",
      "--iptables=false",
      "--ip6tables=false",
      "--ip-masq=false",
      "--userland-proxy=false",
    ],
    { stdio: ["ignore", "pipe", "pipe"] },
  );
  running.add(proc);
  let output = "";
  const append = (chunk: Buffer) => {
    output += chunk.toString();
    if (output.length > 2_000_000) output = output.slice(-1_000_000);
  };
  proc.stdout.on("data", append);
  proc.stderr.on("data", append);
  let exited = false;
  const exit = new Promise<void>((resolve) =>
    proc.once("exit", () => {
      exited = true;
      running.delete(proc);
      resolve();
    }),
  );

  const dispose = async () => {
    if (!exited) {
      proc.kill("SIGTERM");
      const timer = setTimeout(() => proc.kill("SIGKILL"), 20_000);
      await exit;
      clearTimeout(timer);
    }
    await unmountUnder(dir);
    await rm(dir, { recursive: true, force: true });
  };

  const deadline = Date.now() + 60_000;
  for (;;) {
    if (exited) {
      await dispose();
      throw new Error(`dockerd exited during start:\n${output.slice(-4000)}`);
    }
    if (existsSync(socketPath) && (await docker(["version"], 10_000)).code === 0) break;
    if (Date.now() > deadline) {
      await dispose();
      throw new Error(`dockerd did not answer within 60 s:\n${output.slice(-4000)}`);
    }
    await new Promise((resolve) => setTimeout(resolve, 200));
  }
  return { dir, env, docker, log: () => output, dispose };
}
