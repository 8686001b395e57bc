/**
 * AdmissionReview v1 in, AdmissionReview v1 out, for `/mutate-pods`. Never refuses: a pod the
 * webhook cannot understand is allowed unchanged with a warning, so Stowage can never block
 * pod creation.
 */
import type { ModelImage } from "../api/modelImage.ts";
import { decideHold, type HoldDecision, type PodView } from "./match.ts";
import { holdPatch } from "./patch.ts";

export const ADMISSION_API_VERSION = "admission.k8s.io/v1";

/** Informer-backed reads; no API call per admission. */
export interface AdmissionLookups {
  modelImagesIn(namespace: string): readonly ModelImage[];
  namespaceLabels(namespace: string): Record<string, string> | undefined;
  controllerNamespace?: string;
  /** Per-platform child digests the planner assigned for a ModelImage's variant (see HoldContext). */
  platformDigests?(namespace: string, name: string, variant: string): ReadonlySet<string> | undefined;
}

export interface AdmissionResponse {
  uid: string;
  allowed: true;
  patchType?: "JSONPatch";
  patch?: string;
  warnings?: string[];
}

export interface AdmissionReviewOut {
  apiVersion: typeof ADMISSION_API_VERSION;
  kind: "AdmissionReview";
  response: AdmissionResponse;
}

export interface PodAdmissionOutcome {
  review: AdmissionReviewOut;
  /** The decision, when the request was a pod CREATE the webhook understood. */
  decision?: HoldDecision;
}

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

function allow(uid: string, warnings?: string[]): AdmissionReviewOut {
  return {
    apiVersion: ADMISSION_API_VERSION,
    kind: "AdmissionReview",
    response: { uid, allowed: true, ...(warnings?.length ? { warnings } : {}) },
  };
}

/** Answer one AdmissionReview body (already JSON-parsed, or the raw text when it did not parse). */
export function reviewPodAdmission(body: unknown, lookups: AdmissionLookups): PodAdmissionOutcome {
  const request = isObject(body) ? body.request : undefined;
  if (!isObject(body) || body.kind !== "AdmissionReview" || !isObject(request)) {
    return {
      review: allow("", [
        "stowage: the admission request was not an AdmissionReview; the pod was not checked",
      ]),
    };
  }
  const uid = typeof request.uid === "string" ? request.uid : "";
  if (body.apiVersion !== ADMISSION_API_VERSION)
    return {
      review: allow(uid, [
        `stowage: AdmissionReview ${String(body.apiVersion)} is not supported; the pod was not checked`,
      ]),
    };
  const kind = isObject(request.kind) ? request.kind : {};
  if (kind.kind !== "Pod" || (kind.group ?? "") !== "" || request.subResource) return { review: allow(uid) };
  if (request.operation !== "CREATE") return { review: allow(uid) };
  const pod = request.object;
  if (!isObject(pod) || (pod.spec !== undefined && !isObject(pod.spec)))
    return {
      review: allow(uid, ["stowage: the pod in the admission request is malformed; it was not checked"]),
    };
  const podView = pod as PodView;
  const namespace =
    (typeof request.namespace === "string" && request.namespace) || podView.metadata?.namespace || "";
  if (!namespace) return { review: allow(uid, ["stowage: the pod has no namespace; it was not checked"]) };
  let decision: HoldDecision;
  try {
    decision = decideHold(podView, {
      namespace,
      namespaceLabels: lookups.namespaceLabels(namespace),
      controllerNamespace: lookups.controllerNamespace,
      modelImages: lookups.modelImagesIn(namespace),
      platformDigests: lookups.platformDigests?.bind(lookups),
    });
  } catch (err) {
    return {
      review: allow(uid, [`stowage: could not check the pod (${(err as Error).message}); it was not held`]),
    };
  }
  if (!decision.hold) return { review: allow(uid), decision };
  const patch = holdPatch(podView, decision.matches);
  const review = allow(uid);
  review.response.patchType = "JSONPatch";
  review.response.patch = Buffer.from(JSON.stringify(patch)).toString("base64");
  return { review, decision };
}
