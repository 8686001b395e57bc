import { existsSync, readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { homedir } from "node:os";
import { dirname, isAbsolute, join, resolve } from "node:path";
import type { KubeConfig } from "@kubernetes/client-node";
import { StowageError } from "../util/errors.ts";

const requireDependency = createRequire(import.meta.url);
/**
 * Parses a kubeconfig's YAML with `yaml`, required on first use. Why not imported at the top:
 * a process in a pod (every agent, the controller) reads its in-cluster credentials and never
 * parses a kubeconfig, and the parser costs it ≈ 4 MB of resident memory.
 */
function parseYaml(text: string): unknown {
  return (requireDependency("yaml") as typeof import("yaml")).parse(text);
}

const serviceAccountDir = "/var/run/secrets/kubernetes.io/serviceaccount";

/**
 * Where to reach the API server and how to authenticate, resolved from a kubeconfig or the
 * in-cluster service account.
 *
 * Why not client-node's KubeConfig for everything: importing @kubernetes/client-node loads
 * its ~2,700 generated model modules, ≈ 85 MB of RSS before any work (measured on Node 24).
 * The controller's hot path (list, watch, get, update, patch) needs only the server, TLS
 * material and a bearer token or client certificate, which this file reads directly. Exec
 * and auth-provider credentials are delegated to client-node, imported only when a kubeconfig
 * actually uses them (see `delegateAuth`).
 */
export interface ClusterConfig {
  server: string;
  namespace?: string;
  tls: { ca?: Buffer; cert?: Buffer; key?: Buffer; insecureSkipTLSVerify: boolean; serverName?: string };
  token?: string;
  /** Re-read on use (projected service-account tokens rotate). */
  tokenFile?: string;
  basic?: { username: string; password: string };
  /** exec / auth-provider users: authentication goes through client-node. */
  delegateAuth: boolean;
  /** Where this configuration came from, to load the same in client-node for the typed APIs. */
  source: ClusterConfigSource;
}

export type ClusterConfigSource =
  | { kind: "file"; path: string; context?: string }
  | { kind: "env"; context?: string }
  | { kind: "inCluster" }
  | { kind: "string"; text: string; context?: string };

/** The same configuration loaded into client-node's KubeConfig (imported on demand: it is heavy). */
export async function clientNodeKubeConfig(source: ClusterConfigSource): Promise<KubeConfig> {
  const { KubeConfig } = await import("@kubernetes/client-node");
  const kc = new KubeConfig();
  if (source.kind === "inCluster") kc.loadFromCluster();
  else if (source.kind === "file") kc.loadFromFile(source.path);
  else if (source.kind === "env") kc.loadFromDefault();
  else kc.loadFromString(source.text);
  if (source.kind !== "inCluster" && source.context) kc.setCurrentContext(source.context);
  return kc;
}

interface NamedCluster {
  name: string;
  cluster: Record<string, unknown>;
}
interface NamedUser {
  name: string;
  user?: Record<string, unknown>;
}
interface NamedContext {
  name: string;
  context: { cluster: string; user: string; namespace?: string };
}
interface KubeconfigFile {
  clusters?: NamedCluster[];
  users?: NamedUser[];
  contexts?: NamedContext[];
  "current-context"?: string;
}

/**
 * Resolve the cluster: an explicit kubeconfig file, else `KUBECONFIG` (several files joined
 * by ":" are merged, the first definition of a name winning, as kubectl does), else the
 * in-cluster service account, else ~/.kube/config.
 */
export function loadClusterConfig(
  options: { path?: string; inCluster?: boolean; context?: string } = {},
): ClusterConfig {
  if (options.path) {
    return fromKubeconfigFiles([options.path], options.context, {
      kind: "file",
      path: options.path,
      context: options.context,
    });
  }
  if (options.inCluster) return inCluster();
  const env = process.env.KUBECONFIG;
  if (env)
    return fromKubeconfigFiles(env.split(":").filter(Boolean), options.context, {
      kind: "env",
      context: options.context,
    });
  if (process.env.KUBERNETES_SERVICE_HOST && existsSync(join(serviceAccountDir, "token"))) return inCluster();
  const home = join(homedir(), ".kube", "config");
  if (existsSync(home))
    return fromKubeconfigFiles([home], options.context, {
      kind: "file",
      path: home,
      context: options.context,
    });
  throw new StowageError(
    "InvalidArgument",
    "no Kubernetes cluster configured: set KUBECONFIG or run in a pod",
  );
}

/** A kubeconfig given as text (tests, or a Secret). */
export function clusterConfigFromString(text: string, context?: string): ClusterConfig {
  return fromParsed([{ doc: parseYaml(text) as KubeconfigFile, dir: process.cwd() }], context, {
    kind: "string",
    text,
    context,
  });
}

function inCluster(): ClusterConfig {
  const host = process.env.KUBERNETES_SERVICE_HOST;
  const port = process.env.KUBERNETES_SERVICE_PORT ?? "443";
  if (!host)
    throw new StowageError("InvalidArgument", "KUBERNETES_SERVICE_HOST is not set: not running in a pod");
  const bracketed = host.includes(":") ? `[${host}]` : host;
  const namespaceFile = join(serviceAccountDir, "namespace");
  return {
    server: `https://${bracketed}:${port}`,
    namespace: existsSync(namespaceFile) ? readFileSync(namespaceFile, "utf8").trim() : undefined,
    tls: { ca: readFileSync(join(serviceAccountDir, "ca.crt")), insecureSkipTLSVerify: false },
    tokenFile: join(serviceAccountDir, "token"),
    delegateAuth: false,
    source: { kind: "inCluster" },
  };
}

function fromKubeconfigFiles(
  paths: string[],
  context: string | undefined,
  source: ClusterConfigSource,
): ClusterConfig {
  const docs = paths
    .filter((path) => existsSync(path))
    .map((path) => ({
      doc: (parseYaml(readFileSync(path, "utf8")) ?? {}) as KubeconfigFile,
      dir: dirname(resolve(path)),
    }));
  if (docs.length === 0)
    throw new StowageError("InvalidArgument", `kubeconfig not found: ${paths.join(", ")}`);
  return fromParsed(docs, context, source);
}

function fromParsed(
  docs: { doc: KubeconfigFile; dir: string }[],
  contextName: string | undefined,
  source: ClusterConfigSource,
): ClusterConfig {
  const first = <T extends { name: string }>(pick: (d: KubeconfigFile) => T[] | undefined, name: string) => {
    for (const { doc, dir } of docs) {
      const found = pick(doc)?.find((entry) => entry.name === name);
      if (found) return { entry: found, dir };
    }
    return undefined;
  };
  const current = contextName ?? docs.find(({ doc }) => doc["current-context"])?.doc["current-context"];
  if (!current) throw new StowageError("InvalidArgument", "kubeconfig has no current-context");
  const context = first((d) => d.contexts, current)?.entry.context;
  if (!context) throw new StowageError("InvalidArgument", `kubeconfig context "${current}" not found`);
  const clusterEntry = first((d) => d.clusters, context.cluster);
  if (!clusterEntry)
    throw new StowageError("InvalidArgument", `kubeconfig cluster "${context.cluster}" not found`);
  const userEntry = first((d) => d.users, context.user);
  const cluster = clusterEntry.entry.cluster;
  const user = userEntry?.entry.user ?? {};
  const material = (dataKey: string, fileKey: string, obj: Record<string, unknown>, dir: string) => {
    if (typeof obj[dataKey] === "string") return Buffer.from(obj[dataKey] as string, "base64");
    if (typeof obj[fileKey] === "string") {
      const file = obj[fileKey] as string;
      return readFileSync(isAbsolute(file) ? file : join(dir, file));
    }
    return undefined;
  };
  const userDir = userEntry?.dir ?? clusterEntry.dir;
  const config: ClusterConfig = {
    server: String(cluster.server ?? "").replace(/\/+$/, ""),
    namespace: context.namespace,
    tls: {
      ca: material("certificate-authority-data", "certificate-authority", cluster, clusterEntry.dir),
      cert: material("client-certificate-data", "client-certificate", user, userDir),
      key: material("client-key-data", "client-key", user, userDir),
      insecureSkipTLSVerify: cluster["insecure-skip-tls-verify"] === true,
      serverName: typeof cluster["tls-server-name"] === "string" ? cluster["tls-server-name"] : undefined,
    },
    delegateAuth: Boolean(user.exec || user["auth-provider"]),
    source,
  };
  if (!config.server)
    throw new StowageError("InvalidArgument", `kubeconfig cluster "${context.cluster}" has no server`);
  if (typeof user.token === "string") config.token = user.token;
  if (typeof user.tokenFile === "string") config.tokenFile = user.tokenFile;
  if (typeof user["token-file"] === "string") config.tokenFile = user["token-file"] as string;
  if (typeof user.username === "string" && typeof user.password === "string") {
    config.basic = { username: user.username, password: user.password };
  }
  return config;
}
