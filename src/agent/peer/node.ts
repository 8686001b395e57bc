/**
 * The fan-out side of one node's agent (issue 15): the mirror's view of this node's NodeCache spec,
 * and starting the peer endpoint and the mirror for a mode (what status reports of them: report.ts).
 * Loaded only when --fanout-mode is not `off` (command.ts imports it lazily).
 */

import { mkdir, readdir, rm } from "node:fs/promises";
import { join } from "node:path";
import type { NodeCache } from "../../api/nodeCache.ts";
import { StowageError } from "../../util/errors.ts";
import { ContainerdContent } from "./content.ts";
import { containerdIngests } from "./ingest.ts";
import { type BlobAssignment, type FanoutState, type Mirror, startMirror } from "./mirror.ts";
import { type PeerServer, startPeerServer } from "./server.ts";

export type FanoutMode = "planned" | "external" | "off";
export const FANOUT_MODES: readonly FanoutMode[] = ["planned", "external", "off"];

/** The mirror's view of the node's current NodeCache spec (read on every request: no copy to go stale). */
export function fanoutStateOf(getNodeCache: () => NodeCache | undefined): FanoutState {
  let seen: NodeCache | undefined;
  let byDigest = new Map<string, BlobAssignment>();
  const index = (): Map<string, BlobAssignment> => {
    const nc = getNodeCache();
    if (nc !== seen) {
      seen = nc;
      byDigest = new Map();
      for (const image of nc?.spec.images ?? []) {
        for (const piece of image.fanout ?? []) {
          const entry = byDigest.get(piece.digest) ?? { pieces: [] };
          // A blob shared by two images is listed under both: keep one copy of each piece.
          if (!entry.pieces.some((p) => p.offset === piece.offset))
            (entry.pieces as (typeof piece)[]).push(piece);
          byDigest.set(piece.digest, entry);
        }
      }
    }
    return byDigest;
  };
  return {
    assignment: (digest) => index().get(digest),
    endpoint: (node) => getNodeCache()?.spec.peers?.find((p) => p.node === node)?.endpoint,
    token: () => getNodeCache()?.spec.peerToken?.token,
  };
}

// The status side lives in report.ts (the reconciler loads it in every mode); kept importable from here.
export { imageSources, peerFailures } from "./report.ts";

export interface FanoutNodeOptions {
  mode: FanoutMode;
  criSocket: string;
  /** containerd's root (its content store), where blobs still downloading are read from. */
  containerdRoot?: string;
  /** Where the mirror spools the blobs it fetches piece by piece (src/agent/peer/mirror.ts). */
  spoolDir?: string;
  /** The fan-out secret (planned mode). */
  secret?: Buffer;
  bindAddress: string;
  peerPort: number;
  mirrorPort: number;
  servingBytesPerSecond?: number;
  servingConcurrency?: number;
  stallTimeoutMs?: number;
  cacheEndpoint: () => string | undefined;
  getNodeCache: () => NodeCache | undefined;
  log?: (message: string) => void;
}

export interface FanoutNode {
  peer?: PeerServer;
  mirror?: Mirror;
  stop(): Promise<void>;
}

/**
 * planned: the peer endpoint on bindAddress:peerPort and the mirror on 127.0.0.1:mirrorPort (only
 * this node's containerd talks to it). external and off: nothing runs; external changes only hosts.toml.
 */
export async function startFanoutNode(options: FanoutNodeOptions): Promise<FanoutNode> {
  if (options.mode !== "planned") return { stop: async () => {} };
  if (!options.secret || options.secret.length < 16) {
    throw new StowageError(
      "InvalidArgument",
      "fan-out mode planned needs the fan-out secret (--fanout-secret-file, 16+ bytes)",
    );
  }
  const store = new ContainerdContent(options.criSocket);
  let mirror: Mirror | undefined;
  const ingests = options.containerdRoot ? containerdIngests(options.containerdRoot) : undefined;
  const peer = await startPeerServer({
    store,
    // Blobs still downloading: every piece the mirror's spool holds, else as far as containerd
    // has them (its ingest, when its root is readable).
    partial: {
      get: async (digest) => (await mirror?.partial.get(digest)) ?? (await ingests?.get(digest)),
    },
    secret: options.secret,
    host: options.bindAddress,
    port: options.peerPort,
    maxConcurrent: options.servingConcurrency,
    bytesPerSecond: options.servingBytesPerSecond,
    log: options.log,
  });
  if (options.spoolDir) {
    await mkdir(options.spoolDir, { recursive: true, mode: 0o700 });
    // Spools a previous agent process left behind (it was killed mid-pull): nothing reads them.
    for (const name of await readdir(options.spoolDir))
      if (name.endsWith(".part")) await rm(join(options.spoolDir, name), { force: true });
  }
  mirror = await startMirror({
    spoolDir: options.spoolDir,
    cacheEndpoint: options.cacheEndpoint,
    state: fanoutStateOf(options.getNodeCache),
    host: "127.0.0.1",
    port: options.mirrorPort,
    stallTimeoutMs: options.stallTimeoutMs,
    log: options.log,
  });
  return {
    peer,
    mirror,
    stop: async () => {
      await Promise.all([peer.close(), mirror.close()]);
      store.close();
    },
  };
}
