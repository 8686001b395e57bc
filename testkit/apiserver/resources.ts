import type { Json, KubeObject } from "./types.ts";

/** What the server knows about one resource in one group/version: everything discovery, routing and the REST semantics need. */
export interface PrinterColumn {
  name: string;
  type: string;
  format?: string;
  description?: string;
  priority?: number;
  jsonPath: string;
}

export interface ResourceDef {
  group: string;
  version: string;
  plural: string;
  singular: string;
  kind: string;
  listKind: string;
  namespaced: boolean;
  shortNames: string[];
  categories: string[];
  /** "status" (and later "scale") */
  subresources: string[];
  /** objects of every version of a group/resource share one collection */
  bucket: string;
  /** built-ins accept strategic merge patches; custom resources answer 415 */
  strategicMerge: boolean;
  /** on create with a status subresource: Nodes keep the status sent, most kinds start empty */
  statusOnCreate: "keep" | "reset";
  /** status a create starts with when reset (Pods start Pending) */
  initialStatus?: () => Json;
  /** `metadata.generation` is set on create and follows spec changes (the kind's strategy tracks it) */
  generation: boolean;
  /** a PUT without `metadata.resourceVersion` overwrites (AllowUnconditionalUpdate); otherwise 422 */
  unconditionalUpdate: boolean;
  /** a delete that removes the object at once answers with the object; otherwise with a Success Status */
  returnDeletedObject: boolean;
  /** field selector fields beyond metadata.name / metadata.namespace */
  selectableFields: string[];
  printerColumns: PrinterColumn[];
  /** set for custom resources: the served version's schema and validation rules */
  schema?: Json;
  /** true when this version is the CRD's storage version (unused by the store, shown in discovery) */
  storage?: boolean;
  /** for a kind stored in another version's shape (events.k8s.io/v1 Event is stored as core/v1) */
  convert?: { toStorage(obj: KubeObject): KubeObject; fromStorage(obj: KubeObject): KubeObject };
}

export const allVerbs = ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"];

export function apiVersionOf(def: Pick<ResourceDef, "group" | "version">): string {
  return def.group ? `${def.group}/${def.version}` : def.version;
}

export function hasStatus(def: ResourceDef): boolean {
  return def.subresources.includes("status");
}

/** Every served resource by group/version, with lookups by plural, kind and short name. */
export class ResourceRegistry {
  private readonly byGroupVersion = new Map<string, Map<string, ResourceDef>>();
  /** order groups were first registered, for discovery output */
  private readonly groupOrder: string[] = [];

  add(def: ResourceDef): void {
    const gv = apiVersionOf(def);
    let resources = this.byGroupVersion.get(gv);
    if (!resources) {
      resources = new Map();
      this.byGroupVersion.set(gv, resources);
    }
    resources.set(def.plural, def);
    if (!this.groupOrder.includes(def.group)) this.groupOrder.push(def.group);
  }

  remove(group: string, plural: string): void {
    for (const [gv, resources] of this.byGroupVersion) {
      for (const def of [...resources.values()]) {
        if (def.group === group && def.plural === plural) resources.delete(def.plural);
      }
      if (resources.size === 0) this.byGroupVersion.delete(gv);
    }
  }

  find(group: string, version: string, plural: string): ResourceDef | undefined {
    return this.byGroupVersion.get(group ? `${group}/${version}` : version)?.get(plural);
  }

  findByKind(apiVersion: string, kind: string): ResourceDef | undefined {
    for (const def of this.byGroupVersion.get(apiVersion)?.values() ?? []) if (def.kind === kind) return def;
    return undefined;
  }

  hasGroupVersion(group: string, version: string): boolean {
    return this.byGroupVersion.has(group ? `${group}/${version}` : version);
  }

  resources(group: string, version: string): ResourceDef[] {
    return [...(this.byGroupVersion.get(group ? `${group}/${version}` : version)?.values() ?? [])];
  }

  /** Named groups (not core) with their served versions, in registration order. */
  groups(): { name: string; versions: string[] }[] {
    const out: { name: string; versions: string[] }[] = [];
    for (const group of this.groupOrder) {
      if (!group) continue;
      const versions: string[] = [];
      for (const gv of this.byGroupVersion.keys()) {
        const [g, v] = gv.includes("/") ? gv.split("/") : ["", gv];
        if (g === group) versions.push(v);
      }
      if (versions.length > 0) out.push({ name: group, versions: sortVersions(versions) });
    }
    return out;
  }

  /** All definitions sharing a bucket (one per served version). */
  allDefs(): ResourceDef[] {
    return [...this.byGroupVersion.values()].flatMap((m) => [...m.values()]);
  }
}

/** Kubernetes version priority: GA > beta > alpha, higher numbers first. */
export function sortVersions(versions: string[]): string[] {
  const rank = (v: string): [number, number, number] => {
    const m = /^v(\d+)(?:(alpha|beta)(\d+))?$/.exec(v);
    if (!m) return [3, 0, 0];
    const stability = m[2] === undefined ? 0 : m[2] === "beta" ? 1 : 2;
    return [stability, -Number(m[1]), -Number(m[3] ?? 0)];
  };
  return [...versions].sort((a, b) => {
    const [ra, rb] = [rank(a), rank(b)];
    for (let i = 0; i < 3; i++) if (ra[i] !== rb[i]) return ra[i] - rb[i];
    return a.localeCompare(b);
  });
}
