import { spawn } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";

/** The repository root: the cwd of every command the tests run. */
export const root = fileURLToPath(new URL("../..", import.meta.url));

export interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs `command args` from the repository root and collects its output; -1 when killed by a signal. */
export function run(
  command: string,
  args: string[],
  env: Record<string, string> = {},
  stdin?: string,
): Promise<Run> {
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, {
      cwd: root,
      env: { ...process.env, ...env },
      stdio: [stdin === undefined ? "ignore" : "pipe", "pipe", "pipe"],
    });
    if (stdin !== undefined) child.stdin?.end(stdin);
    let stdout = "";
    let stderr = "";
    child.stdout?.on("data", (chunk) => {
      stdout += chunk;
    });
    child.stderr?.on("data", (chunk) => {
      stderr += chunk;
    });
    child.on("error", reject);
    child.on("close", (code) => resolve({ code: code ?? -1, stdout, stderr }));
  });
}

/**
 * Where the CLI's per-user cache (the blob index, `$XDG_CACHE_HOME/stowage`) goes in tests: one
 * temp dir per test process, never the user's own ~/.cache.
 */
let cacheHome: string | undefined;
function testCacheHome(): string {
  if (!cacheHome) {
    cacheHome = mkdtempSync(join(tmpdir(), "stowage-cli-cache-"));
    const dir = cacheHome;
    process.once("exit", () => rmSync(dir, { recursive: true, force: true }));
  }
  return cacheHome;
}

/** `node bin/stowage.js args`, as a user runs the CLI. */
export function stowage(args: string[], env: Record<string, string> = {}): Promise<Run> {
  return run(process.execPath, [join(root, "bin/stowage.js"), ...args], {
    XDG_CACHE_HOME: testCacheHome(),
    ...env,
  });
}
