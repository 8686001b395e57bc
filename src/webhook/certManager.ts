/**
 * Certificates for the webhook without cert-manager (`certManagement: "self"`): a CA and a
 * serving certificate kept in a `kubernetes.io/tls` Secret (plus `ca.crt` and `ca.key`), the CA
 * bundle patched into the MutatingWebhookConfiguration, and rotation before expiry. During a
 * rotation the bundle holds the new CA and the old one, so an API server still holding the old
 * bundle keeps verifying; the old CA is dropped after `overlapMs`. Level-triggered: `reconcile()`
 * reads the Secret and the configuration and fixes what differs, so several replicas converge.
 * The Secret is owned by the MutatingWebhookConfiguration (an owner reference), so the garbage
 * collector deletes it with the configuration: `helm uninstall`, or an upgrade that turns the
 * webhook off, leaves no Secret the chart never rendered.
 *
 * `certManagement: "external"`: the Secret is someone else's (cert-manager and its CA injector);
 * it is only read.
 */
import { isConflict, type JsonPatchOp, type KubeClient, Resources } from "../kube/client.ts";
import { type Clock, systemClock } from "../util/clock.ts";
import { StowageError } from "../util/errors.ts";
import { type Logger, silentLogger } from "../util/log.ts";
import {
  type CertificateAuthority,
  certificateInfo,
  createCertificateAuthority,
  isSignedBy,
  issueServingCertificate,
  splitPemBundle,
} from "./certs.ts";

export type CertManagement = "self" | "external";

export const MutatingWebhookConfigurationResource = {
  group: "admissionregistration.k8s.io",
  version: "v1",
  plural: "mutatingwebhookconfigurations",
  kind: "MutatingWebhookConfiguration",
  namespaced: false,
} as const;

/** Secret annotation: when the CA last rotated (ms since epoch); the old CA leaves the bundle `overlapMs` later. */
export const ROTATED_AT_ANNOTATION = "stowage.dev/ca-rotated-at";

const DAY_MS = 24 * 3600_000;

export interface WebhookCertificatesOptions {
  client: KubeClient;
  certManagement: CertManagement;
  /** The controller's namespace: where the Secret and the Service live. */
  namespace: string;
  secretName: string;
  /** The webhook Service: the certificate names `<svc>`, `<svc>.<ns>`, `<svc>.<ns>.svc`. */
  serviceName: string;
  /** MutatingWebhookConfiguration whose webhooks get the CA bundle (self mode). */
  webhookConfigurationName: string;
  /** IP SANs (default 127.0.0.1, for tests and port-forwards). */
  ipAddresses?: string[];
  /** DNS SANs besides the Service's names (a webhook the API server reaches by URL). */
  extraDnsNames?: string[];
  /** Lifetime of each CA and serving certificate (default 365 days). */
  validityMs?: number;
  /** Rotate when less than this is left (default a third of the validity). */
  renewBeforeMs?: number;
  /** How long the previous CA stays in the bundle after a rotation (default 1 day). */
  overlapMs?: number;
  clock?: Clock;
  log?: Logger;
}

export interface CertificateState {
  certPem: string;
  keyPem: string;
  /** PEM bundle: the current CA first, then any previous one still in its overlap. */
  caBundlePem: string;
}

interface OwnerReference {
  apiVersion: string;
  kind: string;
  name: string;
  uid: string;
}

interface SecretObject {
  apiVersion?: string;
  kind?: string;
  type?: string;
  metadata: {
    name: string;
    namespace: string;
    resourceVersion?: string;
    annotations?: Record<string, string>;
    ownerReferences?: OwnerReference[];
  };
  data?: Record<string, string>;
}

interface WebhookConfiguration {
  metadata?: { name?: string; uid?: string };
  webhooks?: { name: string; clientConfig?: { caBundle?: string } }[];
}

/** The reference that makes `config` the owner of the Secret (undefined when it does not exist). */
function ownerReferenceTo(config: WebhookConfiguration | undefined): OwnerReference | undefined {
  const { name, uid } = config?.metadata ?? {};
  if (!name || !uid) return undefined;
  return {
    apiVersion: `${MutatingWebhookConfigurationResource.group}/${MutatingWebhookConfigurationResource.version}`,
    kind: MutatingWebhookConfigurationResource.kind,
    name,
    uid,
  };
}

/** The Secret's owner references with `owner` in them (replacing an older one of the same kind and name). */
function withOwner(
  existing: OwnerReference[] | undefined,
  owner: OwnerReference | undefined,
): OwnerReference[] {
  const others = (existing ?? []).filter((ref) => !(ref.kind === owner?.kind && ref.name === owner?.name));
  return owner ? [...others, owner] : others;
}

function decode(data: Record<string, string> | undefined, key: string): string | undefined {
  const value = data?.[key];
  return value === undefined ? undefined : Buffer.from(value, "base64").toString("utf8");
}

function encode(text: string): string {
  return Buffer.from(text, "utf8").toString("base64");
}

export class WebhookCertificates {
  readonly #options: WebhookCertificatesOptions;
  readonly #clock: Clock;
  readonly #log: Logger;
  readonly #validityMs: number;
  readonly #renewBeforeMs: number;
  readonly #overlapMs: number;
  readonly #listeners = new Set<(state: CertificateState) => void>();
  #current: CertificateState | undefined;

  constructor(options: WebhookCertificatesOptions) {
    this.#options = options;
    this.#clock = options.clock ?? systemClock;
    this.#log = (options.log ?? silentLogger()).child({ component: "webhook-certs" });
    this.#validityMs = options.validityMs ?? 365 * DAY_MS;
    this.#renewBeforeMs = options.renewBeforeMs ?? Math.floor(this.#validityMs / 3);
    this.#overlapMs = options.overlapMs ?? DAY_MS;
  }

  /** What the server should serve now (after the first successful `reconcile`). */
  get current(): CertificateState | undefined {
    return this.#current;
  }

  /** Called whenever the serving certificate or bundle changes. */
  onChange(listener: (state: CertificateState) => void): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }

  dnsNames(): string[] {
    const { serviceName: svc, namespace: ns } = this.#options;
    const names = [svc, `${svc}.${ns}`, `${svc}.${ns}.svc`, `${svc}.${ns}.svc.cluster.local`];
    return [...new Set([...names, ...(this.#options.extraDnsNames ?? [])])];
  }

  #ipAddresses(): string[] {
    return this.#options.ipAddresses ?? ["127.0.0.1"];
  }

  /** Bring the Secret, the CA bundle and the served certificate to where they should be. Idempotent. */
  async reconcile(): Promise<CertificateState> {
    const state =
      this.#options.certManagement === "external" ? await this.#readExternal() : await this.#reconcileSelf();
    this.#publish(state);
    return state;
  }

  /** Reconcile every `intervalMs` until `signal` aborts; failures are logged and retried next round. */
  async run(signal: AbortSignal, intervalMs = 3600_000): Promise<void> {
    while (!signal.aborted) {
      try {
        await this.reconcile();
      } catch (err) {
        this.#log.error({ err }, "webhook certificate reconcile failed");
      }
      try {
        await this.#clock.sleep(intervalMs, signal);
      } catch {
        return;
      }
    }
  }

  #publish(state: CertificateState): void {
    const before = this.#current;
    this.#current = state;
    if (before && before.certPem === state.certPem && before.caBundlePem === state.caBundlePem) return;
    for (const listener of this.#listeners) listener(state);
  }

  async #readExternal(): Promise<CertificateState> {
    const { namespace, secretName } = this.#options;
    const secret = await this.#secrets().find(secretName, namespace);
    const certPem = decode(secret?.data, "tls.crt");
    const keyPem = decode(secret?.data, "tls.key");
    if (!secret || !certPem || !keyPem)
      throw new StowageError(
        "NotFound",
        `webhook certificate Secret "${secretName}" in namespace "${namespace}" is missing or has no tls.crt/tls.key; with certManagement "external" it must be issued by cert-manager (or set certManagement to "self")`,
      );
    return { certPem, keyPem, caBundlePem: decode(secret.data, "ca.crt") ?? "" };
  }

  #secrets() {
    return this.#options.client.resource<SecretObject>(Resources.Secret);
  }

  async #reconcileSelf(): Promise<CertificateState> {
    const { namespace, secretName } = this.#options;
    const now = this.#clock.now();
    const config = await this.#webhookConfigurations().find(this.#options.webhookConfigurationName);
    const owner = ownerReferenceTo(config);
    const secret = await this.#secrets().find(secretName, namespace);
    const stored = secret ? this.#readStored(secret) : undefined;
    let next: { state: CertificateState; caKeyPem: string; rotatedAt?: number } | undefined;
    if (!stored) {
      next = await this.#issue(now, []);
      this.#log.info({ secret: secretName }, "created webhook CA and serving certificate");
    } else {
      const serving = certificateInfo(stored.state.certPem);
      // A name added since (a webhook now reached by URL) needs a certificate that names it.
      const missingName =
        serving !== undefined &&
        (this.dnsNames().some((name) => !serving.dnsNames.includes(name)) ||
          this.#ipAddresses().some((ip) => !serving.ipAddresses.includes(ip)));
      if (!serving || serving.notAfter - now < this.#renewBeforeMs || missingName) {
        const previous = splitPemBundle(stored.state.caBundlePem).filter(
          (pem) => (certificateInfo(pem)?.notAfter ?? 0) > now,
        );
        next = await this.#issue(now, previous.slice(0, 1));
        next.rotatedAt = now;
        this.#log.info(
          { secret: secretName, notAfter: serving?.notAfter, missingName },
          missingName
            ? "re-issued the webhook certificate: it did not name every host the webhook is reached at"
            : "rotated webhook CA and serving certificate",
        );
      } else {
        const bundle = splitPemBundle(stored.state.caBundlePem);
        if (bundle.length > 1 && now >= (stored.rotatedAt ?? 0) + this.#overlapMs) {
          next = {
            state: { ...stored.state, caBundlePem: bundle[0] },
            caKeyPem: stored.caKeyPem,
            rotatedAt: stored.rotatedAt,
          };
          this.#log.info({ secret: secretName }, "dropped the previous webhook CA from the bundle");
        }
      }
    }
    if (!next) {
      // A Secret stored before it had an owner (or whose configuration was re-created) gets it now.
      if (owner && !secret?.metadata.ownerReferences?.some((ref) => ref.uid === owner.uid))
        await this.#secrets().patch(
          secretName,
          { metadata: { ownerReferences: withOwner(secret?.metadata.ownerReferences, owner) } },
          { namespace, type: "merge" },
        );
      await this.#patchCaBundle(stored!.state.caBundlePem, config);
      return stored!.state;
    }
    await this.#writeSecret(secret, next, owner);
    // The bundle that trusts the new CA goes out before the new certificate is served.
    await this.#patchCaBundle(next.state.caBundlePem, config);
    return next.state;
  }

  #readStored(
    secret: SecretObject,
  ): { state: CertificateState; caKeyPem: string; rotatedAt?: number } | undefined {
    const certPem = decode(secret.data, "tls.crt");
    const keyPem = decode(secret.data, "tls.key");
    const caBundlePem = decode(secret.data, "ca.crt");
    const caKeyPem = decode(secret.data, "ca.key");
    if (!certPem || !keyPem || !caBundlePem || !caKeyPem) return undefined;
    const currentCa = splitPemBundle(caBundlePem)[0];
    if (!currentCa || !isSignedBy(certPem, currentCa)) return undefined;
    const rotatedAt = Number(secret.metadata.annotations?.[ROTATED_AT_ANNOTATION]);
    return {
      state: { certPem, keyPem, caBundlePem },
      caKeyPem,
      rotatedAt: Number.isFinite(rotatedAt) ? rotatedAt : undefined,
    };
  }

  async #issue(
    now: number,
    previousCas: string[],
  ): Promise<{ state: CertificateState; caKeyPem: string; rotatedAt?: number }> {
    const ca: CertificateAuthority = await createCertificateAuthority(
      `stowage-webhook-ca@${Math.floor(now / 1000)}`,
      { now, validityMs: this.#validityMs },
    );
    const serving = await issueServingCertificate(
      ca,
      { dnsNames: this.dnsNames(), ipAddresses: this.#ipAddresses() },
      { now, validityMs: this.#validityMs },
    );
    return {
      state: {
        certPem: serving.certPem,
        keyPem: serving.keyPem,
        caBundlePem: [ca.certPem, ...previousCas].join(""),
      },
      caKeyPem: ca.keyPem,
    };
  }

  async #writeSecret(
    existing: SecretObject | undefined,
    next: { state: CertificateState; caKeyPem: string; rotatedAt?: number },
    owner: OwnerReference | undefined,
  ): Promise<void> {
    const { namespace, secretName } = this.#options;
    const annotations = { ...(existing?.metadata.annotations ?? {}) };
    if (next.rotatedAt !== undefined) annotations[ROTATED_AT_ANNOTATION] = String(next.rotatedAt);
    const body: SecretObject = {
      apiVersion: "v1",
      kind: "Secret",
      type: "kubernetes.io/tls",
      metadata: {
        name: secretName,
        namespace,
        annotations,
        ...(owner || existing?.metadata.ownerReferences
          ? { ownerReferences: withOwner(existing?.metadata.ownerReferences, owner) }
          : {}),
        ...(existing?.metadata.resourceVersion ? { resourceVersion: existing.metadata.resourceVersion } : {}),
      },
      data: {
        "tls.crt": encode(next.state.certPem),
        "tls.key": encode(next.state.keyPem),
        "ca.crt": encode(next.state.caBundlePem),
        "ca.key": encode(next.caKeyPem),
      },
    };
    try {
      if (existing) await this.#secrets().update(body);
      else await this.#secrets().create(body);
    } catch (err) {
      // Another replica wrote first: its certificates win, ours are discarded; retry reads them.
      if (isConflict(err))
        throw new StowageError(
          "Conflict",
          `webhook certificate Secret "${secretName}" changed meanwhile; retrying`,
          { cause: err, retryable: true },
        );
      throw err;
    }
  }

  #webhookConfigurations() {
    return this.#options.client.resource<WebhookConfiguration>(MutatingWebhookConfigurationResource);
  }

  async #patchCaBundle(bundlePem: string, config: WebhookConfiguration | undefined): Promise<void> {
    const name = this.#options.webhookConfigurationName;
    if (!config) {
      this.#log.warn(
        { webhookConfiguration: name },
        "MutatingWebhookConfiguration not found; caBundle not set",
      );
      return;
    }
    const caBundle = encode(bundlePem);
    const ops: JsonPatchOp[] = [];
    (config.webhooks ?? []).forEach((webhook, index) => {
      if (webhook.clientConfig?.caBundle === caBundle) return;
      ops.push({ op: "test", path: `/webhooks/${index}/name`, value: webhook.name });
      if (webhook.clientConfig)
        ops.push({ op: "add", path: `/webhooks/${index}/clientConfig/caBundle`, value: caBundle });
      else ops.push({ op: "add", path: `/webhooks/${index}/clientConfig`, value: { caBundle } });
    });
    if (ops.length === 0) return;
    await this.#webhookConfigurations().patch(name, ops, { type: "json" });
    this.#log.info({ webhookConfiguration: name }, "patched caBundle");
  }
}
