/**
 * A blob on its way from the upstream, written once to a temp file and read by any number
 * of tails at their own pace: the storage upload and every caller waiting on the same
 * digest. A file rather than memory, so a 20 GiB layer costs no RAM and a slow node never
 * holds back the others (nor the upstream read). Callers' tails stop one byte short of
 * the end until the spool is sealed: nobody receives a complete blob before it is verified,
 * and a failure cuts every response short.
 */

import type { FileHandle } from "node:fs/promises";
import { open, rm } from "node:fs/promises";
import { join } from "node:path";
import { StowageError } from "../util/errors.ts";

// Reads for tails without their own buffers (the storage upload, whose HTTP client keeps what it
// was given until sent, so its buffers cannot be reused).
const READ_SIZE = 1024 * 1024;
// Queued bytes before the fetch waits for the file: enough to batch dozens of network chunks
// into one write, small enough not to show in the front's resident memory.
const WRITE_HIGH_WATER = 2 * 1024 * 1024;

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
        this.#wake();
      }
    } catch (err) {
      this.#writeError = err as Error;
    } finally {
      this.#writer = undefined;
    }
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
      /** Read into these in turn (send.ts): the consumer must be done with a chunk two chunks later. */
      buffers?: Buffer[];
    } = {},
  ) {
    this.#readers++;
    let turn = 0;
    try {
      let position = start;
      while (position < end) {
        if (options.signal?.aborted) throw new StowageError("Aborted", "reader went away");
        if (this.#state === "failed") throw this.#failure ?? new Error("spool failed");
        const limit =
          this.#state === "sealed" || !options.holdLast
            ? this.#written
            : Math.min(this.#written, this.size - 1);
        const available = Math.min(limit, end) - position;
        if (available <= 0) {
          if (this.#state === "sealed" && this.#written < end) {
            throw new StowageError("SizeMismatch", `spool sealed at ${this.#written} of ${end} bytes`);
          }
          await new Promise<void>((resolve) => this.#waiters.push(resolve));
          continue;
        }
        const handle = this.#handle;
        if (!handle) throw new StowageError("Aborted", "spool was disposed");
        const buffer = options.buffers
          ? options.buffers[turn++ % options.buffers.length]
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
