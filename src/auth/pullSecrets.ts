/**
 * Image pull secrets (`kubernetes.io/dockerconfigjson`, and the older `kubernetes.io/dockercfg`)
 * read from one namespace — the ModelImage's own — into a keyring. Messages name the secret
 * and namespace, never a value.
 */
import type { KubeClient, KubeObject } from "../kube/client.ts";
import { isNotFound, Resources } from "../kube/client.ts";
import { StowageError } from "../util/errors.ts";
import { type DockerConfig, entryCredentials, parseDockerCfg, parseDockerConfig } from "./dockerConfig.ts";
import { Keyring } from "./keyring.ts";

export const DockerConfigJsonType = "kubernetes.io/dockerconfigjson";
export const DockerCfgType = "kubernetes.io/dockercfg";

/** The key each pull secret type keeps its config under. */
const keyOfType: Record<string, string> = {
  [DockerConfigJsonType]: ".dockerconfigjson",
  [DockerCfgType]: ".dockercfg",
};

export interface PullSecretRef {
  name: string;
}

export interface Secret extends KubeObject {
  type?: string;
  /** base64 values, as the API serves them. */
  data?: Record<string, string>;
}

function describe(name: string, namespace: string): string {
  return `pull secret "${name}" in namespace "${namespace}"`;
}

/**
 * Reads each named secret from `namespace` (and only there) and adds its entries to one
 * keyring, in the order the secrets are listed. A missing or malformed secret is
 * AuthConfigInvalid naming it: silently pulling anonymously would hide the mistake.
 */
export async function readPullSecrets(
  kube: KubeClient,
  namespace: string,
  refs: PullSecretRef[],
  options: { signal?: AbortSignal } = {},
): Promise<Keyring> {
  const secrets = kube.resource<Secret>(Resources.Secret);
  const keyring = new Keyring();
  for (const { name } of refs) {
    let secret: Secret;
    try {
      secret = await secrets.get(name, namespace, { signal: options.signal });
    } catch (err) {
      if (isNotFound(err)) {
        throw new StowageError(
          "AuthConfigInvalid",
          `${describe(name, namespace)} not found; create it there (secrets are only read from the ModelImage's own namespace)`,
        );
      }
      if (err instanceof StowageError) {
        const hint = err.status === 403 ? " (the controller needs get on secrets in that namespace)" : "";
        throw new StowageError(
          err.reason,
          `cannot read ${describe(name, namespace)}: ${err.message}${hint}`,
          {
            cause: err,
            retryable: err.retryable,
            status: err.status,
          },
        );
      }
      throw err;
    }
    addPullSecret(keyring, secret, namespace, name);
  }
  return keyring;
}

/** Validates one pull secret and adds its registry entries to `keyring`. */
export function addPullSecret(keyring: Keyring, secret: Secret, namespace: string, name: string): void {
  const config = dockerConfigOfSecret(secret, namespace, name);
  const source = describe(name, namespace);
  for (const [key, entry] of Object.entries(config.auths ?? {})) {
    const credentials = entryCredentials(key, entry, source);
    if (credentials) keyring.add(key, { ...credentials, label: `pull secret "${name}" (${key})` }, source);
  }
}

/** The docker config a pull secret holds; AuthConfigInvalid for a wrong type, missing key, bad base64 or JSON. */
export function dockerConfigOfSecret(secret: Secret, namespace: string, name: string): DockerConfig {
  const source = describe(name, namespace);
  const type = secret.type ?? "Opaque";
  const key = keyOfType[type];
  if (!key) {
    throw new StowageError(
      "AuthConfigInvalid",
      `${source} is not of type ${DockerConfigJsonType} (found ${type}); ${DockerCfgType} is also accepted`,
    );
  }
  const encoded = secret.data?.[key];
  if (encoded === undefined) {
    throw new StowageError("AuthConfigInvalid", `${source} of type ${type} has no "${key}" key`);
  }
  const compact = typeof encoded === "string" ? encoded.replace(/\s+/g, "") : "";
  if (typeof encoded !== "string" || !/^[A-Za-z0-9+/]*={0,2}$/.test(compact) || compact.length % 4 === 1) {
    throw new StowageError("AuthConfigInvalid", `${source}: "${key}" is not valid base64`);
  }
  const text = Buffer.from(compact, "base64").toString("utf8");
  return type === DockerCfgType ? parseDockerCfg(text, source) : parseDockerConfig(text, source);
}
