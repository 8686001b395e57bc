/**
 * The cache layout as nodes address it: which upstream image a request under `/v2/` means.
 * Two forms reach the front, both from containerd's hosts.toml:
 *  - `/v2/<host>/<path>/(manifests|blobs)/<ref>[?ns=<host>]`: the agent's `override_path` form,
 *    `<host>` written the way the controller names cache repositories (`127.0.0.1_5000`,
 *    `docker.io`, `ipv6-…`); containerd adds `?ns=` with the original host;
 *  - `/v2/<path>/(manifests|blobs)/<ref>?ns=<host>`: a plain mirror entry (no path), where
 *    only `ns` tells the upstream.
 */
import { cacheRepository, DOCKER_HUB, isDockerHub } from "../oci/reference.ts";
import { StowageError } from "../util/errors.ts";

export type ObjectKind = "manifest" | "blob";

export interface CacheTarget {
  /** The upstream registry host ("docker.io", "127.0.0.1:5000"). */
  upstream: string;
  /** The repository on the upstream ("library/alpine"). */
  repository: string;
  /** The repository in storage (the cache layout: "docker.io/library/alpine"). */
  cacheRepository: string;
  kind: ObjectKind;
  /** A tag or a digest. */
  reference: string;
}

const OBJECT_PATH = /^\/v2\/(.+)\/(manifests|blobs)\/([^/]+)$/;
const DIGEST = /^[a-z0-9]+(?:[+._-][a-z0-9]+)*:[a-zA-Z0-9=_-]+$/;
const TAG = /^[\w][\w.-]{0,127}$/;
const PATH_COMPONENT = /^[a-z0-9]+(?:(?:[_.]|__|-+)[a-z0-9]+)*$/;

export function isDigestReference(reference: string): boolean {
  return DIGEST.test(reference);
}

/** The cache layout's first path segment for an upstream host ("127.0.0.1:5000" → "127.0.0.1_5000"). */
export function cacheHostSegment(host: string): string {
  return cacheRepository({ registry: isDockerHub(host) ? DOCKER_HUB : host, repository: "x" }).slice(0, -2);
}

/** The upstream host a cache layout segment stands for; undefined when it names no host. */
export function hostOfSegment(segment: string): string | undefined {
  const ipv6 = /^ipv6-([0-9a-f-]+?)(?:_(\d+))?$/.exec(segment);
  if (ipv6) return `[${ipv6[1].replace(/-/g, ":")}]${ipv6[2] ? `:${ipv6[2]}` : ""}`;
  const withPort = /^(.+)_(\d+)$/.exec(segment);
  const host = withPort ? `${withPort[1]}:${withPort[2]}` : segment;
  const name = withPort ? withPort[1] : segment;
  // A host has a dot or a port, or is localhost: the same test references use for a domain.
  if (!name.includes(".") && !withPort && name !== "localhost") return undefined;
  if (!/^[a-z0-9.-]+$/.test(name)) return undefined;
  return isDockerHub(host) ? DOCKER_HUB : host;
}

function nameUnknown(message: string): StowageError {
  return new StowageError("NotFound", message, { status: 404 });
}

/**
 * The target of `/v2/<name>/(manifests|blobs)/<reference>`; undefined for other paths.
 * Throws NotFound (404 NAME_UNKNOWN) when the name says no upstream host, and
 * InvalidArgument (400 NAME_INVALID / DIGEST_INVALID) for malformed names or references.
 */
export function parseCachePath(pathname: string, ns: string | null): CacheTarget | undefined {
  const match = OBJECT_PATH.exec(pathname);
  if (!match) return undefined;
  const [, name, kindPath, reference] = match;
  const kind: ObjectKind = kindPath === "manifests" ? "manifest" : "blob";
  const segments = name.split("/");
  if (segments.some((segment) => !PATH_COMPONENT.test(segment) && segment !== segments[0])) {
    throw new StowageError("InvalidArgument", `invalid repository name "${name}"`, { status: 400 });
  }
  if (kind === "blob" && !isDigestReference(reference)) {
    throw new StowageError("DigestMismatch", `"${reference}" is not a digest`, { status: 400 });
  }
  if (!isDigestReference(reference) && !TAG.test(reference)) {
    throw new StowageError("InvalidArgument", `invalid tag "${reference}"`, { status: 400 });
  }
  const nsHost = ns ? (isDockerHub(ns.toLowerCase()) ? DOCKER_HUB : ns.toLowerCase()) : undefined;
  let upstream: string;
  let repository: string;
  if (nsHost && segments[0] !== cacheHostSegment(nsHost)) {
    // A plain mirror: the whole name is the upstream repository.
    upstream = nsHost;
    repository = segments.join("/");
  } else {
    const host = hostOfSegment(segments[0]);
    if (!host || segments.length < 2) {
      throw nameUnknown(
        `"${name}" does not start with an upstream host (the cache layout is /v2/<host>/<repository>, or send ?ns=<host>)`,
      );
    }
    upstream = host;
    repository = segments.slice(1).join("/");
  }
  if (!repository.split("/").every((segment) => PATH_COMPONENT.test(segment))) {
    throw new StowageError("InvalidArgument", `invalid repository name "${repository}"`, { status: 400 });
  }
  // Docker Hub's official images live under library/, as containerd's normalised names say.
  if (upstream === DOCKER_HUB && !repository.includes("/")) repository = `library/${repository}`;
  return {
    upstream,
    repository,
    cacheRepository: cacheRepository({ registry: upstream, repository }),
    kind,
    reference,
  };
}
