/**
 * Maps registry responses to StowageErrors: the OCI error body
 * (`{errors:[{code,message,detail}]}`) first, the HTTP status second.
 */
import { type Reason, StowageError } from "../util/errors.ts";
import { isRetryableStatus, parseRetryAfter, retryAfterOf, withRetryAfter } from "./retry.ts";
import { upstreamText } from "./sanitize.ts";

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

/**
 * What the server said, in one short plain line (see sanitize.ts): the OCI error messages,
 * else the start of the body with any HTML and control characters removed.
 */
export function serverMessage(body: string, status: number): string {
  const entries = parseOciErrors(body);
  if (entries.length > 0) {
    return upstreamText(
      entries
        .map((entry) => String(entry.message || String(entry.code).toLowerCase().replace(/_/g, " ")))
        .join("; "),
    );
  }
  return upstreamText(body) || `HTTP ${status}`;
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
    else if (status >= 300 && status < 400) reason = "UpstreamUnavailable";
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
      message =
        status >= 300 && status < 400
          ? `${context.host} answered a redirect (HTTP ${status}) for ${context.subject}; redirects are followed only for blob downloads (see redirects.ts)`
          : `${context.host} answered HTTP ${status} for ${context.subject}: ${said}`;
      break;
    default:
      message = `${context.host} refused ${context.subject} (HTTP ${status}): ${said}`;
  }
  const err = new StowageError(reason, message, { retryable, status });
  return withRetryAfter(err, parseRetryAfter(context.retryAfter, context.nowMs ?? Date.now()));
}

/** undici's and the transport's deadline errors (see deadlines.ts). */
const TIMEOUT_CODES: Record<string, string> = {
  UND_ERR_HEADERS_TIMEOUT: "sent no response headers within the request timeout (--request-timeout)",
  UND_ERR_BODY_TIMEOUT: "stalled: no byte of the response arrived within the stall timeout (--stall-timeout)",
  UND_ERR_CONNECT_TIMEOUT: "did not accept a connection in time",
};

/**
 * Connection-level failures (refused, reset, timed out) as retryable UpstreamUnavailable, or
 * UpstreamTimeout when a deadline or the stall timeout ran out. Any text they carry is
 * upstream text (sanitize.ts).
 */
export function errorFromNetwork(err: unknown, host: string, subject: string): StowageError {
  if (err instanceof StowageError) return err;
  const cause = err as {
    code?: string;
    message?: string;
    timeoutMs?: number;
    cause?: { code?: string; message?: string };
  };
  const code = cause?.code ?? cause?.cause?.code;
  const detail = upstreamText(cause?.cause?.message ?? cause?.message ?? String(err));
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
  if (code === "STOWAGE_TIMEOUT") {
    return new StowageError("UpstreamTimeout", `${host} ${detail} (${subject})`, {
      cause: err,
      retryable: true,
    });
  }
  if (code && TIMEOUT_CODES[code]) {
    return new StowageError("UpstreamTimeout", `${host} ${TIMEOUT_CODES[code]} for ${subject}`, {
      cause: err,
      retryable: true,
    });
  }
  return new StowageError(
    "UpstreamUnavailable",
    `${host} could not be reached for ${subject}: ${code ? `${code} ` : ""}${detail}`,
    { cause: err, retryable: true },
  );
}

/**
 * The same failure blamed on the cache registry: a registry the caller named as its cache
 * (the controller's cache, `stowage mirror`'s destination) that did not answer, timed out or
 * answered 5xx is CacheUnavailable, retried like an upstream fault, never UpstreamUnavailable.
 */
export function blameCache(err: StowageError, cacheRegistry: string): StowageError {
  if (err.reason !== "UpstreamUnavailable" && err.reason !== "UpstreamTimeout") return err;
  const blamed = new StowageError("CacheUnavailable", `cache registry ${cacheRegistry}: ${err.message}`, {
    cause: err,
    retryable: err.retryable,
    status: err.status,
  });
  const wait = retryAfterOf(err);
  return wait === undefined ? blamed : withRetryAfter(blamed, wait);
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
