import { defaultRuntimeMetrics, type RuntimeMetrics } from "../metrics.ts";
import { type Clock, systemClock } from "../util/clock.ts";

/**
 * Per-key exponential backoff, as client-go's ItemExponentialFailureRateLimiter:
 * the n-th failure of a key waits base·2^(n-1), capped; `forget` starts the key over.
 */
export class ExponentialBackoff {
  readonly baseMs: number;
  readonly maxMs: number;
  readonly #failures = new Map<string, number>();

  constructor(options: { baseMs?: number; maxMs?: number } = {}) {
    this.baseMs = options.baseMs ?? 5;
    this.maxMs = options.maxMs ?? 5 * 60_000;
  }

  /** The delay before `key` may be retried, counting this call as one more failure. */
  when(key: string): number {
    const failures = this.#failures.get(key) ?? 0;
    this.#failures.set(key, failures + 1);
    // 2^failures overflows to Infinity long after the cap applies; Math.min handles it.
    return Math.min(this.baseMs * 2 ** failures, this.maxMs);
  }

  numRequeues(key: string): number {
    return this.#failures.get(key) ?? 0;
  }

  forget(key: string): void {
    this.#failures.delete(key);
  }
}

export interface WorkQueueOptions {
  name: string;
  clock?: Clock;
  backoff?: ExponentialBackoff;
  metrics?: RuntimeMetrics;
}

export type QueueItem = { key: string; shutdown: false } | { key: undefined; shutdown: true };

/**
 * A rate-limited work queue in the client-go style.
 *
 * - A key added many times while it waits is handed out once (`dirty`).
 * - A key is never handed to two workers at once: re-added while processing, it waits
 *   until `done` and is queued again then (`processing`).
 * - `addAfter` delays an add; when a key is scheduled twice the earliest time wins.
 */
export class WorkQueue {
  readonly name: string;
  readonly #clock: Clock;
  readonly #backoff: ExponentialBackoff;
  readonly #metrics: RuntimeMetrics;
  readonly #queue: string[] = [];
  readonly #dirty = new Set<string>();
  readonly #processing = new Set<string>();
  readonly #addedAt = new Map<string, number>();
  readonly #startedAt = new Map<string, number>();
  readonly #waiting = new Map<string, number>(); // key → time it becomes ready (addAfter)
  readonly #waiters: ((item: QueueItem) => void)[] = [];
  readonly #delays = new AbortController();
  readonly #drained: (() => void)[] = [];
  #shuttingDown = false;
  #draining = false;

  constructor(options: WorkQueueOptions) {
    this.name = options.name;
    this.#clock = options.clock ?? systemClock;
    this.#backoff = options.backoff ?? new ExponentialBackoff();
    this.#metrics = options.metrics ?? defaultRuntimeMetrics();
    this.#metrics.workqueueDepth.set({ name: this.name }, 0);
  }

  add(key: string): void {
    if (this.#shuttingDown || this.#dirty.has(key)) return;
    this.#metrics.workqueueAdds.inc({ name: this.name });
    this.#dirty.add(key);
    this.#addedAt.set(key, this.#clock.now());
    if (this.#processing.has(key)) return;
    this.#enqueue(key);
  }

  /** Add `key` once `delayMs` has passed; an earlier pending schedule for the key wins. */
  addAfter(key: string, delayMs: number): void {
    if (this.#shuttingDown) return;
    if (delayMs <= 0) {
      this.add(key);
      return;
    }
    const readyAt = this.#clock.now() + delayMs;
    const scheduled = this.#waiting.get(key);
    if (scheduled !== undefined && scheduled <= readyAt) return;
    this.#waiting.set(key, readyAt);
    this.#clock.sleep(delayMs, this.#delays.signal).then(
      () => {
        // A later, earlier-scheduled sleeper may already have fired and cleared the entry.
        if (this.#waiting.get(key) !== readyAt) return;
        this.#waiting.delete(key);
        this.add(key);
      },
      () => {}, // aborted by shutdown
    );
  }

  /** Re-add after the key's backoff delay; counts as a retry. */
  addRateLimited(key: string): void {
    if (this.#shuttingDown) return;
    this.#metrics.workqueueRetries.inc({ name: this.name });
    this.addAfter(key, this.#backoff.when(key));
  }

  /** The key succeeded: its next failure starts from the base delay again. */
  forget(key: string): void {
    this.#backoff.forget(key);
  }

  numRequeues(key: string): number {
    return this.#backoff.numRequeues(key);
  }

  /** The next key to work on; resolves `{shutdown: true}` once the queue is shut down (and drained). */
  get(): Promise<QueueItem> {
    const item = this.#take();
    if (item) return Promise.resolve(item);
    return new Promise((resolve) => this.#waiters.push(resolve));
  }

  /** The worker finished `key`; if it was re-added meanwhile it is queued again now. */
  done(key: string): void {
    if (!this.#processing.delete(key)) return;
    const started = this.#startedAt.get(key);
    this.#startedAt.delete(key);
    if (started !== undefined) {
      this.#metrics.workqueueWorkDuration.observe({ name: this.name }, (this.#clock.now() - started) / 1000);
    }
    if (this.#dirty.has(key)) this.#enqueue(key);
    this.#checkDrained();
  }

  len(): number {
    return this.#queue.length;
  }

  /** Keys waiting, being processed, or scheduled for later. */
  has(key: string): boolean {
    return this.#dirty.has(key) || this.#processing.has(key) || this.#waiting.has(key);
  }

  isShuttingDown(): boolean {
    return this.#shuttingDown;
  }

  /** Stop at once: waiting keys are dropped and every `get` resolves `{shutdown: true}`. */
  shutDown(): void {
    this.#shuttingDown = true;
    this.#delays.abort();
    this.#waiting.clear();
    this.#queue.length = 0;
    this.#dirty.clear();
    this.#metrics.workqueueDepth.set({ name: this.name }, 0);
    for (const waiter of this.#waiters.splice(0)) waiter({ key: undefined, shutdown: true });
    this.#checkDrained();
  }

  /**
   * Stop taking new keys, hand out the keys already waiting, and resolve once every key
   * handed out is done. Delayed adds that have not fired yet are dropped.
   */
  shutDownWithDrain(): Promise<void> {
    this.#shuttingDown = true;
    this.#draining = true;
    this.#delays.abort();
    this.#waiting.clear();
    const finished = new Promise<void>((resolve) => this.#drained.push(resolve));
    if (this.#queue.length === 0) {
      for (const waiter of this.#waiters.splice(0)) waiter({ key: undefined, shutdown: true });
    }
    this.#checkDrained();
    return finished;
  }

  #enqueue(key: string): void {
    const waiter = this.#waiters.shift();
    if (waiter) {
      this.#queue.push(key);
      // #take cannot fail: the key was just pushed.
      waiter(this.#take()!);
      return;
    }
    this.#queue.push(key);
    this.#metrics.workqueueDepth.set({ name: this.name }, this.#queue.length);
  }

  #take(): QueueItem | undefined {
    const key = this.#queue.shift();
    if (key === undefined) {
      if (this.#shuttingDown) return { key: undefined, shutdown: true };
      return undefined;
    }
    if (this.#shuttingDown && !this.#draining) return { key: undefined, shutdown: true };
    this.#metrics.workqueueDepth.set({ name: this.name }, this.#queue.length);
    const now = this.#clock.now();
    const added = this.#addedAt.get(key);
    this.#addedAt.delete(key);
    if (added !== undefined)
      this.#metrics.workqueueQueueDuration.observe({ name: this.name }, (now - added) / 1000);
    this.#dirty.delete(key);
    this.#processing.add(key);
    this.#startedAt.set(key, now);
    if (this.#draining && this.#queue.length === 0) {
      for (const waiter of this.#waiters.splice(0)) waiter({ key: undefined, shutdown: true });
    }
    return { key, shutdown: false };
  }

  #checkDrained(): void {
    if (!this.#shuttingDown) return;
    if (this.#draining && (this.#queue.length > 0 || this.#processing.size > 0)) return;
    if (!this.#draining && this.#processing.size > 0) return;
    for (const resolve of this.#drained.splice(0)) resolve();
  }
}
