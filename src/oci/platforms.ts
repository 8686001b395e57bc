/**
 * Platforms as written by people ("linux/arm64/v8") and as found in image indexes and configs,
 * and the choice of which manifests of an index to copy.
 */
import { StowageError } from "../util/errors.ts";
import type { Descriptor, ImageIndex, Platform } from "./types.ts";

const componentPattern = /^[a-z0-9_.-]+$/;

/** "linux/amd64", "linux/arm64/v8", "windows/amd64" → Platform. Throws InvalidArgument on anything else. */
export function parsePlatform(input: string): Platform {
  const text = input.trim();
  const parts = text.split("/");
  if (parts.length < 2 || parts.length > 3) {
    throw new StowageError(
      "InvalidArgument",
      `invalid platform "${input}": expected os/architecture[/variant], e.g. linux/amd64 or linux/arm64/v8`,
    );
  }
  for (const part of parts) {
    if (!componentPattern.test(part)) {
      throw new StowageError(
        "InvalidArgument",
        `invalid platform "${input}": "${part}" must be lowercase letters, digits, '.', '_' or '-'`,
      );
    }
  }
  const [os, architecture, variant] = parts;
  return normalizePlatform(variant ? { os, architecture, variant } : { os, architecture });
}

/** Parses a list of platform flags, each possibly a comma list ("linux/amd64,linux/arm64"). */
export function parsePlatformList(inputs: string[]): Platform[] {
  const platforms: Platform[] = [];
  for (const input of inputs) {
    for (const piece of input.split(",")) {
      if (piece.trim() === "") continue;
      const platform = parsePlatform(piece);
      if (!platforms.some((p) => formatPlatform(p) === formatPlatform(platform))) platforms.push(platform);
    }
  }
  return platforms;
}

/** "linux/amd64", "linux/arm64/v8" (variant only when present). */
export function formatPlatform(platform: Platform): string {
  const base = `${platform.os}/${platform.architecture}`;
  return platform.variant ? `${base}/${platform.variant}` : base;
}

/** Common aliases folded the way containerd's platforms package does (aarch64 → arm64, x86_64 → amd64). */
export function normalizePlatform(platform: Platform): Platform {
  const os = platform.os.toLowerCase();
  let architecture = platform.architecture.toLowerCase();
  let variant = platform.variant?.toLowerCase();
  if (architecture === "x86_64" || architecture === "x86-64") architecture = "amd64";
  if (architecture === "aarch64") architecture = "arm64";
  if (architecture === "armhf") {
    architecture = "arm";
    variant = "v7";
  }
  if (architecture === "armel") {
    architecture = "arm";
    variant = "v6";
  }
  if (architecture === "i386") architecture = "386";
  const normalized: Platform = { ...platform, os, architecture };
  if (variant) normalized.variant = variant;
  else delete normalized.variant;
  return normalized;
}

/** The variant an architecture has when none is written: arm64 is v8, arm is v7. */
function defaultVariant(architecture: string): string | undefined {
  if (architecture === "arm64") return "v8";
  if (architecture === "arm") return "v7";
  return undefined;
}

/**
 * Whether `candidate` (from an index or a config) satisfies `wanted` (from the user).
 * os and architecture must be equal; a wanted variant must match the candidate's, where a
 * missing variant stands for the architecture's default (so linux/arm64 matches v8 or none).
 */
export function matchesPlatform(wanted: Platform, candidate: Platform | undefined): boolean {
  if (!candidate?.os || !candidate.architecture) return false;
  const w = normalizePlatform(wanted);
  const c = normalizePlatform(candidate);
  if (w.os !== c.os || w.architecture !== c.architecture) return false;
  const wantedVariant = w.variant ?? defaultVariant(w.architecture);
  const candidateVariant = c.variant ?? defaultVariant(c.architecture);
  return wantedVariant === candidateVariant;
}

export interface PlatformSelection {
  selected: Descriptor[];
  /** True when every child of the index was selected, so the index can be copied byte-exact. */
  keepsAll: boolean;
}

/**
 * Picks the index entries to copy. `platforms` undefined = every entry. Entries without a
 * platform (attestations, artifacts) are kept only when every platform is kept; with a
 * filter, an attestation whose `vnd.docker.reference.digest` points at a selected manifest
 * is kept too, so provenance travels with the image it describes.
 */
export function selectManifests(index: ImageIndex, platforms?: Platform[]): PlatformSelection {
  const entries = index.manifests ?? [];
  if (!platforms || platforms.length === 0) return { selected: [...entries], keepsAll: true };
  const missing = platforms.filter((wanted) => !entries.some((d) => matchesPlatform(wanted, d.platform)));
  if (missing.length === platforms.length) {
    throw new StowageError(
      "PlatformNotFound",
      `no manifest for platform ${platforms.map(formatPlatform).join(", ")}; the index has ${describePlatforms(entries)}`,
    );
  }
  const chosen = new Set<string>();
  for (const descriptor of entries) {
    if (platforms.some((wanted) => matchesPlatform(wanted, descriptor.platform)))
      chosen.add(descriptor.digest);
  }
  for (const descriptor of entries) {
    const describes = descriptor.annotations?.["vnd.docker.reference.digest"];
    if (describes && chosen.has(describes)) chosen.add(descriptor.digest);
  }
  const selected = entries.filter((d) => chosen.has(d.digest));
  return { selected, keepsAll: selected.length === entries.length };
}

/** "linux/amd64, linux/arm64/v8" for error messages. */
export function describePlatforms(entries: Descriptor[]): string {
  const names = entries.filter((d) => d.platform).map((d) => formatPlatform(d.platform as Platform));
  return names.length > 0 ? names.join(", ") : "no platform entries";
}

/** Checks a single manifest's config platform against a filter (PlatformNotFound when it does not match). */
export function checkSinglePlatform(
  config: Partial<Platform>,
  platforms: Platform[] | undefined,
  ref: string,
): void {
  if (!platforms || platforms.length === 0) return;
  if (!config.os || !config.architecture) return; // artifacts: no platform to check against
  const platform = config as Platform;
  if (!platforms.some((wanted) => matchesPlatform(wanted, platform))) {
    throw new StowageError(
      "PlatformNotFound",
      `${ref} is a single-platform image for ${formatPlatform(platform)}, not ${platforms.map(formatPlatform).join(", ")}`,
    );
  }
}
