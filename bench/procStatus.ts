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

/** CPU seconds (user + system) a process has used so far, from /proc/<pid>/stat; 0 once it is gone. */
export function procCpuSeconds(pid: number | undefined): number {
  if (pid === undefined) return 0;
  try {
    // Fields after the command name, which may hold spaces: utime and stime are the 12th and 13th.
    const fields = readFileSync(`/proc/${pid}/stat`, "utf8").split(") ")[1].split(" ");
    return (Number(fields[11]) + Number(fields[12])) / clockTicks;
  } catch {
    return 0;
  }
}

// USER_HZ: 100 on every Linux architecture the benches run on (sysconf(_SC_CLK_TCK)).
const clockTicks = 100;
