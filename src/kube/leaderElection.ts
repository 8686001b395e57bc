import { defaultRuntimeMetrics, type RuntimeMetrics } from "../metrics.ts";
import { type Clock, systemClock } from "../util/clock.ts";
import { StowageError } from "../util/errors.ts";
import { type Logger, silentLogger } from "../util/log.ts";
import {
  isConflict,
  isNotFound,
  type KubeClient,
  type KubeObject,
  type ObjectClient,
  Resources,
} from "./client.ts";
import { formatMicroTime } from "./time.ts";

export interface LeaseSpec {
  holderIdentity?: string;
  leaseDurationSeconds?: number;
  acquireTime?: string;
  renewTime?: string;
  leaseTransitions?: number;
}

export interface Lease extends KubeObject {
  spec?: LeaseSpec;
}

export interface LeaderElectionOptions {
  client: KubeClient;
  namespace: string;
  /** The Lease's name. */
  name: string;
  /** Unique per replica, e.g. the pod name. */
  identity: string;
  leaseDurationMs?: number;
  renewDeadlineMs?: number;
  retryPeriodMs?: number;
  clock?: Clock;
  metrics?: RuntimeMetrics;
  log?: Logger;
  /** Called on becoming leader; `signal` aborts when leadership is lost or released. */
  onStartedLeading: (signal: AbortSignal) => void | Promise<void>;
  /** Called after leadership ends (lost or released); awaited before campaigning again. */
  onStoppedLeading?: () => void | Promise<void>;
  onNewLeader?: (identity: string) => void;
  /** Release the lease when `run` is cancelled (default true). False leaves it to expire, like a crash. */
  releaseOnCancel?: boolean;
}

/**
 * Leader election on a coordination.k8s.io/v1 Lease, as client-go's leaderelection:
 * candidates try every retryPeriod to acquire a Lease whose holder has not renewed it for
 * leaseDuration (judged by the local time we saw the record change, so clock skew between
 * replicas does not matter); the leader renews every retryPeriod and gives up leadership if
 * it could not renew for renewDeadline. Writes are PUTs with the read resourceVersion, so two
 * candidates can never both win. Releasing clears holderIdentity so another replica can take
 * over at once.
 */
export class LeaderElector {
  readonly identity: string;
  readonly #options: LeaderElectionOptions;
  readonly #leases: ObjectClient<Lease>;
  readonly #clock: Clock;
  readonly #metrics: RuntimeMetrics;
  readonly #log: Logger;
  readonly #leaseDurationMs: number;
  readonly #renewDeadlineMs: number;
  readonly #retryPeriodMs: number;
  #observed: Lease | undefined;
  #observedAt = 0;
  #leading = false;
  #leaderIdentity = "";

  constructor(options: LeaderElectionOptions) {
    this.#options = options;
    this.identity = options.identity;
    this.#leases = options.client.resource<Lease>(Resources.Lease);
    this.#clock = options.clock ?? systemClock;
    this.#metrics = options.metrics ?? defaultRuntimeMetrics();
    this.#log = (options.log ?? silentLogger()).child({ lease: `${options.namespace}/${options.name}` });
    this.#leaseDurationMs = options.leaseDurationMs ?? 15_000;
    this.#renewDeadlineMs = options.renewDeadlineMs ?? 10_000;
    this.#retryPeriodMs = options.retryPeriodMs ?? 2_000;
    if (this.#renewDeadlineMs >= this.#leaseDurationMs) {
      throw new Error("leader election: renewDeadline must be shorter than leaseDuration");
    }
    this.#metrics.leaderStatus.set({ name: options.name }, 0);
  }

  isLeader(): boolean {
    return this.#leading;
  }

  /** The last holder seen on the Lease ("" when none). */
  get leader(): string {
    return this.#leaderIdentity;
  }

  /**
   * Campaign, lead, and campaign again after losing the lease, until `signal` aborts. On abort
   * while leading, leadership ends (onStoppedLeading runs) and the lease is released.
   */
  async run(signal: AbortSignal): Promise<void> {
    while (!signal.aborted) {
      const acquired = await this.#acquire(signal);
      if (!acquired) break;
      const leadership = new AbortController();
      this.#setLeading(true);
      this.#log.info({ identity: this.identity }, "became leader");
      const leading = Promise.resolve()
        .then(() => this.#options.onStartedLeading(leadership.signal))
        .catch((err) => this.#log.error({ error: (err as Error).message }, "onStartedLeading failed"));
      await this.#renewUntilLost(signal);
      leadership.abort(new Error("leadership ended"));
      this.#setLeading(false);
      await leading;
      await this.#options.onStoppedLeading?.();
      if (signal.aborted) {
        if (this.#options.releaseOnCancel !== false) await this.release();
      } else {
        this.#log.warn({ identity: this.identity }, "lost leadership");
      }
    }
  }

  /** Give the lease up if we hold it, so another replica takes over without waiting for expiry. */
  async release(): Promise<boolean> {
    let lease = this.#observed;
    if (!lease || lease.spec?.holderIdentity !== this.identity) return false;
    for (let attempt = 1; ; attempt++) {
      const now = formatMicroTime(this.#clock.now());
      try {
        const released = await this.#leases.update({
          ...lease,
          spec: {
            ...lease.spec,
            holderIdentity: "",
            leaseDurationSeconds: 1,
            acquireTime: now,
            renewTime: now,
          },
        });
        this.#observe(released);
        this.#log.info("released the lease");
        return true;
      } catch (err) {
        // A renew the shutdown aborted may still have reached the server, so our copy is one
        // resourceVersion behind: read it again and release it if it is still ours.
        if (isConflict(err) && attempt < 3) {
          const current = await this.#leases
            .find(this.#options.name, this.#options.namespace)
            .catch(() => undefined);
          if (current?.spec?.holderIdentity === this.identity) {
            lease = current;
            continue;
          }
        }
        this.#log.warn({ error: (err as Error).message }, "could not release the lease");
        return false;
      }
    }
  }

  async #acquire(signal: AbortSignal): Promise<boolean> {
    while (!signal.aborted) {
      const attempt = AbortSignal.any([signal, AbortSignal.timeout(this.#renewDeadlineMs)]);
      if (await this.#tryAcquireOrRenew(attempt)) return true;
      if (!(await this.#sleep(jitter(this.#retryPeriodMs), signal))) return false;
    }
    return false;
  }

  /** Renew every retryPeriod; returns when renewing failed for renewDeadline, or on abort. */
  async #renewUntilLost(signal: AbortSignal): Promise<void> {
    let lastRenew = this.#clock.now();
    while (!signal.aborted) {
      if (!(await this.#sleep(this.#retryPeriodMs, signal))) return;
      const attempt = AbortSignal.any([signal, AbortSignal.timeout(this.#renewDeadlineMs)]);
      if (await this.#tryAcquireOrRenew(attempt)) {
        lastRenew = this.#clock.now();
        continue;
      }
      if (this.#observed?.spec?.holderIdentity && this.#observed.spec.holderIdentity !== this.identity)
        return;
      if (this.#clock.now() - lastRenew >= this.#renewDeadlineMs) return;
    }
  }

  async #tryAcquireOrRenew(signal: AbortSignal): Promise<boolean> {
    const { namespace, name } = this.#options;
    const now = this.#clock.now();
    const leaseDurationSeconds = Math.max(1, Math.ceil(this.#leaseDurationMs / 1000));
    try {
      const current = await this.#leases.find(name, namespace, { signal });
      if (!current) {
        const created = await this.#createLease(
          {
            metadata: { name, namespace },
            spec: {
              holderIdentity: this.identity,
              leaseDurationSeconds,
              acquireTime: formatMicroTime(now),
              renewTime: formatMicroTime(now),
              leaseTransitions: 0,
            },
          },
          { signal },
        );
        this.#observe(created);
        return true;
      }
      this.#observe(current);
      const spec = current.spec ?? {};
      const holder = spec.holderIdentity ?? "";
      const heldByUs = holder === this.identity;
      if (holder && !heldByUs) {
        const expiresAt = this.#observedAt + (spec.leaseDurationSeconds ?? leaseDurationSeconds) * 1000;
        if (this.#clock.now() < expiresAt) return false;
      }
      const updated = await this.#leases.update(
        {
          ...current,
          spec: {
            holderIdentity: this.identity,
            leaseDurationSeconds,
            acquireTime: heldByUs && spec.acquireTime ? spec.acquireTime : formatMicroTime(now),
            renewTime: formatMicroTime(now),
            leaseTransitions: heldByUs ? (spec.leaseTransitions ?? 0) : (spec.leaseTransitions ?? 0) + 1,
          },
        },
        { signal },
      );
      this.#observe(updated);
      return true;
    } catch (err) {
      if (err instanceof LeaderElectionNamespaceMissing) throw err;
      if (!isConflict(err) && !isNotFound(err)) {
        this.#log.warn({ error: (err as Error).message }, "lease acquire/renew failed");
      }
      return false;
    }
  }

  /**
   * Create the Lease; a missing namespace is fatal, not retried: campaigning would stall
   * silently forever, the controller never leading and never saying why.
   */
  async #createLease(lease: Lease, options: { signal: AbortSignal }): Promise<Lease> {
    try {
      return await this.#leases.create(lease, options);
    } catch (err) {
      if (isNotFound(err))
        throw new LeaderElectionNamespaceMissing(this.#options.namespace, this.#options.name, err);
      throw err;
    }
  }

  /** Remember the record and when we saw it change: expiry is judged on our own clock. */
  #observe(lease: Lease): void {
    const previous = this.#observed;
    const changed =
      !previous ||
      previous.spec?.holderIdentity !== lease.spec?.holderIdentity ||
      previous.spec?.renewTime !== lease.spec?.renewTime ||
      previous.metadata?.resourceVersion !== lease.metadata?.resourceVersion;
    this.#observed = lease;
    if (changed) this.#observedAt = this.#clock.now();
    const holder = lease.spec?.holderIdentity ?? "";
    if (holder !== this.#leaderIdentity) {
      this.#leaderIdentity = holder;
      if (holder) this.#options.onNewLeader?.(holder);
    }
  }

  #setLeading(leading: boolean): void {
    this.#leading = leading;
    this.#metrics.leaderStatus.set({ name: this.#options.name }, leading ? 1 : 0);
  }

  async #sleep(ms: number, signal: AbortSignal): Promise<boolean> {
    try {
      await this.#clock.sleep(ms, signal);
      return true;
    } catch {
      return false;
    }
  }
}

/** The Lease's namespace does not exist: leader election cannot ever succeed. */
export class LeaderElectionNamespaceMissing extends StowageError {
  constructor(namespace: string, name: string, cause: unknown) {
    super(
      "NotFound",
      `cannot create the leader-election Lease ${namespace}/${name}: namespace "${namespace}" does not exist; create it, or point --leader-election-namespace (POD_NAMESPACE) at the controller's own namespace`,
      { cause },
    );
    this.name = "LeaderElectionNamespaceMissing";
  }
}

/** client-go's wait.Jitter with factor 1.2: spread candidates so they do not retry in lockstep. */
function jitter(ms: number): number {
  return ms + Math.random() * ms * 0.2;
}
