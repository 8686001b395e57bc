/**
 * A blob on its way from the upstream, written once to a temp file and read by any number
 * of tails at their own pace: the storage upload and every caller waiting on the same
 * digest. A file rather than memory, so a 20 GiB layer costs no RAM and a slow node never
 * holds back the others (nor the upstream read). Callers' tails stop one byte short of
 * the end until the spool is sealed: nobody receives a complete blob before it is verified,
 * and a failure cuts every response short.
 *
 * A tail that keeps up is handed the fetched chunks themselves, from the last RECENT_BYTES
 * appended, and reads the file only when it falls behind them: a file read per chunk per caller
 * (a trip through libuv's thread pool and a copy each) was most of what each extra caller of a
 * cold blob cost (bench:cache, eight concurrent cold pulls).
 */

import type { FileHandle } from "node:fs/promises";
import { open, rm } from "node:fs/promises";
import { join } from "node:path";
import { StowageError } from "../util/errors.ts";

// Reads for tails without their own buffers (the storage upload, whose HTTP client keeps what it
// was given until sent, so its buffers cannot be reused). The upload's stream chain holds about
// four of them at once.
const READ_SIZE = 256 * 1024;
// Queued bytes before the fetch waits for the file: enough to batch dozens of network chunks
// into one write, small enough not to show in the front's resident memory.
const WRITE_HIGH_WATER = 2 * 1024 * 1024;
// Appended bytes kept in memory for tails at the live edge, past what is still queued for the
// file: a tail a few chunks behind the fetch (a socket's hiccup) need not go to the file.
const RECENT_BYTES = 2 * 1024 * 1024;

type State = "filling" | "sealed" | "failed";

export class Spool {
  readonly path: string;
  /** The blob's size, known before the first byte (the upstream said so on HEAD). */
  readonly size: number;
  #handle: FileHandle | undefined;
  #written = 0;
  #state: State = "filling";
  #failure: Error | undefined;
  #waiters: (() => void)[] = [];
  #readers = 0;
  #disposeWhenIdle = false;
  #queue: Buffer[] = [];
  #queued = 0;
  #writer: Promise<void> | undefined;
  #writeError: Error | undefined;
  /** Appended bytes, in the file or still queued for it. */
  #appended = 0;
  /** The latest chunks appended, contiguous, starting at byte #recentStart (see RECENT_BYTES). */
  #recent: Buffer[] = [];
  #recentStart = 0;

  private constructor(path: string, size: number, handle: FileHandle) {
    this.path = path;
    this.size = size;
    this.#handle = handle;
  }

  static async create(dir: string, name: string, size: number): Promise<Spool> {
    const path = join(dir, `${name.replace(/[^a-zA-Z0-9]/g, "_")}-${process.pid}-${Date.now()}.part`);
    const handle = await open(path, "w+");
    return new Spool(path, size, handle);
  }

  get written(): number {
    return this.#written;
  }

  get state(): State {
    return this.#state;
  }

  /** Disposed and gone: a tail started now would fail. (A tail counts itself synchronously when started.) */
  get closed(): boolean {
    return this.#handle === undefined;
  }

  /**
   * Queues bytes for the file and returns at once unless more than WRITE_HIGH_WATER bytes
   * wait: one await per network chunk (64 KiB) halved the fetch's speed, so queued chunks
   * are written together by one writer, in order, and tails see them once written.
   */
  async append(chunk: Buffer): Promise<void> {
    if (this.#state !== "filling" || !this.#handle) throw new Error("spool is no longer filling");
    if (this.#writeError) throw this.#writeError;
    this.#queue.push(chunk);
    this.#queued += chunk.length;
    this.#recent.push(chunk);
    this.#appended += chunk.length;
    this.#forgetOldChunks();
    this.#wake();
    this.#writer ??= this.#writeQueued();
    if (this.#queued > WRITE_HIGH_WATER) await this.#writer;
  }

  /** Waits until every appended byte is in the file. */
  async flush(): Promise<void> {
    while (this.#writer) await this.#writer;
    if (this.#writeError) throw this.#writeError;
  }

  async #writeQueued(): Promise<void> {
    try {
      while (this.#queue.length > 0 && this.#handle) {
        // One vectored write of every queued chunk: no copy of them into one buffer first.
        let batch = this.#queue;
        this.#queue = [];
        while (batch.length > 0) {
          const { bytesWritten } = await this.#handle.writev(batch, this.#written);
          this.#written += bytesWritten;
          this.#queued -= bytesWritten;
          batch = remainderAfter(batch, bytesWritten);
        }
        this.#forgetOldChunks();
        this.#wake();
      }
    } catch (err) {
      this.#writeError = err as Error;
    } finally {
      this.#writer = undefined;
    }
  }

  /** Drops recent chunks that are in the file and more than RECENT_BYTES behind the last one. */
  #forgetOldChunks(): void {
    while (this.#recent.length > 0) {
      const end = this.#recentStart + this.#recent[0].length;
      if (end > this.#written || this.#appended - end < RECENT_BYTES) return;
      this.#recentStart = end;
      this.#recent.shift();
    }
  }

  /** The bytes from `position` up to `end` of the one recent chunk holding `position`. */
  #recentAt(position: number, end: number): Buffer {
    let start = this.#recentStart;
    for (const chunk of this.#recent) {
      if (position < start + chunk.length)
        return chunk.subarray(position - start, Math.min(chunk.length, end - start));
      start += chunk.length;
    }
    throw new StowageError("Internal", `byte ${position} is not among the spool's recent chunks`);
  }

  /** Everything is here and verified: tails may read to the end (call flush() first). */
  seal(): void {
    if (this.#state !== "filling") return;
    if (this.#queued > 0) throw new Error("spool sealed with bytes still queued; flush() first");
    this.#state = "sealed";
    this.#wake();
  }

  /** The fetch failed: every tail errors with `err` (and stops short of the end). */
  fail(err: Error): void {
    if (this.#state !== "filling") return;
    this.#state = "failed";
    this.#failure = err;
    this.#wake();
  }

  /**
   * The bytes [start, end) as they arrive. `holdLast`: stop one byte short of the blob's end
   * until the spool is sealed (what a caller's response does; the storage upload need not,
   * since distribution verifies the digest itself before committing).
   */
  async *tail(
    start = 0,
    end = this.size,
    options: {
      holdLast?: boolean;
      signal?: AbortSignal;
      /**
       * Read the file into these in turn (send.ts): the consumer must be done with a chunk two
       * chunks later. Made on the first read of the file, which a tail that keeps up never does.
       */
      buffers?: () => Buffer[];
    } = {},
  ) {
    this.#readers++;
    let turn = 0;
    let buffers: Buffer[] | undefined;
    try {
      let position = start;
      while (position < end) {
        if (options.signal?.aborted) throw new StowageError("Aborted", "reader went away");
        if (this.#state === "failed") throw this.#failure ?? new Error("spool failed");
        const limit =
          this.#state === "sealed" || !options.holdLast
            ? this.#appended
            : Math.min(this.#appended, this.size - 1);
        const until = Math.min(limit, end);
        if (until <= position) {
          if (this.#state === "sealed" && this.#appended < end) {
            throw new StowageError("SizeMismatch", `spool sealed at ${this.#appended} of ${end} bytes`);
          }
          await new Promise<void>((resolve) => this.#waiters.push(resolve));
          continue;
        }
        if (!this.#handle) throw new StowageError("Aborted", "spool was disposed");
        if (position >= this.#recentStart) {
          // At the live edge: the fetched chunk itself, no read and no copy.
          const chunk = this.#recentAt(position, until);
          position += chunk.length;
          yield chunk;
          continue;
        }
        // Behind the recent chunks, so in the file (chunks are dropped only once written).
        const handle = this.#handle;
        const available = Math.min(until, this.#recentStart) - position;
        if (options.buffers) buffers ??= options.buffers();
        const buffer = buffers
          ? buffers[turn++ % buffers.length]
          : Buffer.allocUnsafe(Math.min(available, READ_SIZE));
        const { bytesRead } = await handle.read(buffer, 0, Math.min(available, buffer.length), position);
        if (bytesRead === 0) throw new StowageError("Internal", `spool ${this.path} returned no bytes`);
        position += bytesRead;
        yield buffer.subarray(0, bytesRead);
      }
    } finally {
      this.#readers--;
      if (this.#disposeWhenIdle && this.#readers === 0) await this.#close();
    }
  }

  /** Remove the file once the last tail is done with it. */
  async dispose(): Promise<void> {
    this.#disposeWhenIdle = true;
    if (this.#readers === 0) await this.#close();
  }

  async #close(): Promise<void> {
    const handle = this.#handle;
    this.#handle = undefined;
    this.#recent = [];
    if (!handle) return;
    await handle.close().catch(() => {});
    await rm(this.path, { force: true });
  }

  #wake(): void {
    const waiters = this.#waiters;
    this.#waiters = [];
    for (const wake of waiters) wake();
  }
}

/** What is left of `buffers` once their first `bytes` bytes were written. */
function remainderAfter(buffers: Buffer[], bytes: number): Buffer[] {
  let skip = bytes;
  let index = 0;
  while (index < buffers.length && skip >= buffers[index].length) {
    skip -= buffers[index].length;
    index++;
  }
  const rest = buffers.slice(index);
  if (rest.length > 0 && skip > 0) rest[0] = rest[0].subarray(skip);
  return rest;
}
