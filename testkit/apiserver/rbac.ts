import { writeFileSync } from "node:fs";
import { stringify } from "yaml";
import type { Authenticator, Authorizer, RequestInfo } from "./server.ts";
import type { KubeObject } from "./types.ts";

/**
 * RBAC for the API double, evaluated the way kube-apiserver's RBAC authorizer does: a request is
 * allowed when a rule of a Role or ClusterRole, bound to the caller by a RoleBinding (only in that
 * binding's namespace) or a ClusterRoleBinding (everywhere), names its verb, API group and resource
 * (or `resource/subresource`) and, when the rule lists resourceNames, the object's name. Members of
 * `system:masters` bypass RBAC. Denials carry no reason, so the 403 message is exactly the server's
 * `<resource> "<name>" is forbidden: User "<user>" cannot <verb> resource ...`.
 * Not modelled: aggregated ClusterRoles, nonResourceURLs, escalation checks on writes of RBAC objects.
 */

export interface UserInfo {
  user: string;
  groups: string[];
  /** the user's uid, as a token file's third column gives it */
  uid?: string;
}

/** The token the double's default kubeconfig carries: a cluster admin once RBAC is on. */
export const adminToken = "stowage-test-token";
export const adminUser: UserInfo = {
  user: "stowage-test-admin",
  groups: ["system:masters", "system:authenticated"],
};

export function serviceAccountUser(namespace: string, name: string): UserInfo {
  return {
    user: `system:serviceaccount:${namespace}:${name}`,
    groups: ["system:serviceaccounts", `system:serviceaccounts:${namespace}`, "system:authenticated"],
  };
}

export interface PolicyRule {
  verbs?: string[];
  apiGroups?: string[];
  resources?: string[];
  resourceNames?: string[];
  nonResourceURLs?: string[];
}

interface Subject {
  kind?: string;
  name?: string;
  namespace?: string;
}

interface Binding extends KubeObject {
  roleRef?: { kind?: string; name?: string };
  subjects?: Subject[];
}

/** Reads the RBAC objects currently stored (the authorizer looks them up on every request, like an informer cache). */
export interface RbacObjects {
  roles(namespace: string): KubeObject[];
  clusterRoles(): KubeObject[];
  roleBindings(namespace: string): KubeObject[];
  clusterRoleBindings(): KubeObject[];
}

/**
 * Tokens are looked up in `users` (an unknown token is 401). A request without credentials is the
 * test's admin: kubectl (client-go) sends no bearer token to a plain-http server, and tests drive
 * the double with kubectl as the cluster admin. Identities under test (client-node sends its token
 * over http) present the tokens addServiceAccountUser hands out.
 */
export function authenticatorFor(users: Map<string, UserInfo>): Authenticator {
  return (token) => {
    const found = token === undefined ? adminUser : users.get(token);
    if (!found) return undefined;
    // every authenticated user is in system:authenticated, as the real authenticator adds it
    return found.groups.includes("system:authenticated")
      ? found
      : { ...found, groups: [...found.groups, "system:authenticated"] };
  };
}

function subjectMatches(subject: Subject, who: UserInfo): boolean {
  switch (subject.kind) {
    case "User":
      return subject.name === who.user;
    case "Group":
      return subject.name !== undefined && who.groups.includes(subject.name);
    case "ServiceAccount":
      return who.user === `system:serviceaccount:${subject.namespace}:${subject.name}`;
    default:
      return false;
  }
}

function includesOrStar(list: string[] | undefined, value: string): boolean {
  return list !== undefined && (list.includes("*") || list.includes(value));
}

export function ruleAllows(rule: PolicyRule, request: RequestInfo): boolean {
  if (!includesOrStar(rule.verbs, request.verb)) return false;
  if (!includesOrStar(rule.apiGroups, request.group)) return false;
  const resources = rule.resources ?? [];
  const wanted = request.subresource ? `${request.resource}/${request.subresource}` : request.resource;
  const resourceMatches =
    resources.includes("*") ||
    resources.includes(wanted) ||
    (request.subresource !== undefined && resources.includes(`*/${request.subresource}`));
  if (!resourceMatches) return false;
  const names = rule.resourceNames ?? [];
  if (names.length === 0) return true;
  return request.name !== undefined && names.includes(request.name);
}

function rulesOf(role: KubeObject | undefined): PolicyRule[] {
  return ((role as { rules?: PolicyRule[] } | undefined)?.rules ?? []) as PolicyRule[];
}

function boundRules(binding: Binding, objects: RbacObjects, namespace: string | undefined): PolicyRule[] {
  const ref = binding.roleRef;
  if (ref?.kind === "ClusterRole") {
    return rulesOf(objects.clusterRoles().find((r) => r.metadata?.name === ref.name));
  }
  if (ref?.kind === "Role" && namespace !== undefined) {
    return rulesOf(objects.roles(namespace).find((r) => r.metadata?.name === ref.name));
  }
  return [];
}

/** True when the stored RBAC objects grant `who` this request. */
export function isAllowed(objects: RbacObjects, who: UserInfo, request: RequestInfo): boolean {
  if (who.groups.includes("system:masters")) return true;
  const bound = (binding: Binding) => (binding.subjects ?? []).some((s) => subjectMatches(s, who));
  for (const binding of objects.clusterRoleBindings() as Binding[]) {
    if (!bound(binding)) continue;
    if (boundRules(binding, objects, undefined).some((rule) => ruleAllows(rule, request))) return true;
  }
  // A RoleBinding grants only inside its own namespace, never cluster-scoped or all-namespace requests.
  if (request.namespace === undefined) return false;
  for (const binding of objects.roleBindings(request.namespace) as Binding[]) {
    if (!bound(binding)) continue;
    if (boundRules(binding, objects, request.namespace).some((rule) => ruleAllows(rule, request)))
      return true;
  }
  return false;
}

/** An Authorizer for the request pipeline: "" (denied, no reason — as kube-apiserver's RBAC) or undefined. */
export function rbacAuthorizer(objects: RbacObjects): Authorizer {
  return (request) => {
    if (request.verb === "discovery") return undefined;
    return isAllowed(objects, { user: request.user, groups: request.groups }, request) ? undefined : "";
  };
}

/** A kubeconfig that authenticates as `token` against the double at `url`. */
export function kubeconfigForToken(url: string, token: string, namespace = "default"): string {
  return stringify({
    apiVersion: "v1",
    kind: "Config",
    clusters: [{ name: "stowage-test", cluster: { server: url, "insecure-skip-tls-verify": true } }],
    users: [{ name: "identity", user: { token } }],
    contexts: [{ name: "identity", context: { cluster: "stowage-test", user: "identity", namespace } }],
    "current-context": "identity",
    preferences: {},
  });
}

/**
 * Register a ServiceAccount identity with a fresh token and write a kubeconfig for it: what a pod
 * running as that ServiceAccount would present. Returns the kubeconfig's path.
 */
export function addServiceAccountUser(
  api: { url: string; users: Map<string, UserInfo> },
  namespace: string,
  name: string,
  kubeconfigPath: string,
): string {
  const token = `sa-${namespace}-${name}-${Math.random().toString(36).slice(2)}`;
  api.users.set(token, serviceAccountUser(namespace, name));
  writeFileSync(kubeconfigPath, kubeconfigForToken(api.url, token, namespace), { mode: 0o600 });
  return kubeconfigPath;
}
