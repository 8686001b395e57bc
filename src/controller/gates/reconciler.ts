/**
 * Releases pods held by the prewarm scheduling gate: when every ModelImage a pod waits for is
 * Prewarmed (or no longer holds pods, or is gone), or when the hold timeout since the pod's
 * creation has passed. Removes only its own gate, with a JSON patch that tests the entry first;
 * never adds gates (the admission webhook does, and only at creation).
 */

import { parseDuration } from "../../api/duration.ts";
import { PREWARM_SCHEDULING_GATE } from "../../api/labels.ts";
import { DEFAULT_HOLD_TIMEOUT, holdTimeoutMs, type ModelImage } from "../../api/modelImage.ts";
import { isNotFound, type KubeClient, type KubeObject, Resources } from "../../kube/client.ts";
import { done, type Reconcile, requeueAfter } from "../../kube/controller.ts";
import type { EventRecorder } from "../../kube/events.ts";
import { parseTime } from "../../kube/time.ts";
import type { GateMetrics } from "../../metrics.ts";
import type { Clock } from "../../util/clock.ts";
import { isPrewarmed } from "../../webhook/match.ts";
import { parseHeldFor } from "../../webhook/patch.ts";

export interface GatedPod extends KubeObject {
  spec?: { schedulingGates?: { name: string }[]; nodeName?: string };
}

export type ReleaseOutcome = "prewarmed" | "deleted" | "released" | "timeout";

export interface GateReconcilerDeps {
  client: KubeClient;
  getPod(key: string): GatedPod | undefined;
  getModelImage(key: string): ModelImage | undefined;
  events: EventRecorder;
  metrics: GateMetrics;
  clock: Clock;
  /** Look again at least this often while a pod is held (default 60 s): a safety net for missed events. */
  resyncMs?: number;
}

export function gateIndex(pod: GatedPod): number {
  return (pod.spec?.schedulingGates ?? []).findIndex((g) => g.name === PREWARM_SCHEDULING_GATE);
}

export function isGated(pod: GatedPod): boolean {
  return gateIndex(pod) >= 0 && !pod.metadata?.deletionTimestamp;
}

interface Verdict {
  release?: ReleaseOutcome;
  /** When the hold times out (ms since epoch). */
  deadline: number;
  waitingFor: string[];
}

/** Pure: what to do with a held pod now. */
export function judge(
  pod: GatedPod,
  getModelImage: (key: string) => ModelImage | undefined,
  now: number,
): Verdict {
  const keys = parseHeldFor(pod.metadata?.annotations);
  const created = parseTime(pod.metadata?.creationTimestamp) ?? now;
  const waiting: { key: string; mi: ModelImage }[] = [];
  let anyDeleted = false;
  let anyStopped = false;
  for (const key of keys) {
    const mi = getModelImage(key);
    if (!mi || mi.metadata?.deletionTimestamp) anyDeleted = true;
    else if (mi.spec?.prewarm?.holdPods !== true) anyStopped = true;
    else if (!isPrewarmed(mi)) waiting.push({ key, mi });
  }
  const timeouts = waiting.map(({ mi }) => holdTimeoutMs(mi.spec ?? {}));
  const timeoutMs = timeouts.length > 0 ? Math.min(...timeouts) : parseDuration(DEFAULT_HOLD_TIMEOUT);
  const deadline = created + timeoutMs;
  const waitingFor = waiting.map((w) => w.key);
  // A gate without a held-for annotation is only released by the timeout.
  if (keys.length > 0 && waiting.length === 0)
    return { release: anyDeleted ? "deleted" : anyStopped ? "released" : "prewarmed", deadline, waitingFor };
  if (now >= deadline) return { release: "timeout", deadline, waitingFor };
  return { deadline, waitingFor };
}

export function createGateReconciler(deps: GateReconcilerDeps): Reconcile {
  const pods = deps.client.resource<GatedPod>(Resources.Pod);
  const resyncMs = deps.resyncMs ?? 60_000;
  return async (key, ctx) => {
    const pod = deps.getPod(key);
    if (!pod || !isGated(pod)) return done();
    const now = deps.clock.now();
    const verdict = judge(pod, deps.getModelImage, now);
    if (!verdict.release) return requeueAfter(Math.max(1, Math.min(verdict.deadline - now, resyncMs)));

    const index = gateIndex(pod);
    try {
      await pods.patch(
        pod.metadata?.name ?? "",
        [
          { op: "test", path: `/spec/schedulingGates/${index}/name`, value: PREWARM_SCHEDULING_GATE },
          { op: "remove", path: `/spec/schedulingGates/${index}` },
        ],
        { namespace: pod.metadata?.namespace, type: "json" },
      );
    } catch (err) {
      if (isNotFound(err)) return done();
      // The gate list changed under us (the test op failed) or a conflict: retry from the cache.
      throw err;
    }
    const created = parseTime(pod.metadata?.creationTimestamp) ?? now;
    deps.metrics.podGateSeconds.observe({ outcome: verdict.release }, Math.max(0, (now - created) / 1000));
    const heldFor = parseHeldFor(pod.metadata?.annotations).join(", ") || "(unknown)";
    if (verdict.release === "timeout") {
      deps.metrics.podGateTimeouts.inc();
      void deps.events.event(pod, {
        type: "Warning",
        reason: "PrewarmHoldTimedOut",
        action: "ReleaseSchedulingGate",
        note: `scheduling gate ${PREWARM_SCHEDULING_GATE} timed out after ${Math.round((verdict.deadline - created) / 1000)}s: ${verdict.waitingFor.join(", ") || heldFor} not prewarmed yet; the pod is scheduled anyway and may pull the image on its node`,
      });
    } else {
      void deps.events.event(pod, {
        type: "Normal",
        reason: "PrewarmHoldReleased",
        action: "ReleaseSchedulingGate",
        note: `scheduling gate ${PREWARM_SCHEDULING_GATE} removed: ${heldFor} ${verdict.release === "deleted" ? "was deleted" : verdict.release === "released" ? "no longer holds pods" : "is prewarmed"}`,
      });
    }
    ctx.log.info({ pod: key, outcome: verdict.release }, "released prewarm gate");
    return done();
  };
}
