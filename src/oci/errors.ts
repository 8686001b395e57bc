/**
 * Maps registry responses to StowageErrors: the OCI error body
 * (`{errors:[{code,message,detail}]}`) first, the HTTP status second.
 */
import { type Reason, StowageError } from "../util/errors.ts";
import { isRetryableStatus, parseRetryAfter, withRetryAfter } from "./retry.ts";

export interface OciErrorEntry {
  code: string;
  message?: string;
  detail?: unknown;
}

const CODE_REASONS: Record<string, Reason> = {
  MANIFEST_UNKNOWN: "ImageNotFound",
  NAME_UNKNOWN: "ImageNotFound",
  BLOB_UNKNOWN: "BlobNotFound",
  UNAUTHORIZED: "AuthFailed",
  DENIED: "Denied",
  DIGEST_INVALID: "DigestMismatch",
  SIZE_INVALID: "SizeMismatch",
  MANIFEST_BLOB_UNKNOWN: "ManifestBlobUnknown",
  MANIFEST_INVALID: "ManifestInvalid",
  MANIFEST_UNVERIFIED: "ManifestInvalid",
  NAME_INVALID: "InvalidArgument",
  TAG_INVALID: "InvalidArgument",
  UNSUPPORTED: "UnsupportedMediaType",
  TOOMANYREQUESTS: "RateLimited",
};

/** The error entries of an OCI error body, or [] when the body is something else. */
export function parseOciErrors(body: string): OciErrorEntry[] {
  try {
    const parsed = JSON.parse(body) as { errors?: unknown };
    if (!Array.isArray(parsed?.errors)) return [];
    return parsed.errors.filter(
      (entry): entry is OciErrorEntry => typeof entry === "object" && entry !== null && "code" in entry,
    );
  } catch {
    return [];
  }
}

/** What the server said, in one line: the OCI error messages, else the start of the body. */
export function serverMessage(body: string, status: number): string {
  const entries = parseOciErrors(body);
  if (entries.length > 0) {
    return entries.map((entry) => entry.message || entry.code.toLowerCase().replace(/_/g, " ")).join("; ");
  }
  const text = body.trim().replace(/\s+/g, " ").slice(0, 200);
  return text || `HTTP ${status}`;
}

export interface ResponseContext {
  /** Registry host, e.g. "ghcr.io". */
  host: string;
  /** What was asked for, for messages: `manifest ghcr.io/acme/x:1`, `blob sha256:...`. */
  subject: string;
  /** What a 404 without a known code means here. */
  notFound?: Reason;
  retryAfter?: string;
  nowMs?: number;
}

/** A StowageError for a failed registry response. */
export function errorFromResponse(status: number, body: string, context: ResponseContext): StowageError {
  const entries = parseOciErrors(body);
  const said = serverMessage(body, status);
  let reason: Reason | undefined;
  for (const entry of entries) {
    reason = CODE_REASONS[entry.code];
    if (reason) break;
  }
  if (status === 429) reason = "RateLimited";
  if (!reason) {
    if (status === 401) reason = "AuthFailed";
    else if (status === 403) reason = "Denied";
    else if (status === 404) reason = context.notFound ?? "NotFound";
    else if (status >= 500 || status === 408) reason = "UpstreamUnavailable";
    else reason = "InvalidArgument";
  }
  // An upload session the registry forgot (restart, purge): a fresh upload will do.
  const uploadLost = entries.some((entry) => entry.code === "BLOB_UPLOAD_UNKNOWN");
  if (uploadLost) reason = "UpstreamUnavailable";
  const retryable = isRetryableStatus(status) || uploadLost;
  let message: string;
  switch (reason) {
    case "ImageNotFound":
      message = `${context.subject} not found: ${said}`;
      break;
    case "BlobNotFound":
      message = `${context.subject} not found on ${context.host}: ${said}`;
      break;
    case "AuthFailed":
      message = `authentication to ${context.host} failed: ${said}`;
      break;
    case "Denied":
      message = `access to ${context.subject} denied by ${context.host}: ${said}`;
      break;
    case "RateLimited":
      message = `${context.host} is rate limiting requests (HTTP ${status}): ${said}`;
      break;
    case "UpstreamUnavailable":
      message = `${context.host} answered HTTP ${status} for ${context.subject}: ${said}`;
      break;
    default:
      message = `${context.host} refused ${context.subject} (HTTP ${status}): ${said}`;
  }
  const err = new StowageError(reason, message, { retryable, status });
  return withRetryAfter(err, parseRetryAfter(context.retryAfter, context.nowMs ?? Date.now()));
}

/** Connection-level failures (refused, reset, timed out) as retryable UpstreamUnavailable. */
export function errorFromNetwork(err: unknown, host: string, subject: string): StowageError {
  if (err instanceof StowageError) return err;
  const cause = err as { code?: string; message?: string; cause?: { code?: string; message?: string } };
  const code = cause?.code ?? cause?.cause?.code;
  const detail = cause?.cause?.message ?? cause?.message ?? String(err);
  if (code && TLS_CODES.has(code)) {
    return new StowageError(
      "UpstreamUnavailable",
      `TLS verification of ${host} failed (${code}): ${detail}; trust its CA (caPem) or, for a plain-HTTP registry, list it as insecure`,
      { cause: err, retryable: false },
    );
  }
  if (cause?.message && /self[- ]signed|certificate/i.test(detail)) {
    return new StowageError(
      "UpstreamUnavailable",
      `TLS verification of ${host} failed: ${detail}; trust its CA (caPem) or, for a plain-HTTP registry, list it as insecure`,
      { cause: err, retryable: false },
    );
  }
  return new StowageError(
    "UpstreamUnavailable",
    `${host} could not be reached for ${subject}: ${code ? `${code} ` : ""}${detail}`,
    { cause: err, retryable: true },
  );
}

const TLS_CODES = new Set([
  "UNABLE_TO_VERIFY_LEAF_SIGNATURE",
  "SELF_SIGNED_CERT_IN_CHAIN",
  "DEPTH_ZERO_SELF_SIGNED_CERT",
  "UNABLE_TO_GET_ISSUER_CERT_LOCALLY",
  "UNABLE_TO_GET_ISSUER_CERT",
  "CERT_HAS_EXPIRED",
  "ERR_TLS_CERT_ALTNAME_INVALID",
  "CERT_UNTRUSTED",
  "ERR_SSL_WRONG_VERSION_NUMBER",
]);
