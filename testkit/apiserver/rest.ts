import { randomUUID } from "node:crypto";
import { parse as parseYaml } from "yaml";
import {
  ApiError,
  alreadyExists,
  badRequest,
  conflict,
  deletedStatus,
  fieldErrors,
  forbidden,
  goStrings,
  invalid,
  notFound,
} from "./errors.ts";
import { type FieldScope, type ListKeys, recordUpdate, serverSideApply } from "./managed-fields.ts";
import { jsonPatch, mergeKeys, mergePatch, strategicMergePatch } from "./patch.ts";
import { apiVersionOf, hasStatus, type ResourceDef, type ResourceRegistry } from "./resources.ts";
import { matchesFilter, type ObjectFilter } from "./selectors.ts";
import type { Identity } from "./server.ts";
import type { Store } from "./store.ts";
import { clone, deepEqual, isPlainObject, type Json, type KubeObject, kubeTimestamp } from "./types.ts";

/** How unknown fields in a custom resource are treated (the `fieldValidation` query parameter). */
export type FieldValidation = "Strict" | "Warn" | "Ignore";

export interface WriteContext {
  /** who asked: admission webhooks see it as `userInfo` */
  user?: Identity;
  dryRun?: boolean;
  fieldManager?: string;
  fieldValidation?: FieldValidation;
  userAgent?: string;
  /** filled by the operation: `Warning` headers for the response */
  warnings: string[];
  /** set by the operation when an apply created the object */
  created?: boolean;
}

/**
 * One step of the request pipeline that sees every write before it is stored: where the admission
 * chain (mutating, then validating webhooks) plugs in. Return a replacement object to mutate, throw
 * an ApiError to deny.
 */
export interface AdmissionRequest {
  operation: "CREATE" | "UPDATE" | "DELETE";
  def: ResourceDef;
  subresource?: string;
  object?: KubeObject;
  oldObject?: KubeObject;
  dryRun: boolean;
  /** the response's `Warning` headers: admission webhooks add theirs here */
  warnings?: string[];
  /** who asked */
  user?: Identity;
}
export type AdmissionPlugin = (
  request: AdmissionRequest,
) => KubeObject | undefined | Promise<KubeObject | undefined>;

/** Defaulting, pruning and validation of an object of a resource; custom resources get the CRD schema. */
export type ObjectPreparer = (
  def: ResourceDef,
  obj: KubeObject,
  old: KubeObject | undefined,
  ctx: WriteContext,
) => KubeObject;

export interface ListOptions {
  filter: ObjectFilter;
  limit?: number;
  continueToken?: string;
  /** resourceVersionMatch=Exact: the list as it was at this revision */
  exactRevision?: number;
}

const generateNameAlphabet = "bcdfghjklmnpqrstvwxz2456789";
const namespaceBucket = "/namespaces";
const crdBucket = "apiextensions.k8s.io/customresourcedefinitions";

function randomSuffix(): string {
  let out = "";
  for (let i = 0; i < 5; i++)
    out += generateNameAlphabet[Math.floor(Math.random() * generateNameAlphabet.length)];
  return out;
}

/** Everything but metadata (and status when it is a subresource) — what `metadata.generation` tracks. */
function specPart(def: ResourceDef, obj: KubeObject): Json {
  const { metadata: _m, status, apiVersion: _a, kind: _k, ...rest } = obj;
  return hasStatus(def) ? rest : { ...rest, status };
}

/**
 * Which lists server-side apply merges by key: a CRD's `x-kubernetes-list-type: map` lists (found by
 * walking its schema along the path), or a built-in's strategic merge keys (by field name).
 */
function listKeysFor(def: ResourceDef): ListKeys {
  if (def.schema) {
    return (path) => {
      let node: Json = def.schema;
      for (const segment of path) {
        if (segment.startsWith("k:")) node = node?.items;
        else {
          const name = segment.slice(2);
          node =
            node?.properties?.[name] ??
            (isPlainObject(node?.additionalProperties) ? node.additionalProperties : undefined);
        }
      }
      if (node?.["x-kubernetes-map-type"] === "atomic") return "atomic";
      return node?.["x-kubernetes-list-type"] === "map" ? node["x-kubernetes-list-map-keys"] : undefined;
    };
  }
  return (path) => {
    const last = path[path.length - 1];
    const name = last?.startsWith("f:") ? last.slice(2) : undefined;
    if (name && atomicStructs.has(name)) return "atomic";
    if (def.group === "apps" && path.join("/") === "f:spec/f:selector") return "atomic";
    const key = name ? mergeKeys[name] : undefined;
    return key ? [key] : undefined;
  };
}

/** Built-in struct fields Go marks `+structType=atomic` (metav1.LabelSelector, RoleRef), by name. */
const atomicStructs = new Set(["namespaceSelector", "objectSelector", "roleRef"]);

function continueToken(rv: number, start: string): string {
  return Buffer.from(JSON.stringify({ rv, start })).toString("base64url");
}

/** The patch content types a resource accepts, in the order the real server lists them. */
function patchTypes(def: ResourceDef): string[] {
  return [
    "application/json-patch+json",
    "application/merge-patch+json",
    ...(def.strategicMerge ? ["application/strategic-merge-patch+json"] : []),
    "application/apply-patch+yaml",
  ];
}

/** How Go's encoding/json names a JSON value's type in "cannot unmarshal X" errors. */
function goJsonType(value: Json): string {
  if (Array.isArray(value)) return "array";
  if (value === null) return "null";
  return typeof value === "object" ? "object" : typeof value;
}

/** The real server omits managedFields when no manager owns anything. */
function dropEmptyManagedFields(obj: KubeObject): void {
  if (Array.isArray(obj.metadata.managedFields) && obj.metadata.managedFields.length === 0)
    delete obj.metadata.managedFields;
}

function managerName(ctx: WriteContext): string {
  if (ctx.fieldManager) return ctx.fieldManager;
  const product = (ctx.userAgent ?? "unknown").split("/")[0];
  return product || "unknown";
}

/**
 * The REST semantics of the Kubernetes API server over the store: create/get/list/update/patch/delete
 * with resourceVersion preconditions, generation, status subresource isolation, finalizers, and the
 * namespace and CRD cascades. HTTP concerns live in server.ts.
 */
export class ApiCore {
  readonly store: Store;
  readonly registry: ResourceRegistry;
  readonly admission: AdmissionPlugin[] = [];
  private readonly preparers: ObjectPreparer[] = [];
  private readonly afterWrite: ((bucket: string, obj: KubeObject, deleted: boolean) => void)[] = [];

  constructor(store: Store, registry: ResourceRegistry) {
    this.store = store;
    this.registry = registry;
  }

  addPreparer(preparer: ObjectPreparer): void {
    this.preparers.push(preparer);
  }

  onWrite(listener: (bucket: string, obj: KubeObject, deleted: boolean) => void): void {
    this.afterWrite.push(listener);
  }

  /** The stored object as the requested version presents it (custom resources convert by apiVersion only). */
  present(def: ResourceDef, obj: KubeObject): KubeObject {
    const viewed = def.convert && obj.apiVersion !== apiVersionOf(def) ? def.convert.fromStorage(obj) : obj;
    return { ...viewed, apiVersion: apiVersionOf(def), kind: def.kind };
  }

  private toStorage(def: ResourceDef, obj: KubeObject): KubeObject {
    return def.convert && obj.apiVersion === apiVersionOf(def) ? def.convert.toStorage(obj) : obj;
  }

  get(def: ResourceDef, namespace: string | undefined, name: string): KubeObject {
    const obj = this.store.get(def.bucket, def.namespaced ? namespace : undefined, name);
    if (!obj) throw notFound(def.group, def.plural, name);
    return this.present(def, obj);
  }

  list(def: ResourceDef, namespace: string | undefined, options: ListOptions): Json {
    // later pages are served from the first page's snapshot, like etcd reads at a revision
    let revision = this.store.revision;
    let after: string | undefined;
    if (options.exactRevision !== undefined) {
      // served from etcd once the watch cache lacks that revision: etcd's words
      if (options.exactRevision < this.store.oldestResumable)
        throw new ApiError(410, "Expired", "The resourceVersion for the provided list is too old.");
      revision = Math.min(options.exactRevision, this.store.revision);
    }
    if (options.continueToken) {
      let token: { rv?: unknown; start?: unknown };
      try {
        token = JSON.parse(Buffer.from(options.continueToken, "base64url").toString("utf8"));
      } catch {
        throw badRequest("continue key is not valid");
      }
      if (typeof token.rv !== "number" || typeof token.start !== "string")
        throw badRequest("continue key is not valid");
      if (token.rv !== -1 && token.rv < this.store.oldestResumable) {
        // etcd's answer: the rest can still be read, at the latest revision, with the token it carries
        const expired = new ApiError(
          410,
          "Expired",
          "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter, or use the continue token in this response to retrieve the remainder of the results. Continuing with the provided token results in an inconsistent list - objects that were created, modified, or deleted between the time the first chunk was returned and now may show up in the list.",
        );
        expired.listMeta = { continue: continueToken(-1, token.start) };
        throw expired;
      }
      // rv -1: continue at the latest revision (the token a 410 hands out)
      revision = token.rv === -1 ? this.store.revision : token.rv;
      after = token.start;
    }
    const snapshot =
      revision === this.store.revision
        ? this.store.list(def.bucket, def.namespaced ? namespace : undefined)
        : this.store.listAt(def.bucket, def.namespaced ? namespace : undefined, revision);
    let items = snapshot
      .map((obj) => this.present(def, obj))
      .filter((obj) => matchesFilter(options.filter, obj));
    if (after !== undefined) {
      const start = after;
      items = items.filter((obj) => `${obj.metadata.namespace ?? ""}/${obj.metadata.name}` > start);
    }
    const metadata: Json = { resourceVersion: String(revision) };
    // custom resource lists are unstructured: an empty continue is written out
    if (def.schema) metadata.continue = "";
    if (options.limit && options.limit > 0 && items.length > options.limit) {
      const remaining = items.length - options.limit;
      items = items.slice(0, options.limit);
      const last = items[items.length - 1];
      metadata.continue = continueToken(revision, `${last.metadata.namespace ?? ""}/${last.metadata.name}`);
      metadata.remainingItemCount = remaining;
    }
    return {
      kind: def.listKind,
      apiVersion: apiVersionOf(def),
      metadata,
      items: items.map((obj) => this.present(def, obj)),
    };
  }

  async create(
    def: ResourceDef,
    namespace: string | undefined,
    body: Json,
    ctx: WriteContext,
    managedFieldsFromApply = false,
  ): Promise<KubeObject> {
    const obj = this.checkBody(def, body);
    const meta = obj.metadata;
    if (def.namespaced) {
      const ns = namespace ?? meta.namespace;
      if (!ns) throw badRequest("the server could not find the requested resource: a namespace is required");
      if (meta.namespace && meta.namespace !== ns)
        throw badRequest(
          "the namespace of the provided object does not match the namespace sent on the request",
        );
      meta.namespace = ns;
      const owner = this.store.get(namespaceBucket, undefined, ns);
      if (!owner) throw notFound("", "namespaces", ns);
      if (owner.metadata.deletionTimestamp)
        throw forbidden(
          `${def.plural} "${meta.name ?? meta.generateName ?? ""}" is forbidden: unable to create new content in namespace ${ns} because it is being terminated`,
        );
    } else delete meta.namespace;
    if (!meta.name) {
      // a custom resource's schema validation reports it, with whatever else it finds
      if (!meta.generateName && !def.schema)
        throw invalid(def.kind, def.group, "", [
          fieldErrors.required("metadata.name", "name or generateName is required"),
        ]);
      if (meta.generateName) meta.name = `${meta.generateName}${randomSuffix()}`;
    }
    // decoding defaults this label, so the creator owns it
    if (def.bucket === namespaceBucket)
      meta.labels = { ...(meta.labels ?? {}), "kubernetes.io/metadata.name": meta.name ?? "" };
    for (const key of [
      "uid",
      "creationTimestamp",
      "generation",
      "resourceVersion",
      "deletionTimestamp",
      "deletionGracePeriodSeconds",
    ])
      delete meta[key];
    if (hasStatus(def) && def.statusOnCreate === "reset") delete obj.status;
    let prepared = this.prepare(def, obj, undefined, ctx);
    // as on the real server: fields are owned as the client sent them (defaults included), before
    // admission webhooks and before the server's own fields (uid, status, namespace finalizers)
    if (!managedFieldsFromApply) {
      prepared.metadata.managedFields = recordUpdate(undefined, prepared, {
        manager: managerName(ctx),
        apiVersion: apiVersionOf(def),
        scope: "all",
        listKeys: listKeysFor(def),
      });
    }
    dropEmptyManagedFields(prepared);
    prepared = await this.admitAndRecheck(
      {
        operation: "CREATE",
        def,
        object: prepared,
        dryRun: !!ctx.dryRun,
        warnings: ctx.warnings,
        user: ctx.user,
      },
      undefined,
      ctx,
    );
    const created = prepared.metadata;
    created.uid = randomUUID();
    created.creationTimestamp = kubeTimestamp();
    if (def.generation) created.generation = 1;
    if (def.bucket === namespaceBucket)
      prepared.spec = { finalizers: ["kubernetes"], ...(prepared.spec ?? {}) };
    if (hasStatus(def) && def.statusOnCreate === "reset" && def.initialStatus)
      prepared.status = def.initialStatus();
    if (this.store.get(def.bucket, prepared.metadata.namespace, prepared.metadata.name!))
      throw alreadyExists(def.group, def.plural, prepared.metadata.name!);
    if (ctx.dryRun) return this.present(def, prepared);
    const stored = this.store.create(def.bucket, this.toStorage(def, prepared));
    this.notify(def.bucket, stored, false);
    return this.present(def, stored);
  }

  async update(
    def: ResourceDef,
    namespace: string | undefined,
    name: string,
    body: Json,
    subresource: string | undefined,
    ctx: WriteContext,
  ): Promise<KubeObject> {
    const candidate = this.checkBody(def, body);
    if (candidate.metadata.name && candidate.metadata.name !== name)
      throw badRequest(
        `the name of the object (${candidate.metadata.name}) does not match the name on the URL (${name})`,
      );
    const current = this.store.get(def.bucket, def.namespaced ? namespace : undefined, name);
    if (!current) throw notFound(def.group, def.plural, name);
    if (!def.unconditionalUpdate && !candidate.metadata.resourceVersion)
      throw invalid(def.plural, def.group, name, [
        fieldErrors.invalid("metadata.resourceVersion", 0, "must be specified for an update"),
      ]);
    return this.write(def, current, candidate, subresource, ctx, "Update");
  }

  async patch(
    def: ResourceDef,
    namespace: string | undefined,
    name: string,
    contentType: string,
    rawBody: string,
    subresource: string | undefined,
    ctx: WriteContext & { force?: boolean },
  ): Promise<KubeObject> {
    const type = contentType.split(";")[0].trim().toLowerCase();
    const served = patchTypes(def);
    if (!served.includes(type))
      throw new ApiError(
        415,
        "UnsupportedMediaType",
        `the body of the request was in an unknown format - accepted media types include: ${served.join(", ")}`,
      );
    const current = this.store.get(def.bucket, def.namespaced ? namespace : undefined, name);
    if (type === "application/apply-patch+yaml")
      return this.apply(def, namespace, name, current, rawBody, subresource, ctx);
    if (!current) throw notFound(def.group, def.plural, name);
    let patchBody: Json;
    try {
      patchBody = JSON.parse(rawBody);
    } catch {
      throw badRequest("invalid JSON patch");
    }
    const base = this.present(def, current);
    let patched: Json;
    if (type === "application/merge-patch+json") {
      if (!isPlainObject(patchBody))
        throw badRequest(
          `error decoding patch: json: cannot unmarshal ${goJsonType(patchBody)} into Go value of type map[string]interface {}`,
        );
      patched = mergePatch(base, patchBody);
    } else if (type === "application/json-patch+json") patched = jsonPatch(base, patchBody);
    else patched = strategicMergePatch(base, patchBody);
    if (!isPlainObject(patched) || !isPlainObject(patched.metadata))
      throw badRequest("patch removed the object's metadata");
    // a resourceVersion the patch did not change is the current one; one it set is a precondition
    return this.write(def, current, patched as KubeObject, subresource, ctx, "Update");
  }

  private async apply(
    def: ResourceDef,
    namespace: string | undefined,
    name: string,
    current: KubeObject | undefined,
    rawBody: string,
    subresource: string | undefined,
    ctx: WriteContext & { force?: boolean },
  ): Promise<KubeObject> {
    if (!ctx.fieldManager)
      throw invalid("PatchOptions", "meta.k8s.io", "", [
        fieldErrors.required("fieldManager", "is required for apply patch"),
      ]);
    let config: Json;
    try {
      config = parseYaml(rawBody);
    } catch (err) {
      throw badRequest(`error decoding YAML: ${(err as Error).message}`);
    }
    if (!isPlainObject(config)) throw badRequest("apply configuration must be an object");
    config.metadata ??= {};
    if (config.metadata.name && config.metadata.name !== name)
      throw badRequest(
        `the name of the object (${config.metadata.name}) does not match the name on the URL (${name})`,
      );
    config.metadata.name = name;
    if (config.apiVersion && config.apiVersion !== apiVersionOf(def))
      throw badRequest(
        `the API version in the data (${config.apiVersion}) does not match the expected API version (${apiVersionOf(def)})`,
      );
    if (config.kind && config.kind !== def.kind)
      throw badRequest(`invalid object type: ${apiVersionOf(def)}, Kind=${config.kind}`);
    const scope: FieldScope = subresource === "status" ? "status" : hasStatus(def) ? "main" : "all";
    const applyOptions = {
      manager: ctx.fieldManager,
      force: !!ctx.force,
      apiVersion: apiVersionOf(def),
      subresource,
      scope,
      listKeys: listKeysFor(def),
    };
    if (!current) {
      if (subresource) throw notFound(def.group, def.plural, name);
      const created = serverSideApply(undefined, config as KubeObject, applyOptions);
      created.apiVersion = apiVersionOf(def);
      created.kind = def.kind;
      if (def.namespaced) created.metadata.namespace = namespace;
      ctx.created = true;
      return this.create(def, namespace, created, ctx, true);
    }
    const rv = config.metadata.resourceVersion;
    const applied = serverSideApply(this.present(def, current), config as KubeObject, applyOptions);
    if (rv) applied.metadata.resourceVersion = rv;
    return this.write(def, current, applied, subresource, ctx, "Apply");
  }

  /** The shared update path: preconditions, status isolation, validation, generation, finalizers. */
  private async write(
    def: ResourceDef,
    current: KubeObject,
    candidate: KubeObject,
    subresource: string | undefined,
    ctx: WriteContext,
    operation: "Update" | "Apply",
  ): Promise<KubeObject> {
    // work on the object as this version shows it; it is converted back to storage form when written
    current = this.present(def, current);
    const name = current.metadata.name!;
    const requested = candidate.metadata.resourceVersion;
    if (requested && requested !== current.metadata.resourceVersion)
      throw conflict(def.group, def.plural, name);
    if (subresource && subresource !== "status")
      throw notFound(def.group, `${def.plural}/${subresource}`, name);
    if (subresource === "status" && !hasStatus(def)) throw notFound(def.group, `${def.plural}/status`, name);

    let next: KubeObject;
    if (subresource === "status") {
      // a status write changes only .status; metadata edits are ignored, except managedFields from apply
      next = clone(current);
      if (candidate.status === undefined) delete next.status;
      else next.status = clone(candidate.status);
      if (operation === "Apply") next.metadata.managedFields = candidate.metadata.managedFields;
    } else {
      next = clone(candidate);
      next.apiVersion = current.apiVersion;
      next.kind = current.kind;
      if (hasStatus(def)) {
        if (current.status === undefined) delete next.status;
        else next.status = clone(current.status);
      }
      const meta = next.metadata;
      for (const key of [
        "uid",
        "creationTimestamp",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "generation",
      ]) {
        if (current.metadata[key] === undefined) delete meta[key];
        else meta[key] = current.metadata[key];
      }
      meta.name = current.metadata.name;
      if (def.namespaced) meta.namespace = current.metadata.namespace;
      else delete meta.namespace;
      if (operation !== "Apply") meta.managedFields = current.metadata.managedFields;
      if (current.metadata.deletionTimestamp) {
        const before = new Set(current.metadata.finalizers ?? []);
        const added = (meta.finalizers ?? []).filter((f: string) => !before.has(f));
        if (added.length > 0) {
          const refused = fieldErrors.forbidden(
            "metadata.finalizers",
            `no new finalizers can be added if the object is being deleted, found new finalizers ${goStrings(added)}`,
          );
          // the real server reports it twice (object meta validation runs twice on update)
          throw invalid(def.kind, def.group, name, [refused, refused]);
        }
      }
    }
    next.metadata.resourceVersion = current.metadata.resourceVersion;

    let prepared = this.prepare(def, next, current, ctx);
    // owned fields are what the client changed, before admission webhooks change more
    if (operation === "Update") {
      prepared.metadata.managedFields = recordUpdate(current, prepared, {
        manager: managerName(ctx),
        apiVersion: apiVersionOf(def),
        subresource,
        scope: subresource === "status" ? "status" : hasStatus(def) ? "main" : "all",
        listKeys: listKeysFor(def),
      });
    }
    dropEmptyManagedFields(prepared);
    prepared = await this.admitAndRecheck(
      {
        operation: "UPDATE",
        def,
        subresource,
        object: prepared,
        oldObject: current,
        dryRun: !!ctx.dryRun,
        warnings: ctx.warnings,
        user: ctx.user,
      },
      current,
      ctx,
    );
    if (def.generation && !deepEqual(specPart(def, prepared), specPart(def, current)))
      prepared.metadata.generation = (current.metadata.generation ?? 0) + 1;

    // an update that changes nothing is not a write: no new resourceVersion, no watch event
    const withoutBookkeeping = (obj: KubeObject) => {
      const copy = clone(obj);
      delete copy.metadata.managedFields;
      delete copy.metadata.resourceVersion;
      delete copy.apiVersion;
      return copy;
    };
    if (deepEqual(withoutBookkeeping(prepared), withoutBookkeeping(current)))
      return this.present(def, current);
    if (ctx.dryRun) return this.present(def, prepared);

    if (prepared.metadata.deletionTimestamp && (prepared.metadata.finalizers ?? []).length === 0) {
      // the update is not stored: the object is deleted (one DELETED event), and the answer is the
      // updated object at the resourceVersion it had
      const gone = this.store.delete(def.bucket, current.metadata.namespace, name)!;
      this.notify(def.bucket, gone, true);
      return this.present(def, prepared);
    }
    const stored = this.store.update(def.bucket, this.toStorage(def, prepared));
    this.notify(def.bucket, stored, false);
    return this.present(def, stored);
  }

  async delete(
    def: ResourceDef,
    namespace: string | undefined,
    name: string,
    options: Json,
    ctx: WriteContext,
  ): Promise<Json> {
    const current = this.store.get(def.bucket, def.namespaced ? namespace : undefined, name);
    if (!current) throw notFound(def.group, def.plural, name);
    const pre = isPlainObject(options?.preconditions) ? options.preconditions : {};
    // rest.BeforeDelete names the kind where other conflicts name the resource
    if (pre.uid && pre.uid !== current.metadata.uid)
      throw conflict(
        def.group,
        def.kind,
        name,
        `the UID in the precondition (${pre.uid}) does not match the UID in record (${current.metadata.uid}). The object might have been deleted and then recreated`,
      );
    if (pre.resourceVersion && pre.resourceVersion !== current.metadata.resourceVersion)
      throw conflict(
        def.group,
        def.kind,
        name,
        `the ResourceVersion in the precondition (${pre.resourceVersion}) does not match the ResourceVersion in record (${current.metadata.resourceVersion}). The object might have been modified`,
      );
    await this.admit({
      operation: "DELETE",
      def,
      oldObject: current,
      dryRun: !!ctx.dryRun,
      warnings: ctx.warnings,
      user: ctx.user,
    });
    if (ctx.dryRun) return this.present(def, current);
    if (options?.propagationPolicy === "Orphan" || options?.orphanDependents === true)
      this.releaseDependents(current.metadata.uid!);
    const after = this.deleteObject(def.bucket, current);
    const stillThere = this.store.get(def.bucket, after.metadata.namespace, after.metadata.name!);
    if (stillThere || def.returnDeletedObject) return this.present(def, after);
    return deletedStatus(def.group, def.plural, name, current.metadata.uid);
  }

  /** Delete honouring finalizers; namespaces and CRDs first delete what they contain. */
  private deleteObject(bucket: string, current: KubeObject): KubeObject {
    const cascades = bucket === namespaceBucket || bucket === crdBucket;
    if (current.metadata.deletionTimestamp) return current;
    if ((current.metadata.finalizers ?? []).length === 0 && !cascades) {
      const gone = this.store.delete(bucket, current.metadata.namespace, current.metadata.name!)!;
      this.notify(bucket, gone, true);
      return gone;
    }
    const marked = clone(current);
    marked.metadata.deletionTimestamp = kubeTimestamp();
    marked.metadata.deletionGracePeriodSeconds = 0;
    // controllers see the deletion as a change of what they were asked for
    const generation = marked.metadata.generation ?? 0;
    if (generation > 0) marked.metadata.generation = generation + 1;
    if (bucket === namespaceBucket) {
      marked.status = { ...(marked.status ?? {}), phase: "Terminating" };
    }
    if (bucket === crdBucket) {
      const conditions = (marked.status?.conditions ?? []).filter((c: Json) => c.type !== "Terminating");
      conditions.push({
        type: "Terminating",
        status: "True",
        lastTransitionTime: kubeTimestamp(),
        reason: "InstanceDeletionInProgress",
        message: "CustomResource deletion is in progress",
      });
      marked.status = { ...(marked.status ?? {}), conditions };
    }
    const stored = this.store.update(bucket, marked);
    this.notify(bucket, stored, false);
    if (cascades) setImmediate(() => this.runCascade(bucket, stored.metadata.name!));
    return stored;
  }

  private cascadeTargets(bucket: string, name: string): { bucket: string; namespace?: string }[] {
    if (bucket === namespaceBucket) {
      const buckets = new Set(
        this.registry
          .allDefs()
          .filter((d) => d.namespaced)
          .map((d) => d.bucket),
      );
      return [...buckets].map((b) => ({ bucket: b, namespace: name }));
    }
    const crd = this.store.get(crdBucket, undefined, name);
    if (!crd) return [];
    return [{ bucket: `${crd.spec?.group}/${crd.spec?.names?.plural}` }];
  }

  /** Delete the contents of a terminating namespace or CRD; remove it once nothing is left. */
  private runCascade(bucket: string, name: string): void {
    const owner = this.store.get(bucket, undefined, name);
    if (!owner?.metadata.deletionTimestamp) return;
    let remaining = 0;
    for (const target of this.cascadeTargets(bucket, name)) {
      for (const obj of this.store.list(target.bucket, target.namespace)) {
        const after = this.deleteObject(target.bucket, obj);
        if (this.store.get(target.bucket, after.metadata.namespace, after.metadata.name!)) remaining++;
      }
    }
    if (remaining > 0 || (owner.metadata.finalizers ?? []).length > 0) return;
    const gone = this.store.delete(bucket, undefined, name);
    if (gone) this.notify(bucket, gone, true);
  }

  private dropOwner(bucket: string, obj: KubeObject, uid: string): void {
    const released = clone(obj);
    released.metadata.ownerReferences = (obj.metadata.ownerReferences ?? []).filter(
      (ref: Json) => ref.uid !== uid,
    );
    if (released.metadata.ownerReferences.length === 0) delete released.metadata.ownerReferences;
    this.notify(bucket, this.store.update(bucket, released), false);
  }

  /** propagationPolicy=Orphan: dependents lose their reference to the owner and stay. */
  private releaseDependents(uid: string): void {
    for (const { bucket, object } of this.store.dependents(uid)) this.dropOwner(bucket, object, uid);
  }

  /**
   * The garbage collector, in background mode: once an owner is gone, a dependent with no other live
   * owner is deleted (finalizers honoured); one with other live owners only loses the dangling reference.
   * Foreground deletion is treated as background.
   */
  private collectGarbage(uid: string): void {
    for (const { bucket, object } of this.store.dependents(uid)) {
      const others = (object.metadata.ownerReferences ?? []).filter(
        (ref: Json) => ref.uid !== uid && this.store.hasUid(ref.uid),
      );
      if (others.length === 0) this.deleteObject(bucket, object);
      else this.dropOwner(bucket, object, uid);
    }
  }

  private notify(bucket: string, obj: KubeObject, deleted: boolean): void {
    for (const listener of this.afterWrite) listener(bucket, obj, deleted);
    const uid = obj.metadata.uid;
    if (deleted && uid) setImmediate(() => this.collectGarbage(uid));
    // the last object of a terminating namespace or CRD going away lets that owner go too
    if (deleted && obj.metadata.namespace) {
      const ns = this.store.get(namespaceBucket, undefined, obj.metadata.namespace);
      if (ns?.metadata.deletionTimestamp)
        setImmediate(() => this.runCascade(namespaceBucket, ns.metadata.name!));
    }
    if (deleted && bucket !== crdBucket) {
      for (const crd of this.store.list(crdBucket)) {
        if (crd.metadata.deletionTimestamp && `${crd.spec?.group}/${crd.spec?.names?.plural}` === bucket)
          setImmediate(() => this.runCascade(crdBucket, crd.metadata.name!));
      }
    }
  }

  private prepare(
    def: ResourceDef,
    obj: KubeObject,
    old: KubeObject | undefined,
    ctx: WriteContext,
  ): KubeObject {
    let out = obj;
    for (const preparer of this.preparers) out = preparer(def, out, old, ctx);
    return out;
  }

  /** Admission, then the schema again when a webhook changed the object (its output is pruned, defaulted, validated). */
  private async admitAndRecheck(
    request: AdmissionRequest,
    old: KubeObject | undefined,
    ctx: WriteContext,
  ): Promise<KubeObject> {
    const admitted = await this.admit(request);
    if (admitted === request.object) return admitted;
    return this.prepare(request.def, admitted, old, ctx);
  }

  private async admit(request: AdmissionRequest): Promise<KubeObject> {
    let object = request.object;
    for (const plugin of this.admission) {
      const replaced = await plugin({ ...request, object });
      if (replaced) object = replaced;
    }
    return object as KubeObject;
  }

  private checkBody(def: ResourceDef, body: Json): KubeObject {
    if (!isPlainObject(body)) throw badRequest("the body of the request must be a JSON object");
    const obj = clone(body) as KubeObject;
    if (obj.kind && obj.kind !== def.kind) {
      // a custom resource decodes any kind and fails validation; a built-in cannot be decoded
      if (def.schema)
        throw invalid(obj.kind, def.group, isPlainObject(obj.metadata) ? (obj.metadata.name ?? "") : "", [
          fieldErrors.invalid("kind", obj.kind, `must be ${def.kind}`),
        ]);
      const internal = def.group ? def.group.split(".")[0] : "core";
      throw badRequest(
        `${obj.kind} in version "${def.version}" cannot be handled as a ${def.kind}: converting (${def.version}.${obj.kind}) to (${internal}.${def.kind}): unknown conversion`,
      );
    }
    if (obj.apiVersion && obj.apiVersion !== apiVersionOf(def))
      throw badRequest(
        `the API version in the data (${obj.apiVersion}) does not match the expected API version (${apiVersionOf(def)})`,
      );
    obj.apiVersion = apiVersionOf(def);
    obj.kind = def.kind;
    if (!isPlainObject(obj.metadata)) obj.metadata = {};
    return obj;
  }
}

export function bootstrapNamespaces(core: ApiCore, names: string[]): void {
  for (const name of names) {
    core.store.create(namespaceBucket, {
      apiVersion: "v1",
      kind: "Namespace",
      metadata: {
        name,
        uid: randomUUID(),
        creationTimestamp: kubeTimestamp(),
        labels: { "kubernetes.io/metadata.name": name },
      },
      spec: { finalizers: ["kubernetes"] },
      status: { phase: "Active" },
    });
  }
}
