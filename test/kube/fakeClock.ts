import type { Clock } from "../../src/util/clock.ts";

/** Time that moves only when a test says so; sleepers wake in deadline order. */
export class FakeClock implements Clock {
  #now: number;
  #sleepers: { wakeAt: number; resolve: () => void }[] = [];

  constructor(start = 1_700_000_000_000) {
    this.#now = start;
  }

  now(): number {
    return this.#now;
  }

  sleep(ms: number, signal?: AbortSignal): Promise<void> {
    return new Promise((resolve, reject) => {
      if (signal?.aborted) return reject(signal.reason);
      const sleeper = { wakeAt: this.#now + ms, resolve };
      this.#sleepers.push(sleeper);
      signal?.addEventListener(
        "abort",
        () => {
          this.#sleepers = this.#sleepers.filter((s) => s !== sleeper);
          reject(signal.reason);
        },
        { once: true },
      );
    });
  }

  pendingSleeps(): number[] {
    return this.#sleepers.map((s) => s.wakeAt - this.#now).sort((a, b) => a - b);
  }

  /** Move time forward, waking every sleeper whose deadline passed, then let promises settle. */
  async advance(ms: number): Promise<void> {
    this.#now += ms;
    const due = this.#sleepers.filter((s) => s.wakeAt <= this.#now);
    this.#sleepers = this.#sleepers.filter((s) => s.wakeAt > this.#now);
    for (const sleeper of due.sort((a, b) => a.wakeAt - b.wakeAt)) sleeper.resolve();
    await settle();
  }
}

/** Let queued promise callbacks run. */
export async function settle(): Promise<void> {
  for (let i = 0; i < 5; i++) await new Promise<void>((resolve) => setImmediate(resolve));
}
