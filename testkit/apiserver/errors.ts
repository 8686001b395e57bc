import type { Json } from "./types.ts";

/**
 * API errors as the real server reports them: a `meta/v1 Status` with a reason and code that
 * clients (kubectl, client-node, our controller) branch on.
 */
export interface StatusCause {
  reason: string;
  message: string;
  field?: string;
}

export interface StatusDetails {
  name?: string;
  group?: string;
  kind?: string;
  uid?: string;
  causes?: StatusCause[];
  retryAfterSeconds?: number;
}

export class ApiError extends Error {
  readonly code: number;
  readonly reason: string;
  readonly details?: StatusDetails;
  /** the Status's list metadata (a 410 for an expired continue token carries a new token) */
  listMeta?: { continue?: string };

  constructor(code: number, reason: string, message: string, details?: StatusDetails) {
    super(message);
    this.name = "ApiError";
    this.code = code;
    this.reason = reason;
    this.details = details;
  }

  toStatus(): Json {
    const status = statusObject(this.code, this.reason, this.message, this.details);
    if (this.listMeta) status.metadata = this.listMeta;
    return status;
  }
}

export function statusObject(code: number, reason: string, message: string, details?: StatusDetails): Json {
  const status: Json = { kind: "Status", apiVersion: "v1", metadata: {}, status: "Failure", message };
  // an internal error the server did not classify carries no reason
  if (reason) status.reason = reason;
  if (details) status.details = details;
  status.code = code;
  return status;
}

/** What a delete that removed the object at once answers for kinds that do not return the object. */
export function deletedStatus(group: string, plural: string, name: string, uid: string | undefined): Json {
  const details: StatusDetails = { name };
  if (group) details.group = group;
  details.kind = plural;
  if (uid) details.uid = uid;
  return { kind: "Status", apiVersion: "v1", metadata: {}, status: "Success", details };
}

/** "pods" for the core group, "widgets.test.stowage.dev" otherwise: how the server names a resource in messages. */
export function qualifiedResource(group: string, plural: string): string {
  return group ? `${plural}.${group}` : plural;
}

function groupDetails(group: string, plural: string, name: string): StatusDetails {
  const details: StatusDetails = { name, kind: plural };
  if (group) details.group = group;
  return details;
}

export function notFound(group: string, plural: string, name: string): ApiError {
  return new ApiError(
    404,
    "NotFound",
    `${qualifiedResource(group, plural)} "${name}" not found`,
    groupDetails(group, plural, name),
  );
}

export function alreadyExists(group: string, plural: string, name: string): ApiError {
  return new ApiError(
    409,
    "AlreadyExists",
    `${qualifiedResource(group, plural)} "${name}" already exists`,
    groupDetails(group, plural, name),
  );
}

export function conflict(group: string, plural: string, name: string, why?: string): ApiError {
  const reasonText =
    why ?? "the object has been modified; please apply your changes to the latest version and try again";
  return new ApiError(
    409,
    "Conflict",
    `Operation cannot be fulfilled on ${qualifiedResource(group, plural)} "${name}": ${reasonText}`,
    groupDetails(group, plural, name),
  );
}

export function badRequest(message: string): ApiError {
  return new ApiError(400, "BadRequest", message);
}

export function methodNotAllowed(message: string): ApiError {
  return new ApiError(405, "MethodNotAllowed", message);
}

export function unsupportedMediaType(contentType: string): ApiError {
  return new ApiError(
    415,
    "UnsupportedMediaType",
    `the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml (got ${contentType})`,
  );
}

export function forbidden(message: string): ApiError {
  return new ApiError(403, "Forbidden", message);
}

export function expired(requested: string, oldest: number): ApiError {
  return new ApiError(410, "Expired", `too old resource version: ${requested} (${oldest})`);
}

/** A field-level validation failure, formatted like apimachinery's field.Error. */
export interface FieldError {
  reason:
    | "FieldValueInvalid"
    | "FieldValueRequired"
    | "FieldValueNotSupported"
    | "FieldValueDuplicate"
    | "FieldValueForbidden"
    | "FieldValueTooLong"
    | "FieldValueTooMany"
    | "FieldValueTypeInvalid";
  field: string;
  /** the full "field: Kind: detail" text */
  message: string;
}

export function invalid(kind: string, group: string, name: string, errors: FieldError[]): ApiError {
  const gk = group ? `${kind}.${group}` : kind;
  // the message lists each distinct error once (field.ErrorList.ToAggregate); causes keep them all
  const joined = [...new Set(errors.map((e) => e.message))];
  const list = joined.length === 1 ? joined[0] : `[${joined.join(", ")}]`;
  const details: StatusDetails = {
    ...(name ? { name } : {}),
    kind,
    causes: errors.map((e) => ({
      reason: e.reason,
      message: e.message.slice(e.field.length + 2),
      field: e.field,
    })),
  };
  if (group) details.group = group;
  return new ApiError(422, "Invalid", `${gk} "${name}" is invalid: ${list}`, details);
}

/** A string list as Go's `%#v` prints it: `[]string{"a", "b"}`. */
export function goStrings(values: string[]): string {
  return `[]string{${values.map((v) => JSON.stringify(v)).join(", ")}}`;
}

/** JSON rendering of a value the way apimachinery quotes it in "Invalid value: ..." messages. */
export function quoteValue(value: unknown): string {
  if (typeof value === "string") return JSON.stringify(value);
  if (value === null || value === undefined) return "null";
  if (typeof value === "number" || typeof value === "boolean") return String(value);
  return JSON.stringify(value);
}

export const fieldErrors = {
  required(field: string, detail = ""): FieldError {
    return {
      reason: "FieldValueRequired",
      field,
      message: `${field}: Required value${detail ? `: ${detail}` : ""}`,
    };
  },
  invalid(field: string, value: unknown, detail: string): FieldError {
    return {
      reason: "FieldValueInvalid",
      field,
      message: `${field}: Invalid value: ${quoteValue(value)}: ${detail}`,
    };
  },
  notSupported(field: string, value: unknown, allowed: unknown[]): FieldError {
    return {
      reason: "FieldValueNotSupported",
      field,
      message: `${field}: Unsupported value: ${quoteValue(value)}: supported values: ${allowed.map(quoteValue).join(", ")}`,
    };
  },
  duplicate(field: string, value: unknown): FieldError {
    return {
      reason: "FieldValueDuplicate",
      field,
      message: `${field}: Duplicate value: ${quoteValue(value)}`,
    };
  },
  forbidden(field: string, detail: string): FieldError {
    return { reason: "FieldValueForbidden", field, message: `${field}: Forbidden: ${detail}` };
  },
  tooLong(field: string, max: number): FieldError {
    return {
      reason: "FieldValueTooLong",
      field,
      message: `${field}: Too long: may not be more than ${max} bytes`,
    };
  },
  tooMany(field: string, actual: number, max: number): FieldError {
    return {
      reason: "FieldValueTooMany",
      field,
      message: `${field}: Too many: ${actual}: must have at most ${max} items`,
    };
  },
};
