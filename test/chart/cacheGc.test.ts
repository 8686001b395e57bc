/**
 * Eviction and the registry's garbage collection in the chart (`cache.gc`), the registry's upload
 * purging (`cache.uploadPurging`) and the scrape of the cache front's metrics, rendered by the real
 * helm. The controller's flags are parsed by the controller's own parser; the collection itself runs
 * in test/real/cache-gc-on-kubelet.test.ts.
 */
import { describe, expect, it } from "vitest";
import { parse } from "yaml";
import { collectionJob, type StatefulSet } from "../../src/controller/cachegc/cluster.ts";
import { parseControllerArgs } from "../../src/controller/command.ts";
import {
  containerOf,
  findObject,
  getObject,
  helmTemplate,
  NAMESPACE,
  RELEASE,
  type RenderedObject,
  render,
} from "./render.ts";

const GC_ROLE = `${RELEASE}-controller-cache-gc`;

async function controllerInvocation(objects: RenderedObject[]) {
  const [, ...args] =
    containerOf(getObject(objects, "Deployment", `${RELEASE}-controller`), "controller").args ?? [];
  const invocation = await parseControllerArgs(args, { POD_NAMESPACE: NAMESPACE });
  if (invocation === "help") throw new Error("unexpected help");
  return invocation;
}

const registryConfig = (objects: RenderedObject[]) =>
  parse(getObject(objects, "ConfigMap", `${RELEASE}-cache`).data["config.yml"]) as {
    storage: { maintenance?: { uploadpurging?: Record<string, unknown> } };
  };

describe("cache.gc in the chart", () => {
  it("is off by default: no eviction, no collection, no permission on the cache StatefulSet", async () => {
    const objects = await render();
    const invocation = await controllerInvocation(objects);
    expect(invocation.cacheGc).toBeUndefined();
    expect(invocation.registryGc).toBeUndefined();
    expect(findObject(objects, "Role", GC_ROLE)).toBeUndefined();
  });

  it("gives the controller the budget, the intervals and the cache StatefulSet to collect on", async () => {
    const objects = await render({
      values: [
        {
          cache: {
            gc: {
              enabled: true,
              sizeBudget: "200Gi",
              evictionInterval: "15m",
              collectInterval: "12h",
              collectTimeout: "30m",
            },
          },
        },
      ],
    });
    const invocation = await controllerInvocation(objects);
    expect(invocation.cacheGc).toEqual({ budgetBytes: 200 * 2 ** 30, intervalMs: 15 * 60_000 });
    expect(invocation.registryGc).toEqual({
      namespace: NAMESPACE,
      statefulSet: `${RELEASE}-cache`,
      intervalMs: 12 * 3600_000,
      timeoutMs: 30 * 60_000,
    });
    // the StatefulSet the controller patches is the one the chart renders
    expect(findObject(objects, "StatefulSet", `${RELEASE}-cache`)).toBeDefined();
  });

  it("collects only after evictions with collectInterval 0, and without a budget only on the interval", async () => {
    const afterEvictions = await controllerInvocation(
      await render({
        values: [{ cache: { gc: { enabled: true, sizeBudget: "1Ti", collectInterval: "0" } } }],
      }),
    );
    expect(afterEvictions.registryGc?.intervalMs).toBe(0);
    expect(afterEvictions.cacheGc?.budgetBytes).toBe(2 ** 40);
    const intervalOnly = await controllerInvocation(
      await render({ values: [{ cache: { gc: { enabled: true } } }] }),
    );
    expect(intervalOnly.cacheGc).toBeUndefined();
    expect(intervalOnly.registryGc?.intervalMs).toBe(24 * 3600_000);
  });

  it("grants the controller only what a collection needs, in the release namespace", async () => {
    const objects = await render({ values: [{ cache: { gc: { enabled: true } } }] });
    const role = getObject(objects, "Role", GC_ROLE);
    expect(role.metadata.namespace).toBe(NAMESPACE);
    expect(role.rules).toEqual([
      {
        apiGroups: ["apps"],
        resources: ["statefulsets"],
        resourceNames: [`${RELEASE}-cache`],
        verbs: ["get", "patch"],
      },
      { apiGroups: ["batch"], resources: ["jobs"], verbs: ["create"] },
      {
        apiGroups: ["batch"],
        resources: ["jobs"],
        resourceNames: [`${RELEASE}-cache-gc`],
        verbs: ["get", "delete"],
      },
      { apiGroups: [""], resources: ["pods"], verbs: ["get", "list"] },
      { apiGroups: ["events.k8s.io"], resources: ["events"], verbs: ["create", "patch"] },
      { apiGroups: [""], resources: ["events"], verbs: ["create", "patch"] },
    ]);
    const binding = getObject(objects, "RoleBinding", GC_ROLE);
    expect(binding.roleRef).toMatchObject({ kind: "Role", name: GC_ROLE });
    expect(binding.subjects).toEqual([
      { kind: "ServiceAccount", name: `${RELEASE}-controller`, namespace: NAMESPACE },
    ]);
    // nothing cluster-wide: no ClusterRole names StatefulSets or Jobs
    for (const clusterRole of objects.filter((o) => o.kind === "ClusterRole"))
      for (const rule of clusterRole.rules ?? [])
        expect(rule.resources ?? [], clusterRole.metadata.name).not.toEqual(
          expect.arrayContaining([expect.stringMatching(/^(statefulsets|jobs)$/)]),
        );
  });

  it("renders nothing for collections when the chart runs no cache", async () => {
    const objects = await render({
      values: [
        { cache: { enabled: false, externalUrl: "https://registry.internal:5000", gc: { enabled: true } } },
      ],
    });
    expect(findObject(objects, "Role", GC_ROLE)).toBeUndefined();
    expect((await controllerInvocation(objects)).registryGc).toBeUndefined();
  });

  it("refuses a budget, an interval or a timeout that is not one, naming the value", async () => {
    for (const [gc, field] of [
      [{ sizeBudget: "lots" }, "sizeBudget"],
      [{ collectInterval: "daily" }, "collectInterval"],
      [{ collectTimeout: "-1h" }, "collectTimeout"],
      [{ evictionInterval: "10" }, "evictionInterval"],
      [{ retention: "7d" }, "retention"],
    ] as const) {
      const result = await helmTemplate({ values: [{ cache: { gc } }] });
      expect(result.code, field).not.toBe(0);
      expect(result.stderr).toContain(field);
    }
  });
});

describe("cache.uploadPurging in the chart", () => {
  it("purges abandoned uploads by default, with the age and interval the values give", async () => {
    expect(registryConfig(await render()).storage.maintenance?.uploadpurging).toEqual({
      enabled: true,
      age: "24h",
      interval: "1h",
      dryrun: false,
    });
    const custom = await render({
      values: [{ cache: { uploadPurging: { enabled: false, age: "72h", interval: "6h" } } }],
    });
    expect(registryConfig(custom).storage.maintenance?.uploadpurging).toEqual({
      enabled: false,
      age: "72h",
      interval: "6h",
      dryrun: false,
    });
  });
});

describe("the cache front's metrics in the chart", () => {
  it("are on the cache Service and scraped by the ServiceMonitor as their own job", async () => {
    const objects = await render({
      apiVersions: ["monitoring.coreos.com/v1"],
      values: [{ cache: { front: { healthPort: 8082 } } }],
    });
    const service = getObject(objects, "Service", `${RELEASE}-cache`);
    expect(service.spec.ports).toContainEqual({
      name: "front-metrics",
      port: 8082,
      targetPort: "front-health",
      protocol: "TCP",
    });
    const statefulSet = getObject(objects, "StatefulSet", `${RELEASE}-cache`);
    const front = containerOf(statefulSet, "front") as unknown as {
      ports: { name: string; containerPort: number }[];
    };
    expect(front.ports).toContainEqual(
      expect.objectContaining({ name: "front-health", containerPort: 8082 }),
    );
    const monitor = getObject(objects, "ServiceMonitor", RELEASE);
    const endpoint = monitor.spec.endpoints.find((e: { port: string }) => e.port === "front-metrics");
    expect(endpoint).toMatchObject({ path: "/metrics" });
    expect(endpoint.relabelings).toContainEqual({
      targetLabel: "job",
      replacement: `${RELEASE}-cache-front`,
    });
  });

  it("are not scraped when the chart runs no front", async () => {
    const objects = await render({
      apiVersions: ["monitoring.coreos.com/v1"],
      values: [{ cache: { front: { enabled: false } } }],
    });
    const service = getObject(objects, "Service", `${RELEASE}-cache`);
    expect(service.spec.ports.map((p: { name: string }) => p.name)).not.toContain("front-metrics");
    const monitor = getObject(objects, "ServiceMonitor", RELEASE);
    expect(monitor.spec.endpoints.map((e: { port: string }) => e.port)).toEqual(["http-metrics"]);
  });
});

describe("the garbage-collect Job the controller makes from the rendered cache StatefulSet", () => {
  const matches = (selector: Record<string, string>, labels: Record<string, string>) =>
    Object.entries(selector).every(([k, v]) => labels[k] === v);

  it("mounts replica 0's claim on its node, with the registry's image, config and user, never the read-only setting", async () => {
    const objects = await render({ values: [{ cache: { gc: { enabled: true } } }] });
    const sts = getObject(objects, "StatefulSet", `${RELEASE}-cache`) as unknown as StatefulSet;
    const registry = containerOf(sts as unknown as RenderedObject, "registry");
    // as the StatefulSet is while a collection holds it read-only
    registry.env = [
      ...(registry.env ?? []),
      { name: "REGISTRY_STORAGE_MAINTENANCE_READONLY", value: '{"enabled":true}' },
    ];
    const job = collectionJob(sts, { namespace: NAMESPACE, jobTimeoutMs: 3600_000, node: "gpu-node-7" });
    const pod = job.spec.template.spec;
    expect(pod.nodeName).toBe("gpu-node-7");
    expect(pod.restartPolicy).toBe("Never");
    expect(job.spec).toMatchObject({ backoffLimit: 0, activeDeadlineSeconds: 3600 });
    const [container] = pod.containers;
    expect(container.image).toBe((registry as { image?: string }).image);
    expect(container.image).toBeTruthy();
    expect(container.args).toEqual(["garbage-collect", "/etc/docker/registry/config.yml"]);
    expect(container.volumeMounts).toEqual(registry.volumeMounts);
    expect((container.env ?? []).map((e: { name: string }) => e.name)).not.toContain(
      "REGISTRY_STORAGE_MAINTENANCE_READONLY",
    );
    expect(pod.volumes).toContainEqual({
      name: "data",
      persistentVolumeClaim: { claimName: `data-${RELEASE}-cache-0` },
    });
    expect(pod.volumes).toContainEqual({ name: "config", configMap: { name: `${RELEASE}-cache` } });
    expect(pod.securityContext).toEqual(
      (sts.spec.template.spec as { securityContext: unknown }).securityContext,
    );
    // the cache Service and the StatefulSet never take this pod for a cache replica
    const service = getObject(objects, "Service", `${RELEASE}-cache`);
    expect(matches(service.spec.selector, job.spec.template.metadata.labels)).toBe(false);
    expect(matches(sts.spec.selector.matchLabels ?? {}, job.spec.template.metadata.labels)).toBe(false);
  });

  it("on S3 takes the bucket credentials and the http secret and is pinned nowhere", async () => {
    const objects = await render({
      values: [
        {
          cache: {
            replicas: 2,
            s3: {
              enabled: true,
              bucket: "cache",
              regionEndpoint: "http://s3.internal:8333",
              existingSecret: "s3-keys",
            },
            httpSecret: { existingSecret: "cache-http" },
            gc: { enabled: true },
          },
        },
      ],
    });
    const sts = getObject(objects, "StatefulSet", `${RELEASE}-cache`) as unknown as StatefulSet;
    const job = collectionJob(sts, { namespace: NAMESPACE, jobTimeoutMs: 600_000 });
    const pod = job.spec.template.spec;
    expect(pod.nodeName).toBeUndefined();
    expect(pod.volumes.some((v: { persistentVolumeClaim?: unknown }) => v.persistentVolumeClaim)).toBe(false);
    expect(pod.containers[0].env).toEqual(
      expect.arrayContaining([
        {
          name: "REGISTRY_STORAGE_S3_ACCESSKEY",
          valueFrom: { secretKeyRef: { name: "s3-keys", key: "accessKey" } },
        },
        {
          name: "REGISTRY_STORAGE_S3_SECRETKEY",
          valueFrom: { secretKeyRef: { name: "s3-keys", key: "secretKey" } },
        },
        {
          name: "REGISTRY_HTTP_SECRET",
          valueFrom: { secretKeyRef: { name: "cache-http", key: "http-secret" } },
        },
      ]),
    );
  });
});
