/**
 * Where the real Kubernetes binaries the tests run live: etcd, kube-apiserver,
 * kube-controller-manager, kube-scheduler, kubelet, kubectl and helm, built from the pinned Go
 * module in tools/k8s by scripts/build-k8s.sh (a no-op once built). STOWAGE_K8S_BIN names a
 * folder holding them instead (a machine that has them already).
 */
import { execFileSync } from "node:child_process";
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
