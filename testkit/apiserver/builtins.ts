import { badRequest, type FieldError, fieldErrors, invalid } from "./errors.ts";
import { eventFromCore, eventToCore } from "./events.ts";
import type { PrinterColumn, ResourceDef } from "./resources.ts";
import { clone, deepEqual, isPlainObject, type Json, type KubeObject } from "./types.ts";

/** The built-in kinds Stowage touches, with the discovery facts kubectl and client-node rely on. */
interface BuiltinSpec {
  group: string;
  version: string;
  plural: string;
  kind: string;
  namespaced: boolean;
  shortNames?: string[];
  categories?: string[];
  status?: boolean;
  statusOnCreate?: "keep" | "reset";
  initialStatus?: () => Record<string, unknown>;
  /** the strategy sets metadata.generation (default false) */
  generation?: boolean;
  /** PUT without a resourceVersion is refused with 422 (default: allowed) */
  conditionalUpdateOnly?: boolean;
  /** an immediate delete answers with the object, not a Status (default false) */
  returnDeletedObject?: boolean;
  fields?: string[];
  columns?: PrinterColumn[];
}

const age: PrinterColumn = { name: "Age", type: "date", jsonPath: ".metadata.creationTimestamp" };

const specs: BuiltinSpec[] = [
  {
    group: "",
    version: "v1",
    plural: "namespaces",
    kind: "Namespace",
    namespaced: false,
    shortNames: ["ns"],
    status: true,
    returnDeletedObject: true,
    statusOnCreate: "reset",
    initialStatus: () => ({ phase: "Active" }),
    fields: ["status.phase"],
    columns: [{ name: "Status", type: "string", jsonPath: ".status.phase" }, age],
  },
  {
    group: "",
    version: "v1",
    plural: "nodes",
    kind: "Node",
    namespaced: false,
    shortNames: ["no"],
    status: true,
    statusOnCreate: "keep",
    fields: ["spec.unschedulable"],
    columns: [
      { name: "Status", type: "string", jsonPath: '.status.conditions[?(@.type=="Ready")].type' },
      age,
      { name: "Version", type: "string", jsonPath: ".status.nodeInfo.kubeletVersion" },
    ],
  },
  {
    group: "",
    version: "v1",
    plural: "pods",
    kind: "Pod",
    namespaced: true,
    shortNames: ["po"],
    categories: ["all"],
    status: true,
    generation: true,
    returnDeletedObject: true,
    statusOnCreate: "reset",
    initialStatus: () => ({ phase: "Pending", qosClass: "BestEffort" }),
    fields: [
      "spec.nodeName",
      "spec.restartPolicy",
      "spec.schedulerName",
      "spec.serviceAccountName",
      "spec.hostNetwork",
      "status.phase",
      "status.podIP",
      "status.nominatedNodeName",
    ],
    columns: [
      { name: "Status", type: "string", jsonPath: ".status.phase" },
      { name: "Node", type: "string", jsonPath: ".spec.nodeName", priority: 1 },
      age,
    ],
  },
  {
    group: "",
    version: "v1",
    plural: "secrets",
    kind: "Secret",
    namespaced: true,
    fields: ["type"],
    columns: [{ name: "Type", type: "string", jsonPath: ".type" }, age],
  },
  {
    group: "",
    version: "v1",
    plural: "configmaps",
    kind: "ConfigMap",
    namespaced: true,
    shortNames: ["cm"],
    columns: [age],
  },
  // storage only: kubectl describe namespace lists them
  {
    group: "",
    version: "v1",
    plural: "resourcequotas",
    kind: "ResourceQuota",
    namespaced: true,
    shortNames: ["quota"],
    status: true,
    returnDeletedObject: true,
    columns: [age],
  },
  {
    group: "",
    version: "v1",
    plural: "limitranges",
    kind: "LimitRange",
    namespaced: true,
    shortNames: ["limits"],
    columns: [age],
  },
  {
    group: "",
    version: "v1",
    plural: "events",
    kind: "Event",
    namespaced: true,
    shortNames: ["ev"],
    fields: [
      "involvedObject.kind",
      "involvedObject.namespace",
      "involvedObject.name",
      "involvedObject.uid",
      "involvedObject.apiVersion",
      "involvedObject.resourceVersion",
      "involvedObject.fieldPath",
      "reason",
      "reportingComponent",
      "source",
      "type",
    ],
    columns: [
      { name: "Type", type: "string", jsonPath: ".type" },
      { name: "Reason", type: "string", jsonPath: ".reason" },
      { name: "Message", type: "string", jsonPath: ".message" },
      age,
    ],
  },
  {
    group: "",
    version: "v1",
    plural: "serviceaccounts",
    kind: "ServiceAccount",
    namespaced: true,
    returnDeletedObject: true,
    shortNames: ["sa"],
    columns: [age],
  },
  {
    group: "",
    version: "v1",
    plural: "services",
    kind: "Service",
    namespaced: true,
    shortNames: ["svc"],
    categories: ["all"],
    status: true,
    returnDeletedObject: true,
    statusOnCreate: "reset",
    initialStatus: () => ({ loadBalancer: {} }),
    columns: [
      { name: "Type", type: "string", jsonPath: ".spec.type" },
      { name: "Cluster-IP", type: "string", jsonPath: ".spec.clusterIP" },
      age,
    ],
  },
  {
    group: "events.k8s.io",
    version: "v1",
    plural: "events",
    kind: "Event",
    namespaced: true,
    shortNames: ["ev"],
    fields: ["reason", "type", "regarding.kind", "regarding.name", "regarding.namespace", "regarding.uid"],
    columns: [
      { name: "Type", type: "string", jsonPath: ".type" },
      { name: "Reason", type: "string", jsonPath: ".reason" },
      { name: "Note", type: "string", jsonPath: ".note" },
      age,
    ],
  },
  {
    group: "coordination.k8s.io",
    version: "v1",
    plural: "leases",
    kind: "Lease",
    namespaced: true,
    conditionalUpdateOnly: true,
    columns: [{ name: "Holder", type: "string", jsonPath: ".spec.holderIdentity" }, age],
  },
  {
    group: "apps",
    version: "v1",
    plural: "deployments",
    kind: "Deployment",
    namespaced: true,
    shortNames: ["deploy"],
    categories: ["all"],
    status: true,
    generation: true,
    statusOnCreate: "reset",
    columns: [
      { name: "Ready", type: "string", jsonPath: ".status.readyReplicas" },
      { name: "Available", type: "string", jsonPath: ".status.availableReplicas" },
      age,
    ],
  },
  {
    group: "apps",
    version: "v1",
    plural: "daemonsets",
    kind: "DaemonSet",
    namespaced: true,
    shortNames: ["ds"],
    categories: ["all"],
    status: true,
    generation: true,
    statusOnCreate: "reset",
    columns: [
      { name: "Desired", type: "integer", jsonPath: ".status.desiredNumberScheduled" },
      { name: "Ready", type: "integer", jsonPath: ".status.numberReady" },
      age,
    ],
  },
  {
    group: "admissionregistration.k8s.io",
    version: "v1",
    plural: "mutatingwebhookconfigurations",
    kind: "MutatingWebhookConfiguration",
    namespaced: false,
    generation: true,
    categories: ["api-extensions"],
    columns: [age],
  },
  {
    group: "apiextensions.k8s.io",
    version: "v1",
    plural: "customresourcedefinitions",
    kind: "CustomResourceDefinition",
    namespaced: false,
    shortNames: ["crd", "crds"],
    categories: ["api-extensions"],
    status: true,
    generation: true,
    conditionalUpdateOnly: true,
    statusOnCreate: "reset",
    columns: [{ name: "Created At", type: "date", jsonPath: ".metadata.creationTimestamp" }],
  },
  {
    group: "rbac.authorization.k8s.io",
    version: "v1",
    plural: "roles",
    kind: "Role",
    namespaced: true,
    columns: [age],
  },
  {
    group: "rbac.authorization.k8s.io",
    version: "v1",
    plural: "clusterroles",
    kind: "ClusterRole",
    namespaced: false,
    columns: [age],
  },
  {
    group: "rbac.authorization.k8s.io",
    version: "v1",
    plural: "rolebindings",
    kind: "RoleBinding",
    namespaced: true,
    columns: [{ name: "Role", type: "string", jsonPath: ".roleRef.name" }, age],
  },
  {
    group: "rbac.authorization.k8s.io",
    version: "v1",
    plural: "clusterrolebindings",
    kind: "ClusterRoleBinding",
    namespaced: false,
    columns: [{ name: "Role", type: "string", jsonPath: ".roleRef.name" }, age],
  },
];

export function builtinResources(): ResourceDef[] {
  const defs = specs.map(
    (spec): ResourceDef => ({
      group: spec.group,
      version: spec.version,
      plural: spec.plural,
      singular: spec.kind.toLowerCase(),
      kind: spec.kind,
      listKind: `${spec.kind}List`,
      namespaced: spec.namespaced,
      shortNames: spec.shortNames ?? [],
      categories: spec.categories ?? [],
      subresources: spec.status ? ["status"] : [],
      bucket: `${spec.group}/${spec.plural}`,
      strategicMerge: true,
      statusOnCreate: spec.statusOnCreate ?? "reset",
      initialStatus: spec.initialStatus,
      generation: spec.generation ?? false,
      unconditionalUpdate: !spec.conditionalUpdateOnly,
      returnDeletedObject: spec.returnDeletedObject ?? false,
      selectableFields: spec.fields ?? [],
      printerColumns: spec.columns ?? [age],
    }),
  );
  const newEvents = defs.find((d) => d.group === "events.k8s.io")!;
  newEvents.bucket = "/events";
  newEvents.convert = { toStorage: eventToCore, fromStorage: eventFromCore };
  return defs;
}

/** Namespaces every cluster starts with. */
export const initialNamespaces = ["default", "kube-system", "kube-public", "kube-node-lease"];

/** metav1.MicroTime fields of built-ins, by kind: the real server decodes them with a fixed six-digit layout. */
const microTimeFields: Record<string, string[][]> = {
  Event: [["eventTime"], ["series", "lastObservedTime"]],
  Lease: [
    ["spec", "acquireTime"],
    ["spec", "renewTime"],
  ],
};

const microTimeLayout = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}(Z|[+-]\d{2}:\d{2})$/;

/**
 * Refuse MicroTime values that are not `2006-01-02T15:04:05.000000Z07:00`, as the real server's
 * decoder does (JavaScript's toISOString() has three fractional digits and is refused with 400).
 */
export function checkMicroTimes(def: ResourceDef, obj: KubeObject): KubeObject {
  if (!def.strategicMerge) return obj;
  for (const path of microTimeFields[def.kind] ?? []) {
    let value: Json = obj;
    for (const part of path) value = value?.[part];
    if (value === undefined || value === null) continue;
    if (typeof value !== "string" || !microTimeLayout.test(value)) {
      const seconds = typeof value === "string" ? (/^[^.Z+]*:\d{2}/.exec(value)?.[0] ?? "") : "";
      const rest = typeof value === "string" ? value.slice(seconds.length) : String(value);
      throw badRequest(
        `${def.kind} in version "${def.version}" cannot be handled as a ${def.kind}: parsing time ${JSON.stringify(value)} as "2006-01-02T15:04:05.000000Z07:00": cannot parse ${JSON.stringify(rest)} as ".000000"`,
      );
    }
  }
  return obj;
}

const podMutableNote =
  "pod updates may not change fields other than `spec.containers[*].image`,`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to existing tolerations),`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)";

/** Pod spec without the fields an update may change, to compare old and new. */
function podSpecImmutablePart(spec: Json, gated: boolean): Json {
  const copy = clone(spec ?? {});
  for (const list of ["containers", "initContainers"]) for (const c of copy[list] ?? []) delete c.image;
  delete copy.activeDeadlineSeconds;
  delete copy.tolerations;
  delete copy.terminationGracePeriodSeconds;
  delete copy.schedulingGates;
  delete copy.ephemeralContainers;
  if (gated) {
    // scheduling directives of a pod that still has scheduling gates may be tightened (Kubernetes 1.30+)
    delete copy.nodeSelector;
    delete copy.affinity;
  }
  return copy;
}

/**
 * The pod update rules a gate controller meets: scheduling gates can only be removed, never added,
 * after creation; the rest of the spec is immutable except images, tolerations (additions) and deadlines.
 */
export function checkPodUpdate(def: ResourceDef, obj: KubeObject, old: KubeObject | undefined): KubeObject {
  if (!old || def.kind !== "Pod" || def.group !== "") return obj;
  const name = obj.metadata.name ?? "";
  const errors: FieldError[] = [];
  const oldGates = new Set((old.spec?.schedulingGates ?? []).map((g: Json) => g.name));
  for (const gate of obj.spec?.schedulingGates ?? []) {
    if (!oldGates.has(gate.name))
      errors.push(
        fieldErrors.forbidden(
          "spec.schedulingGates",
          `only deletion is allowed, but found new scheduling gate '${gate.name}'`,
        ),
      );
  }
  const gated = oldGates.size > 0;
  if (!deepEqual(podSpecImmutablePart(obj.spec, gated), podSpecImmutablePart(old.spec, gated)))
    errors.push(fieldErrors.forbidden("spec", podMutableNote));
  const oldTolerations: Json[] = old.spec?.tolerations ?? [];
  const newTolerations: Json[] = obj.spec?.tolerations ?? [];
  if (oldTolerations.some((t) => !newTolerations.some((n) => deepEqual(n, t))))
    errors.push(
      fieldErrors.forbidden(
        "spec.tolerations",
        "existing toleration can not be modified except its tolerationSeconds",
      ),
    );
  if (errors.length > 0) throw invalid("Pod", "", name, errors);
  return obj;
}

/** Secrets: `stringData` is write-only convenience, merged into base64 `data` by the server. */
export function foldSecretStringData(def: ResourceDef, obj: KubeObject): KubeObject {
  if (def.kind !== "Secret" || def.group !== "" || !isPlainObject(obj.stringData)) return obj;
  const data: Record<string, string> = { ...(obj.data ?? {}) };
  for (const [key, value] of Object.entries(obj.stringData))
    data[key] = Buffer.from(String(value), "utf8").toString("base64");
  const { stringData: _dropped, ...rest } = obj;
  return { ...rest, data } as KubeObject;
}

/** List fields of built-ins without `omitempty`: an empty one reads back as `null`, not absent. */
const listsWithoutOmitEmpty = new Set([
  "rbac.authorization.k8s.io/Role rules",
  "rbac.authorization.k8s.io/ClusterRole rules",
]);

/**
 * Built-ins are stored as protobuf, which keeps no difference between an empty list or map and
 * none: an empty list (taints, finalizers, schedulingGates, ...) reads back absent (`omitempty`),
 * or `null` for the few list fields without it, and so do empty labels, annotations and data.
 * Custom resources are stored as JSON and keep what was written.
 */
export function dropEmptyBuiltinFields(def: ResourceDef, obj: KubeObject): KubeObject {
  if (!def.strategicMerge) return obj;
  const strip = (value: Json, top: boolean): Json => {
    if (Array.isArray(value)) return value.map((item) => strip(item, false));
    if (!isPlainObject(value)) return value;
    const out: Record<string, Json> = {};
    for (const [key, item] of Object.entries(value as Record<string, Json>)) {
      if (Array.isArray(item) && item.length === 0) {
        if (top && listsWithoutOmitEmpty.has(`${def.group}/${def.kind} ${key}`)) out[key] = null;
        continue;
      }
      out[key] = strip(item, false);
    }
    return out;
  };
  const stripped = strip(obj, true) as KubeObject;
  const emptyMap = (value: unknown) => isPlainObject(value) && Object.keys(value as object).length === 0;
  const metadata = { ...stripped.metadata };
  for (const key of ["labels", "annotations"] as const) if (emptyMap(metadata[key])) delete metadata[key];
  const result: KubeObject = { ...stripped, metadata };
  if (def.group === "" && (def.kind === "ConfigMap" || def.kind === "Secret"))
    for (const key of ["data", "binaryData"]) if (emptyMap(result[key])) delete result[key];
  return result;
}

/** What Go's json.Unmarshal into a map says about `text`, or undefined when it decodes. */
function jsonObjectError(text: string): string | undefined {
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch (err) {
    if (text.trim() === "" || /end of JSON input|Unterminated|Unexpected end/i.test((err as Error).message))
      return "unexpected end of JSON input";
    const token = /Unexpected token '(.)'/.exec((err as Error).message)?.[1] ?? text.trim()[0];
    return `invalid character '${token}' looking for beginning of value`;
  }
  if (isPlainObject(parsed)) return undefined;
  const kind = Array.isArray(parsed) ? "array" : parsed === null ? undefined : typeof parsed;
  return kind ? `json: cannot unmarshal ${kind} into Go value of type map[string]interface {}` : undefined;
}

/**
 * Secrets of the well-known types carry the keys their type promises, and the docker config
 * ones hold a JSON object (ValidateSecret); the type never changes (ValidateSecretUpdate).
 */
export function checkSecret(def: ResourceDef, obj: KubeObject, old: KubeObject | undefined): KubeObject {
  if (def.kind !== "Secret" || def.group !== "") return obj;
  const name = obj.metadata.name ?? "";
  const data: Record<string, string> = isPlainObject(obj.data) ? (obj.data as Record<string, string>) : {};
  const has = (key: string) => Object.hasOwn(data, key);
  const decoded = (key: string) => Buffer.from(data[key] ?? "", "base64").toString("utf8");
  const errors: FieldError[] = [];
  const type = obj.type ?? "Opaque";
  if (old && type !== (old.type ?? "Opaque"))
    errors.push(fieldErrors.invalid("type", type, "field is immutable"));
  const jsonKey = (key: string) => {
    if (!has(key)) return errors.push(fieldErrors.required(`data[${key}]`));
    const problem = jsonObjectError(decoded(key));
    if (problem) errors.push(fieldErrors.invalid(`data[${key}]`, "<secret contents redacted>", problem));
  };
  switch (type) {
    case "kubernetes.io/dockercfg":
      jsonKey(".dockercfg");
      break;
    case "kubernetes.io/dockerconfigjson":
      jsonKey(".dockerconfigjson");
      break;
    case "kubernetes.io/basic-auth":
      if (!has("username") && !has("password"))
        errors.push(fieldErrors.required("data[username]"), fieldErrors.required("data[password]"));
      break;
    case "kubernetes.io/ssh-auth":
      if (!data["ssh-privatekey"]) errors.push(fieldErrors.required("data[ssh-privatekey]"));
      break;
    case "kubernetes.io/tls":
      if (!has("tls.crt")) errors.push(fieldErrors.required("data[tls.crt]"));
      if (!has("tls.key")) errors.push(fieldErrors.required("data[tls.key]"));
      break;
  }
  if (errors.length > 0) throw invalid("Secret", "", name, errors);
  return obj;
}

const dnsSubdomain = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$/;
const dnsLabel = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/;

/** Object names: DNS labels for namespaces, DNS subdomains for the other built-ins (RBAC and events are laxer). */
export function checkBuiltinName(def: ResourceDef, obj: KubeObject, old: KubeObject | undefined): KubeObject {
  if (old || !def.strategicMerge || def.group === "rbac.authorization.k8s.io" || def.kind === "Event")
    return obj;
  const name = obj.metadata.name ?? "";
  const label = def.kind === "Namespace";
  const ok = label ? dnsLabel.test(name) && name.length <= 63 : dnsSubdomain.test(name) && name.length <= 253;
  if (!ok)
    throw invalid(def.kind, def.group, name, [
      fieldErrors.invalid(
        "metadata.name",
        name,
        label
          ? "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')"
          : "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')",
      ),
    ]);
  return obj;
}

/** metav1.Time fields (whole seconds on the wire) that clients set in built-in objects. */
const timeFieldNames = new Set([
  "lastTransitionTime",
  "lastHeartbeatTime",
  "lastProbeTime",
  "lastUpdateTime",
  "firstTimestamp",
  "lastTimestamp",
  "startTime",
  "startedAt",
  "finishedAt",
]);

const fractionalTime = /^(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2})\.\d+(Z|[+-]\d{2}:\d{2})$/;

/**
 * Built-in objects are decoded into Go structs, so a metav1.Time written with fractional seconds
 * reads back truncated to whole seconds (a controller that compares what it wrote with what it
 * reads must cope). Custom resources keep the string as sent.
 */
export function truncateTimes(def: ResourceDef, obj: KubeObject): KubeObject {
  if (!def.strategicMerge) return obj;
  const walk = (node: Json): Json => {
    if (Array.isArray(node)) return node.map(walk);
    if (!isPlainObject(node)) return node;
    const out: Json = {};
    for (const [key, value] of Object.entries(node)) {
      const m = typeof value === "string" && timeFieldNames.has(key) ? fractionalTime.exec(value) : null;
      out[key] = m ? `${m[1]}${m[2]}` : walk(value);
    }
    return out;
  };
  const { metadata, ...rest } = obj;
  return { metadata, ...walk(rest) };
}

/** The defaults the real server gives every webhook of a MutatingWebhookConfiguration (SetDefaults_MutatingWebhook). */
export function defaultWebhookConfiguration(def: ResourceDef, obj: KubeObject): KubeObject {
  if (def.kind !== "MutatingWebhookConfiguration" || !Array.isArray(obj.webhooks)) return obj;
  const webhooks = obj.webhooks.map((webhook: Json) => {
    if (!isPlainObject(webhook)) return webhook;
    const out: Json = {
      ...webhook,
      failurePolicy: webhook.failurePolicy ?? "Fail",
      matchPolicy: webhook.matchPolicy ?? "Equivalent",
      namespaceSelector: webhook.namespaceSelector ?? {},
      objectSelector: webhook.objectSelector ?? {},
      timeoutSeconds: webhook.timeoutSeconds ?? 10,
      reinvocationPolicy: webhook.reinvocationPolicy ?? "Never",
    };
    if (Array.isArray(webhook.rules))
      out.rules = webhook.rules.map((rule: Json) =>
        isPlainObject(rule) ? { ...rule, scope: rule.scope ?? "*" } : rule,
      );
    if (isPlainObject(webhook.clientConfig?.service))
      out.clientConfig = {
        ...webhook.clientConfig,
        service: { ...webhook.clientConfig.service, port: webhook.clientConfig.service.port ?? 443 },
      };
    return out;
  });
  return { ...obj, webhooks };
}
