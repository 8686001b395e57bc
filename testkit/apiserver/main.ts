import { readFileSync } from "node:fs";
import { parseArgs } from "node:util";
import { parseAllDocuments } from "yaml";
import { startApiServer } from "./index.ts";
import type { KubeObject } from "./types.ts";

/**
 * Standalone API server test double for the local sandbox:
 *   node testkit/apiserver/main.ts --port 6443 --kubeconfig ./kubeconfig [--crd crds/modelimage.yaml ...]
 */
const { values } = parseArgs({
  options: {
    port: { type: "string", default: "0" },
    kubeconfig: { type: "string" },
    crd: { type: "string", multiple: true, default: [] },
    "history-limit": { type: "string" },
    "bookmark-interval-ms": { type: "string" },
  },
});

const crds: KubeObject[] = [];
for (const file of values.crd ?? []) {
  for (const doc of parseAllDocuments(readFileSync(file, "utf8"))) {
    const obj = doc.toJS();
    if (obj?.kind === "CustomResourceDefinition") crds.push(obj);
  }
}

const server = await startApiServer({
  port: Number(values.port),
  kubeconfigPath: values.kubeconfig,
  crds,
  historyLimit: values["history-limit"] ? Number(values["history-limit"]) : undefined,
  bookmarkIntervalMs: values["bookmark-interval-ms"] ? Number(values["bookmark-interval-ms"]) : undefined,
});
process.stdout.write(`API server listening on ${server.url}\nkubeconfig: ${server.kubeconfigPath}\n`);

let stopping = false;
const shutdown = () => {
  if (stopping) return;
  stopping = true;
  server.stop().then(
    () => process.exit(0),
    () => process.exit(1),
  );
};
process.on("SIGINT", shutdown);
process.on("SIGTERM", shutdown);
