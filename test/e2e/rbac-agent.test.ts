/**
 * The node agent's RBAC proved: `stowage agent` runs beside a real containerd with a token of the
 * chart's agent ServiceAccount and exactly the RBAC `helm template` renders
 * (test/e2e/chartStowage.ts), next to the controller whose planner writes its NodeCache. It pulls
 * what it is given and reports it; it cannot write the spec or read Secrets; without any one of
 * its rules, something it does is refused. The core/v1 Events rule is for clusters that do not
 * serve events.k8s.io/v1: a real control plane started without it shows that one (the double
 * always serves events.k8s.io/v1).
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { NodeCacheResource } from "../../src/api/nodeCache.ts";
import { KubeClient, Resources } from "../../src/kube/client.ts";
import { apiBackend } from "../../testkit/cluster.ts";
import {
  agentServiceAccount,
  describeRule,
  helmTemplate,
  type RenderedRule,
  rbacOf,
  releaseNamespace,
  renderedRules,
} from "./chartRbac.ts";
import {
  agentUser,
  type ChartStowage,
  grantedBy,
  needOf,
  nodeName,
  refusedWithout,
  startChartStowage,
} from "./chartStowage.ts";
import { eventually } from "./helpers.ts";

// biome-ignore lint/suspicious/noExplicitAny: objects read back as free-form JSON
type Json = any;

const real = apiBackend() === "real";
const agentRules = renderedRules(rbacOf(await helmTemplate({}))).filter(
  (rule) => needOf(rule)?.component === "agent",
);

/** Takes `rule` away and checks that what was refused is exactly what it grants the agent. */
async function expectRefusedWithout(env: ChartStowage, rule: RenderedRule): Promise<void> {
  const removed = env.rules.find((r) => r.id === rule.id) as RenderedRule;
  expect(removed, `${rule.id} rendered`).toBeDefined();
  const refused = await refusedWithout(env, removed);
  expect(refused.length).toBeGreaterThan(0);
  expect(refused.filter((r) => grantedBy(removed, [r], agentUser).length === 0)).toEqual([]);
  if (real) expect(new Set(refused.map((r) => r.user))).toEqual(new Set([agentUser]));
}

/** The agent's Pulled events about its NodeCache, in namespace default (events.k8s.io or core). */
async function pulledEvents(env: ChartStowage, api: "events.k8s.io" | "core"): Promise<Json[]> {
  const kind = api === "core" ? "events" : "events.events.k8s.io";
  const list = JSON.parse(await env.cluster.kubectlOk(["get", kind, "-n", "default", "-o", "json"]));
  return list.items.filter(
    (e: Json) => e.reason === "Pulled" && (e.regarding ?? e.involvedObject)?.name === nodeName,
  );
}

describe("the node agent with exactly the chart's RBAC", () => {
  let env: ChartStowage;

  beforeAll(async () => {
    env = await startChartStowage({ values: {} });
  });

  afterAll(async () => {
    await env?.dispose();
  });

  it("pulls what the planner gives its node to Present and says so in status and an Event, without a 403", async () => {
    await env.resetRequests();
    await env.start();
    const probe = await env.probe();
    await env.waitWorking(probe);
    const events = await eventually("the agent's Pulled event", async () => {
      const found = await pulledEvents(env, "events.k8s.io");
      return found.length > 0 ? found : undefined;
    });
    expect(events[0].note).toContain(probe.image.digest);
    const requests = await env.requests();
    expect(requests.filter((r) => r.status === 403)).toEqual([]);
    if (real) {
      const status = requests.filter(
        (r) => r.path === `/apis/stowage.dev/v1alpha1/nodecaches/${nodeName}/status`,
      );
      expect(status.length).toBeGreaterThan(0);
      expect(new Set(status.map((r) => r.user))).toEqual(new Set([agentUser]));
    }
  });

  it("cannot write the spec the planner owns, nor read Secrets, with the same token", async () => {
    const agent = KubeClient.load({ path: await env.agentKubeconfig() });
    try {
      const refusal = (promise: Promise<unknown>) =>
        promise.then(
          () => "allowed",
          (err: Error) => err.message,
        );
      expect(
        await refusal(agent.resource(NodeCacheResource).patch(nodeName, { spec: { images: [] } } as never)),
      ).toContain(
        `User "system:serviceaccount:${releaseNamespace}:${agentServiceAccount}" cannot patch resource "nodecaches" in API group "stowage.dev"`,
      );
      expect(await refusal(agent.resource(Resources.Secret).list({ namespace: releaseNamespace }))).toContain(
        `cannot list resource "secrets" in API group "" in the namespace "${releaseNamespace}"`,
      );
    } finally {
      agent.close();
    }
  });

  for (const rule of agentRules.filter((r) => !needOf(r)?.eventsV1Off)) {
    it(`is refused without ${describeRule(rule)}: ${needOf(rule)?.what}`, async () => {
      await expectRefusedWithout(env, rule);
    });
  }
});

describe.runIf(real)(
  "the node agent with the chart's RBAC on a cluster that does not serve events.k8s.io/v1",
  () => {
    let env: ChartStowage;

    beforeAll(async () => {
      env = await startChartStowage({
        values: {},
        controlPlane: { apiserverFlags: ["--runtime-config=events.k8s.io/v1=false"] },
      });
    });

    afterAll(async () => {
      await env?.dispose();
    });

    it("records its Events as core/v1 Events, without a 403", async () => {
      await env.resetRequests();
      await env.start();
      const probe = await env.probe();
      await env.waitWorking(probe);
      const events = await eventually("the agent's core/v1 Pulled event", async () => {
        const found = await pulledEvents(env, "core");
        return found.length > 0 ? found : undefined;
      });
      expect(events[0].message).toContain(probe.image.digest);
      expect((await env.requests()).filter((r) => r.status === 403)).toEqual([]);
    });

    for (const rule of agentRules.filter((r) => needOf(r)?.eventsV1Off)) {
      it(`is refused without ${describeRule(rule)}: ${needOf(rule)?.what}`, async () => {
        await expectRefusedWithout(env, rule);
      });
    }
  },
);
