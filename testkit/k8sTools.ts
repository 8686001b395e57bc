/**
 * Where the real Kubernetes binaries the tests run live: etcd, kube-apiserver,
 * kube-controller-manager, kube-scheduler, kubelet, kubectl and helm, built from the pinned Go
 * module in tools/k8s by scripts/build-k8s.sh (a no-op once built). STOWAGE_K8S_BIN names a
 * folder holding them instead (a machine that has them already).
 */
import { execFile, execFileSync } from "node:child_process";
import { existsSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";

const root = fileURLToPath(new URL("..", import.meta.url));
export type K8sBinary =
  | "etcd"
  | "kube-apiserver"
  | "kube-controller-manager"
  | "kube-scheduler"
  | "kubelet"
  | "kubectl"
  | "helm";

let binDir: string | undefined;

/** The folder with the built binaries; builds them the first time (minutes), progress on stderr. */
export function k8sBinDir(): string {
  if (binDir) return binDir;
  const fromEnv = process.env.STOWAGE_K8S_BIN;
  if (fromEnv) {
    binDir = fromEnv;
    return binDir;
  }
  const out = execFileSync("bash", [join(root, "scripts/build-k8s.sh")], {
    encoding: "utf8",
    stdio: ["ignore", "pipe", "inherit"],
  });
  binDir = out.trim().split("\n").pop() ?? "";
  return binDir;
}

export function k8sBin(name: K8sBinary): string {
  const path = join(k8sBinDir(), name);
  if (!existsSync(path)) throw new Error(`${path} is missing: run \`bash scripts/build-k8s.sh\``);
  return path;
}

/** The folder with the binaries when it is already built, without building (for the demo). */
export function builtK8sBinDir(): string | undefined {
  if (binDir) return binDir;
  if (process.env.STOWAGE_K8S_BIN) return process.env.STOWAGE_K8S_BIN;
  try {
    const out = execFileSync("bash", [join(root, "scripts/build-k8s.sh"), "--check"], {
      encoding: "utf8",
      stdio: ["ignore", "pipe", "ignore"],
    });
    return out.trim() || undefined;
  } catch {
    return undefined;
  }
}

/** What a tool run said: exit code (127 when the binary is missing, with the reason) and both streams. */
export interface ToolRun {
  code: number;
  stdout: string;
  stderr: string;
}

export interface ToolRunOptions {
  /** the binary's path; default the built one of that name */
  binary?: string;
  env?: Record<string, string>;
  cwd?: string;
  stdin?: string;
  timeoutMs?: number;
}

/** Runs one of the built tools (kubectl, helm, ...); never throws for a non-zero exit. */
export function runK8sTool(name: K8sBinary, args: string[], options: ToolRunOptions = {}): Promise<ToolRun> {
  return new Promise((resolve) => {
    let binary: string;
    try {
      binary = options.binary ?? k8sBin(name);
    } catch (err) {
      resolve({ code: 127, stdout: "", stderr: (err as Error).message });
      return;
    }
    const child = execFile(
      binary,
      args,
      {
        cwd: options.cwd,
        env: { ...process.env, ...options.env },
        timeout: options.timeoutMs ?? 90_000,
        maxBuffer: 64 * 1024 * 1024,
      },
      (error, stdout, stderr) => {
        const code = error
          ? typeof error.code === "number"
            ? error.code
            : error.code === "ENOENT"
              ? 127
              : 1
          : 0;
        resolve({ code, stdout, stderr: stderr || (error && code !== 0 ? error.message : "") });
      },
    );
    if (options.stdin !== undefined) child.stdin?.end(options.stdin);
  });
}
