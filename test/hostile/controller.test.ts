/**
 * The hostile suite through the ModelImage controller (on the API double): what reaches
 * status conditions when the upstream is testkit/hostileRegistry.ts and the cache is a real
 * CNCF distribution behind testkit/faultProxy.ts. The cache verifier reads the whole cache
 * after every case.
 */
import { readFile, writeFile } from "node:fs/promises";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { verifyCache } from "../../testkit/cacheVerifier.ts";
import { type FaultProxy, startFaultProxy } from "../../testkit/faultProxy.ts";
import { type HostileRegistry, startHostileRegistry } from "../../testkit/hostileRegistry.ts";
import { buildImage, type SyntheticImage } from "../../testkit/images.ts";
import { type RunningRegistry, startRegistry } from "../../testkit/registry.ts";
import {
  condition,
  createModelImage,
  createNamespaces,
  eventsFor,
  OffsetClock,
  startCluster,
  startController,
  waitForCondition,
} from "../controller/modelimage-harness.ts";
import { eventually } from "../kube/helpers.ts";

let cluster: Awaited<ReturnType<typeof startCluster>>;
let hostile: HostileRegistry;
let cache: RunningRegistry;
let front: FaultProxy;
let controller: Awaited<ReturnType<typeof startController>>;
/** Talks to the cache directly and verifies cached images every minute of its clock. */
let verifying: Awaited<ReturnType<typeof startController>>;
const verifyClock = new OffsetClock();
/** One image per repository, with layers of its own, so the cache never mounts them from another. */
const images = new Map<string, SyntheticImage>();

async function contents(of: SyntheticImage): Promise<Buffer[]> {
  const blobs: Buffer[] = [];
  for (const blob of of.blobs) {
    const chunks: Buffer[] = [];
    for await (const chunk of blob.open()) chunks.push(chunk as Buffer);
    blobs.push(Buffer.concat(chunks));
  }
  return blobs;
}

beforeAll(async () => {
  [cluster, hostile, cache] = await Promise.all([startCluster(), startHostileRegistry(), startRegistry()]);
  front = await startFaultProxy(cache.url);
  for (const repository of ["h/ok", "h/limited", "h/html", "h/metadata", "h/cut", "h/corrupt"]) {
    const image = await buildImage({
      layers: [{ seed: `hostile-controller/${repository}`, size: 2_000_000 }],
    });
    images.set(repository, image);
    hostile.put(repository, "v1", image.manifest, await contents(image));
  }
  await createNamespaces(cluster.client, "hostile", "verify");
  verifying = await startController(
    cluster.client,
    {
      cache: { registry: cache.host, insecure: true },
      insecureRegistries: [hostile.host],
      namespaces: ["verify"],
      verifyIntervalMs: 60_000,
    },
    verifyClock,
  );
  controller = await startController(cluster.client, {
    cache: { registry: front.host, insecure: true },
    insecureRegistries: [hostile.host],
    namespaces: ["hostile"],
  });
}, 60_000);

afterEach(async () => {
  const report = await verifyCache(cache.host);
  expect(report.problems).toEqual([]);
});

afterAll(async () => {
  await Promise.all([controller?.stop(), verifying?.stop()]);
  await front?.stop();
  await Promise.all([cluster?.api.stop(), hostile?.stop(), cache?.stop()]);
});

describe("what the controller reports about a hostile upstream", () => {
  it("reports a long Retry-After as 'retrying in Ns' in status, while other ModelImages sync", async () => {
    hostile.addRule({
      match: { path: /^\/v2\/h\/limited\/manifests\// },
      times: Number.POSITIVE_INFINITY,
      action: { kind: "status", status: 429, retryAfter: "120" },
    });
    await createModelImage(cluster.client, "hostile", "limited", { image: `${hostile.host}/h/limited:v1` });
    await createModelImage(cluster.client, "hostile", "ok", { image: `${hostile.host}/h/ok:v1` });
    const limited = await waitForCondition(
      cluster.client,
      "hostile",
      "limited",
      "Synced",
      "False",
      "RateLimited",
    );
    expect(condition(limited, "Synced")?.message).toContain("retrying in 120s (Retry-After)");
    await waitForCondition(cluster.client, "hostile", "ok", "Synced", "True");
  });

  it("puts an HTML error page into the condition as one short plain line", async () => {
    hostile.addRule({
      // GET only: the up-to-date check's HEAD has no body to show.
      match: { method: "GET", path: /^\/v2\/h\/html\/manifests\// },
      times: Number.POSITIVE_INFINITY,
      action: {
        kind: "status",
        status: 500,
        contentType: "text/html",
        body: `<html><body><h1>Upstream\u001b[2J exploded</h1><script>steal()</script>${"<p>pad</p>".repeat(50_000)}</body></html>`,
      },
    });
    await createModelImage(cluster.client, "hostile", "html", { image: `${hostile.host}/h/html:v1` });
    const mi = await waitForCondition(
      cluster.client,
      "hostile",
      "html",
      "Synced",
      "False",
      "UpstreamUnavailable",
    );
    const message = condition(mi, "Synced")?.message ?? "";
    expect(message).toContain("Upstream exploded");
    expect(message).not.toMatch(/[<>]|steal|\[2J/);
    expect(message).not.toContain("\u001b");
    expect(message.length).toBeLessThan(1000);
  });

  it("refuses a blob redirect to the cloud metadata address and says so in status", async () => {
    const layer = images.get("h/metadata")?.layers[0].descriptor.digest;
    hostile.addRule({
      match: { method: "GET", path: new RegExp(`^/v2/h/metadata/blobs/${layer}$`) },
      times: Number.POSITIVE_INFINITY,
      action: { kind: "redirect", location: "http://169.254.169.254/latest/meta-data/" },
    });
    await createModelImage(cluster.client, "hostile", "metadata", { image: `${hostile.host}/h/metadata:v1` });
    const mi = await waitForCondition(
      cluster.client,
      "hostile",
      "metadata",
      "Synced",
      "False",
      "UpstreamUnavailable",
    );
    expect(condition(mi, "Synced")?.message).toContain("link-local or cloud metadata address");
  });

  it("retries an upload the cache cut mid-body and becomes Synced", async () => {
    const hex = images.get("h/cut")?.layers[0].descriptor.digest.slice("sha256:".length);
    front.addRule({
      match: {
        method: "PUT",
        path: new RegExp(`/v2/${hostile.host.replace(/[.:]/g, "[._:]")}/h/cut/.*sha256%3A${hex}`),
      },
      action: { kind: "resetAfterRequestBytes", bytes: 500_000 },
    });
    await createModelImage(cluster.client, "hostile", "cut", { image: `${hostile.host}/h/cut:v1` });
    await waitForCondition(cluster.client, "hostile", "cut", "Synced", "True");
    expect(front.seen().some((r) => r.fault === "resetAfterRequestBytes")).toBe(true);
  });
});

describe("corruption in the cache", () => {
  it("finds a flipped byte in a cached blob on the verify schedule and reports DigestMismatch while the cache keeps it", async () => {
    await createModelImage(cluster.client, "verify", "corrupt", { image: `${hostile.host}/h/corrupt:v1` });
    await waitForCondition(cluster.client, "verify", "corrupt", "Synced", "True");
    const hex = images.get("h/corrupt")?.layers[0].descriptor.digest.slice("sha256:".length) ?? "";
    const dataPath = `${cache.storageDir}/docker/registry/v2/blobs/sha256/${hex.slice(0, 2)}/${hex}/data`;
    const bytes = await readFile(dataPath);
    bytes[4096] ^= 0xff;
    await writeFile(dataPath, bytes);
    try {
      verifyClock.offsetMs += 120_000;
      verifying.controller.enqueue("verify/corrupt");
      const mi = await waitForCondition(
        cluster.client,
        "verify",
        "corrupt",
        "Synced",
        "False",
        "DigestMismatch",
      );
      const message = condition(mi, "Synced")?.message ?? "";
      expect(message).toContain(`blob sha256:${hex}`);
      expect(message).toContain("still serves corrupt content after re-copying it");
    } finally {
      bytes[4096] ^= 0xff;
      await writeFile(dataPath, bytes);
    }
    verifyClock.offsetMs += 120_000;
    verifying.controller.enqueue("verify/corrupt");
    await waitForCondition(cluster.client, "verify", "corrupt", "Synced", "True");
  });

  it("re-copies a blob missing from the cached repository on the verify schedule", async () => {
    await createModelImage(cluster.client, "verify", "missing", { image: `${hostile.host}/h/corrupt:v1` });
    await waitForCondition(cluster.client, "verify", "missing", "Synced", "True");
    const layer = images.get("h/corrupt")?.layers[0].descriptor.digest ?? "";
    const repository = `${hostile.host.replace(":", "_")}/h/corrupt`;
    const unlinked = await fetch(`${cache.url}/v2/${repository}/blobs/${layer}`, { method: "DELETE" });
    expect(unlinked.status).toBe(202);
    verifyClock.offsetMs += 120_000;
    verifying.controller.enqueue("verify/missing");
    await eventually("a CacheRepaired event", async () =>
      (await eventsFor(cluster.client, "verify", "missing")).some((e) => e.reason === "CacheRepaired"),
    );
    const head = await fetch(`${cache.url}/v2/${repository}/blobs/${layer}`, { method: "HEAD" });
    expect(head.status).toBe(200);
  });
});
