/**
 * Corporate proxies for registry traffic: HTTPS_PROXY / HTTP_PROXY / NO_PROXY (either case, as
 * curl and Go read them), applied by undici's EnvHttpProxyAgent. On top of NO_PROXY, the cache
 * registry (its host is passed in) and in-cluster names are never proxied: a proxy outside the
 * cluster cannot reach `*.svc` addresses, and the cache must not be read through it.
 * IP ranges (CIDR) in NO_PROXY are not understood by undici: name the hosts.
 */

export interface ProxySettings {
  /** Where HTTPS_PROXY, HTTP_PROXY and NO_PROXY are read (default process.env). */
  env?: Record<string, string | undefined>;
  /** Hosts (host or host:port) never proxied, e.g. the cache registry. */
  noProxy?: string[];
}

/**
 * A host name of one label (`stowage-cache`, a Service in the same namespace) is always local
 * (cluster DNS search paths or the LAN), so it is never proxied either; undici's NO_PROXY
 * matching cannot say "no dot", hence this check in the transport.
 */
export function isSingleLabelHost(hostname: string): boolean {
  const bare = hostname.replace(/^\[|\]$/g, "");
  return bare.length > 0 && !bare.includes(".") && !bare.includes(":");
}

/**
 * Whether `url` goes to one of `hosts` (host or host:port, as ProxySettings.noProxy names them).
 * Such a host is never proxied, since it is in NO_PROXY as an exact name. Only exact names are
 * read, not NO_PROXY's suffix and wildcard forms: that is undici's matching, and a guess about
 * it could send a request around the proxy that was meant to carry it.
 */
export function isNamedHost(url: URL, hosts: readonly string[]): boolean {
  const hostname = url.hostname.toLowerCase();
  return hosts.some((entry) => {
    let named: URL;
    try {
      named = new URL(`${url.protocol}//${entry}`);
    } catch {
      return false;
    }
    // An entry without a port names every port of the host; with one, only that port.
    const portMatches = /:\d+$/.test(entry) ? named.port === url.port : true;
    return named.hostname.toLowerCase() === hostname && portMatches;
  });
}

/** Names that are in-cluster in every Kubernetes cluster, never sent to an outside proxy. */
export const IN_CLUSTER_NO_PROXY = ["localhost", ".svc", ".cluster.local"];

/** The proxies and the whole NO_PROXY list, or undefined when no proxy is configured. */
export function proxyConfig(
  settings: ProxySettings = {},
): { httpProxy?: string; httpsProxy?: string; noProxy: string } | undefined {
  const env = settings.env ?? process.env;
  const read = (name: string) => {
    const value = env[name.toLowerCase()] ?? env[name.toUpperCase()];
    return value?.trim() ? value.trim() : undefined;
  };
  const httpProxy = read("http_proxy");
  const httpsProxy = read("https_proxy");
  if (!httpProxy && !httpsProxy) return undefined;
  const kubernetesHost = env.KUBERNETES_SERVICE_HOST?.trim();
  const noProxy = [
    ...(read("no_proxy") ?? "").split(/[,\s]+/),
    ...IN_CLUSTER_NO_PROXY,
    ...(kubernetesHost ? [kubernetesHost] : []),
    ...(settings.noProxy ?? []),
  ]
    .map((entry) => entry.trim())
    .filter((entry) => entry.length > 0);
  return {
    ...(httpProxy ? { httpProxy } : {}),
    // As undici's EnvHttpProxyAgent does: an https:// target without HTTPS_PROXY uses HTTP_PROXY.
    httpsProxy: httpsProxy ?? httpProxy,
    noProxy: [...new Set(noProxy)].join(","),
  };
}
