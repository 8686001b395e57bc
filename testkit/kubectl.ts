/**
 * The real kubectl at the control plane's release (built from tools/k8s), run the way a person
 * runs it: its own HOME and discovery cache per caller, a kubeconfig, exit code and both streams
 * returned, so a test can check what kubectl said and not only what it printed.
 */
import { join } from "node:path";
import { runK8sTool, type ToolRun } from "./k8sTools.ts";

export type KubectlRun = ToolRun;

export interface KubectlOptions {
  kubeconfig: string;
  /** HOME and `--cache-dir` live here (a temp dir of the caller) */
  dir: string;
  stdin?: string;
  timeoutMs?: number;
  /** the binary; default the built kubectl */
  binary?: string;
}

/** Runs kubectl; never throws for a non-zero exit (a missing binary is exit code 127 with the reason). */
export function kubectl(args: string[], options: KubectlOptions): Promise<KubectlRun> {
  return runK8sTool(
    "kubectl",
    ["--kubeconfig", options.kubeconfig, "--cache-dir", join(options.dir, "kube-cache"), ...args],
    {
      binary: options.binary,
      env: { HOME: options.dir, KUBECONFIG: "" },
      stdin: options.stdin,
      timeoutMs: options.timeoutMs ?? 90_000,
    },
  );
}

/** kubectl that must exit 0; returns stdout, throws with stderr otherwise. */
export async function kubectlOk(args: string[], options: KubectlOptions): Promise<string> {
  const run = await kubectl(args, options);
  if (run.code !== 0) throw new Error(`kubectl ${args.join(" ")} failed (${run.code}): ${run.stderr}`);
  return run.stdout;
}
