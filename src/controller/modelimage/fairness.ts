/**
 * Fairness between upstream hosts: a ModelImage sync holds one slot of each upstream host its
 * variants name, and a host has at most `perHost` slots, below the worker count. Four ModelImages
 * on an upstream that accepts connections and never answers then hold two of four workers, not
 * all of them; a key whose host is full is parked (its worker goes to the next key) and queued
 * again as soon as that host frees a slot.
 *
 * Hosts that recently let a sync time out are "slow": together they get `perHost` slots too, so
 * four ModelImages on four different hung upstreams hold at most half the workers once each has
 * timed out once (the first round is bounded by the check deadline). A slow host is forgiven after
 * `slowForMs` or its first answered check.
 *
 * A freed slot wakes one parked key, the longest parked, not all of them: with 2,000 ModelImages
 * on one registry, waking every parked key at each release made each sync cost a pass over all
 * the others (each woken key re-read its spec and parked again), which kept the controller busy
 * and allocating long after the last sync (bench:controller). A woken key that does not come back
 * for its slot (deleted, suspended, now parked on another host) passes it on (`forget`, or its
 * next `tryAcquire`), so a wake-up is never lost; the reconciler's late recheck is the safety net.
 *
 * Hand-written rather than p-queue/p-limit: those queue the work and keep a worker awaiting it;
 * here the point is to give the worker back and come back later through the work queue.
 */

/** The parking spot of keys waiting for the shared slots of slow hosts. */
const SLOW_HOSTS = "\u0000slow upstream hosts";

export class UpstreamSlots {
  readonly perHost: number;
  readonly #inUse = new Map<string, number>();
  readonly #slowUntil = new Map<string, number>();
  readonly #now: () => number;
  readonly #slowForMs: number;
  /** host → keys waiting for one of its slots, longest parked first */
  readonly #parked = new Map<string, Set<string>>();
  /** key → hosts whose freed slot it was woken for and has not yet come back for */
  readonly #wokenFor = new Map<string, Set<string>>();
  readonly #wake: (key: string) => void;

  /** `wake(key)` queues a parked key again once a host it waits for frees a slot. */
  constructor(
    perHost: number,
    wake: (key: string) => void,
    options: { now?: () => number; slowForMs?: number } = {},
  ) {
    if (!Number.isInteger(perHost) || perHost < 1) {
      throw new RangeError(`slots per upstream host must be a whole number of at least 1, got ${perHost}`);
    }
    this.perHost = perHost;
    this.#wake = wake;
    this.#now = options.now ?? Date.now;
    this.#slowForMs = options.slowForMs ?? 10 * 60_000;
  }

  /** `host` let a sync time out: it shares the slow hosts' slots for a while. */
  markSlow(host: string): void {
    this.#slowUntil.set(host, this.#now() + this.#slowForMs);
  }

  /** `host` answered: it has its own slots again. */
  markAnswered(host: string): void {
    this.#slowUntil.delete(host);
  }

  isSlow(host: string): boolean {
    const until = this.#slowUntil.get(host);
    if (until === undefined) return false;
    if (until > this.#now()) return true;
    this.#slowUntil.delete(host);
    return false;
  }

  /**
   * One slot of every host in `hosts` for `key`, all or none. Returns the release function, or
   * undefined with `key` parked on the hosts that are full.
   */
  tryAcquire(key: string, hosts: Iterable<string>): (() => void) | undefined {
    const wokenFor = this.#wokenFor.get(key);
    this.#wokenFor.delete(key);
    const wanted = [...new Set(hosts)];
    const full = wanted.filter((host) => (this.#inUse.get(host) ?? 0) >= this.perHost);
    const slow = wanted.some((host) => this.isSlow(host));
    if (slow && (this.#inUse.get(SLOW_HOSTS) ?? 0) >= this.perHost) full.push(SLOW_HOSTS);
    if (full.length > 0) {
      for (const host of full) {
        const parked = this.#parked.get(host) ?? new Set<string>();
        parked.add(key);
        this.#parked.set(host, parked);
      }
      // A slot this key was woken for and cannot use now goes to the next key parked there.
      for (const host of wokenFor ?? []) if (!full.includes(host)) this.#wakeNext(host);
      return undefined;
    }
    if (slow) wanted.push(SLOW_HOSTS);
    for (const host of wanted) this.#inUse.set(host, (this.#inUse.get(host) ?? 0) + 1);
    // Woken for a host it no longer names (its spec changed): that slot goes to the next key.
    for (const host of wokenFor ?? []) if (!wanted.includes(host)) this.#wakeNext(host);
    let released = false;
    return () => {
      if (released) return;
      released = true;
      for (const host of wanted) this.#release(host);
    };
  }

  /**
   * `key` will not ask for a slot now (deleted, suspended, invalid): it leaves every parking spot,
   * and a slot it was woken for goes to the next key parked there.
   */
  forget(key: string): void {
    for (const [host, parked] of this.#parked) {
      parked.delete(key);
      if (parked.size === 0) this.#parked.delete(host);
    }
    const wokenFor = this.#wokenFor.get(key);
    this.#wokenFor.delete(key);
    for (const host of wokenFor ?? []) this.#wakeNext(host);
  }

  /** Slots of `host` in use now. */
  inUse(host: string): number {
    return this.#inUse.get(host) ?? 0;
  }

  /** Keys parked on `host`. */
  parked(host: string): string[] {
    return [...(this.#parked.get(host) ?? [])];
  }

  #release(host: string): void {
    const left = (this.#inUse.get(host) ?? 1) - 1;
    if (left > 0) this.#inUse.set(host, left);
    else this.#inUse.delete(host);
    this.#wakeNext(host);
  }

  /** Wakes the longest-parked key of `host` if the host has a free slot. */
  #wakeNext(host: string): void {
    if ((this.#inUse.get(host) ?? 0) >= this.perHost) return;
    const parked = this.#parked.get(host);
    const next = parked?.values().next();
    if (!parked || !next || next.done) return;
    const key = next.value;
    parked.delete(key);
    if (parked.size === 0) this.#parked.delete(host);
    const wokenFor = this.#wokenFor.get(key) ?? new Set<string>();
    wokenFor.add(host);
    this.#wokenFor.set(key, wokenFor);
    this.#wake(key);
  }
}
