import { defaultRuntimeMetrics, type RuntimeMetrics } from "../metrics.ts";
import { type Clock, systemClock } from "../util/clock.ts";
import { isStowageError } from "../util/errors.ts";
import { type Logger, silentLogger } from "../util/log.ts";
import { ExponentialBackoff, WorkQueue } from "./workqueue.ts";

/** The abort reason of a reconcile's timer once the reconcile is over. */
const FINISHED = "reconcile finished";

/** What a reconcile asks for next: nothing (`done`) or another pass after a delay. */
export interface Result {
  requeueAfterMs?: number;
}

export function done(): Result {
  return {};
}

export function requeueAfter(ms: number): Result {
  return { requeueAfterMs: ms };
}

export interface ReconcileContext {
  /**
   * Aborted when the controller stops and the shutdown deadline has passed (shutdown, or the
   * lease lost): write nothing after it fires.
   */
  signal: AbortSignal;
  /**
   * Aborted when this reconcile's time budget (`reconcileTimeoutMs`) runs out, when the key is
   * cancelled (`Controller.cancel`: the object is being deleted, its spec changed) or with
   * `signal`. Network work takes this one; a reconcile may still report what happened once it
   * fired (`budgetReason` says why), as long as `signal` has not fired.
   */
  budget: AbortSignal;
  log: Logger;
}

/** Why `ctx.budget` fired: the time budget ran out, the key was cancelled, or the controller stopped. */
export function budgetReason(ctx: ReconcileContext): "timeout" | "cancelled" | "stopped" | undefined {
  if (!ctx.budget.aborted) return undefined;
  if (ctx.signal.aborted) return "stopped";
  return ctx.budget.reason instanceof ReconcileTimeout ? "timeout" : "cancelled";
}

/** The abort reason of a reconcile whose time budget ran out. */
export class ReconcileTimeout extends Error {
  readonly timeoutMs: number;
  constructor(controller: string, key: string, timeoutMs: number) {
    super(`reconcile of ${key} by ${controller} ran past its ${timeoutMs} ms budget`);
    this.name = "ReconcileTimeout";
    this.timeoutMs = timeoutMs;
  }
}

/** A reconcile still running past its budget plus grace: it ignored its budget signal. */
export interface StuckReconcile {
  controller: string;
  key: string;
  runningMs: number;
}

/** Level-triggered: given a key ("ns/name" or "name"), make the world match. Throw to retry with backoff. */
export type Reconcile = (key: string, ctx: ReconcileContext) => Promise<Result>;

/** Anything that reports object changes: an Informer, or a test source. */
export interface EventSource<T> {
  addEventHandler(handler: EventHandler<T>): () => void;
}

export interface EventHandler<T> {
  add?(obj: T): void;
  update?(oldObj: T, newObj: T): void;
  delete?(obj: T): void;
}

export interface KeyedObject {
  metadata?: { name?: string; namespace?: string };
}

/** The work-queue key of an object: "namespace/name", or "name" when cluster-scoped. */
export function objectKey(obj: KeyedObject): string {
  const name = obj.metadata?.name ?? "";
  const namespace = obj.metadata?.namespace;
  return namespace ? `${namespace}/${name}` : name;
}

export function splitKey(key: string): { namespace?: string; name: string } {
  const slash = key.indexOf("/");
  if (slash < 0) return { name: key };
  return { namespace: key.slice(0, slash), name: key.slice(slash + 1) };
}

export interface ControllerOptions {
  name: string;
  reconcile: Reconcile;
  workers?: number;
  clock?: Clock;
  metrics?: RuntimeMetrics;
  log?: Logger;
  backoff?: { baseMs?: number; maxMs?: number };
  /**
   * Each reconcile's time budget: `ctx.budget` aborts after this long, so one object whose
   * upstream accepts a connection and never answers cannot hold a worker for minutes. Unset: no
   * budget (the reconcile still gets `signal`).
   */
  reconcileTimeoutMs?: number;
  /**
   * A reconcile running this long past its budget ignored the abort: `stuck()` reports it
   * (readiness then fails; default 30 s).
   */
  stuckGraceMs?: number;
}

interface InFlight {
  startedAt: number;
  cancel: AbortController;
}

interface Watch {
  source: EventSource<unknown>;
  toKeys: (obj: unknown) => string[];
}

/**
 * N workers draining one rate-limited queue into a reconcile function. Informers feed the
 * queue: the primary maps an object to its own key, secondaries map to the keys they affect.
 * Restartable: each start gets a fresh queue (a new leadership term starts clean).
 */
export class Controller {
  readonly name: string;
  readonly #reconcile: Reconcile;
  readonly #workers: number;
  readonly #clock: Clock;
  readonly #metrics: RuntimeMetrics;
  readonly #log: Logger;
  readonly #backoff: { baseMs?: number; maxMs?: number };
  readonly #reconcileTimeoutMs: number | undefined;
  readonly #stuckGraceMs: number;
  readonly #watches: Watch[] = [];
  readonly #inFlight = new Map<string, InFlight>();
  #queue: WorkQueue | undefined;
  #unsubscribe: (() => void)[] = [];
  #workerLoops: Promise<void>[] = [];
  #abort = new AbortController();

  constructor(options: ControllerOptions) {
    this.name = options.name;
    this.#reconcile = options.reconcile;
    this.#workers = options.workers ?? 2;
    this.#clock = options.clock ?? systemClock;
    this.#metrics = options.metrics ?? defaultRuntimeMetrics();
    this.#log = (options.log ?? silentLogger()).child({ controller: options.name });
    this.#backoff = options.backoff ?? {};
    this.#reconcileTimeoutMs = options.reconcileTimeoutMs;
    this.#stuckGraceMs = options.stuckGraceMs ?? 30_000;
  }

  /**
   * Abort the budget of `key`'s reconcile in flight, if any (its object is being deleted, or its
   * spec changed: the work under way is moot). The key itself is queued by whoever calls this.
   */
  cancel(key: string, reason = "cancelled"): boolean {
    const inFlight = this.#inFlight.get(key);
    if (!inFlight) return false;
    inFlight.cancel.abort(new Error(`reconcile of ${key} ${reason}`));
    return true;
  }

  /**
   * Reconciles running past their budget plus the grace: they ignore their budget signal and hold
   * a worker each. Empty without a budget.
   */
  stuck(): StuckReconcile[] {
    if (this.#reconcileTimeoutMs === undefined) return [];
    const limit = this.#reconcileTimeoutMs + this.#stuckGraceMs;
    const now = this.#clock.now();
    const stuck: StuckReconcile[] = [];
    for (const [key, inFlight] of this.#inFlight) {
      const runningMs = now - inFlight.startedAt;
      if (runningMs > limit) stuck.push({ controller: this.name, key, runningMs });
    }
    return stuck;
  }

  /** Reconcile the keys `toKeys` derives from every change `source` reports (default: the object's own key). */
  watches<T>(
    source: EventSource<T>,
    toKeys: (obj: T) => string[] = (obj) => [objectKey(obj as KeyedObject)],
  ): this {
    this.#watches.push({
      source: source as EventSource<unknown>,
      toKeys: toKeys as (obj: unknown) => string[],
    });
    return this;
  }

  get running(): boolean {
    return this.#queue !== undefined && !this.#queue.isShuttingDown();
  }

  /** Queue a key by hand (tests, or a reconcile that needs another object revisited). */
  enqueue(key: string): void {
    this.#queue?.add(key);
  }

  start(): void {
    if (this.running) return;
    const queue = new WorkQueue({
      name: this.name,
      clock: this.#clock,
      metrics: this.#metrics,
      backoff: new ExponentialBackoff(this.#backoff),
    });
    this.#queue = queue;
    this.#abort = new AbortController();
    for (const watch of this.#watches) {
      const enqueueAll = (obj: unknown) => {
        for (const key of watch.toKeys(obj)) queue.add(key);
      };
      this.#unsubscribe.push(
        watch.source.addEventHandler({
          add: enqueueAll,
          update: (_old, obj) => enqueueAll(obj),
          delete: enqueueAll,
        }),
      );
    }
    this.#workerLoops = Array.from({ length: this.#workers }, () => this.#work(queue, this.#abort.signal));
    this.#log.info({ workers: this.#workers }, "controller started");
  }

  /**
   * Stop taking work, give in-flight reconciles `deadlineMs` to finish, then abort their
   * signal and stop waiting for them.
   */
  async stop(options: { deadlineMs?: number } = {}): Promise<void> {
    const queue = this.#queue;
    if (!queue || queue.isShuttingDown()) return;
    for (const unsubscribe of this.#unsubscribe.splice(0)) unsubscribe();
    queue.shutDown();
    const workers = Promise.all(this.#workerLoops).then(() => true);
    const deadline = new AbortController();
    const timedOut = this.#clock.sleep(options.deadlineMs ?? 10_000, deadline.signal).then(
      () => false,
      () => false,
    );
    const finished = await Promise.race([workers, timedOut]);
    deadline.abort();
    if (!finished) {
      this.#log.warn("reconciles still running at the shutdown deadline; abandoning them");
      this.#abort.abort(new Error(`controller ${this.name} stopped`));
    }
    this.#log.info("controller stopped");
  }

  async #work(queue: WorkQueue, signal: AbortSignal): Promise<void> {
    for (;;) {
      const item = await queue.get();
      if (item.shutdown) return;
      await this.#process(queue, item.key, signal);
    }
  }

  async #process(queue: WorkQueue, key: string, signal: AbortSignal): Promise<void> {
    const started = this.#clock.now();
    const labels = { controller: this.name };
    const cancel = new AbortController();
    this.#inFlight.set(key, { startedAt: started, cancel });
    const timer = new AbortController();
    const timeoutMs = this.#reconcileTimeoutMs;
    if (timeoutMs !== undefined) {
      this.#clock.sleep(timeoutMs, timer.signal).then(
        () => cancel.abort(new ReconcileTimeout(this.name, key, timeoutMs)),
        () => {}, // finished in time
      );
    }
    const budget = AbortSignal.any([signal, cancel.signal]);
    try {
      const result = await this.#reconcile(key, { signal, budget, log: this.#log.child({ key }) });
      queue.forget(key);
      if (result.requeueAfterMs !== undefined) {
        queue.addAfter(key, result.requeueAfterMs);
        this.#metrics.reconcileTotal.inc({ ...labels, result: "requeue_after" });
      } else {
        this.#metrics.reconcileTotal.inc({ ...labels, result: "success" });
      }
    } catch (err) {
      this.#metrics.reconcileTotal.inc({ ...labels, result: "error" });
      const reason = isStowageError(err) ? err.reason : "Internal";
      const message = err instanceof Error ? err.message : String(err);
      this.#log.warn({ key, reason, error: message, retries: queue.numRequeues(key) }, "reconcile failed");
      queue.addRateLimited(key);
    } finally {
      // A reason of our own: abort() without one builds a DOMException with a stack trace,
      // which at thousands of reconciles was a visible part of the controller's CPU.
      timer.abort(FINISHED);
      this.#inFlight.delete(key);
      this.#metrics.reconcileTime.observe(labels, (this.#clock.now() - started) / 1000);
      queue.done(key);
    }
  }
}
