#!/usr/bin/env node
// Fills Node's compile cache with every Stowage module, for an image to ship it (the Dockerfile
// runs this once at build time, with NODE_COMPILE_CACHE set to a folder inside the image).
//
// Why: Node strips the TypeScript sources as it loads them, and the type stripper (a WebAssembly
// build of swc) costs each process ≈ 25 MB of resident memory on a cold start; a pod's /tmp is
// empty at every start, so every agent on every node paid it. With the stripped sources (and
// V8's code cache) already in the image, no process loads the stripper. The cache is keyed by
// Node's version and each file's contents, so an entry that no longer matches is ignored, never
// used; on a read-only root filesystem nothing new is written, which Node treats as best effort.
//
// Node keeps one sub-folder per user id (`v24.x-x64-<tag>-<uid>`); the entries in it do not depend
// on the user, so the folder made here is copied for each other uid named after the folder.
//
//   node bin/warm-compile-cache.js /app/compile-cache 65532
import { chmodSync, cpSync, readdirSync } from "node:fs";
import module from "node:module";
import { dirname, join, relative } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const [directory, ...otherUids] = process.argv.slice(2);
if (!directory || otherUids.some((uid) => !/^\d+$/.test(uid))) {
  process.stderr.write("usage: warm-compile-cache.js <folder> [uid...]\n");
  process.exit(2);
}
const enabled = module.enableCompileCache(directory);
if (enabled.status === module.constants.compileCacheStatus.FAILED) {
  process.stderr.write(`warm-compile-cache: cannot use ${directory}: ${enabled.message}\n`);
  process.exit(1);
}
const sources = readdirSync(join(root, "src"), { recursive: true, encoding: "utf8" })
  .filter((file) => file.endsWith(".ts"))
  .sort();
const failed = [];
// Importing loads each module's whole static graph; a module's top level only declares things
// (nothing in src/ starts work on import), so importing every one of them is safe.
for (const file of sources) {
  try {
    await import(pathToFileURL(join(root, "src", file)).href);
  } catch (err) {
    failed.push(`${relative(root, join(root, "src", file))}: ${err?.message ?? err}`);
  }
}
module.flushCompileCache();
const cacheDir = module.getCompileCacheDir();
const ownSuffix = `-${process.getuid()}`;
if (!cacheDir.endsWith(ownSuffix)) {
  process.stderr.write(
    `warm-compile-cache: ${cacheDir} does not end with this uid (${ownSuffix}); this Node names its cache folders differently\n`,
  );
  process.exit(1);
}
const uidFolders = [cacheDir];
for (const uid of otherUids) {
  const folder = `${cacheDir.slice(0, -ownSuffix.length)}-${uid}`;
  if (folder !== cacheDir) cpSync(cacheDir, folder, { recursive: true });
  uidFolders.push(folder);
}
// Node writes its entries readable by their owner only; the image's processes run as other users
// (the controller as 65532, the agent as root), so everything is made readable by all.
chmodSync(directory, 0o755);
for (const folder of uidFolders) {
  chmodSync(folder, 0o755);
  for (const entry of readdirSync(folder, { recursive: true, withFileTypes: true })) {
    chmodSync(join(entry.parentPath, entry.name), entry.isDirectory() ? 0o755 : 0o644);
  }
}
if (failed.length > 0) {
  process.stderr.write(
    `warm-compile-cache: ${failed.length} modules failed to load:\n${failed.join("\n")}\n`,
  );
  process.exit(1);
}
process.stdout.write(`warm-compile-cache: ${sources.length} modules in ${uidFolders.join(", ")}\n`);
