import { Writable } from "node:stream";
import { describe, expect, it } from "vitest";
import type { CopyResult } from "../../src/oci/copy.ts";
import { createProgressReporter, formatBytes, formatDuration } from "../../src/oci/progress.ts";
import type { Clock } from "../../src/util/clock.ts";

function sink(): { stream: Writable; text: () => string } {
  let out = "";
  const stream = new Writable({
    write(chunk, _encoding, done) {
      out += chunk;
      done();
    },
  });
  return { stream, text: () => out };
}

function manualClock(): Clock & { advance(ms: number): void } {
  let now = 1_000_000;
  return { now: () => now, sleep: async () => {}, advance: (ms) => (now += ms) };
}

const result: CopyResult = {
  source: "src/app:v1",
  target: "dst/app:v1",
  sourceDigest: "sha256:aa",
  targetDigest: "sha256:bb",
  mediaType: "application/vnd.oci.image.manifest.v1+json",
  platforms: ["linux/amd64"],
  bytes: { transferred: 50_000_000, mounted: 0, skipped: 10_000_000 },
  blobs: { transferred: 2, mounted: 0, skipped: 1 },
  manifests: { pushed: 1, skipped: 0 },
  durationMs: 2000,
};

describe("progress output", () => {
  it("formats bytes and durations for people", () => {
    expect(formatBytes(999)).toBe("999 B");
    expect(formatBytes(1_500_000)).toBe("1.5 MB");
    expect(formatBytes(2_000_000_000)).toBe("2.0 GB");
    expect(formatDuration(65_000)).toBe("1:05");
    expect(formatDuration(Number.POSITIVE_INFINITY)).toBe("--:--");
  });

  it("draws a bar with bytes, rate and ETA on a TTY and redraws it in place", () => {
    const out = sink();
    const clock = manualClock();
    const reporter = createProgressReporter({ stream: out.stream, tty: true, clock, columns: 120 });
    reporter.onProgress({
      type: "planned",
      image: "dst/app:v1",
      totalBytes: 60_000_000,
      bytesToCopy: 50_000_000,
      blobs: 3,
      upToDate: false,
    });
    clock.advance(1000);
    reporter.onProgress({ type: "bytes", image: "dst/app:v1", bytes: 25_000_000 });
    reporter.finish();
    const text = out.text();
    expect(text).toContain("dst/app:v1 [##########----------] 25.0 MB/50.0 MB 25.0 MB/s ETA 0:01");
    expect(text).toContain("\x1b[2K");
  });

  it("marks the image done on a TTY when the copy finishes", () => {
    const out = sink();
    const reporter = createProgressReporter({ stream: out.stream, tty: true, clock: manualClock() });
    reporter.onProgress({
      type: "planned",
      image: "dst/app:v1",
      totalBytes: 1,
      bytesToCopy: 1,
      blobs: 1,
      upToDate: false,
    });
    reporter.onProgress({ type: "done", image: "dst/app:v1", result });
    reporter.finish();
    expect(out.text()).toContain("[####################]");
    expect(out.text()).toContain("done");
  });

  it("writes plain lines when not a TTY: the plan, periodic progress and the outcome", () => {
    const out = sink();
    const clock = manualClock();
    const reporter = createProgressReporter({ stream: out.stream, tty: false, clock });
    reporter.onProgress({
      type: "planned",
      image: "dst/app:v1",
      totalBytes: 60_000_000,
      bytesToCopy: 50_000_000,
      blobs: 3,
      upToDate: false,
    });
    clock.advance(10_000);
    reporter.onProgress({ type: "bytes", image: "dst/app:v1", bytes: 20_000_000 });
    reporter.onProgress({ type: "bytes", image: "dst/app:v1", bytes: 1 }); // within 5 s of the last line: no new line
    reporter.onProgress({ type: "done", image: "dst/app:v1", result });
    reporter.finish();
    const lines = out.text().trim().split("\n");
    expect(lines).toEqual([
      "dst/app:v1: 3 blobs, 50.0 MB of 60.0 MB to copy",
      "dst/app:v1: 20.0 MB / 50.0 MB at 2.0 MB/s, ETA 0:15",
      "dst/app:v1: done sha256:bb (50.0 MB transferred, 0 B mounted, 10.0 MB skipped) in 2.0s",
    ]);
    expect(out.text()).not.toContain("\x1b[");
  });

  it("writes nothing when quiet", () => {
    const out = sink();
    const reporter = createProgressReporter({ stream: out.stream, tty: true, quiet: true });
    reporter.onProgress({
      type: "planned",
      image: "x",
      totalBytes: 1,
      bytesToCopy: 1,
      blobs: 1,
      upToDate: false,
    });
    reporter.finish();
    expect(out.text()).toBe("");
  });
});
