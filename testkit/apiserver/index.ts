import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { renderKubeconfig } from "./kubeconfig.ts";
import { adminToken, adminUser, authenticatorFor, rbacAuthorizer, type UserInfo } from "./rbac.ts";
import type { AdmissionPlugin } from "./rest.ts";
import { ApiHttpServer, type Authorizer, type RequestLogEntry } from "./server.ts";
import type { KubeObject } from "./types.ts";
import { mutatingWebhooks, type WebhookCall } from "./webhooks.ts";

/**
 * A Kubernetes API server test double: real REST + watch over HTTP on 127.0.0.1, driven unchanged
 * by kubectl and @kubernetes/client-node. Test-only: production code never imports testkit/.
 */
export interface ApiServerOptions {
  port?: number;
  /** watch events retained for resume (default 1000); older resourceVersions → 410 */
  historyLimit?: number;
  /** default 1000 (only to watches that asked allowWatchBookmarks=true) */
  bookmarkIntervalMs?: number;
  /** default: a temp file */
  kubeconfigPath?: string;
  /** CustomResourceDefinition objects to create before the server answers */
  crds?: KubeObject[];
  /**
   * Enforce RBAC (testkit/apiserver/rbac.ts): bearer tokens are looked up in `users` (unknown → 401),
   * the default kubeconfig's token is a `system:masters` admin.
   */
  rbac?: boolean;
  /** token → identity, when `rbac` is on (more can be added later through `TestApiServer.users`) */
  users?: Record<string, UserInfo>;
}

export interface TestApiServer {
  url: string;
  kubeconfigPath: string;
  kubeconfig: string;
  dropWatches(): void;
  compact(): void;
  requestLog(): RequestLogEntry[];
  resetRequestLog(): void;
  /** the request pipeline's admission chain: plugins run in order on every create/update/patch/delete */
  admission: AdmissionPlugin[];
  /** the request pipeline's authorization step: any authorizer returning a reason refuses with 403 */
  authorizers: Authorizer[];
  /** token → identity; consulted only when started with `rbac: true` */
  users: Map<string, UserInfo>;
  /** MutatingWebhookConfigurations: `svc.ns:port` → `127.0.0.1:PORT` for `clientConfig.service` (see webhooks.ts) */
  webhookServices: Map<string, string>;
  /** every admission webhook call made, in order */
  webhookCalls: WebhookCall[];
  /** create any object directly (e.g. CRDs, nodes) as a client would, without HTTP */
  create(obj: KubeObject): Promise<KubeObject>;
  stop(): Promise<void>;
}

export { ApiError } from "./errors.ts";
export type { UserInfo } from "./rbac.ts";
export type { AdmissionPlugin, AdmissionRequest } from "./rest.ts";
export type { Authorizer, RequestInfo, RequestLogEntry } from "./server.ts";
export type { KubeObject } from "./types.ts";
export type { WebhookCall } from "./webhooks.ts";

export async function startApiServer(options: ApiServerOptions = {}): Promise<TestApiServer> {
  const server = new ApiHttpServer({
    historyLimit: options.historyLimit,
    bookmarkIntervalMs: options.bookmarkIntervalMs,
  });
  const createObject = async (obj: KubeObject): Promise<KubeObject> => {
    const apiVersion = obj.apiVersion ?? "";
    const def = server.registry.findByKind(apiVersion, obj.kind ?? "");
    if (!def) throw new Error(`no resource serves ${obj.kind} in ${apiVersion}`);
    return server.core.create(def, obj.metadata?.namespace, obj, { warnings: [], fieldManager: "testkit" });
  };
  const webhookServices = new Map<string, string>();
  const webhooks = mutatingWebhooks(server.core, { serviceAddresses: webhookServices });
  server.core.admission.push(webhooks.plugin);
  for (const crd of options.crds ?? []) await createObject(crd);
  const users = new Map<string, UserInfo>([[adminToken, adminUser], ...Object.entries(options.users ?? {})]);
  if (options.rbac) {
    const rbacList = (plural: string, namespace?: string) => {
      const def = server.registry.find("rbac.authorization.k8s.io", "v1", plural);
      return def ? server.store.list(def.bucket, namespace) : [];
    };
    server.authenticator = authenticatorFor(users);
    server.authorizers.push(
      rbacAuthorizer({
        roles: (namespace) => rbacList("roles", namespace),
        clusterRoles: () => rbacList("clusterroles"),
        roleBindings: (namespace) => rbacList("rolebindings", namespace),
        clusterRoleBindings: () => rbacList("clusterrolebindings"),
      }),
    );
  }
  const url = await server.listen(options.port ?? 0);
  let tempDir: string | undefined;
  let kubeconfigPath = options.kubeconfigPath;
  if (!kubeconfigPath) {
    tempDir = mkdtempSync(join(tmpdir(), "stowage-apiserver-"));
    kubeconfigPath = join(tempDir, "kubeconfig");
  }
  const kubeconfig = renderKubeconfig(url);
  writeFileSync(kubeconfigPath, kubeconfig, { mode: 0o600 });
  return {
    url,
    kubeconfigPath,
    kubeconfig,
    admission: server.core.admission,
    authorizers: server.authorizers,
    webhookServices,
    webhookCalls: webhooks.calls,
    users,
    dropWatches: () => server.dropWatches(),
    compact: () => server.store.compact(),
    requestLog: () => server.requestLog(),
    resetRequestLog: () => server.resetRequestLog(),
    create: createObject,
    async stop() {
      await server.close();
      if (tempDir) rmSync(tempDir, { recursive: true, force: true });
    },
  };
}
