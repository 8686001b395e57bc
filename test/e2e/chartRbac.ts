/**
 * The chart's RBAC as `helm template` renders it (the real helm, built from tools/k8s), taken
 * apart into its rules: which ServiceAccount each rule reaches, and where (a ClusterRoleBinding
 * everywhere, a RoleBinding in its namespace). Requests from the API's request log are matched
 * against those rules the way kube-apiserver's RBAC authorizer matches them, so a test can say
 * which rendered rule a request needed and which rule a 403 was missing.
 */
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseAllDocuments } from "yaml";
import type { KubeObject } from "../../testkit/apiserver/index.ts";
import { helmOk } from "../../testkit/helm.ts";
import { root } from "./helpers.ts";

export const releaseNamespace = "stowage-system";
export const controllerServiceAccount = "stowage-controller";
export const agentServiceAccount = "stowage-agent";

export interface ChartValues {
  webhook?: boolean;
  watchNamespaces?: string[];
}

export interface PolicyRule {
  apiGroups: string[];
  resources: string[];
  verbs: string[];
  resourceNames?: string[];
}

interface RbacObject extends KubeObject {
  rules?: PolicyRule[] | null;
  roleRef?: { kind: string; name: string };
  subjects?: { kind: string; name: string; namespace?: string }[];
}

const rbacKinds = new Set(["ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"]);

/** `helm template stowage charts/stowage --namespace stowage-system` with `values`, every document. */
export async function helmTemplate(values: ChartValues): Promise<KubeObject[]> {
  const set = [`webhook.enabled=${values.webhook ?? false}`];
  (values.watchNamespaces ?? []).forEach((ns, i) => {
    set.push(`watchNamespaces[${i}]=${ns}`);
  });
  const dir = await mkdtemp(join(tmpdir(), "stowage-helm-"));
  try {
    const stdout = await helmOk(
      [
        "template",
        "stowage",
        join(root, "charts/stowage"),
        "--namespace",
        releaseNamespace,
        ...set.flatMap((s) => ["--set", s]),
      ],
      { dir },
    );
    return parseAllDocuments(stdout)
      .map((doc) => doc.toJS() as KubeObject | null)
      .filter((doc): doc is KubeObject => !!doc?.kind);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

/**
 * The ServiceAccounts, Roles, ClusterRoles and their bindings among rendered documents that
 * exist while the release runs. Helm hook objects are left out: Helm creates them only around
 * their hook (the pre-delete Job that runs `stowage uninstall`), for a process these tests do
 * not run; test/real/chart-on-kubelet.test.ts runs that hook with `helm uninstall`.
 */
export function rbacOf(documents: KubeObject[]): KubeObject[] {
  return documents.filter((d) => rbacKinds.has(d.kind ?? "") && !d.metadata?.annotations?.["helm.sh/hook"]);
}

export interface RenderedRule {
  /** `ClusterRole/stowage-controller-cluster#0`: the role and the rule's position in it */
  id: string;
  role: { kind: string; name: string; namespace?: string };
  index: number;
  rule: PolicyRule;
  /** who the rule reaches: a ServiceAccount and the namespace a RoleBinding limits it to */
  grantees: { serviceAccount: string; namespace?: string }[];
}

export function renderedRules(objects: KubeObject[]): RenderedRule[] {
  const all = objects as RbacObject[];
  const bindings = all.filter((o) => o.kind === "ClusterRoleBinding" || o.kind === "RoleBinding");
  return all
    .filter((o) => o.kind === "ClusterRole" || o.kind === "Role")
    .flatMap((role) =>
      (role.rules ?? []).map((rule, index) => {
        const grantees = bindings
          .filter(
            (b) =>
              b.roleRef?.kind === role.kind &&
              b.roleRef?.name === role.metadata?.name &&
              (role.kind === "ClusterRole" || b.metadata?.namespace === role.metadata?.namespace),
          )
          .flatMap((b) =>
            (b.subjects ?? [])
              .filter((s) => s.kind === "ServiceAccount")
              .map((s) => ({
                serviceAccount: `system:serviceaccount:${s.namespace}:${s.name}`,
                ...(b.kind === "RoleBinding" ? { namespace: b.metadata?.namespace } : {}),
              })),
          );
        return {
          id: `${role.kind}/${role.metadata?.name}#${index}`,
          role: {
            kind: role.kind ?? "",
            name: role.metadata?.name ?? "",
            ...(role.metadata?.namespace ? { namespace: role.metadata.namespace } : {}),
          },
          index,
          rule,
          grantees,
        };
      }),
    );
}

/** The objects with one rule taken out of its role (the role stays, with the other rules). */
export function withoutRule(objects: KubeObject[], removed: RenderedRule): KubeObject[] {
  return objects.map((o) => {
    const object = o as RbacObject;
    if (
      object.kind !== removed.role.kind ||
      object.metadata?.name !== removed.role.name ||
      (object.metadata?.namespace ?? undefined) !== removed.role.namespace
    )
      return o;
    return { ...object, rules: (object.rules ?? []).filter((_, i) => i !== removed.index) } as KubeObject;
  });
}

/** A request as the API's request log holds it; `user` only the real apiserver's audit log has. */
export interface LoggedRequest {
  path: string;
  verb: string;
  status: number;
  user?: string;
}

export interface ApiRequestInfo {
  group: string;
  resource: string;
  subresource?: string;
  namespace?: string;
  name?: string;
}

/** What a resource path asks for, as the apiserver's RequestInfo resolver reads it; undefined for non-resource paths. */
export function requestInfo(path: string): ApiRequestInfo | undefined {
  const parts = path.split("/").filter(Boolean);
  let group: string;
  let rest: string[];
  if (parts[0] === "api" && parts.length >= 3) {
    group = "";
    rest = parts.slice(2);
  } else if (parts[0] === "apis" && parts.length >= 4) {
    group = parts[1];
    rest = parts.slice(3);
  } else return undefined;
  if (
    rest[0] === "namespaces" &&
    rest.length >= 3 &&
    !(rest.length === 3 && ["status", "finalize"].includes(rest[2]))
  ) {
    const [, namespace, resource, name, subresource] = rest;
    return { group, resource, namespace, name, subresource };
  }
  const [resource, name, subresource] = rest;
  // a Namespace is in its own namespace for RBAC (a Role there may grant get on it)
  const namespace = group === "" && resource === "namespaces" ? name : undefined;
  return { group, resource, name, subresource, namespace };
}

/** Whether `rule`, reaching `grantee`, authorizes `request` for `user`. */
export function ruleGrants(rendered: RenderedRule, request: LoggedRequest, user: string): boolean {
  const info = requestInfo(request.path);
  if (!info) return false;
  const { rule } = rendered;
  const has = (list: string[] | undefined, value: string) =>
    !!list && (list.includes("*") || list.includes(value));
  if (!has(rule.verbs, request.verb) || !has(rule.apiGroups, info.group)) return false;
  const resource = info.subresource ? `${info.resource}/${info.subresource}` : info.resource;
  if (!has(rule.resources, resource)) return false;
  if (rule.resourceNames?.length && !(info.name && rule.resourceNames.includes(info.name))) return false;
  return rendered.grantees.some(
    (g) => g.serviceAccount === user && (g.namespace === undefined || g.namespace === info.namespace),
  );
}

/** A short name for a rule in messages: `ClusterRole/stowage-agent#1 (nodecaches/status: get,update,patch)`. */
export function describeRule(rendered: RenderedRule): string {
  return `${rendered.id} (${rendered.rule.resources.join(",")}: ${rendered.rule.verbs.join(",")})`;
}
