/**
 * What `stowage status` reads from the cluster: ModelImages, NodeCaches and the planner's
 * Warning events (they name skipped nodes). Reads only; every failure becomes one clear line.
 */
import { CRD_NAME, type ModelImage, ModelImageResource } from "../api/modelImage.ts";
import { type NodeCache, NodeCacheResource } from "../api/nodeCache.ts";
import { KubeApiError, type KubeClient, type KubeObject, Resources } from "../kube/client.ts";
import { StowageError } from "../util/errors.ts";

/** An events.k8s.io/v1 Event, only the fields status reads. */
export interface StatusEvent extends KubeObject {
  reason?: string;
  note?: string;
  type?: string;
  regarding?: { kind?: string; namespace?: string; name?: string };
}

export interface ClusterSnapshot {
  /** When the snapshot was taken (ms since epoch): lag is measured from it. */
  takenAt: number;
  modelImages: ModelImage[];
  nodeCaches: NodeCache[];
  events: StatusEvent[];
}

export interface GatherOptions {
  /** Only this namespace; undefined means all namespaces. */
  namespace?: string;
  now?: () => number;
}

export async function gatherSnapshot(
  client: KubeClient,
  options: GatherOptions = {},
): Promise<ClusterSnapshot> {
  const takenAt = (options.now ?? Date.now)();
  let modelImages: ModelImage[];
  try {
    modelImages = (
      await client.resource<ModelImage>(ModelImageResource).list({ namespace: options.namespace })
    ).items;
  } catch (err) {
    throw explain(err, client.server, true);
  }
  // NodeCaches are optional (a cluster without the planner or agents yet) and events are only
  // decoration: neither missing CRD nor a refusal to list events hides the ModelImages.
  const nodeCaches = await optional(
    () => client.resource<NodeCache>(NodeCacheResource).list(),
    client.server,
  );
  const events = await optional(
    () => client.resource<StatusEvent>(Resources.Event).list({ namespace: options.namespace }),
    client.server,
    true,
  );
  modelImages.sort(
    (a, b) =>
      (a.metadata.namespace ?? "").localeCompare(b.metadata.namespace ?? "") ||
      (a.metadata.name ?? "").localeCompare(b.metadata.name ?? ""),
  );
  return { takenAt, modelImages, nodeCaches, events };
}

async function optional<T>(
  list: () => Promise<{ items: T[] }>,
  server: string,
  ignoreForbidden = false,
): Promise<T[]> {
  try {
    return (await list()).items;
  } catch (err) {
    if (err instanceof KubeApiError && (err.code === 404 || (ignoreForbidden && err.code === 403))) return [];
    throw explain(err, server, false);
  }
}

/** One line a person can act on, for the errors status can meet. */
function explain(err: unknown, server: string, modelImages: boolean): StowageError {
  if (!(err instanceof KubeApiError)) {
    return err instanceof StowageError ? err : new StowageError("Internal", String(err), { cause: err });
  }
  if (err.code === 0) {
    const cause = err.cause instanceof Error ? err.cause.message : err.message;
    return new StowageError("Timeout", `cannot reach the Kubernetes API server at ${server}: ${cause}`, {
      cause: err,
    });
  }
  if (err.code === 404 && modelImages) {
    return new StowageError(
      "NotFound",
      `the ModelImage CRD (${CRD_NAME}) is not installed in the cluster at ${server}: install it with \`kubectl apply -f crds/\` or the Helm chart`,
      { cause: err },
    );
  }
  if (err.code === 401) {
    return new StowageError(
      "AuthFailed",
      `the API server at ${server} refused our credentials (401 Unauthorized)`,
      {
        cause: err,
      },
    );
  }
  if (err.code === 403) {
    const detail = err.message.replace(/^\S+ \S+: 403 /, "");
    return new StowageError("Denied", `forbidden: ${detail}`, { cause: err });
  }
  return new StowageError(err.reason, err.message, { cause: err });
}
