/**
 * The real kubectl at the control plane's release (built from tools/k8s), run the way a person
 * runs it: its own HOME and discovery cache per caller, a kubeconfig, exit code and both streams
 * returned, so a test can check what kubectl said and not only what it printed.
 */
import { execFile } from "node:child_process";
import { join } from "node:path";
import { k8sBin } from "./k8sTools.ts";

export interface KubectlRun {
  code: number;
  stdout: string;
  stderr: string;
}

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
  return new Promise((resolve) => {
    let binary: string;
    try {
      binary = options.binary ?? k8sBin("kubectl");
    } catch (err) {
      resolve({ code: 127, stdout: "", stderr: (err as Error).message });
      return;
    }
    const child = execFile(
      binary,
      ["--kubeconfig", options.kubeconfig, "--cache-dir", join(options.dir, "kube-cache"), ...args],
      {
        env: { ...process.env, HOME: options.dir, KUBECONFIG: "" },
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
        resolve({ code, stdout, stderr: stderr || (error && code === 127 ? error.message : "") });
      },
    );
    if (options.stdin !== undefined) child.stdin?.end(options.stdin);
  });
}

/** kubectl that must exit 0; returns stdout, throws with stderr otherwise. */
export async function kubectlOk(args: string[], options: KubectlOptions): Promise<string> {
  const run = await kubectl(args, options);
  if (run.code !== 0) throw new Error(`kubectl ${args.join(" ")} failed (${run.code}): ${run.stderr}`);
  return run.stdout;
}
