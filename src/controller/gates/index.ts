/**
 * Wires the gate controller into a Manager: a Pod informer (only gated pods are queued and
 * indexed by the ModelImages they wait for) and a ModelImage informer whose changes requeue the
 * pods held for them.
 */
import type { ModelImage } from "../../api/modelImage.ts";
import { Resources } from "../../kube/client.ts";
import { type Controller, objectKey } from "../../kube/controller.ts";
import type { EventRecorder } from "../../kube/events.ts";
import type { Informer } from "../../kube/informer.ts";
import type { Manager } from "../../kube/manager.ts";
import { trimPod } from "../../kube/trim.ts";
import type { GateMetrics } from "../../metrics.ts";
import { type Clock, systemClock } from "../../util/clock.ts";
import { type ModelImageCache, modelImageCache } from "../../webhook/cache.ts";
import { parseHeldFor } from "../../webhook/patch.ts";
import { createGateReconciler, type GatedPod, isGated } from "./reconciler.ts";

export { type GatedPod, isGated, judge, type ReleaseOutcome } from "./reconciler.ts";

export const GATE_CONTROLLER_NAME = "prewarm-gates";
const HELD_FOR_INDEX = "heldFor";

export interface GateControllerDeps {
  events: EventRecorder;
  metrics: GateMetrics;
  clock?: Clock;
  workers?: number;
  resyncMs?: number;
  /** Watch pods and ModelImages only in these namespaces; all when omitted. */
  namespaces?: readonly string[];
  /** Reuse the webhook's ModelImage cache instead of starting more informers. */
  modelImages?: ModelImageCache;
}

export interface GateController {
  controller: Controller;
  pods: Informer<GatedPod>[];
  modelImages: ModelImageCache;
}

export function setupGateController(manager: Manager, deps: GateControllerDeps): GateController {
  const scopes = deps.namespaces && deps.namespaces.length > 0 ? [...deps.namespaces] : [undefined];
  const pods = scopes.map((namespace) =>
    manager.addInformer<GatedPod>({ type: Resources.Pod, namespace, transform: trimPod }),
  );
  const modelImages = deps.modelImages ?? modelImageCache(manager, deps.namespaces);
  for (const informer of pods)
    informer.addIndexer(HELD_FOR_INDEX, (pod) =>
      isGated(pod) ? parseHeldFor(pod.metadata?.annotations) : [],
    );
  const getPod = (key: string) => {
    for (const informer of pods) {
      const found = informer.get(key);
      if (found) return found;
    }
    return undefined;
  };
  deps.metrics.setGatedPodSource(() =>
    pods.reduce((sum, informer) => sum + informer.list().filter(isGated).length, 0),
  );
  const controller = manager.addController({
    name: GATE_CONTROLLER_NAME,
    workers: deps.workers ?? 2,
    reconcile: createGateReconciler({
      client: manager.client,
      getPod,
      getModelImage: (key) => modelImages.get(key),
      events: deps.events,
      metrics: deps.metrics,
      clock: deps.clock ?? systemClock,
      resyncMs: deps.resyncMs,
    }),
  });
  for (const informer of pods) controller.watches(informer, (pod) => (isGated(pod) ? [objectKey(pod)] : []));
  // A ModelImage change (Prewarmed, deleted, holdPods off) requeues the pods held for it.
  const heldFor = (mi: ModelImage) =>
    pods.flatMap((informer) => informer.byIndex(HELD_FOR_INDEX, objectKey(mi)).map((pod) => objectKey(pod)));
  for (const informer of modelImages.informers) controller.watches(informer, heldFor);
  return { controller, pods, modelImages };
}
