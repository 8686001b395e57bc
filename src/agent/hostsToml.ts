/**
 * containerd registry mirror configuration: `<config_path>/<host>/hosts.toml` sends pulls for
 * an upstream host to the cache registry first (`/v2/<cache repository prefix>/...` with
 * `override_path`), falling back to the upstream itself. A hosts.toml Stowage did not write is
 * never lost: it is backed up once and merged (its hosts kept, the cache tried first).
 */
import { mkdir, readdir, readFile, rename, rm, stat, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { cacheRepository, isDockerHub } from "../oci/reference.ts";

/** First line of every hosts.toml Stowage writes; how it tells its own files from others'. */
export const STOWAGE_MARKER = "# Managed by Stowage (stowage.dev): edits are overwritten.";
export const BACKUP_NAME = "hosts.toml.stowage-backup";

export interface MirrorOptions {
  /** Where nodes reach the cache registry: `http://10.0.0.5:5000`. */
  cacheEndpoint: string;
  /** Accept the cache's certificate without verification (HTTPS caches only). */
  skipVerify?: boolean;
  /** containerd's per-host dial timeout, so a dead cache falls back quickly (default "3s"). */
  dialTimeout?: string;
}

/** The upstream server containerd falls back to: Docker Hub's API host for docker.io. */
export function upstreamServer(host: string): string {
  return isDockerHub(host) ? "https://registry-1.docker.io" : `https://${host}`;
}

/** The cache URL prefix that holds `host`'s repositories (cache layout: `host_port/...`). */
export function cacheHostUrl(cacheEndpoint: string, host: string): string {
  const prefix = cacheRepository({ registry: isDockerHub(host) ? "docker.io" : host, repository: "x" }).slice(
    0,
    -2,
  );
  return `${cacheEndpoint.replace(/\/+$/, "")}/v2/${prefix}`;
}

function cacheHostTable(host: string, options: MirrorOptions): string[] {
  return [
    `[host.${JSON.stringify(cacheHostUrl(options.cacheEndpoint, host))}]`,
    `  capabilities = ["pull", "resolve"]`,
    "  override_path = true",
    ...(options.skipVerify ? ["  skip_verify = true"] : []),
    `  dial_timeout = ${JSON.stringify(options.dialTimeout ?? "3s")}`,
  ];
}

/**
 * The hosts.toml for `host`. With `foreign` (someone else's file), its top-level keys (server,
 * ca, ...) and its host tables stay; the cache's table goes before them so it is tried first.
 */
export function renderHostsToml(host: string, options: MirrorOptions, foreign?: string): string {
  const lines = [STOWAGE_MARKER];
  if (foreign === undefined) {
    lines.push(`server = ${JSON.stringify(upstreamServer(host))}`, "", ...cacheHostTable(host, options), "");
    return lines.join("\n");
  }
  const { topLevel, tables } = splitToml(foreign);
  lines.push(`# Merged with the hosts.toml found here before (kept as ${BACKUP_NAME}).`);
  if (!topLevel.some((line) => /^\s*server\s*=/.test(line)))
    lines.push(`server = ${JSON.stringify(upstreamServer(host))}`);
  lines.push(...trimBlank(topLevel), "", ...cacheHostTable(host, options), "", ...trimBlank(tables), "");
  return lines.join("\n");
}

/** Split TOML text at its first table header: top-level keys must stay before every table. */
function splitToml(text: string): { topLevel: string[]; tables: string[] } {
  const lines = text.split(/\r?\n/);
  const first = lines.findIndex((line) => /^\s*\[/.test(line));
  return first < 0
    ? { topLevel: lines, tables: [] }
    : { topLevel: lines.slice(0, first), tables: lines.slice(first) };
}

function trimBlank(lines: string[]): string[] {
  let start = 0;
  let end = lines.length;
  while (start < end && lines[start].trim() === "") start++;
  while (end > start && lines[end - 1].trim() === "") end--;
  return lines.slice(start, end);
}

export type HostConfigOutcome = "written" | "unchanged" | "merged" | "removed" | "restored";

export interface MirrorConfigResult {
  hosts: Record<string, HostConfigOutcome>;
}

/** The containerd registry host directory name: the host as written, port included. */
function hostDir(configPath: string, host: string): string {
  if (host.includes("/") || host.includes("..") || host === "")
    throw new Error(`invalid mirror host "${host}"`);
  return join(configPath, host);
}

async function readOptional(path: string): Promise<string | undefined> {
  try {
    return await readFile(path, "utf8");
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") return undefined;
    throw err;
  }
}

/**
 * Make `<configPath>/<host>/hosts.toml` point every host at the cache, and undo it for hosts
 * Stowage configured before that are no longer wanted (a backed-up original is restored).
 * Idempotent: a file that already has the right content is not rewritten.
 */
export async function applyMirrorConfig(
  configPath: string,
  hosts: readonly string[],
  options: MirrorOptions,
): Promise<MirrorConfigResult> {
  const result: MirrorConfigResult = { hosts: {} };
  const wanted = new Set(hosts);
  for (const host of wanted) {
    const dir = hostDir(configPath, host);
    const file = join(dir, "hosts.toml");
    const backup = join(dir, BACKUP_NAME);
    const current = await readOptional(file);
    let foreign = await readOptional(backup);
    let outcome: HostConfigOutcome = "written";
    if (current !== undefined && !current.startsWith(STOWAGE_MARKER)) {
      // Someone else's file: keep it as the backup (once) and merge it.
      await mkdir(dir, { recursive: true });
      await writeFile(backup, current);
      foreign = current;
    }
    if (foreign !== undefined) outcome = "merged";
    const desired = renderHostsToml(host, options, foreign);
    if (current === desired) {
      result.hosts[host] = "unchanged";
      continue;
    }
    await mkdir(dir, { recursive: true });
    // Write then rename: containerd reads hosts.toml on every pull and must never see half a file.
    const temp = `${file}.stowage-tmp`;
    await writeFile(temp, desired);
    await rename(temp, file);
    result.hosts[host] = outcome;
  }
  for (const host of await configuredHosts(configPath)) {
    if (wanted.has(host)) continue;
    const dir = join(configPath, host);
    const backup = join(dir, BACKUP_NAME);
    if ((await readOptional(backup)) !== undefined) {
      await rename(backup, join(dir, "hosts.toml"));
      result.hosts[host] = "restored";
    } else {
      await rm(join(dir, "hosts.toml"), { force: true });
      await rm(dir, { recursive: false, force: true }).catch(() => {});
      result.hosts[host] = "removed";
    }
  }
  return result;
}

/** Hosts under `configPath` whose hosts.toml Stowage wrote. */
export async function configuredHosts(configPath: string): Promise<string[]> {
  let entries: string[];
  try {
    entries = await readdir(configPath);
  } catch {
    return [];
  }
  const hosts: string[] = [];
  for (const entry of entries) {
    const text = await readOptional(join(configPath, entry, "hosts.toml")).catch(() => undefined);
    if (text?.startsWith(STOWAGE_MARKER)) hosts.push(entry);
  }
  return hosts.sort();
}

export type ConfigPathCheck =
  | { ok: true; configPath: string }
  | { ok: false; configPath: ""; message: string };

/**
 * Whether containerd will read hosts.toml files from `configPath`: containerd's own config (when
 * given) must set the CRI registry `config_path`, and the directory must exist.
 */
export async function checkConfigPath(
  configPath: string,
  containerdConfigFile?: string,
): Promise<ConfigPathCheck> {
  if (containerdConfigFile) {
    const text = await readOptional(containerdConfigFile);
    if (text === undefined)
      return {
        ok: false,
        configPath: "",
        message: `containerd config ${containerdConfigFile} not found; cannot tell whether registry config_path is set`,
      };
    const match = /^\s*config_path\s*=\s*["']([^"']*)["']/m.exec(text);
    if (!match || match[1] === "")
      return {
        ok: false,
        configPath: "",
        message: `containerd config ${containerdConfigFile} does not set [plugins."io.containerd.grpc.v1.cri".registry] config_path; set it to ${configPath} and restart containerd to use the cache mirror`,
      };
    if (match[1] !== configPath)
      return {
        ok: false,
        configPath: "",
        message: `containerd reads registry hosts from ${match[1]}, but the agent was given --containerd-config-path ${configPath}`,
      };
  }
  try {
    if ((await stat(configPath)).isDirectory()) return { ok: true, configPath };
  } catch {}
  return {
    ok: false,
    configPath: "",
    message: `containerd registry config_path ${configPath} does not exist; set config_path in containerd's config and mount the directory into the agent`,
  };
}
