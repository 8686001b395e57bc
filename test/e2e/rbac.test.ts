/**
 * RBAC proved, not claimed: Stowage's processes (the controller with its pre-warm planner and
 * leader election, the node agent beside a real containerd) run with tokens of the chart's
 * ServiceAccounts and exactly the RBAC objects `helm template` renders (test/e2e/chartStowage.ts).
 * Every rendered rule is needed: taken away alone, something its process does is refused.
 * Webhook rules: rbac-webhook.test.ts; the agent's: rbac-agent.test.ts.
 *
 * On the real control plane this proves authentication too: the audit log names the
 * ServiceAccount of every request, and no request is anonymous. The API double treats a request
 * without a token as its admin, so there "no 403" alone would prove nothing; what it can show is
 * the 403 each missing rule causes, which only a request carrying the ServiceAccount's token gets.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { KubeClient, Resources } from "../../src/kube/client.ts";
import { apiBackend } from "../../testkit/cluster.ts";
import type { ControllerProcess } from "../../testkit/controllerProcess.ts";
import {
  controllerServiceAccount,
  describeRule,
  helmTemplate,
  type LoggedRequest,
  type RenderedRule,
  rbacOf,
  releaseNamespace,
  renderedRules,
} from "./chartRbac.ts";
import {
  agentUser,
  type ChartStowage,
  controllerUser,
  grantedBy,
  ModelImages,
  modelNamespace,
  needOf,
  needsWithoutRule,
  type Probe,
  refusedWithout,
  startChartStowage,
} from "./chartStowage.ts";
import { dockerConfigSecret, eventually, modelImage } from "./helpers.ts";

const real = apiBackend() === "real";

// The configurations whose rules the chart renders differently; rules are taken from these renders.
const renders = await Promise.all(
  [{}, { webhook: true }, { watchNamespaces: ["ml"] }, { webhook: true, watchNamespaces: ["ml"] }].map(
    async (values) => renderedRules(rbacOf(await helmTemplate(values))),
  ),
);
const webhookRules = renders[1];

describe("the chart's RBAC rules", () => {
  it("each say which path of which process needs them, and each such statement names a rendered rule", () => {
    const all = renders.flat();
    expect(all.filter((rule) => !needOf(rule)).map(describeRule)).toEqual([]);
    expect(needsWithoutRule(all)).toEqual([]);
    expect(all.every((rule) => rule.grantees.length > 0)).toBe(true);
  });
});

/** Requests of `user` that only `rule` among `rules` grants. */
function onlyGrantedBy(rule: RenderedRule, rules: RenderedRule[], requests: LoggedRequest[], user: string) {
  return grantedBy(rule, requests, user).filter(
    (request) => !rules.some((other) => other !== rule && grantedBy(other, [request], user).length > 0),
  );
}

describe("Stowage with exactly the RBAC the chart renders (webhook on, all namespaces)", () => {
  let env: ChartStowage;
  let baseline: LoggedRequest[] = [];

  beforeAll(async () => {
    env = await startChartStowage({
      values: { webhook: true },
      // A hardened apiserver: writing ownerReferences needs delete on the object (the planner's
      // NodeCaches point at their Node), blockOwnerDeletion needs update on the owner's finalizers.
      controlPlane: { apiserverFlags: ["--enable-admission-plugins=OwnerReferencesPermissionEnforcement"] },
    });
  });

  afterAll(async () => {
    await env?.dispose();
  });

  it("mirrors, pre-warms onto the node and releases a held pod as the chart's ServiceAccounts, without a 403", async () => {
    await env.resetRequests();
    await env.start();
    const probe = await env.probe();
    await env.waitWorking(probe);
    baseline = await env.requests();
    expect(baseline.filter((r) => r.status === 403)).toEqual([]);
    const lease = await env.cluster.kubectlOk([
      "get",
      "lease",
      "stowage-controller",
      "-n",
      releaseNamespace,
      "-o",
      "jsonpath={.spec.holderIdentity}",
    ]);
    expect(lease).toBe(env.controller?.identity);
  });

  it.runIf(real)(
    "authenticated every process: the audit log names each one's ServiceAccount, and nothing is anonymous",
    () => {
      const users = new Set(baseline.map((r) => r.user));
      expect(users).toContain(controllerUser);
      expect(users).toContain(agentUser);
      expect(
        [...users].filter((u) => !u || u === "system:anonymous" || u.startsWith("system:unauthenticated")),
      ).toEqual([]);
      // the writes each process exists for were made as its ServiceAccount
      const wrote = (user: string, verb: string, path: RegExp) =>
        baseline.some((r) => r.user === user && r.verb === verb && path.test(r.path) && r.status < 300);
      expect(wrote(controllerUser, "create", /\/nodecaches$/)).toBe(true);
      expect(wrote(controllerUser, "patch", /\/api\/v1\/nodes\/gpu-1$/)).toBe(true);
      expect(wrote(controllerUser, "update", /\/modelimages\/probe-1\/status$/)).toBe(true);
      expect(wrote(controllerUser, "update", /\/leases\/stowage-controller$/)).toBe(true);
      expect(wrote(agentUser, "update", /\/nodecaches\/gpu-1\/status$/)).toBe(true);
    },
  );

  it.runIf(real)("used every rendered rule for a request no other rendered rule grants", () => {
    const rules = env.rules.filter((rule) => !needOf(rule)?.eventsV1Off);
    const unused = rules.filter((rule) =>
      rule.grantees.every((g) => onlyGrantedBy(rule, env.rules, baseline, g.serviceAccount).length === 0),
    );
    expect(unused.map(describeRule)).toEqual([]);
  });

  /** What a person sees when some rules are missing, besides the 403s. */
  const visible: Record<string, (probe: Probe) => Promise<void>> = {
    secrets: async (probe) => {
      const ready = await eventually(`${probe.name} Ready=False naming the refused Secret`, async () => {
        const mi = await env.admin.resource(ModelImages).get(probe.name, modelNamespace);
        const found = (
          mi as { status?: { conditions?: { type: string; status: string; message?: string }[] } }
        ).status?.conditions?.find((c) => c.type === "Ready");
        return found?.status === "False" && /forbidden/.test(found.message ?? "") ? found : undefined;
      });
      expect(ready.message).toContain(
        `User "${controllerUser}" cannot get resource "secrets" in API group "" in the namespace "${modelNamespace}"`,
      );
      expect(ready.message).toContain("the controller needs get on secrets in that namespace");
    },
    nodecaches: async () => {
      const line = await (env.controller as ControllerProcess).waitForLog((l) =>
        l.msg.startsWith("cannot list NodeCaches: pre-warming is off"),
      );
      expect(line.status).toBe(403);
    },
  };

  for (const rule of webhookRules.filter((r) => needOf(r)?.component === "controller")) {
    it(`is refused without ${describeRule(rule)}: ${needOf(rule)?.what}`, async () => {
      const removed = env.rules.find((r) => r.id === rule.id);
      expect(removed).toBeDefined();
      const refused = await refusedWithout(
        env,
        removed as RenderedRule,
        visible[rule.rule.resources.join(",")],
      );
      const user = `system:serviceaccount:${releaseNamespace}:${controllerServiceAccount}`;
      expect(refused.length).toBeGreaterThan(0);
      // every refusal is of a request the removed rule grants the controller, and nothing else
      expect(refused.filter((r) => grantedBy(rule, [r], user).length === 0)).toEqual([]);
      if (real) expect(new Set(refused.map((r) => r.user))).toEqual(new Set([user]));
    });
  }
});

describe("the controller with the chart's RBAC for watchNamespaces: [ml]", () => {
  let env: ChartStowage;

  beforeAll(async () => {
    env = await startChartStowage({ values: { watchNamespaces: [modelNamespace] } });
  });

  afterAll(async () => {
    await env?.dispose();
  });

  it("binds the namespaced rules by a RoleBinding in ml only, and works there without a 403", async () => {
    const bindings = env.rbac.filter((o) => /Binding$/.test(o.kind ?? ""));
    const namespaced = bindings.filter(
      (b) => (b as { roleRef?: { name: string } }).roleRef?.name === "stowage-controller-namespaced",
    );
    expect(namespaced.map((b) => `${b.kind}/${b.metadata?.namespace}`)).toEqual([
      `RoleBinding/${modelNamespace}`,
    ]);
    await env.cluster.apply([{ apiVersion: "v1", kind: "Namespace", metadata: { name: "research" } }]);
    await env.resetRequests();
    await env.start();
    const probe = await env.probe();
    await env.waitWorking(probe);
    expect((await env.requests()).filter((r) => r.status === 403)).toEqual([]);
  });

  it("cannot read ModelImages or Secrets outside ml with the same token", async () => {
    const client = KubeClient.load({ path: await env.controllerKubeconfig() });
    try {
      await env.cluster.apply([
        modelImage("elsewhere", { image: "registry.invalid/x:1" }, "research"),
        dockerConfigSecret("research-registry", "research", env.upstream.host, {
          username: "u",
          password: "p",
        }),
      ]);
      const refused = await client
        .resource(ModelImages)
        .list({ namespace: "research" })
        .then(
          () => undefined,
          (err: Error) => err,
        );
      expect(refused?.message).toContain(
        `User "${controllerUser}" cannot list resource "modelimages" in API group "stowage.dev" in the namespace "research"`,
      );
      const secret = await client
        .resource(Resources.Secret)
        .get("research-registry", "research")
        .then(
          () => undefined,
          (err: Error) => err,
        );
      expect(secret?.message).toContain(
        `User "${controllerUser}" cannot get resource "secrets" in API group "" in the namespace "research"`,
      );
      // and the controller never reconciled the one there
      const elsewhere = await eventually("research/elsewhere read back", () =>
        env.cluster.kubectlOk(["get", "mi", "elsewhere", "-n", "research", "-o", "json"]),
      );
      expect(JSON.parse(elsewhere).status?.conditions ?? []).toEqual([]);
    } finally {
      client.close();
    }
  });
});
