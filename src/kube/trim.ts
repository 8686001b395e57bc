/**
 * Informer transforms (InformerOptions.transform) that keep only what Stowage's controllers read.
 * The controller caches every Node and, for the scheduling gates, every Pod in its scope; as full
 * objects they are most of its memory (a Node's status.images alone lists up to fifty images with
 * all their names; a Pod carries managedFields, its whole spec and status). The trimmed copies keep
 * identity (what events, keys and resourceVersion-guarded patches need) and the fields listed here;
 * a consumer that starts reading another field must add it here, which the tests in
 * test/kube/trim.test.ts pin down.
 */
import type { KubeObject } from "./client.ts";

type Metadata = NonNullable<KubeObject["metadata"]>;

/** Identity: enough for objectKey, the informer's uid and resourceVersion checks, and events. */
function identity(obj: KubeObject): KubeObject {
  const m = obj.metadata ?? {};
  const metadata: Metadata = {
    name: m.name,
    namespace: m.namespace,
    uid: m.uid,
    resourceVersion: m.resourceVersion,
    creationTimestamp: m.creationTimestamp,
    deletionTimestamp: m.deletionTimestamp,
  };
  for (const key of Object.keys(metadata) as (keyof Metadata)[])
    if (metadata[key] === undefined) delete metadata[key];
  return { apiVersion: obj.apiVersion, kind: obj.kind, metadata };
}

interface NodeShape extends KubeObject {
  spec?: { unschedulable?: boolean; taints?: unknown[] };
  status?: {
    conditions?: { type: string; status: string }[];
    nodeInfo?: { operatingSystem?: string; architecture?: string };
    addresses?: { type: string; address: string }[];
  };
}

/**
 * A Node as the planners read it: labels (selectors, platform, CUDA driver, zone), taints and
 * unschedulable (the warming taint, cordons), Ready, the OS/architecture fallback, and its
 * InternalIP (where peers reach its agent in fan-out; the other addresses are dropped).
 */
export function trimNode(obj: KubeObject): KubeObject {
  const node = obj as NodeShape;
  const out = identity(node) as NodeShape;
  if (node.metadata?.labels) out.metadata!.labels = node.metadata.labels;
  const spec: NonNullable<NodeShape["spec"]> = {};
  if (node.spec?.unschedulable !== undefined) spec.unschedulable = node.spec.unschedulable;
  if (node.spec?.taints) spec.taints = node.spec.taints;
  out.spec = spec;
  const status: NonNullable<NodeShape["status"]> = {};
  if (node.status?.conditions)
    status.conditions = node.status.conditions.map(({ type, status }) => ({ type, status }));
  const info = node.status?.nodeInfo;
  if (info) status.nodeInfo = { operatingSystem: info.operatingSystem, architecture: info.architecture };
  const internal = node.status?.addresses?.find((a) => a.type === "InternalIP");
  if (internal) status.addresses = [{ type: internal.type, address: internal.address }];
  out.status = status;
  return out;
}

interface PodShape extends KubeObject {
  spec?: { schedulingGates?: { name: string }[]; nodeName?: string };
}

/** Annotations the gates read (held-for); a Pod's others (last-applied configuration…) are dropped. */
const POD_ANNOTATION_PREFIX = "stowage.dev/";

/** A Pod as the scheduling gates read it: its gates, its node, and Stowage's annotations. */
export function trimPod(obj: KubeObject): KubeObject {
  const pod = obj as PodShape;
  const out = identity(pod) as PodShape;
  const annotations = Object.entries(pod.metadata?.annotations ?? {}).filter(([key]) =>
    key.startsWith(POD_ANNOTATION_PREFIX),
  );
  if (annotations.length > 0) out.metadata!.annotations = Object.fromEntries(annotations);
  const spec: NonNullable<PodShape["spec"]> = {};
  if (pod.spec?.schedulingGates)
    spec.schedulingGates = pod.spec.schedulingGates.map(({ name }) => ({ name }));
  if (pod.spec?.nodeName) spec.nodeName = pod.spec.nodeName;
  out.spec = spec;
  return out;
}
