import { evaluateJsonPath } from "./jsonpath.ts";
import type { PrinterColumn, ResourceDef } from "./resources.ts";
import type { Json, KubeObject } from "./types.ts";

/** `meta.k8s.io/v1 Table` responses for server-side printing (what `kubectl get` asks for). */
export type IncludeObject = "None" | "Metadata" | "Object";

export function wantsTable(accept: string | undefined): boolean {
  return !!accept && /as=Table/.test(accept) && /g=meta\.k8s\.io/.test(accept);
}

/** Age the way kubectl prints it (apimachinery duration.HumanDuration). */
export function humanDuration(seconds: number): string {
  if (seconds < -1) return "<invalid>";
  if (seconds < 0) return "0s";
  const s = Math.floor(seconds);
  if (s < 120) return `${s}s`;
  const minutes = Math.floor(s / 60);
  if (minutes < 10) return s % 60 === 0 ? `${minutes}m` : `${minutes}m${s % 60}s`;
  if (minutes < 180) return `${minutes}m`;
  const hours = Math.floor(minutes / 60);
  if (hours < 8) return minutes % 60 === 0 ? `${hours}h` : `${hours}h${minutes % 60}m`;
  if (hours < 48) return `${hours}h`;
  const days = Math.floor(hours / 24);
  if (days < 8) return hours % 24 === 0 ? `${days}d` : `${days}d${hours % 24}h`;
  if (days < 730) return `${days}d`;
  const years = Math.floor(days / 365);
  if (years < 8) return days % 365 === 0 ? `${years}y` : `${years}y${days % 365}d`;
  return `${years}y`;
}

/** Columns of a resource: NAME first, then its printer columns; AGE last when none of them is a date. */
export function tableColumns(def: ResourceDef): PrinterColumn[] {
  const columns = [...def.printerColumns];
  if (!columns.some((c) => c.type === "date" || c.jsonPath === ".metadata.creationTimestamp"))
    columns.push({ name: "Age", type: "date", jsonPath: ".metadata.creationTimestamp" });
  return columns;
}

function cell(column: PrinterColumn, obj: KubeObject, now: number): Json {
  const values = evaluateJsonPath(obj, column.jsonPath);
  if (values.length === 0 || values[0] === null || values[0] === undefined) return null;
  const value = values[0];
  switch (column.type) {
    case "date": {
      const time = Date.parse(String(value));
      return Number.isNaN(time) ? String(value) : humanDuration((now - time) / 1000);
    }
    case "integer":
    case "number":
      return typeof value === "number" ? value : Number(value);
    case "boolean":
      return typeof value === "boolean" ? value : String(value) === "true";
    default:
      return values.length > 1
        ? values.map((v) => (typeof v === "object" ? JSON.stringify(v) : String(v))).join(",")
        : typeof value === "object"
          ? JSON.stringify(value)
          : String(value);
  }
}

/** ObjectMeta's documentation of `name`, which the real server gives as the Name column's description. */
const nameDescription =
  "Name must be unique within a namespace. Is required when creating resources, although some resources may allow a client to request the generation of an appropriate name automatically. Name is primarily intended for creation idempotence and configuration definition. Cannot be updated. More info: https://kubernetes.io/docs/concepts/overview/working-with-objects/names#names";

function rowObject(obj: KubeObject, include: IncludeObject): Json {
  if (include === "None") return null;
  if (include === "Object") return obj;
  return { kind: "PartialObjectMetadata", apiVersion: "meta.k8s.io/v1", metadata: obj.metadata };
}

export function toTable(
  def: ResourceDef,
  objects: KubeObject[],
  listMeta: Json,
  include: IncludeObject,
  now = Date.now(),
): Json {
  const columns = tableColumns(def);
  // a Table's list metadata leaves out an empty continue, even for custom resources
  const { continue: next, ...rest } = listMeta ?? {};
  return {
    kind: "Table",
    apiVersion: "meta.k8s.io/v1",
    metadata: next ? { ...rest, continue: next } : rest,
    columnDefinitions: [
      {
        name: "Name",
        type: "string",
        format: "name",
        description: nameDescription,
        priority: 0,
      },
      // a CRD's columns keep their type and describe their JSONPath; built-in printers type dates as strings
      ...columns.map((c) => ({
        name: c.name,
        type: c.type === "date" && !def.schema ? "string" : c.type,
        format: c.format ?? "",
        description:
          c.description ??
          (def.schema ? `Custom resource definition column (in JSONPath format): ${c.jsonPath}` : ""),
        priority: c.priority ?? 0,
      })),
    ],
    rows: objects.map((obj) => ({
      cells: [obj.metadata.name, ...columns.map((c) => cell(c, obj, now))],
      object: rowObject(obj, include),
    })),
  };
}
