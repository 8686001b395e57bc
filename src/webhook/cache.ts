/**
 * ModelImages read from informer caches, over all namespaces or the ones the controller is
 * scoped to (`--namespace`): the webhook and the gate controller share one.
 */
import { type ModelImage, ModelImageResource } from "../api/modelImage.ts";
import type { Informer } from "../kube/informer.ts";
import type { Manager } from "../kube/manager.ts";

export interface ModelImageCache {
  informers: Informer<ModelImage>[];
  /** By `namespace/name`. */
  get(key: string): ModelImage | undefined;
  byNamespace(namespace: string): ModelImage[];
  waitForSync(signal?: AbortSignal): Promise<void>;
}

export function modelImageCache(manager: Manager, namespaces?: readonly string[]): ModelImageCache {
  const scopes = namespaces && namespaces.length > 0 ? [...namespaces] : [undefined];
  const informers = scopes.map((namespace) =>
    manager.addInformer<ModelImage>({ type: ModelImageResource, namespace }),
  );
  return {
    informers,
    get: (key) => {
      for (const informer of informers) {
        const found = informer.get(key);
        if (found) return found;
      }
      return undefined;
    },
    byNamespace: (namespace) => informers.flatMap((informer) => informer.byNamespace(namespace)),
    waitForSync: async (signal) => {
      await Promise.all(informers.map((informer) => informer.waitForSync(signal)));
    },
  };
}
