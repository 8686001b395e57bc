/**
 * The front's upstream credentials, composed as the controller composes them: docker config
 * files (a mounted pull secret's `.dockerconfigjson` is one) in a kubelet-style keyring, most
 * specific entry first, then an ECR token for ECR hosts, then the credentials of the caller
 * being served when the upstream accepted them for the repository (so a private image pulled
 * with the pod's own pull secret is fetched with it, with nothing configured on the front),
 * then anonymous. The caller's credentials travel in an AsyncLocalStorage set around the
 * serving of one request, so they never reach a fetch made for someone else. Credentials are
 * only ever handed to RegistryClient; nothing here logs them.
 */
import { AsyncLocalStorage } from "node:async_hooks";
import { entryCredentials, loadDockerConfig } from "../auth/dockerConfig.ts";
import { EcrAuth } from "../auth/ecr.ts";
import { Keyring } from "../auth/keyring.ts";
import type { CredentialLookup, Credentials } from "../oci/challenge.ts";
import type { Logger } from "../util/log.ts";

/** The verified credentials of the caller being served, if any (see the file comment). */
export const callerCredentials = new AsyncLocalStorage<Credentials | undefined>();

export interface UpstreamCredentials {
  lookup: CredentialLookup;
  /** Keyring entries read, for the startup log (a count, never a value). */
  entries: number;
  close(): Promise<void>;
}

export async function loadUpstreamCredentials(
  authFiles: string[],
  options: { ecr: boolean; logger: Logger },
): Promise<UpstreamCredentials> {
  const keyring = new Keyring();
  for (const file of authFiles) {
    const config = await loadDockerConfig(file);
    for (const [key, entry] of Object.entries(config.auths ?? {})) {
      const credentials = entryCredentials(key, entry, file);
      if (credentials) keyring.add(key, { ...credentials, label: `auth file ${file} (${key})` }, file);
    }
  }
  const ecr = options.ecr ? new EcrAuth({ logger: options.logger }) : undefined;
  const lookup: CredentialLookup = async (registry, repository) => {
    const candidates: Credentials[] = keyring.lookup(registry, repository).map((match) => match.credentials);
    if (ecr?.isEcr(registry)) {
      try {
        const token = await ecr.credentials(registry);
        if (token) candidates.push(token);
      } catch (err) {
        if (candidates.length === 0) throw err;
        options.logger.warn(
          { registry, err: (err as Error).message },
          "no ECR token; trying the auth files only",
        );
      }
    }
    const caller = callerCredentials.getStore();
    if (caller) candidates.push({ ...caller, label: "the caller's credentials" });
    candidates.push({});
    return candidates;
  };
  return { lookup, entries: keyring.size, close: async () => ecr?.close() };
}
