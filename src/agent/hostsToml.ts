/**
 * containerd registry mirror configuration: `<config_path>/<host>/hosts.toml` sends pulls for
 * an upstream host to the cache registry first (`/v2/<cache repository prefix>/...` with
 * `override_path`), falling back to the upstream itself. A hosts.toml Stowage did not write is
 * never lost: it is backed up once and merged (its hosts kept, the cache tried first). An HTTPS
 * cache with a private CA gets that CA written beside each hosts.toml and named by the cache's
 * `ca` key (containerd reads `ca` as a path, absolute or relative to the hosts.toml).
 */
import { mkdir, readdir, readFile, rename, rm, rmdir, stat, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { cacheRepository, isDockerHub } from "../oci/reference.ts";

/** First line of every hosts.toml Stowage writes; how it tells its own files from others'. */
export const STOWAGE_MARKER = "# Managed by Stowage (stowage.dev): edits are overwritten.";
export const BACKUP_NAME = "hosts.toml.stowage-backup";
/** The cache registry's CA, written next to hosts.toml when the agent is given one. */
export const CACHE_CA_NAME = "stowage-cache-ca.crt";

export interface MirrorOptions {
  /** Where nodes reach the cache registry: `http://10.0.0.5:5000`. */
  cacheEndpoint: string;
  /** Accept the cache's certificate without verification (HTTPS caches only). */
  skipVerify?: boolean;
  /** PEM CA certificate(s) the HTTPS cache's certificate chains to; ignored for an http:// cache. */
  caPem?: string;
  /** containerd's per-host dial timeout, so a dead cache falls back quickly (default "3s"). */
  dialTimeout?: string;
  /**
   * Mirrors containerd tries before the cache (issue 15): in fan-out `planned` mode the node's own
   * agent (`localMirror`: the agent's mirror port, paths as the cache's, override_path); in
   * `external` mode a peer layer already running as the node mirror (`externalMirror`: Spegel's or
   * dfdaemon's URL, asked with containerd's ordinary /v2/ paths).
   */
  localMirror?: { port: number };
  externalMirror?: string;
}

/** The mirror tables that go before the cache's, per the fan-out mode. */
function mirrorTables(host: string, options: MirrorOptions): string[] {
  const lines: string[] = [];
  const dial = `  dial_timeout = ${JSON.stringify(options.dialTimeout ?? "3s")}`;
  if (options.externalMirror) {
    lines.push(
      `[host.${JSON.stringify(options.externalMirror.replace(/\/+$/, ""))}]`,
      `  capabilities = ["pull", "resolve"]`,
      dial,
      "",
    );
  }
  if (options.localMirror) {
    lines.push(
      `[host.${JSON.stringify(cacheHostUrl(`http://127.0.0.1:${options.localMirror.port}`, host))}]`,
      `  capabilities = ["pull", "resolve"]`,
      "  override_path = true",
      dial,
      "",
    );
  }
  return lines;
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

/** Whether containerd is told to trust a CA for the cache: only an HTTPS cache needs one. */
function cacheCa(options: MirrorOptions): string | undefined {
  return options.caPem && /^https:\/\//i.test(options.cacheEndpoint) ? options.caPem : undefined;
}

function cacheHostTable(host: string, options: MirrorOptions, caPath?: string): string[] {
  return [
    `[host.${JSON.stringify(cacheHostUrl(options.cacheEndpoint, host))}]`,
    `  capabilities = ["pull", "resolve"]`,
    "  override_path = true",
    ...(caPath ? [`  ca = ${JSON.stringify(caPath)}`] : []),
    ...(options.skipVerify ? ["  skip_verify = true"] : []),
    `  dial_timeout = ${JSON.stringify(options.dialTimeout ?? "3s")}`,
  ];
}

/**
 * The hosts.toml for `host`. With `foreign` (someone else's file), its top-level keys (server,
 * ca, ...) and its host tables stay; the cache's table goes before them so it is tried first.
 * `caPath` is where the cache's CA file lies (see `applyMirrorConfig`), when there is one.
 */
export function renderHostsToml(
  host: string,
  options: MirrorOptions,
  foreign?: string,
  caPath?: string,
): string {
  const lines = [STOWAGE_MARKER];
  if (foreign === undefined) {
    lines.push(
      `server = ${JSON.stringify(upstreamServer(host))}`,
      "",
      ...mirrorTables(host, options),
      ...cacheHostTable(host, options, caPath),
      "",
    );
    return lines.join("\n");
  }
  const { topLevel, tables } = splitToml(foreign);
  lines.push(`# Merged with the hosts.toml found here before (kept as ${BACKUP_NAME}).`);
  if (!topLevel.some((line) => /^\s*server\s*=/.test(line)))
    lines.push(`server = ${JSON.stringify(upstreamServer(host))}`);
  lines.push(
    ...trimBlank(topLevel),
    "",
    ...mirrorTables(host, options),
    ...cacheHostTable(host, options, caPath),
    "",
    ...trimBlank(tables),
    "",
  );
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
 * Write `text` to `file` unless it holds exactly that; through a temp file and a rename, since
 * containerd reads these files on every pull and must never see half of one.
 */
async function writeIfChanged(file: string, text: string, current?: string): Promise<boolean> {
  if (current === text) return false;
  const temp = `${file}.stowage-tmp`;
  await writeFile(temp, text);
  await rename(temp, file);
  return true;
}

/**
 * Make `<configPath>/<host>/hosts.toml` point every host at the cache, and undo it for hosts
 * Stowage configured before that are no longer wanted (a backed-up original is restored).
 * With a CA for an HTTPS cache, `<configPath>/<host>/stowage-cache-ca.crt` holds it and the
 * cache's table names it by absolute path; without one, a CA file written before is removed.
 * Idempotent: a file that already has the right content is not rewritten.
 */
export async function applyMirrorConfig(
  configPath: string,
  hosts: readonly string[],
  options: MirrorOptions,
): Promise<MirrorConfigResult> {
  const result: MirrorConfigResult = { hosts: {} };
  const wanted = new Set(hosts);
  const caPem = cacheCa(options);
  for (const host of wanted) {
    const dir = hostDir(configPath, host);
    const file = join(dir, "hosts.toml");
    const backup = join(dir, BACKUP_NAME);
    const caFile = join(dir, CACHE_CA_NAME);
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
    await mkdir(dir, { recursive: true });
    // The CA goes first, so a hosts.toml naming it never points at a missing or stale file.
    let caChanged = false;
    if (caPem !== undefined) caChanged = await writeIfChanged(caFile, caPem, await readOptional(caFile));
    const desired = renderHostsToml(host, options, foreign, caPem !== undefined ? caFile : undefined);
    const written = await writeIfChanged(file, desired, current);
    if (caPem === undefined) await rm(caFile, { force: true });
    result.hosts[host] = written || caChanged ? outcome : "unchanged";
  }
  for (const host of await configuredHosts(configPath)) {
    if (wanted.has(host)) continue;
    const dir = join(configPath, host);
    const backup = join(dir, BACKUP_NAME);
    await rm(join(dir, CACHE_CA_NAME), { force: true });
    if ((await readOptional(backup)) !== undefined) {
      await rename(backup, join(dir, "hosts.toml"));
      result.hosts[host] = "restored";
    } else {
      await rm(join(dir, "hosts.toml"), { force: true });
      // rmdir: the folder goes only when nothing else (a certificate of the node's own) is in it.
      await rmdir(dir).catch(() => {});
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
 * Whether containerd will read hosts.toml files from `configPath`: containerd's own config (the
 * file when given, else what the runtime reports through CRI Status) must set the CRI registry
 * `config_path` to it, and the directory must exist. Without either (CRI-O, a runtime that
 * reports nothing) only the directory is checked.
 */
export async function checkConfigPath(
  configPath: string,
  containerdConfigFile?: string,
  runtimeReported?: { registryConfigPath: string },
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
  } else if (runtimeReported) {
    const reported = runtimeReported.registryConfigPath;
    if (reported === "")
      return {
        ok: false,
        configPath: "",
        message: `containerd (CRI status) has no [plugins."io.containerd.grpc.v1.cri".registry] config_path; set it to ${configPath} in its config.toml and restart containerd to use the cache mirror`,
      };
    if (reported !== configPath)
      return {
        ok: false,
        configPath: "",
        message: `containerd (CRI status) reads registry hosts from ${reported}, but the agent was given --containerd-config-path ${configPath} (chart: agent.containerdConfigPath)`,
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
