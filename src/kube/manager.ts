import type { Server } from "node:http";
import type { AddressInfo } from "node:net";
import { hostname } from "node:os";
import { defaultRuntimeMetrics, type RuntimeMetrics } from "../metrics.ts";
import { type Clock, systemClock } from "../util/clock.ts";
import { type Logger, silentLogger } from "../util/log.ts";
import { nodeHttp } from "../util/nodeHttp.ts";
import { compareStrings } from "../util/order.ts";
import type { KubeClient, KubeObject } from "./client.ts";
import { Controller, type ControllerOptions, type StuckReconcile } from "./controller.ts";
import { Informer, type InformerOptions } from "./informer.ts";
import { LeaderElector } from "./leaderElection.ts";

export interface ManagerOptions {
  client: KubeClient;
  clock?: Clock;
  metrics?: RuntimeMetrics;
  log?: Logger;
  /** Run controllers only while holding this Lease; omit to run them unconditionally. */
  leaderElection?: {
    namespace: string;
    name: string;
    identity?: string;
    leaseDurationMs?: number;
    renewDeadlineMs?: number;
    retryPeriodMs?: number;
    /** Release the lease on stop (default true); false leaves it to expire, as after a crash. */
    releaseOnCancel?: boolean;
  };
  /** Serve /healthz, /readyz and /metrics on this port (0 picks a free one); omit for no server. */
  healthPort?: number;
  healthHost?: string;
  /** How long in-flight reconciles get to finish on stop before they are abandoned (default 10 s). */
  shutdownDeadlineMs?: number;
}

/**
 * Wires informers, controllers, leader election and the health endpoint together.
 * Informers run on every replica (a standby has a warm cache); controllers run only on the
 * leader, after every informer has synced. `stop()` (or SIGTERM/SIGINT when `start` was asked
 * to handle signals) stops taking work, gives in-flight reconciles the deadline, releases the
 * lease, stops informers and closes the health server.
 */
export class Manager {
  readonly client: KubeClient;
  readonly metrics: RuntimeMetrics;
  readonly #options: ManagerOptions;
  readonly #clock: Clock;
  readonly #log: Logger;
  readonly #informers: Informer<KubeObject>[] = [];
  readonly #shared = new Map<string, Informer<KubeObject>>();
  /** Identities of transform functions, for the sharing key. */
  readonly #transforms = new Map<unknown, number>();
  readonly #controllers: Controller[] = [];
  readonly #stopSignal = new AbortController();
  #elector: LeaderElector | undefined;
  #electing: Promise<void> | undefined;
  #server: Server | undefined;
  #started = false;
  #stopping: Promise<void> | undefined;
  #signalHandler: (() => void) | undefined;
  #controllersRunning = false;
  #fatal: Error | undefined;
  #resolveStopped: () => void = () => {};
  /** Resolves once the manager has stopped (after `stop()` or a handled signal). */
  readonly stopped: Promise<void> = new Promise((resolve) => {
    this.#resolveStopped = resolve;
  });

  constructor(options: ManagerOptions) {
    this.#options = options;
    this.client = options.client;
    this.#clock = options.clock ?? systemClock;
    this.metrics = options.metrics ?? defaultRuntimeMetrics();
    this.#log = options.log ?? silentLogger();
  }

  /**
   * One informer per kind and scope, shared by every controller that asks for it (client-go's
   * shared informer factory): the ModelImage controller, the pre-warm planner, the gates and the
   * webhook would otherwise each cache every ModelImage and Node. Asking again with the same
   * type, namespace, selectors and transform returns the same informer.
   */
  addInformer<T extends KubeObject>(
    options: Omit<InformerOptions, "client" | "clock" | "metrics" | "log">,
  ): Informer<T> {
    const key = this.#informerKey(options);
    const shared = this.#shared.get(key);
    if (shared) return shared as unknown as Informer<T>;
    const informer = new Informer<T>({
      ...options,
      client: this.client,
      clock: this.#clock,
      metrics: this.metrics,
      log: this.#log,
    });
    this.#informers.push(informer as unknown as Informer<KubeObject>);
    this.#shared.set(key, informer as unknown as Informer<KubeObject>);
    if (this.#started) informer.start();
    return informer;
  }

  #informerKey(options: Omit<InformerOptions, "client" | "clock" | "metrics" | "log">): string {
    const { type, transform, ...rest } = options;
    let transformId = 0;
    if (transform) {
      transformId = this.#transforms.get(transform) ?? this.#transforms.size + 1;
      this.#transforms.set(transform, transformId);
    }
    const scope = Object.entries(rest)
      .filter(([, value]) => value !== undefined)
      .sort(([a], [b]) => compareStrings(a, b));
    return JSON.stringify([type.group ?? "", type.version, type.plural, transformId, scope]);
  }

  addController(options: Omit<ControllerOptions, "clock" | "metrics" | "log">): Controller {
    const controller = new Controller({
      ...options,
      clock: this.#clock,
      metrics: this.metrics,
      log: this.#log,
    });
    this.#controllers.push(controller);
    return controller;
  }

  /** Start everything; resolves once started (not when stopped — see `stop`). */
  async start(options: { handleSignals?: boolean } = {}): Promise<void> {
    if (this.#started) return;
    this.#started = true;
    if (options.handleSignals) {
      this.#signalHandler = () => {
        this.#log.info("signal received; shutting down");
        void this.stop();
      };
      process.once("SIGTERM", this.#signalHandler);
      process.once("SIGINT", this.#signalHandler);
    }
    if (this.#options.healthPort !== undefined) await this.#listen(this.#options.healthPort);
    for (const informer of this.#informers) informer.start();
    const election = this.#options.leaderElection;
    if (!election) {
      this.#electing = this.#runControllersUnconditionally();
      return;
    }
    this.#elector = new LeaderElector({
      ...election,
      identity: election.identity ?? `${hostname()}_${process.pid}`,
      client: this.client,
      clock: this.#clock,
      metrics: this.metrics,
      log: this.#log,
      onStartedLeading: (signal) => this.#startControllers(signal),
      // Shutting down: reconciles get the deadline, then the Lease is released. Lost (another
      // replica holds it, or renewing failed past the renew deadline): the new leader may already
      // be writing, so in-flight reconciles are aborted at once and write nothing more.
      onStoppedLeading: () => this.#stopControllers(this.#stopSignal.signal.aborted ? undefined : 0),
    });
    this.#electing = this.#elector.run(this.#stopSignal.signal).catch((err: Error) => {
      // Leader election cannot go on (its namespace is missing): stop rather than stall unseen.
      this.#fatal = err;
      this.#log.error({ err }, `leader election failed: ${err.message}`);
      void this.stop();
    });
  }

  /** Why the manager stopped by itself (leader election could not go on), if it did. */
  get fatalError(): Error | undefined {
    return this.#fatal;
  }

  isLeader(): boolean {
    return this.#elector ? this.#elector.isLeader() : this.#controllersRunning;
  }

  /** Every informer has listed once. */
  ready(): boolean {
    return this.#informers.every((informer) => informer.hasSynced());
  }

  /**
   * Reconciles running past their budget plus grace (each holds a worker and ignores its abort):
   * a wedged controller, which /readyz reports.
   */
  stuck(): StuckReconcile[] {
    return this.#controllers.flatMap((controller) => controller.stuck());
  }

  /** Running and not shutting down. */
  alive(): boolean {
    return this.#started && this.#stopping === undefined;
  }

  /** The health server's address, once listening. */
  get healthAddress(): { host: string; port: number } | undefined {
    const address = this.#server?.address() as AddressInfo | null | undefined;
    return address ? { host: address.address, port: address.port } : undefined;
  }

  async waitForSync(signal?: AbortSignal): Promise<void> {
    await Promise.all(this.#informers.map((informer) => informer.waitForSync(signal)));
  }

  stop(): Promise<void> {
    this.#stopping ??= this.#shutdown();
    return this.#stopping;
  }

  async #shutdown(): Promise<void> {
    if (this.#signalHandler) {
      process.removeListener("SIGTERM", this.#signalHandler);
      process.removeListener("SIGINT", this.#signalHandler);
    }
    this.#stopSignal.abort();
    await this.#electing; // stops controllers within the deadline, then releases the lease
    await this.#stopControllers();
    await Promise.all(this.#informers.map((informer) => informer.stop()));
    await new Promise<void>((resolve) => (this.#server ? this.#server.close(() => resolve()) : resolve()));
    this.#server?.closeAllConnections();
    this.#log.info("manager stopped");
    this.#resolveStopped();
  }

  async #runControllersUnconditionally(): Promise<void> {
    await this.#startControllers(this.#stopSignal.signal);
  }

  async #startControllers(signal: AbortSignal): Promise<void> {
    try {
      await this.waitForSync(signal);
    } catch {
      return; // leadership or the manager ended before the caches filled
    }
    if (signal.aborted) return;
    for (const controller of this.#controllers) controller.start();
    this.#controllersRunning = true;
  }

  async #stopControllers(deadlineMs = this.#options.shutdownDeadlineMs ?? 10_000): Promise<void> {
    if (!this.#controllersRunning) return;
    this.#controllersRunning = false;
    await Promise.all(this.#controllers.map((controller) => controller.stop({ deadlineMs })));
  }

  #listen(port: number): Promise<void> {
    const server = nodeHttp.createServer(async (req, res) => {
      const path = (req.url ?? "/").split("?")[0];
      if (path === "/healthz" || path === "/livez") {
        const ok = this.alive();
        res.writeHead(ok ? 200 : 503, { "content-type": "text/plain" }).end(ok ? "ok" : "shutting down");
      } else if (path === "/readyz") {
        const unsynced = this.#informers.filter((i) => !i.hasSynced()).map((i) => i.resourceLabel);
        const stuck = this.stuck();
        const ok = this.alive() && unsynced.length === 0 && stuck.length === 0;
        let why = "shutting down";
        if (unsynced.length) why = `informers not synced: ${unsynced.join(", ")}`;
        else if (stuck.length)
          why = `reconciles stuck past their deadline: ${stuck
            .slice(0, 5)
            .map((s) => `${s.controller} ${s.key} (${Math.round(s.runningMs / 1000)}s)`)
            .join(", ")}${stuck.length > 5 ? ` and ${stuck.length - 5} more` : ""}`;
        res.writeHead(ok ? 200 : 503, { "content-type": "text/plain" }).end(ok ? "ok" : `not ready: ${why}`);
      } else if (path === "/metrics") {
        try {
          const body = await this.metrics.registry.metrics();
          res.writeHead(200, { "content-type": this.metrics.registry.contentType }).end(body);
        } catch (err) {
          res.writeHead(500).end((err as Error).message);
        }
      } else {
        res.writeHead(404).end("not found");
      }
    });
    this.#server = server;
    return new Promise((resolve, reject) => {
      server.once("error", reject);
      server.listen(port, this.#options.healthHost ?? "0.0.0.0", () => {
        server.off("error", reject);
        resolve();
      });
    });
  }
}
