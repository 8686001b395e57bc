/**
 * Virtual milliseconds, for code that decides by what it measures (the ranged download's reader
 * judges its link by how long it waits): a fake upstream paces itself with `until`, the code under
 * test reads `now`, and the decisions no longer depend on how busy the machine is. The earliest
 * pending wait is released one macrotask after the one before, once everything that release set
 * off has settled (the reader and the fake upstream work in microtasks), and the clock jumps to
 * its time. Nothing else may advance it: a real timer in between sees a frozen clock.
 */
export function virtualTime() {
  let now = 0;
  let order = 0;
  let scheduled = false;
  const pending: { at: number; order: number; release: () => void }[] = [];
  const schedule = () => {
    if (scheduled || pending.length === 0) return;
    scheduled = true;
    setImmediate(() => {
      scheduled = false;
      pending.sort((a, b) => a.at - b.at || a.order - b.order);
      const next = pending.shift();
      if (!next) return;
      now = Math.max(now, next.at);
      next.release();
      schedule();
    });
  };
  return {
    now: () => now,
    /** Resolves when the clock reaches `at`. */
    until: (at: number) =>
      new Promise<void>((release) => {
        pending.push({ at, order: order++, release });
        schedule();
      }),
  };
}
export type VirtualTime = ReturnType<typeof virtualTime>;
