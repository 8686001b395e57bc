/**
 * A real containerd (Debian's /usr/bin/containerd, 1.6) for tests: its own root, state,
 * socket and registry `config_path` (certs.d) in a temp dir, the CRI plugin on, CNI left
 * unconfigured (only image calls are used) unless a kubelet's node asks for it (testkit/kubeletNode).
 * Several can run at once, one per test "node".
 * Needs root (the overlayfs snapshotter mounts); falls back to the native snapshotter when
 * the kernel has no overlay filesystem.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { existsSync, readFileSync } from "node:fs";
import { mkdir, mkdtemp, rm, writeFile } from "node:fs/promises";
import { connect } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { unmountUnder } from "./mounts.ts";

const CONTAINERD_BINARY = "/usr/bin/containerd";

export interface ContainerdOptions {
  /** Leave `config_path` out of the CRI registry config (the agent must notice). */
  withoutConfigPath?: boolean;
  /** "overlayfs" (default when the kernel has it) or "native". */
  snapshotter?: "overlayfs" | "native";
  /**
   * CNI for a kubelet's containerd: the plugins' folder and network config lists written into
   * the conf dir before start (file name → conflist). Without it CRI reports NetworkReady=false.
   */
  cni?: { binDir: string; conflists: Record<string, object> };
  /** The image CRI runs as every pod's sandbox (`sandbox_image`); it must be imported, nothing is pulled. */
  sandboxImage?: string;
  /** Put containers in the cgroups the kubelet asks for; off by default (only image calls are used). */
  cgroups?: boolean;
  /**
   * Clamp the OOM score a container asks for to containerd's own (`restrict_oom_score_adj`). The
   * kubelet asks -998 for every pod sandbox; lowering a score needs CAP_SYS_RESOURCE, which root
   * lacks on this machine, and runc then fails ("failed to update /proc/self/oom_score_adj:
   * Permission denied").
   */
  restrictOomScoreAdj?: boolean;
}

export interface RunningContainerd {
  dir: string;
  socketPath: string;
  /** The registry hosts dir (`config_path`), even when containerd was told not to use it. */
  certsDir: string;
  /** containerd's config.toml, for the agent's `--containerd-config`. */
  configFile: string;
  snapshotter: "overlayfs" | "native";
  /** containerd's log so far. */
  log(): string;
  /** SIGTERM and wait; the data dir stays (for restart). */
  stop(): Promise<void>;
  /** SIGKILL, as a crash would; the data dir stays. */
  kill(): Promise<void>;
  /** Start again on the same dirs and socket (after stop or kill). */
  restart(): Promise<void>;
  /** Stop and delete everything. */
  dispose(): Promise<void>;
}

const running = new Set<ChildProcess>();
process.once("exit", () => {
  for (const child of running) child.kill("SIGKILL");
});

export function overlayAvailable(): boolean {
  try {
    return /\toverlay$/m.test(readFileSync("/proc/filesystems", "utf8"));
  } catch {
    return false;
  }
}

/** containerd's config.toml for a node rooted at `dir` (also used by the container tier's node). */
export function configToml(
  dir: string,
  snapshotter: string,
  withConfigPath: boolean,
  options: ContainerdOptions,
): string {
  const q = (value: string) => JSON.stringify(value);
  return [
    "version = 2",
    `root = ${q(join(dir, "root"))}`,
    `state = ${q(join(dir, "state"))}`,
    // Snapshotters that cannot work here only add noise to the log.
    `disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs"]`,
    "[grpc]",
    `  address = ${q(join(dir, "containerd.sock"))}`,
    "[ttrpc]",
    `  address = ${q(join(dir, "containerd.sock.ttrpc"))}`,
    "[debug]",
    `  level = "info"`,
    `[plugins."io.containerd.internal.v1.opt"]`,
    `  path = ${q(join(dir, "opt"))}`,
    `[plugins."io.containerd.grpc.v1.cri"]`,
    "  disable_tcp_service = true",
    `  stream_server_address = "127.0.0.1"`,
    `  stream_server_port = "0"`,
    `  disable_cgroup = ${options.cgroups ? "false" : "true"}`,
    "  disable_apparmor = true",
    // Image filesystem usage (ImageFsInfo) is sampled on this period; 10 s by default.
    "  stats_collect_period = 1",
    options.restrictOomScoreAdj ? "  restrict_oom_score_adj = true" : "",
    options.sandboxImage ? `  sandbox_image = ${q(options.sandboxImage)}` : "",
    `  [plugins."io.containerd.grpc.v1.cri".containerd]`,
    `    snapshotter = ${q(snapshotter)}`,
    `  [plugins."io.containerd.grpc.v1.cri".cni]`,
    `    bin_dir = ${q(options.cni?.binDir ?? join(dir, "cni", "bin"))}`,
    `    conf_dir = ${q(join(dir, "cni", "conf"))}`,
    `  [plugins."io.containerd.grpc.v1.cri".registry]`,
    withConfigPath ? `    config_path = ${q(join(dir, "certs.d"))}` : "",
    "",
  ].join("\n");
}

function socketAnswers(path: string): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = connect(path);
    socket.once("connect", () => {
      socket.destroy();
      resolve(true);
    });
    socket.once("error", () => resolve(false));
  });
}

export async function startContainerd(options: ContainerdOptions = {}): Promise<RunningContainerd> {
  if (process.getuid?.() !== 0) throw new Error("containerd fixture needs root (snapshotter mounts)");
  // Short path: unix socket paths are limited to 108 bytes.
  const dir = await mkdtemp(join(tmpdir(), "ctrd-"));
  const snapshotter = options.snapshotter ?? (overlayAvailable() ? "overlayfs" : "native");
  if (snapshotter === "native" && !options.snapshotter)
    process.stderr.write(
      "containerd fixture: no overlay filesystem in this kernel; using the native snapshotter\n",
    );
  const certsDir = join(dir, "certs.d");
  const configFile = join(dir, "config.toml");
  const socketPath = join(dir, "containerd.sock");
  await mkdir(certsDir, { recursive: true });
  await mkdir(join(dir, "cni", "conf"), { recursive: true });
  for (const [file, conflist] of Object.entries(options.cni?.conflists ?? {}))
    await writeFile(join(dir, "cni", "conf", file), JSON.stringify(conflist));
  await writeFile(configFile, configToml(dir, snapshotter, !options.withoutConfigPath, options));

  let child: ChildProcess | undefined;
  let output = "";

  const start = async () => {
    await rm(socketPath, { force: true });
    const proc = spawn(CONTAINERD_BINARY, ["--config", configFile], { stdio: ["ignore", "pipe", "pipe"] });
    child = proc;
    running.add(proc);
    let exited = false;
    proc.once("exit", () => {
      exited = true;
      running.delete(proc);
    });
    const append = (chunk: Buffer) => {
      output += chunk.toString();
      if (output.length > 2_000_000) output = output.slice(-1_000_000);
    };
    proc.stdout?.on("data", append);
    proc.stderr?.on("data", append);
    const deadline = Date.now() + 30_000;
    while (Date.now() < deadline) {
      if (exited) throw new Error(`containerd exited during start:\n${output.slice(-4000)}`);
      // The CRI plugin registers on the same server, so serving means CRI answers too.
      if (existsSync(socketPath) && output.includes("containerd successfully booted")) {
        if (await socketAnswers(socketPath)) return;
      }
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
    proc.kill("SIGKILL");
    throw new Error(`containerd did not start within 30 s:\n${output.slice(-4000)}`);
  };

  const halt = async (signal: NodeJS.Signals) => {
    const proc = child;
    child = undefined;
    if (!proc || proc.exitCode !== null || proc.signalCode !== null) return;
    const exited = new Promise<void>((resolve) => proc.once("exit", () => resolve()));
    proc.kill(signal);
    const timer = setTimeout(() => proc.kill("SIGKILL"), 10_000);
    await exited;
    clearTimeout(timer);
  };

  await start();
  return {
    dir,
    socketPath,
    certsDir,
    configFile,
    snapshotter,
    log: () => output,
    stop: () => halt("SIGTERM"),
    kill: () => halt("SIGKILL"),
    restart: async () => {
      await halt("SIGTERM");
      await start();
    },
    dispose: async () => {
      await halt("SIGTERM");
      await unmountUnder(dir);
      await rm(dir, { recursive: true, force: true });
    },
  };
}
