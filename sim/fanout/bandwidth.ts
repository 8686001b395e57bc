/**
 * The simulator's bandwidth model: max-min fair sharing of links among the transfers that cross
 * them, computed by progressive filling.
 *
 * Every transfer crosses a few links (its source's egress: a node's NIC up or the cache's NIC;
 * the cache's storage read when the cache serves; the receiver's NIC down and disk write). A
 * link's capacity is split equally among the transfers crossing it, except that a transfer held
 * below its equal share by another link leaves the difference to the others on this link. That
 * is max-min fairness: what many parallel TCP flows converge to on shared bottlenecks, to first
 * order (it ignores slow start, RTT unfairness and loss; transfers here are GBs long, so the
 * ramp-up is a small part of each). Algorithm: repeatedly take the link whose equal share among
 * its unfixed transfers is smallest, fix those transfers at that share, remove them from every
 * link they cross; the remaining shares can only grow, so a heap with stale entries suffices.
 *
 * Hand-written: it is the core of the model, small, and must be exact for the hand-checked tests.
 */

/** Link indices each flow crosses; capacities in bytes per second. Returns each flow's rate. */
export function maxMinRates(
  capacities: readonly number[],
  flows: readonly (readonly number[])[],
): Float64Array {
  const rates = new Float64Array(flows.length);
  const remaining = Float64Array.from(capacities);
  const unfixed = new Int32Array(capacities.length);
  const flowsOn: number[][] = capacities.map(() => []);
  for (let f = 0; f < flows.length; f++) {
    for (const link of flows[f]) {
      unfixed[link]++;
      flowsOn[link].push(f);
    }
  }
  const fixed = new Uint8Array(flows.length);
  const heap = new MinHeap();
  for (let link = 0; link < capacities.length; link++) {
    if (unfixed[link] > 0) heap.push(remaining[link] / unfixed[link], link, unfixed[link]);
  }
  for (;;) {
    const top = heap.pop();
    if (!top) break;
    const [share, link, count] = top;
    if (count !== unfixed[link] || unfixed[link] === 0) continue; // stale entry
    for (const f of flowsOn[link]) {
      if (fixed[f]) continue;
      fixed[f] = 1;
      rates[f] = share;
      for (const other of flows[f]) {
        remaining[other] = Math.max(0, remaining[other] - share);
        unfixed[other]--;
        if (other !== link && unfixed[other] > 0) {
          heap.push(remaining[other] / unfixed[other], other, unfixed[other]);
        }
      }
    }
  }
  return rates;
}

/** A binary min-heap of (share, link, unfixed count at push time). */
class MinHeap {
  private readonly keys: number[] = [];
  private readonly links: number[] = [];
  private readonly counts: number[] = [];

  push(key: number, link: number, count: number): void {
    let i = this.keys.length;
    this.keys.push(key);
    this.links.push(link);
    this.counts.push(count);
    while (i > 0) {
      const up = (i - 1) >> 1;
      if (this.keys[up] <= key) break;
      this.move(up, i);
      i = up;
    }
    this.keys[i] = key;
    this.links[i] = link;
    this.counts[i] = count;
  }

  pop(): [number, number, number] | undefined {
    if (this.keys.length === 0) return undefined;
    const top: [number, number, number] = [this.keys[0], this.links[0], this.counts[0]];
    const key = this.keys.pop()!;
    const link = this.links.pop()!;
    const count = this.counts.pop()!;
    const n = this.keys.length;
    if (n > 0) {
      let i = 0;
      for (;;) {
        const left = 2 * i + 1;
        if (left >= n) break;
        const child = left + 1 < n && this.keys[left + 1] < this.keys[left] ? left + 1 : left;
        if (this.keys[child] >= key) break;
        this.move(child, i);
        i = child;
      }
      this.keys[i] = key;
      this.links[i] = link;
      this.counts[i] = count;
    }
    return top;
  }

  private move(from: number, to: number): void {
    this.keys[to] = this.keys[from];
    this.links[to] = this.links[from];
    this.counts[to] = this.counts[from];
  }
}
