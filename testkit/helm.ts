/**
 * The real helm at the control plane's release (built from tools/k8s), run the way a person runs
 * it but kept out of their files: HELM_CACHE_HOME, HELM_CONFIG_HOME and HELM_DATA_HOME in the
 * caller's temp dir, a kubeconfig only when given (a `helm template` needs no cluster), exit code
 * and both streams returned, so a test can check what helm said and not only what it printed.
 */
import { execFile } from "node:child_process";
import { join } from "node:path";
import { k8sBin } from "./k8sTools.ts";

export interface HelmRun {
  code: number;
  stdout: string;
  stderr: string;
}

export interface HelmOptions {
  /** helm's cache, config and data homes live here (a temp dir of the caller) */
  dir: string;
  /** `--kubeconfig`, for commands that talk to a cluster */
  kubeconfig?: string;
  /** working directory (default: this process's) */
  cwd?: string;
  /** extra environment variables */
  env?: Record<string, string>;
  timeoutMs?: number;
}

/** The environment helm runs with: its homes under `dir`, no KUBECONFIG of the caller's. */
export function helmEnv(dir: string): Record<string, string> {
  return {
    HELM_CACHE_HOME: join(dir, "helm-cache"),
    HELM_CONFIG_HOME: join(dir, "helm-config"),
    HELM_DATA_HOME: join(dir, "helm-data"),
    KUBECONFIG: "",
  };
}

/** Runs helm; never throws for a non-zero exit (a missing binary is exit code 127 with the reason). */
export function helm(args: string[], options: HelmOptions): Promise<HelmRun> {
  return new Promise((resolve) => {
    let binary: string;
    try {
      binary = k8sBin("helm");
    } catch (err) {
      resolve({ code: 127, stdout: "", stderr: (err as Error).message });
      return;
    }
    execFile(
      binary,
      [...(options.kubeconfig ? ["--kubeconfig", options.kubeconfig] : []), ...args],
      {
        cwd: options.cwd,
        env: { ...process.env, ...helmEnv(options.dir), ...options.env },
        timeout: options.timeoutMs ?? 120_000,
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
  });
}

/** helm that must exit 0; returns stdout, throws with stderr otherwise. */
export async function helmOk(args: string[], options: HelmOptions): Promise<string> {
  const run = await helm(args, options);
  if (run.code !== 0) throw new Error(`helm ${args.join(" ")} failed (${run.code}): ${run.stderr}`);
  return run.stdout;
}
