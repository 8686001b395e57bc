/**
 * The webhook's RBAC proved, not claimed: `stowage controller` with the admission webhook and the
 * gate controller runs with a token of the chart's ServiceAccount and exactly the RBAC `helm
 * template --set webhook.enabled=true` renders (test/e2e/chartStowage.ts), called by the API for
 * kubectl-applied pods through the chart's MutatingWebhookConfiguration (on loopback). It keeps
 * its certificate and caBundle, holds a pod until the planner and the agent warmed its image, and
 * releases it; without any one of the webhook's rules, something it does is refused.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { isNotFound, Resources } from "../../src/kube/client.ts";
import { apiBackend } from "../../testkit/cluster.ts";
import {
  describeRule,
  helmTemplate,
  type LoggedRequest,
  rbacOf,
  releaseNamespace,
  renderedRules,
} from "./chartRbac.ts";
import {
  type ChartStowage,
  controllerUser,
  gate,
  grantedBy,
  modelNamespace,
  needOf,
  refusedWithout,
  startChartStowage,
} from "./chartStowage.ts";

// biome-ignore lint/suspicious/noExplicitAny: objects read back as free-form JSON
type Json = any;

const real = apiBackend() === "real";
// The webhook's rules as the chart renders them (test names come from them).
const webhookRules = renderedRules(rbacOf(await helmTemplate({ webhook: true }))).filter(
  (rule) => needOf(rule)?.component === "webhook",
);
const configuration = "stowage-webhook";

let env: ChartStowage;

beforeAll(async () => {
  env = await startChartStowage({ values: { webhook: true } });
});

afterAll(async () => {
  await env?.dispose();
});

async function caBundle(): Promise<string | undefined> {
  const config: Json = await env.admin
    .resource({
      group: "admissionregistration.k8s.io",
      version: "v1",
      plural: "mutatingwebhookconfigurations",
      kind: "MutatingWebhookConfiguration",
      namespaced: false,
    })
    .get(configuration);
  return config.webhooks[0].clientConfig.caBundle;
}

describe("the controller's admission webhook with exactly the chart's RBAC", () => {
  it("keeps its certificate and caBundle, holds a kubectl-applied pod and releases it once warm, without a 403", async () => {
    await env.resetRequests();
    await env.start();
    const probe = await env.probe();
    const held: Json = await env.admin.resource(Resources.Pod).get(probe.pod ?? "", modelNamespace);
    expect(held.spec.schedulingGates).toEqual([{ name: gate }]);
    expect(held.metadata.annotations["stowage.dev/held-for"]).toBe(`${modelNamespace}/${probe.name}`);
    await env.waitWorking(probe);

    const secret: Json = await env.admin
      .resource(Resources.Secret)
      .get("stowage-webhook-tls", releaseNamespace);
    expect(secret.type).toBe("kubernetes.io/tls");
    const bundle = await caBundle();
    expect(bundle).toBeTruthy();
    expect(Buffer.from(secret.data["ca.crt"], "base64").toString()).toBe(
      Buffer.from(bundle ?? "", "base64").toString(),
    );

    const requests = await env.requests();
    expect(requests.filter((r) => r.status === 403)).toEqual([]);
    // The writes the webhook's rules exist for happened, as the controller's ServiceAccount.
    const succeeded = (verb: string, path: string) =>
      requests.some(
        (r) => r.verb === verb && r.path === path && r.status < 300 && (!real || r.user === controllerUser),
      );
    expect(succeeded("create", `/api/v1/namespaces/${releaseNamespace}/secrets`)).toBe(true);
    expect(
      succeeded(
        "patch",
        `/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/${configuration}`,
      ),
    ).toBe(true);
    expect(succeeded("patch", `/api/v1/namespaces/${modelNamespace}/pods/${probe.pod}`)).toBe(true);
  });
});

describe("the controller's admission webhook with one of the chart's webhook rules taken away", () => {
  for (const rule of webhookRules) {
    it(`is refused without ${describeRule(rule)}: ${needOf(rule)?.what}`, async () => {
      if (rule.rule.resources.includes("secrets")) {
        // Reading the Secret is granted everywhere by the namespaced rules (all namespaces);
        // creating it is what only this rule grants: start as on a fresh install, without it.
        await env.stopProcesses();
        await env.admin
          .resource(Resources.Secret)
          .delete("stowage-webhook-tls", releaseNamespace)
          .catch((err) => {
            if (!isNotFound(err)) throw err;
          });
      }
      const refused: LoggedRequest[] = await refusedWithout(env, rule);
      expect(refused.length).toBeGreaterThan(0);
      // every refusal is of a request the removed rule grants the controller, and nothing else
      expect(refused.filter((r) => grantedBy(rule, [r], controllerUser).length === 0)).toEqual([]);
      if (real) expect(new Set(refused.map((r) => r.user))).toEqual(new Set([controllerUser]));
    });
  }
});
