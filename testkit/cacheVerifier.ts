/**
 * Reads a whole registry back the way a node would pull it: every repository of the catalog,
 * every tag, every manifest (index children included), and every blob hashed against its
 * digest. The hostile suite runs it after each fault: a fault may fail a copy, never leave a
 * manifest whose blobs are missing or corrupt.
 */
import { RegistryClient } from "../src/oci/registry.ts";
import { verifyImage } from "../src/oci/verify.ts";
import { StowageError } from "../src/util/errors.ts";

export interface CacheReport {
  repositories: number;
  tags: number;
  manifests: number;
  blobs: number;
  /** One line per problem: `repo:tag: what is wrong`; empty when the cache is sound. */
  problems: string[];
}

export async function verifyCache(
  registry: string,
  options: { insecure?: boolean } = {},
): Promise<CacheReport> {
  const client = new RegistryClient({
    insecureHosts: options.insecure === false ? [] : [registry],
    retry: { attempts: 2, baseDelayMs: 10, maxDelayMs: 50 },
  });
  const report: CacheReport = { repositories: 0, tags: 0, manifests: 0, blobs: 0, problems: [] };
  try {
    for (const repository of await client.listRepositories(registry)) {
      report.repositories++;
      const repo = { registry, repository };
      // A repository holding only blobs (a copy that failed before its manifest) has no tags.
      const tags = await client.listTags(repo).catch((err: unknown) => {
        if (err instanceof StowageError && err.reason === "ImageNotFound") return [];
        throw err;
      });
      for (const tag of tags) {
        report.tags++;
        try {
          const result = await verifyImage(client, repo, tag);
          report.manifests += result.manifests;
          report.blobs += result.blobs;
          for (const bad of result.corrupt) report.problems.push(`${repository}:${tag}: ${bad.message}`);
        } catch (err) {
          report.problems.push(`${repository}:${tag}: ${(err as Error).message}`);
        }
      }
    }
  } finally {
    await client.close();
  }
  return report;
}
