/**
 * Fairness between upstream hosts: a ModelImage sync holds one slot of each upstream host its
 * variants name, and a host has at most `perHost` slots, below the worker count. Four ModelImages
 * on an upstream that accepts connections and never answers then hold two of four workers, not
 * all of them; a key whose host is full is parked (its worker goes to the next key) and queued
 * again as soon as that host frees a slot.
 *
 * Hand-written rather than p-queue/p-limit: those queue the work and keep a worker awaiting it;
 * here the point is to give the worker back and come back later through the work queue.
 */

export class UpstreamSlots {
  readonly perHost: number;
  readonly #inUse = new Map<string, number>();
  /** host → keys waiting for one of its slots */
  readonly #parked = new Map<string, Set<string>>();
  readonly #wake: (key: string) => void;

  /** `wake(key)` queues a parked key again once a host it waits for frees a slot. */
  constructor(perHost: number, wake: (key: string) => void) {
    if (!Number.isInteger(perHost) || perHost < 1) {
      throw new RangeError(`slots per upstream host must be a whole number of at least 1, got ${perHost}`);
    }
    this.perHost = perHost;
    this.#wake = wake;
  }

  /**
   * One slot of every host in `hosts` for `key`, all or none. Returns the release function, or
   * undefined with `key` parked on the hosts that are full.
   */
  tryAcquire(key: string, hosts: Iterable<string>): (() => void) | undefined {
    const wanted = [...new Set(hosts)];
    const full = wanted.filter((host) => (this.#inUse.get(host) ?? 0) >= this.perHost);
    if (full.length > 0) {
      for (const host of full) {
        const parked = this.#parked.get(host) ?? new Set<string>();
        parked.add(key);
        this.#parked.set(host, parked);
      }
      return undefined;
    }
    for (const host of wanted) this.#inUse.set(host, (this.#inUse.get(host) ?? 0) + 1);
    let released = false;
    return () => {
      if (released) return;
      released = true;
      for (const host of wanted) this.#release(host);
    };
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
    const parked = this.#parked.get(host);
    if (!parked) return;
    this.#parked.delete(host);
    // All of them: the work queue hands them out one by one, and those that find the host full
    // again park again. Waking only one could strand a key whose wake-up found the key deleted.
    for (const key of parked) this.#wake(key);
  }
}
