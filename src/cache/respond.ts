/**
 * Answers in the distribution spec's terms: a StowageError becomes the status and the OCI
 * error body (`{"errors":[{code,message,detail}]}`) a registry client expects.
 */
import type { ServerResponse } from "node:http";
import type { StowageError } from "../util/errors.ts";
import type { ObjectKind } from "./layout.ts";

export const AUTH_REALM = "stowage-cache";

/** The OCI error code and HTTP status for a failure while serving `kind`. */
export function ociErrorOf(
  err: StowageError,
  kind: ObjectKind | undefined,
): { status: number; code: string } {
  switch (err.reason) {
    case "ImageNotFound":
    case "BlobNotFound":
      return { status: 404, code: kind === "blob" ? "BLOB_UNKNOWN" : "MANIFEST_UNKNOWN" };
    case "NotFound":
      // The name itself means nothing here (no upstream host, or one this cache does not serve).
      return { status: 404, code: "NAME_UNKNOWN" };
    case "AuthFailed":
      return { status: 401, code: "UNAUTHORIZED" };
    case "Denied":
      return { status: 403, code: "DENIED" };
    case "DigestMismatch":
      return { status: 400, code: "DIGEST_INVALID" };
    case "InvalidArgument":
    case "InvalidReference":
      return { status: 400, code: "NAME_INVALID" };
    case "RateLimited":
      return { status: 429, code: "TOOMANYREQUESTS" };
    case "UnsupportedMediaType":
      return { status: 405, code: "UNSUPPORTED" };
    default:
      return { status: err.retryable || err.reason === "UpstreamUnavailable" ? 503 : 500, code: "UNKNOWN" };
  }
}

export function sendError(
  res: ServerResponse,
  status: number,
  code: string,
  message: string,
  headers: Record<string, string> = {},
): void {
  if (res.headersSent) {
    // Too late for a status: cut the connection so the client sees a short body, not success.
    res.destroy();
    return;
  }
  const body = JSON.stringify({ errors: [{ code, message, detail: null }] });
  res.writeHead(status, {
    "content-type": "application/json",
    "content-length": String(Buffer.byteLength(body)),
    "docker-distribution-api-version": "registry/2.0",
    ...headers,
  });
  res.end(res.req.method === "HEAD" ? undefined : body);
}

/** 401 with a Basic challenge: containerd and the docker CLI answer it with the pull credentials. */
export function sendUnauthorized(res: ServerResponse, message: string): void {
  sendError(res, 401, "UNAUTHORIZED", message, {
    "www-authenticate": `Basic realm="${AUTH_REALM}", charset="UTF-8"`,
  });
}
