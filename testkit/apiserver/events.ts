import type { Json, KubeObject } from "./types.ts";

/**
 * core/v1 Event and events.k8s.io/v1 Event are two views of the same stored objects, as on the real
 * server: a controller records through events.k8s.io while `kubectl describe` reads core/v1 events by
 * `involvedObject.*`. Stored form is core/v1; these map field names both ways.
 */
const renames: [events: string, core: string][] = [
  ["regarding", "involvedObject"],
  ["note", "message"],
  ["reportingController", "reportingComponent"],
  ["deprecatedSource", "source"],
  ["deprecatedFirstTimestamp", "firstTimestamp"],
  ["deprecatedLastTimestamp", "lastTimestamp"],
  ["deprecatedCount", "count"],
];

const shared = [
  "metadata",
  "related",
  "reason",
  "type",
  "action",
  "reportingInstance",
  "eventTime",
  "series",
];

function move(from: Json, pairs: [string, string][]): Json {
  const out: Json = {};
  for (const key of shared) if (from[key] !== undefined) out[key] = from[key];
  for (const [source, target] of pairs) if (from[source] !== undefined) out[target] = from[source];
  return out;
}

export function eventToCore(obj: KubeObject): KubeObject {
  const out = move(obj, renames);
  // core readers (kubectl describe) show source.component; fill it from reportingController
  if (!out.source && obj.reportingController) out.source = { component: obj.reportingController };
  if (out.count === undefined && obj.series?.count !== undefined) out.count = obj.series.count;
  if (!out.firstTimestamp && obj.eventTime)
    out.firstTimestamp = String(obj.eventTime).replace(/\.\d+Z$/, "Z");
  if (!out.lastTimestamp) {
    const last = obj.series?.lastObservedTime ?? obj.eventTime;
    if (last) out.lastTimestamp = String(last).replace(/\.\d+Z$/, "Z");
  }
  return { apiVersion: "v1", kind: "Event", ...out };
}

export function eventFromCore(obj: KubeObject): KubeObject {
  const out = move(
    obj,
    renames.map(([events, core]) => [core, events]),
  );
  return { apiVersion: "events.k8s.io/v1", kind: "Event", ...out };
}
