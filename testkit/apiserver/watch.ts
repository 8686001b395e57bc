import type { IncomingMessage, ServerResponse } from "node:http";
import { ApiError, expired } from "./errors.ts";
import { apiVersionOf, type ResourceDef } from "./resources.ts";
import type { ApiCore } from "./rest.ts";
import { matchesFilter, type ObjectFilter } from "./selectors.ts";
import type { StoreEvent } from "./store.ts";
import { type IncludeObject, toTable } from "./table.ts";
import { clone, type Json, type KubeObject, type WatchEventType } from "./types.ts";

export interface WatchRequest {
  def: ResourceDef;
  namespace?: string;
  filter: ObjectFilter;
  resourceVersion?: string;
  timeoutSeconds?: number;
  allowBookmarks: boolean;
  bookmarkIntervalMs: number;
  /** watch-list: replay current state, then a bookmark annotated k8s.io/initial-events-end */
  sendInitialEvents?: boolean;
  /** `kubectl get -w` asks for each event's object as a one-row Table */
  table?: { include: IncludeObject };
}

/** An open watch the server can close (dropWatches, stop). */
export interface OpenWatch {
  close(): void;
}

/**
 * Serve one watch: newline-delimited JSON events on a chunked response that stays open.
 * Resource versions resume like the watch cache: events strictly after the given revision, or an
 * initial ADDED replay of current state when none (or "0") is given; a revision older than the
 * retained history gets one ERROR event (Status 410 Expired) and the stream ends.
 */
export function serveWatch(
  core: ApiCore,
  request: WatchRequest,
  req: IncomingMessage,
  res: ServerResponse,
  onOpen: (watch: OpenWatch) => () => void,
): void {
  const { def, namespace, filter } = request;
  const inScope = (obj: KubeObject | undefined) =>
    !!obj &&
    (!def.namespaced || namespace === undefined || obj.metadata.namespace === namespace) &&
    matchesFilter(filter, core.present(def, obj));

  let since: number;
  const replay: { type: WatchEventType; object: KubeObject }[] = [];
  const rv = request.resourceVersion;
  const replayState = rv === undefined || rv === "" || rv === "0" || !!request.sendInitialEvents;
  if (replayState) {
    since = core.store.revision;
    for (const obj of core.store.list(def.bucket, def.namespaced ? namespace : undefined))
      if (inScope(obj)) replay.push({ type: "ADDED", object: obj });
  } else {
    since = Number(rv);
    // the watch cache parses it late, and an error there is an internal one
    if (!/^\d+$/.test(rv) || !Number.isSafeInteger(since))
      throw new ApiError(
        500,
        "",
        `resourceVersion: Invalid value: ${JSON.stringify(rv)}: strconv.ParseUint: parsing ${JSON.stringify(rv)}: invalid syntax`,
      );
  }

  res.writeHead(200, { "Content-Type": "application/json", "Cache-Control": "no-cache, private" });
  res.flushHeaders();
  const send = (type: WatchEventType, object: Json) => {
    if (!res.writableEnded) res.write(`${JSON.stringify({ type, object })}\n`);
  };

  if (!replayState && since < core.store.oldestResumable) {
    // the watch cache names the revision its history starts after
    send("ERROR", expired(rv!, core.store.oldestResumable).toStatus());
    res.end();
    return;
  }

  const render = (obj: KubeObject): Json => {
    const shown = core.present(def, obj);
    if (!request.table) return shown;
    return toTable(def, [shown], { resourceVersion: shown.metadata.resourceVersion }, request.table.include);
  };
  const translate = (event: StoreEvent): { type: WatchEventType; object: KubeObject } | undefined => {
    if (event.bucket !== def.bucket) return undefined;
    const now = inScope(event.object);
    const before = inScope(event.previous);
    switch (event.type) {
      case "ADDED":
        return now ? { type: "ADDED", object: event.object } : undefined;
      case "DELETED":
        return before || now ? { type: "DELETED", object: event.object } : undefined;
      case "MODIFIED":
        // like the watch cache: leaving the selection is a deletion (of the object as it last
        // matched, at the new resourceVersion), entering it an addition
        if (now && before) return { type: "MODIFIED", object: event.object };
        if (now) return { type: "ADDED", object: event.object };
        if (before && event.previous) {
          const left = clone(event.previous);
          left.metadata.resourceVersion = event.object.metadata.resourceVersion;
          return { type: "DELETED", object: left };
        }
        return undefined;
    }
  };
  const deliver = (event: StoreEvent) => {
    const out = translate(event);
    if (out) send(out.type, render(out.object));
  };

  const backlog = replayState ? [] : core.store.eventsSince(since, def.bucket);
  const unsubscribe = core.store.subscribe(deliver);
  for (const event of replay) send(event.type, render(event.object));
  if (request.sendInitialEvents && request.allowBookmarks) {
    // the watch-list protocol: a bookmark marks the end of the initial state
    send("BOOKMARK", {
      kind: def.kind,
      apiVersion: apiVersionOf(def),
      metadata: { resourceVersion: String(since), annotations: { "k8s.io/initial-events-end": "true" } },
    });
  }
  for (const event of backlog) deliver(event);

  const timers: NodeJS.Timeout[] = [];
  const bookmark = () =>
    send("BOOKMARK", {
      kind: def.kind,
      apiVersion: apiVersionOf(def),
      metadata: { resourceVersion: String(core.store.revision) },
    });
  if (request.allowBookmarks) timers.push(setInterval(bookmark, request.bookmarkIntervalMs));
  let unregister = () => {};
  const close = () => {
    unsubscribe();
    for (const timer of timers) clearInterval(timer);
    unregister();
    if (!res.writableEnded) res.end();
  };
  if (request.timeoutSeconds !== undefined && request.timeoutSeconds > 0) {
    timers.push(setTimeout(close, request.timeoutSeconds * 1000));
    // the watch cache also sends a bookmark two seconds before the watch times out, so the client
    // resumes from as recent a resourceVersion as possible
    if (request.allowBookmarks && request.timeoutSeconds > 2)
      timers.push(setTimeout(bookmark, (request.timeoutSeconds - 2) * 1000));
  }
  unregister = onOpen({ close });
  req.on("close", close);
  res.on("close", close);
}
