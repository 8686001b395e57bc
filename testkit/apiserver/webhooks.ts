/**
 * Mutating admission webhooks, called the way kube-apiserver calls them: every
 * MutatingWebhookConfiguration stored in the double (ordered by name, webhooks in order) whose
 * `rules`, `namespaceSelector` and `objectSelector` match a write gets an AdmissionReview v1 over
 * HTTPS, verified with its `caBundle` only. `clientConfig.service` is reached through a
 * test-provided map from `svc.ns:port` to a loopback `host:port` (the certificate is still checked
 * against `svc.ns.svc`). JSON patches are applied, warnings become `Warning` headers,
 * `failurePolicy`, `timeoutSeconds`, `sideEffects`, `admissionReviewVersions` and
 * `reinvocationPolicy: IfNeeded` behave as on a real server (simplified: one reinvocation round).
 */
import { randomUUID } from "node:crypto";
import { request as httpsRequest } from "node:https";
import { ApiError, badRequest } from "./errors.ts";
import { jsonPatch } from "./patch.ts";
import { apiVersionOf } from "./resources.ts";
import type { AdmissionPlugin, AdmissionRequest, ApiCore } from "./rest.ts";
import { deepEqual, type Json, type KubeObject } from "./types.ts";

const configBucket = "admissionregistration.k8s.io/mutatingwebhookconfigurations";
const namespaceBucket = "/namespaces";

interface LabelSelector {
  matchLabels?: Record<string, string>;
  matchExpressions?: { key: string; operator: string; values?: string[] }[];
}

interface Rule {
  operations?: string[];
  apiGroups?: string[];
  apiVersions?: string[];
  resources?: string[];
  scope?: string;
}

interface MutatingWebhook {
  name: string;
  clientConfig?: {
    url?: string;
    service?: { namespace: string; name: string; path?: string; port?: number };
    caBundle?: string;
  };
  rules?: Rule[];
  failurePolicy?: "Fail" | "Ignore";
  namespaceSelector?: LabelSelector;
  objectSelector?: LabelSelector;
  sideEffects?: string;
  timeoutSeconds?: number;
  admissionReviewVersions?: string[];
  reinvocationPolicy?: "Never" | "IfNeeded";
}

export interface WebhookCallerOptions {
  /** `svc.ns:port` → `127.0.0.1:PORT`: where a `clientConfig.service` is reached from the double. */
  serviceAddresses: Map<string, string>;
}

/** One call the double made, for tests to assert on. */
export interface WebhookCall {
  webhook: string;
  operation: string;
  resource: string;
  outcome: "patched" | "allowed" | "denied" | "failed-open" | "failed";
}

function selectorMatches(
  selector: LabelSelector | undefined,
  labels: Record<string, string> | undefined,
): boolean {
  if (!selector) return true;
  const set = labels ?? {};
  for (const [key, value] of Object.entries(selector.matchLabels ?? {})) if (set[key] !== value) return false;
  for (const expr of selector.matchExpressions ?? []) {
    const has = Object.hasOwn(set, expr.key);
    const values = expr.values ?? [];
    if (expr.operator === "In" && !(has && values.includes(set[expr.key]))) return false;
    if (expr.operator === "NotIn" && has && values.includes(set[expr.key])) return false;
    if (expr.operator === "Exists" && !has) return false;
    if (expr.operator === "DoesNotExist" && has) return false;
  }
  return true;
}

function listMatches(list: string[] | undefined, value: string): boolean {
  return (list ?? []).some((item) => item === "*" || item === value);
}

function resourceMatches(
  resources: string[] | undefined,
  plural: string,
  subresource: string | undefined,
): boolean {
  const wanted = subresource ? `${plural}/${subresource}` : plural;
  return (resources ?? []).some((item) => {
    if (item === "*/*") return true;
    if (item === "*") return !subresource;
    if (item === wanted) return true;
    const [res, sub] = item.split("/");
    if (sub === "*" && subresource) return res === plural || res === "*";
    if (res === "*" && sub && subresource) return sub === subresource;
    return false;
  });
}

function ruleMatches(rule: Rule, request: AdmissionRequest): boolean {
  const def = request.def;
  if (!listMatches(rule.operations, request.operation)) return false;
  if (!listMatches(rule.apiGroups, def.group)) return false;
  if (!listMatches(rule.apiVersions, def.version)) return false;
  if (!resourceMatches(rule.resources, def.plural, request.subresource)) return false;
  const scope = rule.scope ?? "*";
  if (scope === "Namespaced" && !def.namespaced) return false;
  if (scope === "Cluster" && def.namespaced) return false;
  return true;
}

function errorText(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

/**
 * Builds the admission plugin. `calls` records every call in order (tests read it).
 */
export function mutatingWebhooks(
  core: ApiCore,
  options: WebhookCallerOptions,
): { plugin: AdmissionPlugin; calls: WebhookCall[] } {
  const calls: WebhookCall[] = [];

  const namespaceMatches = (
    webhook: MutatingWebhook,
    request: AdmissionRequest,
    object: KubeObject,
  ): boolean => {
    if (!webhook.namespaceSelector) return true;
    if (request.def.bucket === namespaceBucket)
      return selectorMatches(webhook.namespaceSelector, object.metadata?.labels);
    if (!request.def.namespaced) return true;
    const ns = core.store.get(namespaceBucket, undefined, object.metadata?.namespace ?? "");
    return selectorMatches(webhook.namespaceSelector, ns?.metadata?.labels);
  };

  const endpoint = (webhook: MutatingWebhook): { url: URL; servername?: string } => {
    const config = webhook.clientConfig ?? {};
    if (config.url) return { url: new URL(config.url) };
    const service = config.service;
    if (!service) throw new Error("webhook has neither clientConfig.url nor clientConfig.service");
    const port = service.port ?? 443;
    const key = `${service.name}.${service.namespace}:${port}`;
    const address = options.serviceAddresses.get(key);
    if (!address) throw new Error(`dial tcp: lookup ${service.name}.${service.namespace}.svc: no such host`);
    return {
      url: new URL(`https://${address}${service.path ?? "/"}`),
      servername: `${service.name}.${service.namespace}.svc`,
    };
  };

  const post = (webhook: MutatingWebhook, body: Json): Promise<Json> => {
    const { url, servername } = endpoint(webhook);
    const ca = webhook.clientConfig?.caBundle
      ? Buffer.from(webhook.clientConfig.caBundle, "base64").toString("utf8")
      : undefined;
    const timeoutMs = (webhook.timeoutSeconds ?? 10) * 1000;
    const payload = JSON.stringify(body);
    return new Promise((resolve, reject) => {
      const req = httpsRequest(
        url,
        {
          method: "POST",
          ...(ca ? { ca } : {}),
          ...(servername ? { servername } : {}),
          headers: { "content-type": "application/json", "content-length": Buffer.byteLength(payload) },
          timeout: timeoutMs,
          agent: false,
        },
        (res) => {
          let text = "";
          res.setEncoding("utf8");
          res.on("data", (chunk) => {
            text += chunk;
          });
          res.on("end", () => {
            if ((res.statusCode ?? 0) !== 200)
              return reject(new Error(`expected response code 200, got ${res.statusCode}`));
            try {
              resolve(JSON.parse(text));
            } catch (err) {
              reject(new Error(`failed to decode the response: ${errorText(err)}`));
            }
          });
          res.on("error", reject);
        },
      );
      req.on("timeout", () => req.destroy(new Error("context deadline exceeded")));
      req.on("error", reject);
      req.end(payload);
    });
  };

  /** Calls one webhook; returns the (maybe patched) object. */
  const call = async (
    webhook: MutatingWebhook,
    request: AdmissionRequest,
    object: KubeObject | undefined,
    warnings: string[] | undefined,
  ): Promise<KubeObject | undefined> => {
    const def = request.def;
    const record = (outcome: WebhookCall["outcome"]) =>
      calls.push({ webhook: webhook.name, operation: request.operation, resource: def.plural, outcome });
    if (request.dryRun && webhook.sideEffects !== "None" && webhook.sideEffects !== "NoneOnDryRun")
      throw badRequest(`admission webhook "${webhook.name}" does not support dry run`);
    const uid = randomUUID();
    const subject = object ?? request.oldObject;
    const failed = (why: string): KubeObject | undefined => {
      if (webhook.failurePolicy === "Ignore") {
        record("failed-open");
        return object;
      }
      record("failed");
      throw new ApiError(
        500,
        "InternalError",
        `Internal error occurred: failed calling webhook "${webhook.name}": ${why}`,
      );
    };
    if (!(webhook.admissionReviewVersions ?? []).includes("v1"))
      return failed(
        `webhook does not accept v1 AdmissionReview (admissionReviewVersions: ${JSON.stringify(webhook.admissionReviewVersions ?? [])})`,
      );
    let urlText = "";
    try {
      urlText = endpoint(webhook).url.toString();
    } catch (err) {
      return failed(`failed to call webhook: ${errorText(err)}`);
    }
    const gvk = { group: def.group, version: def.version, kind: def.kind };
    const gvr = { group: def.group, version: def.version, resource: def.plural };
    const review = {
      apiVersion: "admission.k8s.io/v1",
      kind: "AdmissionReview",
      request: {
        uid,
        kind: gvk,
        resource: gvr,
        ...(request.subresource ? { subResource: request.subresource } : {}),
        requestKind: gvk,
        requestResource: gvr,
        name: subject?.metadata?.name ?? "",
        ...(def.namespaced ? { namespace: subject?.metadata?.namespace ?? "" } : {}),
        operation: request.operation,
        userInfo: {
          username: request.user?.user ?? "",
          ...(request.user?.uid ? { uid: request.user.uid } : {}),
          groups: request.user?.groups ?? [],
        },
        object: object ?? null,
        oldObject: request.oldObject ?? null,
        dryRun: request.dryRun,
        options: {
          apiVersion: "meta.k8s.io/v1",
          kind: `${request.operation === "CREATE" ? "Create" : request.operation === "UPDATE" ? "Update" : "Delete"}Options`,
        },
      },
    };
    let answer: Json;
    try {
      answer = await post(webhook, review);
    } catch (err) {
      return failed(`failed to call webhook: Post "${urlText}": ${errorText(err)}`);
    }
    const response = answer?.response;
    if (
      answer?.apiVersion !== "admission.k8s.io/v1" ||
      answer?.kind !== "AdmissionReview" ||
      typeof response !== "object" ||
      response === null
    )
      return failed(
        `received invalid webhook response: expected AdmissionReview admission.k8s.io/v1 with a response`,
      );
    if (response.uid !== uid) return failed(`expected response.uid="${uid}", got "${response.uid}"`);
    for (const warning of response.warnings ?? []) warnings?.push(String(warning));
    if (response.allowed !== true) {
      record("denied");
      const status = response.status ?? {};
      const code = typeof status.code === "number" && status.code >= 400 ? status.code : 400;
      throw new ApiError(
        code,
        status.reason ?? "BadRequest",
        `admission webhook "${webhook.name}" denied the request${status.message ? `: ${status.message}` : " without explanation"}`,
      );
    }
    if (!response.patch) {
      record("allowed");
      return object;
    }
    if (response.patchType !== "JSONPatch") return failed(`unsupported patch type "${response.patchType}"`);
    if (!object) return failed("a patch was returned for an operation without an object");
    let operations: Json;
    try {
      operations = JSON.parse(Buffer.from(response.patch, "base64").toString("utf8"));
    } catch (err) {
      return failed(`the patch is not JSON: ${errorText(err)}`);
    }
    let patched: KubeObject;
    try {
      patched = jsonPatch(object, operations) as KubeObject;
    } catch (err) {
      return failed(`failed to apply the patch: ${errorText(err)}`);
    }
    if (patched.apiVersion !== apiVersionOf(def) || patched.kind !== def.kind)
      return failed("the patch changed the object's apiVersion or kind");
    record("patched");
    return patched;
  };

  const plugin: AdmissionPlugin = async (request) => {
    // The real server never calls webhooks about webhook configurations.
    if (request.def.group === "admissionregistration.k8s.io") return undefined;
    const configs = [...core.store.list(configBucket)].sort((a, b) =>
      (a.metadata.name ?? "").localeCompare(b.metadata.name ?? ""),
    );
    const warnings = request.warnings;
    let object = request.object;
    const invoked: { webhook: MutatingWebhook; after: KubeObject | undefined }[] = [];
    for (const config of configs) {
      for (const webhook of (config.webhooks ?? []) as MutatingWebhook[]) {
        const subject = object ?? request.oldObject;
        if (!subject) continue;
        if (!(webhook.rules ?? []).some((rule) => ruleMatches(rule, request))) continue;
        if (!namespaceMatches(webhook, request, subject)) continue;
        const objectLabels = object?.metadata?.labels;
        const oldLabels = request.oldObject?.metadata?.labels;
        if (
          webhook.objectSelector &&
          !selectorMatches(webhook.objectSelector, objectLabels) &&
          !(request.oldObject && selectorMatches(webhook.objectSelector, oldLabels))
        )
          continue;
        object = await call(webhook, request, object, warnings);
        invoked.push({ webhook, after: object });
      }
    }
    // IfNeeded: a webhook whose output a later webhook changed is called once more.
    for (const entry of invoked) {
      if (entry.webhook.reinvocationPolicy !== "IfNeeded") continue;
      if (deepEqual(entry.after, object)) continue;
      object = await call(entry.webhook, request, object, warnings);
    }
    return object === request.object ? undefined : object;
  };

  return { plugin, calls };
}
