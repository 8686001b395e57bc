/**
 * Progress for `stowage mirror`: one redrawn bar per image on a TTY, plain lines otherwise.
 * Hand-written rather than a progress-bar package: it is ~100 lines, needs only ANSI
 * "cursor up" and "clear line", and a dependency would be loaded by every CLI start.
 */
import type { Writable } from "node:stream";
import type { Clock } from "../util/clock.ts";
import { systemClock } from "../util/clock.ts";
import type { ProgressEvent } from "./copy.ts";

export interface ProgressReporter {
  onProgress(event: ProgressEvent): void;
  /** Draws the final state and stops the redraw timer. */
  finish(): void;
}

interface ImageProgress {
  name: string;
  totalBytes: number;
  toCopy: number;
  copied: number;
  startedAt: number;
  done: boolean;
  upToDate: boolean;
}

const redrawIntervalMs = 100; // never more than ~10 redraws a second
const plainIntervalMs = 5000;

export function formatBytes(bytes: number): string {
  const units = ["B", "KB", "MB", "GB", "TB"];
  let value = bytes;
  let unit = 0;
  while (value >= 1000 && unit < units.length - 1) {
    value /= 1000;
    unit++;
  }
  return `${unit === 0 ? value : value.toFixed(1)} ${units[unit]}`;
}

export function formatDuration(ms: number): string {
  if (!Number.isFinite(ms) || ms < 0) return "--:--";
  const seconds = Math.round(ms / 1000);
  const m = Math.floor(seconds / 60);
  const s = seconds % 60;
  return `${m}:${String(s).padStart(2, "0")}`;
}

function describe(image: ImageProgress, now: number): { rate: number; eta: number } {
  const elapsed = Math.max(1, now - image.startedAt);
  const rate = (image.copied / elapsed) * 1000;
  const eta = rate > 0 ? ((image.toCopy - image.copied) / rate) * 1000 : Number.POSITIVE_INFINITY;
  return { rate, eta };
}

export function createProgressReporter(options: {
  stream: Writable;
  tty: boolean;
  quiet?: boolean;
  columns?: number;
  clock?: Clock;
}): ProgressReporter {
  if (options.quiet) return { onProgress: () => {}, finish: () => {} };
  const clock = options.clock ?? systemClock;
  const images = new Map<string, ImageProgress>();
  const write = (text: string) => options.stream.write(text);

  if (!options.tty) {
    let lastLine = 0;
    return {
      onProgress(event) {
        const now = clock.now();
        if (event.type === "planned") {
          lastLine = now; // the first progress line comes one interval in, when the rate means something
          images.set(event.image, {
            name: event.image,
            totalBytes: event.totalBytes,
            toCopy: event.bytesToCopy,
            copied: 0,
            startedAt: now,
            done: false,
            upToDate: event.upToDate,
          });
          write(
            event.upToDate
              ? `${event.image}: already up to date (${formatBytes(event.totalBytes)})\n`
              : `${event.image}: ${event.blobs} blobs, ${formatBytes(event.bytesToCopy)} of ${formatBytes(event.totalBytes)} to copy\n`,
          );
        } else if (event.type === "bytes") {
          const image = images.get(event.image);
          if (!image) return;
          image.copied += event.bytes;
          if (now - lastLine >= plainIntervalMs) {
            lastLine = now;
            const { rate, eta } = describe(image, now);
            write(
              `${image.name}: ${formatBytes(image.copied)} / ${formatBytes(image.toCopy)} at ${formatBytes(rate)}/s, ETA ${formatDuration(eta)}\n`,
            );
          }
        } else if (event.type === "done") {
          const r = event.result;
          write(
            `${event.image}: done ${r.targetDigest} (${formatBytes(r.bytes.transferred)} transferred, ${formatBytes(r.bytes.mounted)} mounted, ${formatBytes(r.bytes.skipped)} skipped) in ${(r.durationMs / 1000).toFixed(1)}s\n`,
          );
        }
      },
      finish() {},
    };
  }

  let drawnLines = 0;
  let dirty = false;
  const columns = Math.max(40, options.columns ?? 100);
  const render = () => {
    dirty = false;
    const now = clock.now();
    let out = drawnLines > 0 ? `\x1b[${drawnLines}A` : "";
    for (const image of images.values()) {
      const fraction = image.toCopy > 0 ? Math.min(1, image.copied / image.toCopy) : 1;
      const { rate, eta } = describe(image, now);
      const status = image.done
        ? image.upToDate
          ? "up to date"
          : "done"
        : `${formatBytes(rate)}/s ETA ${formatDuration(eta)}`;
      const figures = ` ${formatBytes(image.copied)}/${formatBytes(image.toCopy)} ${status}`;
      const barWidth = 20;
      const filled = Math.round(fraction * barWidth);
      const bar = `[${"#".repeat(filled)}${"-".repeat(barWidth - filled)}]`;
      const room = Math.max(10, columns - bar.length - figures.length - 2);
      const name = image.name.length > room ? `…${image.name.slice(-(room - 1))}` : image.name;
      out += `\x1b[2K${name} ${bar}${figures}\n`;
    }
    drawnLines = images.size;
    write(out);
  };
  const timer = setInterval(() => {
    if (dirty) render();
  }, redrawIntervalMs);
  timer.unref();

  return {
    onProgress(event) {
      if (event.type === "planned") {
        images.set(event.image, {
          name: event.image,
          totalBytes: event.totalBytes,
          toCopy: event.bytesToCopy,
          copied: 0,
          startedAt: clock.now(),
          done: false,
          upToDate: event.upToDate,
        });
      } else if (event.type === "bytes") {
        const image = images.get(event.image);
        if (image) image.copied += event.bytes;
      } else if (event.type === "done") {
        const image = images.get(event.image);
        if (image) {
          image.done = true;
          image.copied = Math.max(image.copied, event.result.bytes.transferred);
        }
      }
      dirty = true;
    },
    finish() {
      clearInterval(timer);
      if (images.size > 0) render();
    },
  };
}
