import { type FieldError, fieldErrors, invalid } from "./errors.ts";
import type { PrinterColumn, ResourceDef } from "./resources.ts";
import type { ApiCore } from "./rest.ts";
import { structuralErrors, validateCustomResource } from "./schema.ts";
import { isPlainObject, type Json, type KubeObject, kubeTimestamp } from "./types.ts";

/** CustomResourceDefinitions: serving their versions, and their schema on every custom resource write. */
export const crdBucket = "apiextensions.k8s.io/customresourcedefinitions";

export function crdResourceDefs(crd: KubeObject): ResourceDef[] {
  const spec = crd.spec ?? {};
  const names = spec.names ?? {};
  const group: string = spec.group;
  const plural: string = names.plural;
  return (spec.versions ?? [])
    .filter((v: Json) => v.served !== false)
    .map(
      (v: Json): ResourceDef => ({
        group,
        version: v.name,
        plural,
        singular: names.singular ?? String(names.kind).toLowerCase(),
        kind: names.kind,
        listKind: names.listKind ?? `${names.kind}List`,
        namespaced: spec.scope !== "Cluster",
        shortNames: names.shortNames ?? [],
        categories: names.categories ?? [],
        subresources: isPlainObject(v.subresources?.status) ? ["status"] : [],
        bucket: `${group}/${plural}`,
        strategicMerge: false,
        statusOnCreate: "reset",
        generation: true,
        unconditionalUpdate: false,
        returnDeletedObject: false,
        selectableFields: (v.selectableFields ?? []).map((f: Json) => String(f.jsonPath).replace(/^\./, "")),
        printerColumns: (v.additionalPrinterColumns ?? []).map(
          (c: Json): PrinterColumn => ({
            name: c.name,
            type: c.type,
            format: c.format,
            description: c.description,
            priority: c.priority,
            jsonPath: c.jsonPath,
          }),
        ),
        schema: v.schema?.openAPIV3Schema ?? { type: "object", "x-kubernetes-preserve-unknown-fields": true },
        storage: !!v.storage,
      }),
    );
}

function validateCrd(crd: KubeObject): void {
  const spec = crd.spec ?? {};
  const errors: FieldError[] = [];
  if (!spec.group) errors.push(fieldErrors.required("spec.group"));
  if (!spec.names?.plural) errors.push(fieldErrors.required("spec.names.plural"));
  if (!spec.names?.kind) errors.push(fieldErrors.required("spec.names.kind"));
  if (!["Namespaced", "Cluster"].includes(spec.scope))
    errors.push(fieldErrors.notSupported("spec.scope", spec.scope ?? "", ["Cluster", "Namespaced"]));
  const versions: Json[] = Array.isArray(spec.versions) ? spec.versions : [];
  if (versions.length === 0)
    errors.push(
      fieldErrors.required("spec.versions", "must have exactly one version marked as storage version"),
    );
  else if (versions.filter((v) => v.storage).length !== 1)
    errors.push(
      fieldErrors.invalid(
        "spec.versions",
        versions.map((v) => v.name),
        "must have exactly one version marked as storage version",
      ),
    );
  if (spec.group && spec.names?.plural && crd.metadata.name !== `${spec.names.plural}.${spec.group}`)
    errors.push(
      fieldErrors.invalid("metadata.name", crd.metadata.name, 'must be spec.names.plural+"."+spec.group'),
    );
  for (const [i, version] of versions.entries()) {
    const schema = version.schema?.openAPIV3Schema;
    if (schema) errors.push(...structuralErrors(schema, `spec.versions[${i}].schema.openAPIV3Schema`));
  }
  if (errors.length > 0)
    throw invalid("CustomResourceDefinition", "apiextensions.k8s.io", crd.metadata.name ?? "", errors);
}

function condition(type: string, reason: string, message: string, previous: Json[]): Json {
  const before = previous.find((c) => c.type === type && c.status === "True");
  return {
    type,
    status: "True",
    lastTransitionTime: before?.lastTransitionTime ?? kubeTimestamp(),
    reason,
    message,
  };
}

/** What the real server's CRD controllers would set shortly after a create: names accepted, established. */
function acceptCrd(crd: KubeObject): KubeObject {
  const names = crd.spec.names;
  names.singular ??= String(names.kind).toLowerCase();
  names.listKind ??= `${names.kind}List`;
  crd.spec.conversion ??= { strategy: "None" };
  const previous: Json[] = crd.status?.conditions ?? [];
  const terminating = previous.filter((c) => c.type === "Terminating");
  crd.status = {
    ...(crd.status ?? {}),
    acceptedNames: { ...names },
    storedVersions: crd.spec.versions.filter((v: Json) => v.storage).map((v: Json) => v.name),
    conditions: [
      condition("NamesAccepted", "NoConflicts", "no conflicts found", previous),
      condition("Established", "InitialNamesAccepted", "the initial names have been accepted", previous),
      ...terminating,
    ],
  };
  return crd;
}

export function installCrdSupport(core: ApiCore): void {
  core.addPreparer((def, obj, old, ctx) => {
    if (def.bucket === crdBucket) {
      validateCrd(obj);
      return acceptCrd(obj);
    }
    if (def.schema) return validateCustomResource(def, obj, old, ctx);
    return obj;
  });
  core.onWrite((bucket, obj, deleted) => {
    if (bucket !== crdBucket) return;
    const group = obj.spec?.group;
    const plural = obj.spec?.names?.plural;
    core.registry.remove(group, plural);
    if (!deleted) for (const def of crdResourceDefs(obj)) core.registry.add(def);
  });
}
