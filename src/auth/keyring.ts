/**
 * Credentials keyed the way pull secrets key them, matched to an image the way the kubelet
 * matches them (its credentialprovider keyring): keys may be hosts, URLs, host:port, with a
 * path prefix; `*` in the host matches exactly one DNS label; the port must be the same;
 * every matching key is returned, most specific first, so a caller can try each in turn.
 */
import type { Credentials } from "../oci/challenge.ts";
import { isDockerHub } from "../oci/reference.ts";

export interface KeyringKey {
  /** The key as written in the secret, for messages. */
  raw: string;
  /** Host labels, lower case; may contain `*` / `?` globs. */
  labels: string[];
  /** "" when the key names no port. */
  port: string;
  /** Repository path prefix without leading or trailing slashes; "" for the whole registry. */
  path: string;
  /** How many labels carry a glob. */
  globLabels: number;
}

export interface KeyringCandidate {
  key: KeyringKey;
  credentials: Credentials;
  /** Where the entry came from, e.g. `pull secret "ngc"`; never a secret value. */
  source: string;
}

/**
 * `https://index.docker.io/v1/` → docker.io; `registry.example.com:5000/team-a/` →
 * labels [registry, example, com], port 5000, path team-a. Undefined for an empty key.
 */
export function parseKeyringKey(raw: string): KeyringKey | undefined {
  let rest = raw.trim().replace(/^[a-z][a-z0-9+.-]*:\/\//i, "");
  const slash = rest.indexOf("/");
  let path = "";
  if (slash >= 0) {
    path = rest.slice(slash);
    rest = rest.slice(0, slash);
    // The kubelet drops an API version the docker CLI writes into its keys.
    path = path.replace(/^\/v[12](?=\/|$)/, "");
    path = path.replace(/^\/+|\/+$/g, "");
  }
  const { host, port } = splitHostPort(rest.toLowerCase());
  if (!host) return undefined;
  const canonical = port === "" && isDockerHub(host) ? "docker.io" : host;
  const labels = canonical.split(".");
  return { raw, labels, port, path, globLabels: labels.filter((label) => /[*?]/.test(label)).length };
}

function splitHostPort(hostPort: string): { host: string; port: string } {
  const bracketed = /^\[([^\]]*)\](?::(\d*))?$/.exec(hostPort);
  if (bracketed) return { host: bracketed[1], port: bracketed[2] ?? "" };
  const colon = hostPort.lastIndexOf(":");
  if (colon >= 0 && hostPort.indexOf(":") === colon) {
    return { host: hostPort.slice(0, colon), port: hostPort.slice(colon + 1) };
  }
  return { host: hostPort, port: "" };
}

const labelPatterns = new Map<string, RegExp>();

/** A glob label as the kubelet reads it (Go's filepath.Match on one label). */
function labelMatches(glob: string, label: string): boolean {
  if (!/[*?]/.test(glob)) return glob === label;
  let pattern = labelPatterns.get(glob);
  if (!pattern) {
    const source = glob
      .split("")
      .map((char) =>
        char === "*" ? "[^.]*" : char === "?" ? "[^.]" : char.replace(/[\\^$.|+()[\]{}]/g, "\\$&"),
      )
      .join("");
    pattern = new RegExp(`^${source}$`);
    labelPatterns.set(glob, pattern);
  }
  return pattern.test(label);
}

/**
 * Does `key` apply to `repository` on `registry` ("host[:port]")? The path must be a whole
 * segment prefix: `example.com/team-a` applies to `team-a/model`, not to `team-ab/model`
 * (the kubelet compares raw strings there; a segment boundary is what users mean).
 */
export function keyMatches(key: KeyringKey, registry: string, repository = ""): boolean {
  const target = parseKeyringKey(registry);
  if (!target) return false;
  if (key.port !== target.port) return false;
  if (key.labels.length !== target.labels.length) return false;
  if (key.path && repository !== key.path && !repository.startsWith(`${key.path}/`)) return false;
  return key.labels.every((glob, i) => labelMatches(glob, target.labels[i]));
}

/** Longer path first, then fewer glob labels, then the order entries were added. */
function specificity(a: KeyringKey, b: KeyringKey): number {
  const segments = (key: KeyringKey) => (key.path ? key.path.split("/").length : 0);
  return segments(b) - segments(a) || b.path.length - a.path.length || a.globLabels - b.globLabels;
}

export class Keyring {
  readonly #entries: KeyringCandidate[] = [];

  /** Adds one entry; keys that parse to nothing (an empty string) are ignored. */
  add(rawKey: string, credentials: Credentials, source: string): void {
    const key = parseKeyringKey(rawKey);
    if (key) this.#entries.push({ key, credentials, source });
  }

  get size(): number {
    return this.#entries.length;
  }

  /** Every entry that applies, most specific first (a stable sort keeps insertion order among equals). */
  lookup(registry: string, repository = ""): KeyringCandidate[] {
    return this.#entries
      .filter((entry) => keyMatches(entry.key, registry, repository))
      .sort((a, b) => specificity(a.key, b.key));
  }
}
