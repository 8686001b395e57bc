/**
 * Image references as the distribution project defines them
 * (`[domain[:port]/]path[:tag][@digest]`), normalised the way Docker and containerd do:
 * no domain means docker.io, a single path component on docker.io means `library/...`.
 */
import { StowageError } from "../util/errors.ts";

export interface ImageReference {
  /** "docker.io", "ghcr.io", "127.0.0.1:5000", "[::1]:5000". */
  registry: string;
  /** "library/alpine", "nvidia/tritonserver". */
  repository: string;
  /** "latest" when neither tag nor digest is given. */
  tag?: string;
  /** "sha256:<64 hex>" or "sha512:<128 hex>". */
  digest?: string;
}

export const DOCKER_HUB = "docker.io";
const DOCKER_HUB_ALIASES = new Set(["docker.io", "index.docker.io", "registry-1.docker.io"]);
const DOCKER_HUB_API_HOST = "registry-1.docker.io";

const DOMAIN_COMPONENT = "(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])";
const IPV6 = "\\[[a-fA-F0-9:]+\\]";
const DOMAIN = new RegExp(`^(?:${IPV6}|${DOMAIN_COMPONENT}(?:\\.${DOMAIN_COMPONENT})*)(?::[0-9]+)?$`);
const PATH_COMPONENT = /^[a-z0-9]+(?:(?:[_.]|__|-+)[a-z0-9]+)*$/;
const TAG = /^[\w][\w.-]{0,127}$/;
const DIGEST_HEX_LENGTH: Record<string, number> = { sha256: 64, sha512: 128 };
const MAX_NAME_LENGTH = 255;

function invalid(input: string, why: string): StowageError {
  return new StowageError("InvalidReference", `invalid reference "${input}": ${why}`);
}

/** Throws InvalidReference unless `digest` is `sha256:<64 lowercase hex>` or `sha512:<128>`. */
export function validateDigest(digest: string, input = digest): void {
  const colon = digest.indexOf(":");
  if (colon < 0) throw invalid(input, `digest "${digest}" has no algorithm (expected "sha256:<hex>")`);
  const algorithm = digest.slice(0, colon);
  const hex = digest.slice(colon + 1);
  const expectedLength = DIGEST_HEX_LENGTH[algorithm];
  if (expectedLength === undefined) {
    throw invalid(input, `digest algorithm "${algorithm}" is not supported (use sha256 or sha512)`);
  }
  if (!/^[0-9a-f]*$/.test(hex)) throw invalid(input, `digest "${digest}" is not lowercase hex`);
  if (hex.length !== expectedLength) {
    throw invalid(input, `${algorithm} digest must have ${expectedLength} hex characters, got ${hex.length}`);
  }
}

/** Does this first path component name a registry host rather than a repository part? */
function looksLikeDomain(component: string): boolean {
  return (
    component.includes(".") ||
    component.includes(":") ||
    component === "localhost" ||
    component.startsWith("[") ||
    component !== component.toLowerCase()
  );
}

export function parseReference(input: string): ImageReference {
  if (input.length === 0) throw invalid(input, "empty");
  if (/\s/.test(input)) throw invalid(input, "contains whitespace");

  let rest = input;
  let digest: string | undefined;
  const at = rest.indexOf("@");
  if (at >= 0) {
    digest = rest.slice(at + 1);
    rest = rest.slice(0, at);
    validateDigest(digest, input);
  }

  let tag: string | undefined;
  const lastColon = rest.lastIndexOf(":");
  const lastSlash = rest.lastIndexOf("/");
  if (lastColon > lastSlash) {
    tag = rest.slice(lastColon + 1);
    rest = rest.slice(0, lastColon);
    if (!TAG.test(tag)) {
      throw invalid(input, `tag "${tag}" must match [A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`);
    }
  }

  if (rest.length === 0) throw invalid(input, "missing repository name");
  const components = rest.split("/");
  let registry = DOCKER_HUB;
  if (components.length > 1 && looksLikeDomain(components[0])) {
    const domain = components.shift() as string;
    if (!DOMAIN.test(domain)) throw invalid(input, `registry host "${domain}" is not a valid host[:port]`);
    registry = DOCKER_HUB_ALIASES.has(domain.toLowerCase()) ? DOCKER_HUB : domain;
  }
  for (const component of components) {
    if (component.length === 0) throw invalid(input, "repository has an empty path component");
    if (component !== component.toLowerCase()) {
      throw invalid(input, `repository component "${component}" must be lowercase`);
    }
    if (!PATH_COMPONENT.test(component)) {
      throw invalid(
        input,
        `repository component "${component}" may only hold a-z, 0-9 and single separators (".", "_", "__", "-")`,
      );
    }
  }
  if (registry === DOCKER_HUB && components.length === 1) components.unshift("library");
  const repository = components.join("/");
  if (registry.length + 1 + repository.length > MAX_NAME_LENGTH) {
    throw invalid(input, `name is longer than ${MAX_NAME_LENGTH} characters`);
  }

  if (tag === undefined && digest === undefined) tag = "latest";
  const ref: ImageReference = { registry, repository };
  if (tag !== undefined) ref.tag = tag;
  if (digest !== undefined) ref.digest = digest;
  return ref;
}

/** Canonical form: "docker.io/library/alpine:latest", "host/repo:tag@sha256:...". */
export function formatReference(ref: ImageReference): string {
  let out = `${ref.registry}/${ref.repository}`;
  if (ref.tag !== undefined) out += `:${ref.tag}`;
  if (ref.digest !== undefined) out += `@${ref.digest}`;
  return out;
}

/** The short form people type: "alpine:latest", "nvidia/cuda:12", "ghcr.io/acme/x:1". */
export function familiarName(ref: ImageReference): string {
  let name = `${ref.registry}/${ref.repository}`;
  if (ref.registry === DOCKER_HUB) {
    name = ref.repository.startsWith("library/") ? ref.repository.slice("library/".length) : ref.repository;
  }
  if (ref.tag !== undefined) name += `:${ref.tag}`;
  if (ref.digest !== undefined) name += `@${ref.digest}`;
  return name;
}

/** The tag or digest to ask a registry for: the digest wins when both are given. */
export function manifestReference(ref: ImageReference): string {
  return ref.digest ?? ref.tag ?? "latest";
}

/**
 * The repository an upstream image is stored under in the cache registry (the cache layout:
 * the upstream host, then its repository): "docker.io/library/alpine", "127.0.0.1_5000/foo/bar".
 * Registry hosts are lowercased and a port separator becomes "_" so the result is a valid
 * repository name; an IPv6 literal "[::1]:5000" becomes "ipv6---1_5000".
 */
export function cacheRepository(ref: Pick<ImageReference, "registry" | "repository">): string {
  let host = ref.registry.toLowerCase();
  const ipv6 = /^\[([0-9a-f:]+)\](?::(\d+))?$/.exec(host);
  if (ipv6) {
    host = `ipv6-${ipv6[1].replace(/:/g, "-")}${ipv6[2] ? `_${ipv6[2]}` : ""}`;
  } else {
    host = host.replace(":", "_");
  }
  return `${host}/${ref.repository}`;
}

/** The host to send API requests to: Docker Hub's API lives on registry-1.docker.io. */
export function registryApiHost(registry: string): string {
  return DOCKER_HUB_ALIASES.has(registry.toLowerCase()) ? DOCKER_HUB_API_HOST : registry;
}

/** Is this one of Docker Hub's names ("docker.io", "index.docker.io", ...)? */
export function isDockerHub(registry: string): boolean {
  return DOCKER_HUB_ALIASES.has(registry.toLowerCase());
}
