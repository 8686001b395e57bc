/**
 * Distribution's garbage collection, done safely. `registry garbage-collect CONFIG` marks every
 * blob a stored manifest references and deletes the rest, reading the storage directly. A push
 * in flight has blobs no manifest references yet, so it must not run beside one: the registry
 * serving that storage is put into read-only mode (storage.maintenance.readonly: uploads and
 * manifest PUTs refused) or stopped first, and writable again after. A push interrupted by the
 * pause fails at its next step rather than completing with a blob collected under it, and its
 * retry uploads what is missing; the registry comes back with an empty blob-descriptor cache,
 * so it never answers for a blob the collection removed. Untagged manifests are kept
 * (no --delete-untagged): the front stores what nodes pulled by digest, untagged.
 */
import { execFile } from "node:child_process";
import { asStowageError, StowageError } from "../../util/errors.ts";

/**
 * The environment that makes distribution 2.8 read-only without touching its config file (what
 * a StatefulSet patch can set): uploads and manifest PUTs answer 405. The flatter
 * REGISTRY_STORAGE_MAINTENANCE_READONLY_ENABLED=true makes 2.8 panic at start.
 */
export const READ_ONLY_REGISTRY_ENV = { REGISTRY_STORAGE_MAINTENANCE_READONLY: '{"enabled":true}' };

export interface WritePause {
  /** Stop the registry taking writes (restart it read-only, or stop it); resolves once in force. */
  pause(): Promise<void>;
  /** Take writes again. */
  resume(): Promise<void>;
}

export interface GarbageCollection {
  /** Blobs deleted (or, in a dry run, eligible for deletion). */
  blobs: string[];
}

/** `registry garbage-collect [--dry-run] CONFIG`: run it only while writes are paused. */
export function garbageCollect(options: {
  configPath: string;
  /** Default /usr/bin/docker-registry (Debian); `registry` in the upstream image. */
  binary?: string;
  dryRun?: boolean;
  timeoutMs?: number;
  env?: NodeJS.ProcessEnv;
}): Promise<GarbageCollection> {
  const args = ["garbage-collect", ...(options.dryRun ? ["--dry-run"] : []), options.configPath];
  return new Promise((resolve, reject) => {
    execFile(
      options.binary ?? "/usr/bin/docker-registry",
      args,
      { timeout: options.timeoutMs ?? 30 * 60_000, maxBuffer: 64 * 1024 * 1024, env: options.env },
      (err, stdout, stderr) => {
        if (err) {
          const tail = `${stderr}${stdout}`.trim().split("\n").slice(-5).join("; ");
          reject(
            new StowageError("CacheUnavailable", `registry garbage-collect failed: ${tail}`, {
              retryable: true,
            }),
          );
          return;
        }
        const blobs = new Set<string>();
        for (const line of `${stdout}\n${stderr}`.split("\n")) {
          const match = /(?:blob eligible for deletion|Deleting blob): \S*?(sha256:[0-9a-f]{64})/.exec(line);
          if (match) blobs.add(match[1]);
        }
        resolve({ blobs: [...blobs] });
      },
    );
  });
}

/**
 * Pauses writes, collects, and resumes writes whatever happened: also when the pause itself failed
 * half-way (a rollout that did not finish leaves some replicas read-only). When both the
 * collection and the resume fail, the resume's failure is thrown (writes are still refused, the
 * more urgent news) with the collection's in its message.
 */
export async function collectWhilePaused<T = GarbageCollection>(
  pause: WritePause,
  collect: () => Promise<T>,
): Promise<T> {
  let result: T;
  try {
    await pause.pause();
    result = await collect();
  } catch (err) {
    try {
      await pause.resume();
    } catch (resumeErr) {
      const resumeFailure = asStowageError(resumeErr);
      throw new StowageError(
        resumeFailure.reason,
        `${resumeFailure.message} (resuming writes after a failed collection: ${asStowageError(err).message})`,
        { cause: resumeErr, retryable: true },
      );
    }
    throw err;
  }
  await pause.resume();
  return result;
}
