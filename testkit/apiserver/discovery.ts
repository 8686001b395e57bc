import { allVerbs, type ResourceDef, type ResourceRegistry, sortVersions } from "./resources.ts";
import type { Json } from "./types.ts";

/** Discovery documents: the legacy APIVersions/APIGroupList/APIResourceList and aggregated v2. */
export const aggregatedDiscoveryType = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList";

export function wantsAggregated(accept: string | undefined): boolean {
  return !!accept && /as=APIGroupDiscoveryList/.test(accept) && /v=v2(;|,|$)/.test(accept.replace(/\s/g, ""));
}

export function versionInfo(): Json {
  return {
    major: "1",
    minor: "32",
    gitVersion: "v1.32.0",
    gitCommit: "stowage-testkit",
    gitTreeState: "clean",
    buildDate: "2026-01-01T00:00:00Z",
    goVersion: "go1.23.0",
    compiler: "gc",
    platform: "linux/amd64",
  };
}

export function coreVersions(serverAddress: string): Json {
  return {
    kind: "APIVersions",
    versions: ["v1"],
    serverAddressByClientCIDRs: [{ clientCIDR: "0.0.0.0/0", serverAddress }],
  };
}

function groupEntry(group: { name: string; versions: string[] }): Json {
  const versions = sortVersions(group.versions).map((v) => ({
    groupVersion: `${group.name}/${v}`,
    version: v,
  }));
  return { name: group.name, versions, preferredVersion: versions[0] };
}

export function groupList(registry: ResourceRegistry): Json {
  return { kind: "APIGroupList", apiVersion: "v1", groups: registry.groups().map(groupEntry) };
}

export function apiGroup(registry: ResourceRegistry, name: string): Json | undefined {
  const group = registry.groups().find((g) => g.name === name);
  return group ? { kind: "APIGroup", apiVersion: "v1", ...groupEntry(group) } : undefined;
}

function statusVerbs(): string[] {
  return ["get", "patch", "update"];
}

export function resourceList(registry: ResourceRegistry, group: string, version: string): Json {
  const resources: Json[] = [];
  for (const def of registry.resources(group, version)) {
    const entry: Json = {
      name: def.plural,
      singularName: def.singular,
      namespaced: def.namespaced,
      kind: def.kind,
      verbs: allVerbs,
    };
    if (def.shortNames.length > 0) entry.shortNames = def.shortNames;
    if (def.categories.length > 0) entry.categories = def.categories;
    resources.push(entry);
    for (const sub of def.subresources)
      resources.push({
        name: `${def.plural}/${sub}`,
        singularName: "",
        namespaced: def.namespaced,
        kind: def.kind,
        verbs: statusVerbs(),
      });
  }
  return {
    kind: "APIResourceList",
    apiVersion: "v1",
    groupVersion: group ? `${group}/${version}` : version,
    resources,
  };
}

function aggregatedResource(def: ResourceDef): Json {
  const entry: Json = {
    resource: def.plural,
    responseKind: { group: def.group, version: def.version, kind: def.kind },
    scope: def.namespaced ? "Namespaced" : "Cluster",
    singularResource: def.singular,
    verbs: allVerbs,
  };
  if (def.shortNames.length > 0) entry.shortNames = def.shortNames;
  if (def.categories.length > 0) entry.categories = def.categories;
  if (def.subresources.length > 0)
    entry.subresources = def.subresources.map((sub) => ({
      subresource: sub,
      responseKind: { group: def.group, version: def.version, kind: def.kind },
      verbs: statusVerbs(),
    }));
  return entry;
}

/** `/api` (core only) or `/apis` (named groups) as an APIGroupDiscoveryList. */
export function aggregatedDiscovery(registry: ResourceRegistry, core: boolean): Json {
  const groups = core ? [{ name: "", versions: ["v1"] }] : registry.groups();
  return {
    kind: "APIGroupDiscoveryList",
    apiVersion: "apidiscovery.k8s.io/v2",
    metadata: {},
    items: groups.map((group) => ({
      metadata: { name: group.name, creationTimestamp: null },
      versions: sortVersions(group.versions).map((version) => ({
        version,
        resources: registry.resources(group.name, version).map(aggregatedResource),
        freshness: "Current",
      })),
    })),
  };
}
