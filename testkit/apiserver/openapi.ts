import { createHash } from "node:crypto";
import { apiVersionOf, type ResourceRegistry } from "./resources.ts";
import type { Json } from "./types.ts";

/**
 * Just enough OpenAPI v3 for kubectl: it reads `/openapi/v3` and each group-version document to learn
 * that PATCH accepts `fieldValidation` (then it leaves validation to the server instead of
 * downloading schemas). No component schemas are published, so kubectl builds client-side apply
 * patches from its compiled-in types (built-ins) or as JSON merge patches (custom resources).
 */
function gvPath(group: string, version: string): string {
  return group ? `apis/${group}/${version}` : `api/${version}`;
}

export function openApiRoot(registry: ResourceRegistry): Json {
  const paths: Json = {};
  const versions = new Set<string>();
  for (const def of registry.allDefs()) versions.add(apiVersionOf(def));
  for (const gv of versions) {
    const [group, version] = gv.includes("/") ? gv.split("/") : ["", gv];
    const path = gvPath(group, version);
    const hash = createHash("sha512")
      .update(JSON.stringify(openApiGroupVersion(registry, group, version)))
      .digest("hex")
      .slice(0, 32)
      .toUpperCase();
    paths[path] = { serverRelativeURL: `/openapi/v3/${path}?hash=${hash}` };
  }
  return { paths };
}

const operationParameters = [
  { name: "dryRun", in: "query", schema: { type: "string", uniqueItems: true } },
  { name: "fieldManager", in: "query", schema: { type: "string", uniqueItems: true } },
  { name: "fieldValidation", in: "query", schema: { type: "string", uniqueItems: true } },
  { name: "force", in: "query", schema: { type: "boolean", uniqueItems: true } },
];

export function openApiGroupVersion(
  registry: ResourceRegistry,
  group: string,
  version: string,
): Json | undefined {
  if (!registry.hasGroupVersion(group, version)) return undefined;
  const paths: Json = {};
  for (const def of registry.resources(group, version)) {
    const base = def.namespaced
      ? `/${gvPath(group, version)}/namespaces/{namespace}/${def.plural}`
      : `/${gvPath(group, version)}/${def.plural}`;
    const gvk = { group, version, kind: def.kind };
    const op = (verb: string) => ({
      operationId: `${verb}${def.kind}`,
      parameters: operationParameters,
      responses: { "200": { description: "OK" } },
      "x-kubernetes-action": verb,
      "x-kubernetes-group-version-kind": gvk,
    });
    paths[base] = { post: op("post"), get: op("list") };
    paths[`${base}/{name}`] = { get: op("get"), put: op("put"), patch: op("patch"), delete: op("delete") };
    for (const sub of def.subresources)
      paths[`${base}/{name}/${sub}`] = { get: op("get"), put: op("put"), patch: op("patch") };
  }
  return {
    openapi: "3.0.0",
    info: { title: "Kubernetes", version: "v1.32.0" },
    paths,
    components: { schemas: {} },
  };
}
