/**
 * A pull secret created or fixed after a ModelImage failed on it re-queues that ModelImage within
 * seconds. AuthConfigInvalid and AuthFailed are Stalled reasons: without this, the ModelImage waits
 * for its sync interval (10 minutes by default) however soon the Secret is put right.
 *
 * Why polling and not a Secret informer: the controller's RBAC grants only `get` on Secrets,
 * deliberately (list/watch would let it read every Secret in every watched namespace, and a
 * cluster-wide Secret cache holds Helm release secrets of megabytes). So only the Secrets that
 * failing ModelImages name are read, by name, every `intervalMs`; a healthy ModelImage reads its
 * Secrets afresh on every sync anyway.
 */
import { type ModelImage, withDefaults } from "../../api/modelImage.ts";
import { isNotFound, type KubeObject, type ObjectClient } from "../../kube/client.ts";
import { objectKey } from "../../kube/controller.ts";
import type { Clock } from "../../util/clock.ts";
import type { Logger } from "../../util/log.ts";

/** The Synced reasons a pull secret fixes. */
const SECRET_REASONS = new Set(["AuthConfigInvalid", "AuthFailed"]);

export interface PullSecretRecheckDeps {
  secrets: ObjectClient<KubeObject>;
  modelImages: () => ModelImage[];
  /** Queue a ModelImage key (a no-op while this replica does not lead). */
  enqueue: (key: string) => void;
  /** Poll only while true (the leader). */
  active: () => boolean;
  clock: Clock;
  log: Logger;
  intervalMs: number;
}

/** Secret refs (`namespace/name`) of ModelImages whose last sync failed on credentials, and who names each. */
export function secretsOfFailingModelImages(modelImages: ModelImage[]): Map<string, string[]> {
  const refs = new Map<string, string[]>();
  for (const mi of modelImages) {
    const synced = mi.status?.conditions?.find((c) => c.type === "Synced");
    if (synced?.status !== "False" || !SECRET_REASONS.has(synced.reason ?? "")) continue;
    for (const { name } of withDefaults(mi.spec).pullSecrets) {
      const ref = `${mi.metadata.namespace}/${name}`;
      refs.set(ref, [...(refs.get(ref) ?? []), objectKey(mi)]);
    }
  }
  return refs;
}

/**
 * Runs until `signal` aborts. Each pass reads the Secrets failing ModelImages name; a Secret that
 * appeared, changed (resourceVersion) or is seen for the first time existing re-queues the
 * ModelImages naming it. A Secret still absent, or unchanged since the last pass, queues nothing.
 */
export async function recheckPullSecrets(deps: PullSecretRecheckDeps, signal: AbortSignal): Promise<void> {
  const seen = new Map<string, string>(); // ref → resourceVersion, or "" when absent
  while (!signal.aborted) {
    try {
      await deps.clock.sleep(deps.intervalMs, signal);
    } catch {
      return; // stopped
    }
    if (!deps.active()) {
      seen.clear();
      continue;
    }
    const refs = secretsOfFailingModelImages(deps.modelImages());
    for (const ref of seen.keys()) if (!refs.has(ref)) seen.delete(ref);
    for (const [ref, keys] of refs) {
      const [namespace, name] = ref.split("/");
      let version: string;
      try {
        const secret = await deps.secrets.get(name, namespace, { signal });
        version = secret.metadata?.resourceVersion ?? "?";
      } catch (err) {
        if (signal.aborted) return;
        if (!isNotFound(err)) {
          deps.log.debug({ secret: ref, error: (err as Error).message }, "cannot re-check pull secret");
          continue;
        }
        version = "";
      }
      const before = seen.get(ref);
      seen.set(ref, version);
      if (version === "" || version === before) continue;
      deps.log.info({ secret: ref, modelImages: keys }, "pull secret created or changed: syncing again");
      for (const key of keys) deps.enqueue(key);
    }
  }
}
