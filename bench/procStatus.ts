// A field of /proc/<pid>/status in KiB (VmHWM, VmRSS, RssAnon, RssFile): 0 once the process is
// gone or when there is no such field. Linux only, like the benches that read it.
import { readFileSync } from "node:fs";

export function procStatusKiB(pid: number | undefined, field: string): number {
  if (pid === undefined) return 0;
  try {
    const match = new RegExp(`^${field}:\\s+(\\d+) kB`, "m").exec(
      readFileSync(`/proc/${pid}/status`, "utf8"),
    );
    return match ? Number(match[1]) : 0;
  } catch {
    return 0;
  }
}
