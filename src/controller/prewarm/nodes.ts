/**
 * What the planner reads from a Node: can it take images now, which platform does it pull,
 * which CUDA version does its driver support. Pure functions of the Node object.
 */
import { WARMING_TAINT_KEY } from "../../api/labels.ts";
import type { KubeObject } from "../../kube/client.ts";
import type { Platform } from "../../oci/types.ts";
import { isNodeReady, nodePlatform } from "../modelimage/plan.ts";

export { isNodeReady, nodePlatform };

export interface Taint {
  key: string;
  value?: string;
  effect: string;
  timeAdded?: string;
}

export interface PlannerNode extends KubeObject {
  spec?: { unschedulable?: boolean; taints?: Taint[] };
  status?: {
    conditions?: { type: string; status: string }[];
    nodeInfo?: { operatingSystem?: string; architecture?: string };
    addresses?: { type: string; address: string }[];
  };
}

/** The node's InternalIP (the address peers reach its agent on), if it reports one. */
export function internalIpOf(node: PlannerNode): string | undefined {
  return node.status?.addresses?.find((a) => a.type === "InternalIP")?.address;
}

/** Ready and not cordoned: a node that may be given new images. (The warming taint is tolerated; it exists for us.) */
export function acceptsNewImages(node: PlannerNode): boolean {
  return isNodeReady(node) && !node.spec?.unschedulable;
}

export function hasWarmingTaint(node: PlannerNode): boolean {
  return node.spec?.taints?.some((t) => t.key === WARMING_TAINT_KEY) ?? false;
}

export function platformOf(node: PlannerNode): Platform | undefined {
  const platform = nodePlatform(node);
  if (platform?.architecture === "arm64" && !platform.variant) platform.variant = "v8";
  return platform;
}

export interface CudaVersion {
  major: number;
  minor: number;
}

export function formatCuda(v: CudaVersion): string {
  return `${v.major}.${v.minor}`;
}

export function cudaAtLeast(have: CudaVersion, need: CudaVersion): boolean {
  return have.major > need.major || (have.major === need.major && have.minor >= need.minor);
}

/**
 * Minimum Linux driver (major.minor) of each CUDA toolkit release, from NVIDIA's CUDA release
 * notes ("CUDA Toolkit and Corresponding Driver Versions"), newest first.
 */
const CUDA_BY_DRIVER: readonly [driverMajor: number, driverMinor: number, cuda: CudaVersion][] = [
  [580, 65, { major: 13, minor: 0 }],
  [575, 51, { major: 12, minor: 9 }],
  [570, 26, { major: 12, minor: 8 }],
  [560, 28, { major: 12, minor: 6 }],
  [555, 42, { major: 12, minor: 5 }],
  [550, 54, { major: 12, minor: 4 }],
  [545, 23, { major: 12, minor: 3 }],
  [535, 54, { major: 12, minor: 2 }],
  [530, 30, { major: 12, minor: 1 }],
  [525, 60, { major: 12, minor: 0 }],
  [520, 61, { major: 11, minor: 8 }],
  [515, 43, { major: 11, minor: 7 }],
  [510, 39, { major: 11, minor: 6 }],
  [495, 29, { major: 11, minor: 5 }],
  [470, 42, { major: 11, minor: 4 }],
  [465, 19, { major: 11, minor: 3 }],
  [460, 27, { major: 11, minor: 2 }],
  [455, 23, { major: 11, minor: 1 }],
  [450, 36, { major: 11, minor: 0 }],
  [440, 33, { major: 10, minor: 2 }],
  [418, 39, { major: 10, minor: 1 }],
  [410, 48, { major: 10, minor: 0 }],
];

/** The newest driver branch the table knows (580, CUDA 13.0). */
const NEWEST_DRIVER_BRANCH = CUDA_BY_DRIVER[0][0];

/** The newest CUDA version a driver `major.minor` supports (undefined for drivers older than CUDA 10). */
export function cudaForDriver(driverMajor: number, driverMinor: number): CudaVersion | undefined {
  for (const [major, minor, cuda] of CUDA_BY_DRIVER) {
    if (driverMajor > major || (driverMajor === major && driverMinor >= minor)) return cuda;
  }
  return undefined;
}

export interface NodeCuda {
  /** The driver version as labelled (`550.54`). */
  driver: string;
  /** The newest CUDA it supports. */
  cuda: CudaVersion | undefined;
}

/**
 * The node's NVIDIA driver, from GPU feature discovery labels: `nvidia.com/cuda.driver.major/.minor`
 * or the newer `nvidia.com/cuda.driver-version.major/.minor`. (`nvidia.com/cuda.runtime*` labels
 * describe the CUDA runtime, not the driver, and are not read.) Undefined when the node says nothing:
 * the planner cannot tell and does not skip it.
 */
export function nodeCudaDriver(node: PlannerNode): NodeCuda | undefined {
  const labels = node.metadata?.labels ?? {};
  for (const prefix of ["nvidia.com/cuda.driver-version", "nvidia.com/cuda.driver"]) {
    const major = Number.parseInt(labels[`${prefix}.major`] ?? "", 10);
    if (!Number.isFinite(major)) continue;
    const minor = Number.parseInt(labels[`${prefix}.minor`] ?? "0", 10) || 0;
    // A driver branch newer than the table's newest supports CUDA the table does not list yet
    // (CUDA 13.1 and later): capping it at the newest row would skip a node that can run the
    // image, so the planner is told it cannot tell, as for a node without driver labels.
    if (major > NEWEST_DRIVER_BRANCH) return undefined;
    return { driver: `${major}.${minor}`, cuda: cudaForDriver(major, minor) };
  }
  return undefined;
}

/** `CUDA_VERSION=12.4.1` / `com.nvidia.cuda.version=12.4.1` → 12.4. */
export function parseCudaVersion(text: string | undefined): CudaVersion | undefined {
  const match = /^\s*(\d+)\.(\d+)/.exec(text ?? "");
  return match ? { major: Number(match[1]), minor: Number(match[2]) } : undefined;
}
