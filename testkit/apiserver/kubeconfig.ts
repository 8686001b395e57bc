import { stringify } from "yaml";

/**
 * A kubeconfig kubectl and client-node use as is. client-node refuses a plain-http server unless the
 * cluster says `insecure-skip-tls-verify: true`; the token is not checked (no authentication yet).
 */
export function renderKubeconfig(url: string, namespace = "default"): string {
  return stringify({
    apiVersion: "v1",
    kind: "Config",
    clusters: [{ name: "stowage-test", cluster: { server: url, "insecure-skip-tls-verify": true } }],
    users: [{ name: "stowage-test", user: { token: "stowage-test-token" } }],
    contexts: [
      { name: "stowage-test", context: { cluster: "stowage-test", user: "stowage-test", namespace } },
    ],
    "current-context": "stowage-test",
    preferences: {},
  });
}
