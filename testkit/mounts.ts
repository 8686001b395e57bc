/**
 * Mounts a test's processes leave under their temp dir (containerd snapshots, kubelet volumes,
 * dockerd overlays and netns) would make removing the dir fail: unmount them, deepest first.
 */
import { execFile } from "node:child_process";
import { readFileSync } from "node:fs";

function umount(args: string[]): Promise<boolean> {
  return new Promise((resolve) => {
    execFile("umount", args, { timeout: 10_000 }, (error) => resolve(!error));
  });
}

/** Unmounts everything mounted below `dir` (recursively, lazily when busy); never throws. */
export async function unmountUnder(dir: string): Promise<void> {
  let mounts = "";
  try {
    mounts = readFileSync("/proc/self/mounts", "utf8");
  } catch {
    return;
  }
  const targets = mounts
    .split("\n")
    .map((line) => line.split(" ")[1])
    .filter((target): target is string => target?.startsWith(`${dir}/`) ?? false)
    .sort((a, b) => b.length - a.length);
  for (const target of targets) {
    if (!(await umount(["-R", target]))) await umount(["-l", target]);
  }
}
