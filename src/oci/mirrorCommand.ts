/**
 * `stowage mirror SRC DST`: the mirror engine as a one-shot command.
 * Exit codes: 0 copied, 1 copy failed, 2 bad usage. Errors are one line on stderr with the reason.
 */
import { readFile } from "node:fs/promises";
import type { Writable } from "node:stream";
import { parseDuration } from "../util/duration.ts";
import { asStowageError, StowageError } from "../util/errors.ts";
import type { Logger } from "../util/log.ts";
import { defaultBlobIndexPath } from "./blobIndex.ts";
import type { CopyOptions, CopyResult } from "./copy.ts";
import { parsePlatformList } from "./platforms.ts";
import { createProgressReporter, formatBytes } from "./progress.ts";
import type { RangedDownloadOptions } from "./rangedDownload.ts";
import { type ImageReference, parseReference } from "./reference.ts";
import type { CredentialLookup, Credentials, RegistryClient } from "./registry.ts";

export const mirrorHelp = `Usage: stowage mirror [flags] SRC DST

Copy an image or image index from SRC to DST, verifying every byte against its digest.
Blobs the target already has are skipped, blobs in another repository of the target are
mounted, manifests are copied byte-exact (a filtered index gets a new digest).
When DST names no tag, the source's tag is used.

Flags:
  --platform OS/ARCH[/VARIANT]  copy only these platforms of an index (repeatable, or a comma list)
  --all-platforms               copy every platform and keep the upstream index digest (default)
  --referrers                   also copy referrers (signatures, SBOMs) of the copied manifests
  --insecure-registry HOST      talk plain HTTP to HOST, e.g. 127.0.0.1:5000 (repeatable)
  --authfile PATH               docker config.json with credentials (default $DOCKER_CONFIG/config.json
                                or ~/.docker/config.json)
  --src-creds USER:PASS         credentials for the source registry
  --dest-creds USER:PASS        credentials for the destination registry
  --ca-file PATH                extra CA certificate(s) to trust, PEM (repeatable)
  --concurrency N               blob transfers in flight per registry (default 4)
  --download-ranges N           Range requests in flight per large blob (default 8; 1 = one stream).
                                A blob from 64 MiB starts as one stream and is split into ranges
                                only while the link, not the target, is the slow side
  --range-size MIB              size of each Range request in MiB (default 8)
  --no-bulk                     move every blob through the pooled HTTP client; by default a blob
                                from 16 MiB is downloaded and uploaded on connections of its own,
                                read into reused buffers (less CPU per byte)
  --blob-index PATH             where blob locations in targets are remembered across runs, so a shared
                                base is mounted, not uploaded (default $XDG_CACHE_HOME/stowage/blob-index.sqlite)
  --no-blob-index               remember nothing across runs
  --request-timeout DURATION    deadline for a registry to start answering a request (default 30s)
  --stall-timeout DURATION      a transfer that moves no byte for this long is abandoned and
                                resumed (default 60s)
  --max-retry-after DURATION    longest Retry-After wait honoured (default 5m)
  --verify                      read the image back from DST and hash every blob; re-copy what is
                                corrupt or missing, exit 1 if DST still serves bad bytes
  --json                        print one JSON object with the result on stdout
  --quiet                       no progress output
  -h, --help                    show this help

Exit codes: 0 copied, 1 copy failed, 2 bad usage.
`;

class UsageError extends Error {}

function oneLine(text: string): string {
  return text.replace(/\s*\n\s*/g, " ").trim();
}

function parseCreds(value: string | undefined, flag: string): Credentials | undefined {
  if (value === undefined) return undefined;
  const colon = value.indexOf(":");
  if (colon <= 0) throw new UsageError(`${flag} must be USER:PASS`);
  return { username: value.slice(0, colon), password: value.slice(colon + 1) };
}

/** DST without an explicit tag or digest takes the source's tag (skopeo would use "latest"; people expect the tag kept). */
function hasExplicitTagOrDigest(input: string): boolean {
  if (input.includes("@")) return true;
  return input.slice(input.lastIndexOf("/") + 1).includes(":");
}

interface MirrorInvocation {
  source: ImageReference;
  target: ImageReference;
  options: CopyOptions;
  insecureHosts: string[];
  caPem: string[];
  authfile?: string;
  srcCreds?: Credentials;
  destCreds?: Credentials;
  json: boolean;
  quiet: boolean;
  /** undefined: remember nothing across runs. */
  blobIndexPath?: string;
  rangedDownload: RangedDownloadOptions | false;
  /** false: no bulk connections (--no-bulk). */
  bulk: boolean;
  /** Deadlines and Retry-After cap (src/oci/deadlines.ts, retry.ts); undefined: defaults. */
  requestTimeoutMs?: number;
  stallTimeoutMs?: number;
  maxRetryAfterMs?: number;
  verify: boolean;
}

async function parseInvocation(args: string[]): Promise<MirrorInvocation | "help"> {
  let parsed: ReturnType<typeof parseFlags>;
  try {
    parsed = parseFlags(args);
  } catch (err) {
    throw new UsageError((err as Error).message);
  }
  const { values, positionals } = parsed;
  if (values.help) return "help";
  if (positionals.length !== 2) {
    throw new UsageError(
      `expected SRC and DST, got ${positionals.length} argument(s); see stowage mirror --help`,
    );
  }
  if (values["all-platforms"] && values.platform && values.platform.length > 0) {
    throw new UsageError("--platform and --all-platforms cannot be used together");
  }
  const [sourceInput, targetInput] = positionals;
  const source = parseReference(sourceInput);
  const target = parseReference(targetInput);
  if (!hasExplicitTagOrDigest(targetInput)) {
    if (source.tag !== undefined) target.tag = source.tag;
    else delete target.tag; // digest-only source: push by digest
  }
  let concurrency: number | undefined;
  if (values.concurrency !== undefined) {
    concurrency = Number(values.concurrency);
    if (!Number.isInteger(concurrency) || concurrency < 1 || concurrency > 64) {
      throw new UsageError(`--concurrency must be an integer from 1 to 64, got "${values.concurrency}"`);
    }
  }
  const downloadRanges = integerFlag(values["download-ranges"], "--download-ranges", 1, 64);
  const rangeSizeMiB = integerFlag(values["range-size"], "--range-size", 1, 1024);
  const platforms = values.platform ? parsePlatformList(values.platform) : undefined;
  const caPem: string[] = [];
  for (const path of values["ca-file"] ?? []) {
    try {
      caPem.push(await readFile(path, "utf8"));
    } catch (err) {
      throw new UsageError(`cannot read --ca-file ${path}: ${(err as Error).message}`);
    }
  }
  return {
    source,
    target,
    options: {
      platforms: platforms && platforms.length > 0 ? platforms : undefined,
      allPlatforms: values["all-platforms"] ?? false,
      referrers: values.referrers ?? false,
      concurrency,
    },
    insecureHosts: (values["insecure-registry"] ?? []).map((h) =>
      h.replace(/^https?:\/\//, "").replace(/\/+$/, ""),
    ),
    caPem,
    authfile: values.authfile,
    srcCreds: parseCreds(values["src-creds"], "--src-creds"),
    destCreds: parseCreds(values["dest-creds"], "--dest-creds"),
    json: values.json ?? false,
    quiet: values.quiet ?? false,
    blobIndexPath: values["no-blob-index"] ? undefined : (values["blob-index"] ?? defaultBlobIndexPath()),
    requestTimeoutMs: durationValue(values["request-timeout"], "--request-timeout"),
    stallTimeoutMs: durationValue(values["stall-timeout"], "--stall-timeout"),
    maxRetryAfterMs: durationValue(values["max-retry-after"], "--max-retry-after"),
    verify: values.verify ?? false,
    bulk: !(values["no-bulk"] ?? false),
    rangedDownload:
      downloadRanges === 1
        ? false
        : {
            ...(downloadRanges !== undefined ? { concurrency: downloadRanges } : {}),
            ...(rangeSizeMiB !== undefined ? { rangeBytes: rangeSizeMiB * 1024 * 1024 } : {}),
          },
  };
}

/** A positive duration (30s, 5m, 1h30m) in ms, at most 2^31-1 ms (a timer's limit). */
function durationValue(value: string | undefined, flag: string): number | undefined {
  if (value === undefined) return undefined;
  let ms: number | undefined;
  try {
    ms = parseDuration(value);
  } catch {
    // reported below
  }
  if (ms === undefined || !(ms > 0) || ms > 2 ** 31 - 1) {
    throw new UsageError(`${flag} must be a positive duration up to 596h like 30s or 5m, got "${value}"`);
  }
  return ms;
}

function integerFlag(value: string | undefined, flag: string, min: number, max: number): number | undefined {
  if (value === undefined) return undefined;
  const parsed = Number(value);
  if (!Number.isInteger(parsed) || parsed < min || parsed > max) {
    throw new UsageError(`${flag} must be an integer from ${min} to ${max}, got "${value}"`);
  }
  return parsed;
}

function parseFlags(args: string[]) {
  // Not `import ... from "node:util"`: an ESM import of node:util evaluates all of its exports,
  // loading some 30 more built-ins (worker_threads among them) that a no-op run never uses.
  const { parseArgs } = process.getBuiltinModule("node:util");
  return parseArgs({
    args,
    allowPositionals: true,
    strict: true,
    options: {
      platform: { type: "string", multiple: true },
      "all-platforms": { type: "boolean" },
      referrers: { type: "boolean" },
      "insecure-registry": { type: "string", multiple: true },
      authfile: { type: "string" },
      "src-creds": { type: "string" },
      "dest-creds": { type: "string" },
      "ca-file": { type: "string", multiple: true },
      concurrency: { type: "string" },
      "download-ranges": { type: "string" },
      "range-size": { type: "string" },
      "no-bulk": { type: "boolean" },
      "blob-index": { type: "string" },
      "no-blob-index": { type: "boolean" },
      "request-timeout": { type: "string" },
      "stall-timeout": { type: "string" },
      "max-retry-after": { type: "string" },
      verify: { type: "boolean" },
      json: { type: "boolean" },
      quiet: { type: "boolean", short: "q" },
      help: { type: "boolean", short: "h" },
    },
  });
}

/**
 * Flag credentials win for their registry (when source and destination are the same
 * registry, --dest-creds wins: pushing needs them and they normally allow pulls too);
 * everything else comes from the docker config.
 */
async function credentialLookup(invocation: MirrorInvocation): Promise<CredentialLookup> {
  const { credentialsFromDockerConfig, loadDockerConfig } = await import("../auth/dockerConfig.ts");
  const fromConfig = credentialsFromDockerConfig(await loadDockerConfig(invocation.authfile));
  return (registry: string) => {
    if (invocation.destCreds && registry === invocation.target.registry) return invocation.destCreds;
    if (invocation.srcCreds && registry === invocation.source.registry) return invocation.srcCreds;
    return fromConfig(registry);
  };
}

/** Where the copy writes (the real stdio; tests may pass their own). */
interface Output {
  stdout(text: string): void;
  stderr: Writable;
  tty: boolean;
  columns?: number;
}

export async function runMirror(args: string[]): Promise<number> {
  let invocation: MirrorInvocation | "help";
  try {
    invocation = await parseInvocation(args);
  } catch (err) {
    const reason = err instanceof StowageError ? err.reason : "InvalidArgument";
    process.stderr.write(`stowage: ${reason}: ${oneLine((err as Error).message)}\n`);
    return 2;
  }
  if (invocation === "help") {
    process.stdout.write(mirrorHelp);
    return 0;
  }
  const abort = new AbortController();
  const onSignal = () => abort.abort(interrupted());
  process.once("SIGINT", onSignal);
  process.once("SIGTERM", onSignal);
  // The copy runs in this thread. It used to run in a worker with a 2 MB young generation
  // (peak RSS ~140 instead of ~190 MiB for a 1.5 GiB layer), but on this shared 2-core machine
  // the worker cost a third more CPU per copy (its scavenges) and its start-up: measured at
  // load 15-30, a 512 MiB copy took 7.5/6.2 s in the worker and 4.8/5.2 s here (CPU 2.6/2.1 s
  // against 1.5/1.7 s), a 2 GiB one 57-71 MB/s against 97-130 MB/s, for 10-15% more peak RSS.
  try {
    return await executeMirror(invocation, processOutput(), abort.signal);
  } finally {
    process.off("SIGINT", onSignal);
    process.off("SIGTERM", onSignal);
  }
}

function interrupted(): StowageError {
  return new StowageError("Aborted", "interrupted; nothing partial was committed to the target");
}

function processOutput(): Output {
  return {
    stdout: (text) => process.stdout.write(text),
    stderr: process.stderr,
    tty: process.stderr.isTTY === true,
    columns: process.stderr.columns,
  };
}

const levelOrder = ["trace", "debug", "info", "warn", "error", "fatal"];

/**
 * A logger made by `create` on its first message at an enabled level (or any other use): an
 * unchanged re-run logs nothing at the default level, so it never loads pino. A Proxy keeps
 * every other member of pino's Logger working as it would on the real one.
 */
export function deferredLogger(level: string, create: () => Logger): Logger {
  // A level pino does not know is its error to report, at once.
  if (level !== "silent" && !levelOrder.includes(level)) return create();
  const threshold = level === "silent" ? levelOrder.length : Math.max(0, levelOrder.indexOf(level));
  let real: Logger | undefined;
  const made = () => {
    real ??= create();
    return real;
  };
  const gated = new Map(
    levelOrder.map((name, rank) => [
      name,
      (...args: unknown[]) => {
        if (rank < threshold && real === undefined) return;
        (made()[name as "info"] as (...a: unknown[]) => void)(...args);
      },
    ]),
  );
  // The target is never read: every access goes to the real logger once there is one.
  return new Proxy({} as Logger, {
    get(_target, property) {
      if (real === undefined && typeof property === "string") {
        const method = gated.get(property);
        if (method) return method;
        if (property === "level") return level;
      }
      const value = Reflect.get(made(), property);
      return typeof value === "function" ? value.bind(real) : value;
    },
  });
}

/** Plans and copies; an unchanged target is answered from the plan's requests alone. */
async function executeMirror(
  invocation: MirrorInvocation,
  output: Output,
  signal: AbortSignal,
): Promise<number> {
  const level = process.env.STOWAGE_LOG_LEVEL ?? (invocation.quiet ? "error" : "warn");
  const progress = createProgressReporter({
    stream: output.stderr,
    tty: output.tty,
    quiet: invocation.quiet || invocation.json,
    columns: output.columns,
  });
  let client: RegistryClient | undefined;
  let blobIndex: import("./blobIndex.ts").BlobIndex | undefined;
  try {
    const credentials = await credentialLookup(invocation);
    const noop = await upToDateAnswer(invocation, level, credentials, signal);
    if (noop) {
      for (const event of noop.events) progress.onProgress(event);
      progress.finish();
      report(noop.result, invocation, output);
      return 0;
    }
    const [{ createLogger }, { Copier }, { RegistryClient }, { SqliteBlobIndex }] = await Promise.all([
      import("../util/log.ts"),
      import("./copy.ts"),
      import("./registry.ts"),
      import("./blobIndex.ts"),
    ]);
    const logger = deferredLogger(level, () => createLogger({ level }));
    client = new RegistryClient({
      credentials,
      insecureHosts: invocation.insecureHosts,
      caPem: invocation.caPem.length > 0 ? invocation.caPem : undefined,
      userAgent: "stowage-mirror",
      logger,
      rangedDownload: invocation.rangedDownload,
      ...(invocation.bulk ? {} : { bulkMinBytes: Number.POSITIVE_INFINITY }),
      // Failures of DST are the cache's (CacheUnavailable), and DST is never reached through a proxy.
      cacheRegistries: [invocation.target.registry],
      requestTimeoutMs: invocation.requestTimeoutMs,
      stallTimeoutMs: invocation.stallTimeoutMs,
      retry:
        invocation.maxRetryAfterMs !== undefined
          ? { maxRetryAfterMs: invocation.maxRetryAfterMs }
          : undefined,
    });
    blobIndex = invocation.blobIndexPath ? new SqliteBlobIndex(invocation.blobIndexPath, logger) : undefined;
    const copier = new Copier({ client, logger, blobIndex });
    const options: CopyOptions = {
      ...invocation.options,
      signal,
      onProgress: (event) => progress.onProgress(event),
    };
    const started = Date.now();
    const plan = await copier.plan(invocation.source, invocation.target, options);
    const result = await copier.execute(plan, options, started);
    if (invocation.verify) {
      const { verifyAndRepair } = await import("./verify.ts");
      const checked = await verifyAndRepair(client, plan.sourceRepo, plan.targetRepo, plan.targetReference, {
        signal,
      });
      if (checked.repaired > 0) {
        logger.warn({ target: result.target, repaired: checked.repaired }, "re-copied corrupt content");
      }
    }
    progress.finish();
    report(result, invocation, output);
    return 0;
  } catch (err) {
    progress.finish();
    const error = asStowageError(err);
    output.stderr.write(`stowage: ${error.reason}: ${oneLine(error.message)}\n`);
    return 1;
  } finally {
    blobIndex?.close();
    await client?.close().catch(() => undefined);
  }
}

function report(result: CopyResult, invocation: MirrorInvocation, output: Output): void {
  if (invocation.json) {
    output.stdout(`${JSON.stringify(result)}\n`);
  } else if (!invocation.quiet) {
    output.stdout(
      `mirrored ${result.source} -> ${result.target} ${result.targetDigest} ` +
        `(${formatBytes(result.bytes.transferred)} transferred, ${formatBytes(result.bytes.mounted)} mounted, ` +
        `${formatBytes(result.bytes.skipped)} skipped, ${result.platforms.join(",") || "no platform"}) ` +
        `in ${(result.durationMs / 1000).toFixed(2)}s\n`,
    );
  }
}

/**
 * An unchanged target answered by headCheck.ts on node:http(s), without undici (whose client
 * loads node:http2) or the copy engine; undefined hands over to the full path, which then
 * answers as it always did (a difference, any error or odd response, a proxy). Runs only where
 * the full path would print nothing more: not for --referrers or --verify, a platform filter,
 * or a log level that shows the copy's info line.
 */
async function upToDateAnswer(
  invocation: MirrorInvocation,
  level: string,
  credentials: CredentialLookup,
  signal: AbortSignal,
) {
  const { options } = invocation;
  const filtered = !options.allPlatforms && options.platforms !== undefined && options.platforms.length > 0;
  if (options.referrers || invocation.verify || filtered) return undefined;
  if (["trace", "debug", "info"].includes(level)) return undefined;
  const { checkUpToDate } = await import("./headCheck.ts");
  try {
    return await checkUpToDate({
      source: invocation.source,
      target: invocation.target,
      credentials,
      insecureHosts: invocation.insecureHosts,
      caPem: invocation.caPem,
      requestTimeoutMs: invocation.requestTimeoutMs,
      signal,
    });
  } catch {
    // HandOver, or anything else this check did not expect: the full path gives the answer.
    return undefined;
  }
}
