/**
 * The real helm at the control plane's release (built from tools/k8s), run the way a person runs
 * it but kept out of their files: HELM_CACHE_HOME, HELM_CONFIG_HOME and HELM_DATA_HOME in the
 * caller's temp dir, a kubeconfig only when given (a `helm template` needs no cluster), exit code
 * and both streams returned, so a test can check what helm said and not only what it printed.
 */
import { join } from "node:path";
import { runK8sTool, type ToolRun } from "./k8sTools.ts";

export type HelmRun = ToolRun;

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
  return runK8sTool("helm", [...(options.kubeconfig ? ["--kubeconfig", options.kubeconfig] : []), ...args], {
    cwd: options.cwd,
    env: { ...helmEnv(options.dir), ...options.env },
    timeoutMs: options.timeoutMs ?? 120_000,
  });
}

/** helm that must exit 0; returns stdout, throws with stderr otherwise. */
export async function helmOk(args: string[], options: HelmOptions): Promise<string> {
  const run = await helm(args, options);
  if (run.code !== 0) throw new Error(`helm ${args.join(" ")} failed (${run.code}): ${run.stderr}`);
  return run.stdout;
}
