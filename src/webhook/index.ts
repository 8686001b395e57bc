/**
 * Wires the pod admission webhook into a Manager: informers for ModelImages and Namespaces (the
 * webhook reads only caches), the certificates, and the HTTPS server. The webhook serves on every
 * replica (the Service sends admissions to any of them), not only on the leader.
 */
import { type NodeCache, NodeCacheResource } from "../api/nodeCache.ts";
import { type KubeObject, Resources } from "../kube/client.ts";
import type { Informer } from "../kube/informer.ts";
import type { Manager } from "../kube/manager.ts";
import { type Clock, systemClock } from "../util/clock.ts";
import { type Logger, silentLogger } from "../util/log.ts";
import type { AdmissionLookups } from "./admission.ts";
import { type ModelImageCache, modelImageCache } from "./cache.ts";
import { type CertManagement, WebhookCertificates, type WebhookCertificatesOptions } from "./certManager.ts";
import { startWebhookServer, type WebhookServer } from "./server.ts";

export { reviewPodAdmission } from "./admission.ts";
export { type ModelImageCache, modelImageCache } from "./cache.ts";
export type { CertificateState, CertManagement } from "./certManager.ts";
export { MutatingWebhookConfigurationResource, WebhookCertificates } from "./certManager.ts";
export { decideHold } from "./match.ts";
export { HELD_FOR_ANNOTATION, HELD_REASON_ANNOTATION, parseHeldFor } from "./patch.ts";
export { MUTATE_PODS_PATH, startWebhookServer } from "./server.ts";

export const DEFAULT_WEBHOOK_SECRET = "stowage-webhook-tls";
const REQUESTED_BY_INDEX = "requestedBy";

function requesterKey(requester: { namespace: string; name: string; variant?: string }): string {
  return `${requester.namespace}/${requester.name}/${requester.variant ?? ""}`;
}
export const DEFAULT_WEBHOOK_SERVICE = "stowage-webhook";
export const DEFAULT_WEBHOOK_CONFIGURATION = "stowage";
export const DEFAULT_WEBHOOK_PORT = 9443;

export interface WebhookDeps {
  /** The controller's namespace: holds the Secret and Service, and its pods are never gated. */
  namespace: string;
  /** Hold pods only in these namespaces (the controller's `--namespace` scope); all when omitted. */
  namespaces?: readonly string[];
  port?: number;
  host?: string;
  certManagement?: CertManagement;
  secretName?: string;
  serviceName?: string;
  webhookConfigurationName?: string;
  /** Rotation tuning (for tests) and extra SANs (a webhook reached by URL). */
  certificates?: Pick<
    WebhookCertificatesOptions,
    "validityMs" | "renewBeforeMs" | "overlapMs" | "ipAddresses" | "extraDnsNames"
  >;
  /**
   * Watch NodeCaches so a pod pinned to a ModelImage's per-platform child digest is matched (the
   * NodeCache CRD must be installed: the controller passes it when pre-warming is on).
   */
  nodeCaches?: boolean;
  /** How often the certificates are checked (re-read, rotated); default 5 min. */
  certificateCheckIntervalMs?: number;
  clock?: Clock;
  log?: Logger;
}

export interface AdmissionWebhook {
  certificates: WebhookCertificates;
  modelImages: ModelImageCache;
  namespaces: Informer<KubeObject>;
  lookups: AdmissionLookups;
  /** Serve: waits for the caches, makes sure of the certificates, listens. Call after `manager.start()`. */
  start(): Promise<WebhookServer>;
  stop(): Promise<void>;
}

export function setupWebhook(manager: Manager, deps: WebhookDeps): AdmissionWebhook {
  const log = (deps.log ?? silentLogger()).child({ component: "webhook" });
  const modelImages = modelImageCache(manager, deps.namespaces);
  const namespaces = manager.addInformer<KubeObject>({ type: Resources.Namespace });
  // The planner's NodeCaches (shared with its informer on the leader): which single-platform
  // digests each ModelImage variant was planned as, for pods pinned to a child manifest.
  const nodeCaches = deps.nodeCaches
    ? manager.addInformer<NodeCache>({ type: NodeCacheResource })
    : undefined;
  nodeCaches?.addIndexer(REQUESTED_BY_INDEX, (nc) =>
    (nc.spec?.images ?? []).flatMap((image) => (image.requestedBy ?? []).map(requesterKey)),
  );
  const certificates = new WebhookCertificates({
    client: manager.client,
    certManagement: deps.certManagement ?? "self",
    namespace: deps.namespace,
    secretName: deps.secretName ?? DEFAULT_WEBHOOK_SECRET,
    serviceName: deps.serviceName ?? DEFAULT_WEBHOOK_SERVICE,
    webhookConfigurationName: deps.webhookConfigurationName ?? DEFAULT_WEBHOOK_CONFIGURATION,
    ...deps.certificates,
    clock: deps.clock,
    log,
  });
  const lookups: AdmissionLookups = {
    modelImagesIn: (namespace) => modelImages.byNamespace(namespace),
    namespaceLabels: (namespace) => namespaces.get(namespace)?.metadata?.labels,
    controllerNamespace: deps.namespace,
    ...(nodeCaches
      ? {
          platformDigests: (namespace: string, name: string, variant: string) => {
            const key = requesterKey({ namespace, name, variant });
            const digests = new Set<string>();
            for (const nc of nodeCaches.byIndex(REQUESTED_BY_INDEX, key))
              for (const image of nc.spec?.images ?? [])
                if ((image.requestedBy ?? []).some((r) => requesterKey(r) === key)) digests.add(image.digest);
            return digests;
          },
        }
      : {}),
  };
  const stopSignal = new AbortController();
  let server: WebhookServer | undefined;
  let loop: Promise<void> | undefined;
  return {
    certificates,
    modelImages,
    namespaces,
    lookups,
    async start() {
      await Promise.all([
        modelImages.waitForSync(stopSignal.signal),
        namespaces.waitForSync(stopSignal.signal),
        nodeCaches?.waitForSync(stopSignal.signal),
      ]);
      const state = await certificates.reconcile();
      const started = await startWebhookServer({
        host: deps.host,
        port: deps.port ?? DEFAULT_WEBHOOK_PORT,
        certPem: state.certPem,
        keyPem: state.keyPem,
        lookups,
        log,
      });
      server = started;
      certificates.onChange((next) => started.setCertificate(next.certPem, next.keyPem));
      const intervalMs = deps.certificateCheckIntervalMs ?? 300_000;
      const clock = deps.clock ?? systemClock;
      // The first check ran above; later ones pick up rotations (ours or another replica's).
      loop = clock.sleep(intervalMs, stopSignal.signal).then(
        () => certificates.run(stopSignal.signal, intervalMs),
        () => undefined,
      );
      log.info({ port: started.port }, "admission webhook serving");
      return started;
    },
    async stop() {
      stopSignal.abort();
      await loop;
      await server?.close();
    },
  };
}
