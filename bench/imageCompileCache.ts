// The compile cache the image ships (Dockerfile: bin/warm-compile-cache.js at build time), made
// here the same way, so a bench runs Stowage's processes as the image does: with every source
// already stripped and compiled. Without it a process loads Node's type stripper (a WebAssembly
// build of swc, ≈ 20 MB resident) for any file not in the OS temp dir's cache from an earlier run,
// which is every file just edited.
import { execFileSync } from "node:child_process";
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

/** Makes the image's compile cache in a new temporary folder; returns it (for NODE_COMPILE_CACHE). */
export function makeImageCompileCache(parent = tmpdir()): string {
  const folder = mkdtempSync(join(parent, "stowage-compile-cache-"));
  execFileSync(process.execPath, [join(import.meta.dirname, "../bin/warm-compile-cache.js"), folder], {
    stdio: ["ignore", "ignore", "inherit"],
  });
  return folder;
}
