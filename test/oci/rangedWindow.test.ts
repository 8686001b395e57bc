/**
 * rangedChunks' window on a link that is the limit: one doubling that did not pay (here made
 * slow on purpose, as a loaded machine makes one measurement) must not keep the download on
 * one connection for good.
 */
import { Readable } from "node:stream";
import { describe, expect, it } from "vitest";
import { rangedChunks } from "../../src/oci/rangedDownload.ts";
import { virtualTime } from "../support/virtualTime.ts";

const KiB = 1024;
const noRetry = { attempts: 1, sleep: async () => {}, toError: (caught: unknown) => caught as never };

describe("rangedChunks' window after a doubling that did not pay", () => {
  it("tries more ranges at once again later, and reaches the full window on a slow link", async () => {
    let opened = 0;
    let open = 0;
    let maxOpen = 0;
    let maxOpenAfterFirstTrial = 0;
    const pieceDelayMs = 15;
    const time = virtualTime();
    const openRange = async (start: number, end: number) => {
      opened++;
      // Requests 2-5 are the first trial's (two at a time): four times slower, so it looks as
      // if the second connection bought nothing.
      const delay = opened >= 2 && opened <= 5 ? 4 * pieceDelayMs : pieceDelayMs;
      const late = opened > 5;
      open++;
      maxOpen = Math.max(maxOpen, open);
      if (late) maxOpenAfterFirstTrial = Math.max(maxOpenAfterFirstTrial, open);
      const length = end - start + 1;
      const body = Readable.from(
        (async function* pieces() {
          try {
            for (let i = 0; i < 4; i++) {
              await time.until(time.now() + delay);
              const from = Math.floor((i * length) / 4);
              yield Buffer.alloc(Math.floor(((i + 1) * length) / 4) - from, 1);
            }
          } finally {
            open--;
          }
        })(),
      );
      return { partial: true, body };
    };
    let total = 0;
    for await (const chunk of rangedChunks(64 * 4 * KiB, openRange, noRetry, {
      rangeBytes: 4 * KiB,
      concurrency: 4,
      streamFirst: false,
      clock: time.now,
    }))
      total += chunk.length;
    expect(total).toBe(64 * 4 * KiB);
    expect(maxOpen).toBe(4);
    expect(maxOpenAfterFirstTrial).toBe(4);
  });
});
