import { randomBytes } from "node:crypto";
import { type Clock, systemClock } from "../util/clock.ts";
import { type Logger, silentLogger } from "../util/log.ts";
import { isNotFound, type KubeClient, type KubeObject, Resources } from "./client.ts";
import { formatMicroTime, formatTime } from "./time.ts";

export type EventType = "Normal" | "Warning";

export interface EventInput {
  type: EventType;
  /** Machine-readable, UpperCamelCase: why it happened (`Mirrored`, `AuthFailed`). */
  reason: string;
  /** What was done or failed (`Sync`, `Prewarm`). */
  action: string;
  /** Human-readable, up to 1 kB. */
  note: string;
}

export interface EventRecorderOptions {
  client: KubeClient;
  reportingController: string;
  reportingInstance: string;
  clock?: Clock;
  log?: Logger;
  /** The same event again within this window bumps a counter instead of creating an Event (default 10 min). */
  dedupWindowMs?: number;
}

interface Recorded {
  api: "events.k8s.io" | "core";
  name: string;
  namespace: string;
  count: number;
  lastObserved: number;
}

type Api = "events.k8s.io" | "core";

/**
 * Records Kubernetes Events about objects, preferring events.k8s.io/v1 and falling back to
 * core/v1 when the cluster does not serve it. Repeats (same object, type, reason, action
 * and note within the window) update one Event's series / count instead of creating more.
 * Recording never throws: an event lost is logged, never a failed reconcile.
 */
export class EventRecorder {
  readonly #client: KubeClient;
  readonly #options: EventRecorderOptions;
  readonly #clock: Clock;
  readonly #log: Logger;
  readonly #windowMs: number;
  readonly #recorded = new Map<string, Recorded>();
  /** The cutoff of the last sweep of `#recorded`. */
  #sweptAt: number | undefined;
  readonly #pending = new Map<string, Promise<void>>();
  #api: Api = "events.k8s.io";

  constructor(options: EventRecorderOptions) {
    this.#client = options.client;
    this.#options = options;
    this.#clock = options.clock ?? systemClock;
    this.#log = (options.log ?? silentLogger()).child({ component: "events" });
    this.#windowMs = options.dedupWindowMs ?? 10 * 60_000;
  }

  /** Record an event about `regarding`; resolves once it is written (or given up on). */
  event(regarding: KubeObject, input: EventInput): Promise<void> {
    const meta = regarding.metadata ?? {};
    const dedupKey = [
      meta.uid ?? "",
      regarding.kind,
      meta.namespace,
      meta.name,
      input.type,
      input.reason,
      input.action,
      input.note,
    ].join("\u0000");
    // One write at a time per dedup key, so two quick repeats cannot both create an Event.
    const previous = this.#pending.get(dedupKey) ?? Promise.resolve();
    const next = previous.then(() => this.#record(dedupKey, regarding, input));
    this.#pending.set(dedupKey, next);
    next.finally(() => {
      if (this.#pending.get(dedupKey) === next) this.#pending.delete(dedupKey);
    });
    return next;
  }

  async #record(dedupKey: string, regarding: KubeObject, input: EventInput): Promise<void> {
    const now = this.#clock.now();
    this.#forgetOlderThan(now - this.#windowMs);
    const seen = this.#recorded.get(dedupKey);
    try {
      if (seen && now - seen.lastObserved <= this.#windowMs) {
        try {
          await this.#bump(seen, now);
          return;
        } catch (err) {
          if (!isNotFound(err)) throw err;
          // The Event expired (TTL) or was deleted: start a new one.
        }
      }
      this.#recorded.set(dedupKey, await this.#create(regarding, input, now));
    } catch (err) {
      this.#log.warn({ reason: input.reason, error: (err as Error).message }, "could not record event");
    }
  }

  async #create(regarding: KubeObject, input: EventInput, now: number): Promise<Recorded> {
    const meta = regarding.metadata ?? {};
    const namespace = meta.namespace || "default";
    const name = `${meta.name ?? "unknown"}.${randomBytes(8).toString("hex")}`;
    if (this.#api === "events.k8s.io") {
      try {
        await this.#client.resource(Resources.Event).create({
          metadata: { name, namespace },
          eventTime: formatMicroTime(now),
          reportingController: this.#options.reportingController,
          reportingInstance: this.#options.reportingInstance,
          action: input.action,
          reason: input.reason,
          note: input.note.slice(0, 1024),
          type: input.type,
          regarding: objectReference(regarding),
        } as KubeObject);
        return { api: "events.k8s.io", name, namespace, count: 1, lastObserved: now };
      } catch (err) {
        if (!isNotFound(err)) throw err;
        this.#log.info("events.k8s.io/v1 not served; recording core/v1 Events");
        this.#api = "core";
      }
    }
    await this.#client.resource(Resources.CoreEvent).create({
      metadata: { name, namespace },
      involvedObject: objectReference(regarding),
      reason: input.reason,
      message: input.note.slice(0, 1024),
      type: input.type,
      action: input.action,
      count: 1,
      firstTimestamp: formatTime(now),
      lastTimestamp: formatTime(now),
      source: { component: this.#options.reportingController },
      reportingComponent: this.#options.reportingController,
      reportingInstance: this.#options.reportingInstance,
    } as KubeObject);
    return { api: "core", name, namespace, count: 1, lastObserved: now };
  }

  async #bump(seen: Recorded, now: number): Promise<void> {
    const count = seen.count + 1;
    if (seen.api === "events.k8s.io") {
      await this.#client
        .resource(Resources.Event)
        .patch(
          seen.name,
          { series: { count, lastObservedTime: formatMicroTime(now) } },
          { namespace: seen.namespace },
        );
    } else {
      await this.#client
        .resource(Resources.CoreEvent)
        .patch(seen.name, { count, lastTimestamp: formatTime(now) }, { namespace: seen.namespace });
    }
    seen.count = count;
    seen.lastObserved = now;
  }

  #forgetOlderThan(cutoff: number): void {
    if (this.#recorded.size < 1000) return;
    // At most one sweep per tenth of the window: sweeping on every event once a thousand objects
    // had one made each event a pass over all of them (at 2,000 ModelImages, a sync's largest
    // allocation after the plan; bench:controller). Entries stay at most 10% past the window.
    if (this.#sweptAt !== undefined && cutoff - this.#sweptAt < this.#windowMs / 10) return;
    this.#sweptAt = cutoff;
    for (const [key, recorded] of this.#recorded) {
      if (recorded.lastObserved < cutoff) this.#recorded.delete(key);
    }
  }
}

function objectReference(obj: KubeObject): Record<string, unknown> {
  return {
    apiVersion: obj.apiVersion,
    kind: obj.kind,
    name: obj.metadata?.name,
    namespace: obj.metadata?.namespace,
    uid: obj.metadata?.uid,
    resourceVersion: obj.metadata?.resourceVersion,
  };
}
