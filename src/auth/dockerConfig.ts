/**
 * Credentials from a docker config.json (`~/.docker/config.json`, `--authfile`, or the
 * `.dockerconfigjson` of a pull secret): `auths` entries keyed by host or URL.
 * Credential helpers are not run; a host that only has one gets a clear error.
 */
import { readFile } from "node:fs/promises";
import { homedir } from "node:os";
import { join } from "node:path";
import type { CredentialLookup, Credentials } from "../oci/challenge.ts";
import { isDockerHub } from "../oci/reference.ts";
import { StowageError } from "../util/errors.ts";

export interface DockerConfigAuth {
  /** base64("username:password") */
  auth?: string;
  username?: string;
  password?: string;
  identitytoken?: string;
  registrytoken?: string;
  email?: string;
}

export interface DockerConfig {
  auths?: Record<string, DockerConfigAuth>;
  credHelpers?: Record<string, string>;
  credsStore?: string;
  /** Where this config came from, for error messages (a file path or a secret name). */
  source?: string;
}

export function defaultDockerConfigPath(env: NodeJS.ProcessEnv = process.env): string {
  return join(env.DOCKER_CONFIG ?? join(homedir(), ".docker"), "config.json");
}

/** Reads a docker config file; a missing file is an empty config. */
export async function loadDockerConfig(path?: string): Promise<DockerConfig> {
  const file = path ?? defaultDockerConfigPath();
  let text: string;
  try {
    text = await readFile(file, "utf8");
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") return { auths: {}, source: file };
    throw new StowageError(
      "AuthConfigInvalid",
      `cannot read docker config ${file}: ${(err as Error).message}`,
      {
        cause: err,
      },
    );
  }
  return parseDockerConfig(text, file);
}

/** Parses config.json text (or a pull secret's `.dockerconfigjson`); `source` names it in errors. */
export function parseDockerConfig(text: string, source: string): DockerConfig {
  return dockerConfigFromObject(parseJsonObject(text, `docker config ${source}`), source);
}

/**
 * Parses the legacy `.dockercfg` format (a pull secret of type kubernetes.io/dockercfg):
 * the `auths` map itself, without the wrapper.
 */
export function parseDockerCfg(text: string, source: string): DockerConfig {
  return dockerConfigFromObject({ auths: parseJsonObject(text, `docker config ${source}`) }, source);
}

/**
 * JSON.parse, with an error that names `what` and the position but, unlike V8's own
 * message, quotes none of the text: it holds passwords.
 */
function parseJsonObject(text: string, what: string): Record<string, unknown> {
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch (err) {
    const position = /position (\d+)/.exec((err as Error).message)?.[1];
    throw new StowageError(
      "AuthConfigInvalid",
      `${what} is not valid JSON${position ? ` (syntax error at character ${position})` : ""}`,
    );
  }
  if (typeof parsed !== "object" || parsed === null || Array.isArray(parsed)) {
    throw new StowageError("AuthConfigInvalid", `${what} is not a JSON object`);
  }
  return parsed as Record<string, unknown>;
}

function dockerConfigFromObject(parsed: Record<string, unknown>, source: string): DockerConfig {
  const config = parsed as DockerConfig;
  if (config.auths !== undefined && (typeof config.auths !== "object" || config.auths === null)) {
    throw new StowageError("AuthConfigInvalid", `docker config ${source}: "auths" is not an object`);
  }
  const result: DockerConfig = { ...config, auths: config.auths ?? {}, source };
  for (const [key, entry] of Object.entries(result.auths ?? {})) entryCredentials(key, entry, source);
  return result;
}

/** "https://index.docker.io/v1/" → "docker.io"; "ghcr.io/" → "ghcr.io"; "Quay.io" → "quay.io". */
export function normaliseRegistryKey(key: string): string {
  const host = key
    .trim()
    .replace(/^[a-z][a-z0-9+.-]*:\/\//i, "")
    .replace(/\/.*$/, "")
    .toLowerCase();
  return isDockerHub(host) ? "docker.io" : host;
}

/** The credentials of one `auths` entry (undefined when it holds none); AuthConfigInvalid when malformed. */
export function entryCredentials(
  key: string,
  entry: DockerConfigAuth,
  source: string,
): Credentials | undefined {
  if (typeof entry !== "object" || entry === null) {
    throw new StowageError("AuthConfigInvalid", `docker config ${source}: entry "${key}" is not an object`);
  }
  for (const field of ["auth", "username", "password", "identitytoken", "registrytoken"] as const) {
    if (entry[field] !== undefined && typeof entry[field] !== "string") {
      throw new StowageError(
        "AuthConfigInvalid",
        `docker config ${source}: "${field}" of "${key}" is not a string`,
      );
    }
  }
  const credentials: Credentials = {};
  if (entry.auth) {
    const decoded = /^[A-Za-z0-9+/]*={0,2}$/.test(entry.auth.trim())
      ? Buffer.from(entry.auth.trim(), "base64").toString("utf8")
      : "";
    const colon = decoded.indexOf(":");
    if (colon <= 0) {
      throw new StowageError(
        "AuthConfigInvalid",
        `docker config ${source}: "auth" of "${key}" is not base64 of "username:password"`,
      );
    }
    credentials.username = decoded.slice(0, colon);
    credentials.password = decoded.slice(colon + 1);
  }
  if (entry.username) credentials.username = entry.username;
  if (entry.password) credentials.password = entry.password;
  if (entry.identitytoken) credentials.identityToken = entry.identitytoken;
  if (entry.registrytoken) credentials.registryToken = entry.registrytoken;
  return Object.keys(credentials).length > 0 ? credentials : undefined;
}

/** A CredentialLookup over the config's `auths`, matching hosts however the keys spell them. */
export function credentialsFromDockerConfig(config: DockerConfig): CredentialLookup {
  const source = config.source ?? "(inline)";
  const byHost = new Map<string, Credentials>();
  for (const [key, entry] of Object.entries(config.auths ?? {})) {
    const credentials = entryCredentials(key, entry, source);
    const host = normaliseRegistryKey(key);
    // An exact host key wins over a URL form of the same host.
    if (credentials && (!byHost.has(host) || key.toLowerCase() === host)) byHost.set(host, credentials);
  }
  const helpers = new Map<string, string>();
  for (const [key, helper] of Object.entries(config.credHelpers ?? {}))
    helpers.set(normaliseRegistryKey(key), helper);
  return (registry: string) => {
    const host = normaliseRegistryKey(registry);
    const found = byHost.get(host);
    if (found) return { ...found };
    const helper = helpers.get(host);
    if (helper) {
      throw new StowageError(
        "AuthConfigInvalid",
        `docker config ${source} sends ${host} to credential helper "docker-credential-${helper}", which stowage does not run; add an "auths" entry for ${host} instead`,
      );
    }
    return undefined;
  };
}
