/**
 * One error type for everything that can reach a user. The `reason` is stable: it is used
 * in conditions, events, the `reason` label of error metrics and the CLI's one-line errors.
 */
export const Reasons = [
  "InvalidReference",
  "InvalidArgument",
  "ImageNotFound",
  "BlobNotFound",
  "AuthFailed",
  "AuthConfigInvalid",
  "Denied",
  "DigestMismatch",
  "SizeMismatch",
  "UpstreamUnavailable",
  // A ModelImage sync ran past its deadline (--sync-timeout): an upstream that never answers.
  "UpstreamTimeout",
  "CacheUnavailable",
  "RateLimited",
  "ManifestInvalid",
  "ManifestBlobUnknown",
  "UnsupportedMediaType",
  "PlatformNotFound",
  "QuotaExceeded",
  "NoMatchingNodes",
  "Conflict",
  "NotFound",
  "Timeout",
  "Aborted",
  "Internal",
  // Node agent: the container runtime (CRI socket) does not answer; a runtime pull failed.
  "RuntimeUnavailable",
  "PullFailed",
] as const;

export type Reason = (typeof Reasons)[number];

export class StowageError extends Error {
  readonly reason: Reason;
  /** Worth trying again later (network trouble, 5xx, 429); false for bad input or auth. */
  readonly retryable: boolean;
  readonly status?: number;

  constructor(
    reason: Reason,
    message: string,
    options: { cause?: unknown; retryable?: boolean; status?: number } = {},
  ) {
    super(message, { cause: options.cause });
    this.name = "StowageError";
    this.reason = reason;
    this.retryable = options.retryable ?? false;
    this.status = options.status;
  }
}

export function isStowageError(err: unknown): err is StowageError {
  return err instanceof StowageError;
}

/** Any thrown value as a StowageError, keeping the original as the cause. */
export function asStowageError(err: unknown, fallback: Reason = "Internal"): StowageError {
  if (err instanceof StowageError) return err;
  if (err instanceof Error) return new StowageError(fallback, err.message, { cause: err });
  return new StowageError(fallback, String(err));
}
