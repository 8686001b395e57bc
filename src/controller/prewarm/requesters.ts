import type { NodeCache, NodeCacheImage } from "../../api/nodeCache.ts";

/** Key of a requester: a ModelImage (`ns/name`) and one of its variants. */
export function requesterKey(modelImageKey: string, variant: string): string {
  return `${modelImageKey}|${variant}`;
}

/**
 * A NodeCache's spec entries by requester (`requesterKey`), in spec order, built once per object.
 * The planner (per pass, for every variant and node) and the pre-warm status (per ModelImage, at
 * each status pass and metrics scrape) look entries up by requester; scanning every entry's
 * requesters for each lookup made millions of strings a pass at 2,000 ModelImages
 * (bench:controller). Informer objects are replaced, never changed in place, so the object is a
 * sound memo key.
 */
const byRequesterMemo = new WeakMap<NodeCache, Map<string, NodeCacheImage[]>>();

export function entriesByRequester(nc: NodeCache): ReadonlyMap<string, readonly NodeCacheImage[]> {
  let found = byRequesterMemo.get(nc);
  if (!found) {
    found = new Map();
    for (const entry of nc.spec?.images ?? [])
      for (const r of entry.requestedBy ?? []) {
        const key = requesterKey(`${r.namespace}/${r.name}`, r.variant ?? "");
        const list = found.get(key);
        if (list) list.push(entry);
        else found.set(key, [entry]);
      }
    byRequesterMemo.set(nc, found);
  }
  return found;
}
