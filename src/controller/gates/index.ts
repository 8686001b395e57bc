/**
 * Wires the gate controller into a Manager: a Pod informer (only gated pods are queued and
 * indexed by the ModelImages they wait for) and a ModelImage informer whose changes requeue the
 * pods held for them.
 */
import { type ModelImage, ModelImageResource } from "../../api/modelImage.ts";
import { Resources } from "../../kube/client.ts";
import { type Controller, objectKey } from "../../kube/controller.ts";
import type { EventRecorder } from "../../kube/events.ts";
import type { Informer } from "../../kube/informer.ts";
import type { Manager } from "../../kube/manager.ts";
import type { GateMetrics } from "../../metrics.ts";
import { type Clock, systemClock } from "../../util/clock.ts";
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
  /** Reuse the webhook's ModelImage informer instead of starting another. */
  modelImages?: Informer<ModelImage>;
}

export interface GateController {
  controller: Controller;
  pods: Informer<GatedPod>;
  modelImages: Informer<ModelImage>;
}

export function setupGateController(manager: Manager, deps: GateControllerDeps): GateController {
  const pods = manager.addInformer<GatedPod>({ type: Resources.Pod });
  const modelImages = deps.modelImages ?? manager.addInformer<ModelImage>({ type: ModelImageResource });
  pods.addIndexer(HELD_FOR_INDEX, (pod) => (isGated(pod) ? parseHeldFor(pod.metadata?.annotations) : []));
  deps.metrics.setGatedPodSource(() => pods.list().filter(isGated).length);
  const controller = manager.addController({
    name: GATE_CONTROLLER_NAME,
    workers: deps.workers ?? 2,
    reconcile: createGateReconciler({
      client: manager.client,
      getPod: (key) => pods.get(key),
      getModelImage: (key) => modelImages.get(key),
      events: deps.events,
      metrics: deps.metrics,
      clock: deps.clock ?? systemClock,
      resyncMs: deps.resyncMs,
    }),
  });
  controller.watches(pods, (pod) => (isGated(pod) ? [objectKey(pod)] : []));
  controller.watches(modelImages, (mi) =>
    pods.byIndex(HELD_FOR_INDEX, objectKey(mi)).map((p) => objectKey(p)),
  );
  return { controller, pods, modelImages };
}
