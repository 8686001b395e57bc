/**
 * The settings the chart gives `stowage controller` and `stowage agent` are settings those
 * commands read. Rendered by the real helm for several values sets; the accepted flags come from
 * the commands' own parseArgs tables, and a STOWAGE_* variable counts as read only when changing
 * its value changes what the command's own parser makes of the rendered flags and environment
 * (a misspelt name such as STOWAGE_CACHE_NODE_ENDPOINT is silently ignored otherwise).
 */
import { readdirSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { agentOptions, parseAgentArgs } from "../../src/agent/command.ts";
import { controllerOptions, parseControllerArgs } from "../../src/controller/command.ts";
import { envName } from "../../src/util/flags.ts";
import {
  type Container,
  chartDir,
  containerOf,
  type EnvVar,
  flagValues,
  getObject,
  NAMESPACE,
  RELEASE,
  type RenderOptions,
  render,
  type Values,
  volumeFor,
} from "./render.ts";

const ciFiles = readdirSync(join(chartDir, "ci"))
  .filter((f) => f.endsWith(".yaml"))
  .sort();

const valueSets: { name: string; options: RenderOptions }[] = [
  ...ciFiles.map((file) => ({ name: `ci/${file}`, options: { files: [join(chartDir, "ci", file)] } })),
  { name: "a node endpoint", options: { values: [{ cache: { nodeEndpoint: "http://10.0.0.5:30500" } }] } },
  {
    name: "host network, a webhook reached by URL, a controller endpoint for the cache",
    options: {
      values: [
        {
          controller: { hostNetwork: true },
          agent: { hostNetwork: true },
          cache: { hostNetwork: true, controllerEndpoint: "http://10.0.0.5:5000" },
          webhook: { enabled: true, url: "https://stowage-webhook.ml.internal:9443/mutate-pods" },
        },
      ],
    },
  },
  {
    name: "cache TLS and htpasswd, webhook, namespaces, insecure upstreams",
    options: {
      values: [
        {
          cache: {
            tls: { enabled: true, secretName: "cache-tls" },
            htpasswd: { enabled: true, secretName: "cache-auth" },
          },
          webhook: { enabled: true },
          watchNamespaces: ["ml"],
          controller: { insecureRegistries: ["registry.lab:5000"] },
        },
      ],
    },
  },
  {
    name: "fan-out through an external peer layer",
    options: { values: [{ fanout: { mode: "external", externalMirror: "http://$(HOST_IP):30020" } }] },
  },
  {
    name: "leader election off, no containerd root or config file",
    options: {
      values: [
        {
          controller: { replicas: 1, leaderElection: { enabled: false } },
          agent: { containerdRoot: "", containerdConfigFile: "" },
        },
      ],
    },
  },
];

interface Command {
  name: "controller" | "agent";
  workload: { kind: string; name: string };
  flags: Set<string>;
  /** What the command's parser makes of these arguments and this environment, as comparable text. */
  outcome(args: string[], env: Record<string, string>): Promise<string>;
}

async function outcomeOf(parse: () => unknown): Promise<string> {
  try {
    return JSON.stringify(await parse());
  } catch (err) {
    return `refused: ${(err as Error).message}`;
  }
}

const commands: Command[] = [
  {
    name: "controller",
    workload: { kind: "Deployment", name: `${RELEASE}-controller` },
    flags: new Set(Object.keys(controllerOptions)),
    outcome: (args, env) => outcomeOf(() => parseControllerArgs(args, env)),
  },
  {
    name: "agent",
    workload: { kind: "DaemonSet", name: `${RELEASE}-agent` },
    flags: new Set(Object.keys(agentOptions)),
    outcome: (args, env) => outcomeOf(() => parseAgentArgs(args, env)),
  },
];

/** The container's environment as the kubelet would give it, references resolved to stand-in values. */
function environment(container: Container): Record<string, string> {
  const env: Record<string, string> = {};
  for (const variable of container.env ?? ([] as EnvVar[])) {
    const from = variable.valueFrom;
    env[variable.name] =
      variable.value ??
      (from?.fieldRef
        ? `field-${from.fieldRef.fieldPath}`
        : from?.secretKeyRef
          ? `secret-${from.secretKeyRef.name}-${from.secretKeyRef.key}`
          : `configmap-${from?.configMapKeyRef?.name}-${from?.configMapKeyRef?.key}`);
  }
  return env;
}

describe.each(valueSets)("the chart rendered with $name", ({ options }) => {
  it.each(commands)("gives `stowage $name` only flags and STOWAGE_* variables it reads", async (command) => {
    const objects = await render(options);
    const workload = getObject(objects, command.workload.kind, command.workload.name);
    const container = containerOf(workload, command.name);
    const [subcommand, ...args] = container.args ?? [];
    expect(subcommand).toBe(command.name);

    const malformed = args.filter((arg) => !/^--[a-z0-9-]+=/.test(arg));
    expect(malformed, "every argument is --flag=value").toEqual([]);
    const flags = flagValues(args);
    expect([...flags.keys()].filter((flag) => !command.flags.has(flag))).toEqual([]);
    // A path a flag names must be inside a volume of the pod, or the process cannot reach it.
    for (const [flag, values] of flags)
      for (const path of values.filter((value) => value.startsWith("/")))
        expect(volumeFor(workload, container, path), `--${flag}=${path} is mounted`).toBeDefined();

    const env = environment(container);
    const stowageVariables = Object.keys(env).filter((name) => name.startsWith("STOWAGE_"));
    if (command.name === "controller") {
      const accepted = new Set([...command.flags].map(envName));
      expect(stowageVariables.filter((name) => !accepted.has(name))).toEqual([]);
    }
    const rendered = await command.outcome(args, env);
    expect(rendered).not.toMatch(/^refused/);
    const unread: string[] = [];
    for (const name of stowageVariables) {
      const changed = await command.outcome(args, { ...env, [name]: `${env[name]}-changed` });
      if (changed === rendered) unread.push(name);
    }
    expect(unread, `variables stowage ${command.name} ignores`).toEqual([]);
  });
});

describe("cache.nodeEndpoint", () => {
  const endpointFor = async (values: Values) => {
    const objects = await render({ values: [values] });
    const container = containerOf(getObject(objects, "Deployment", `${RELEASE}-controller`), "controller");
    const [, ...args] = container.args ?? [];
    const invocation = await parseControllerArgs(args, environment(container));
    if (invocation === "help") throw new Error("unexpected help");
    return invocation.prewarm?.cacheEndpointForNodes;
  };

  it("reaches the pre-warm planner, which writes it into every NodeCache", async () => {
    expect(await endpointFor({ cache: { nodeEndpoint: "http://10.0.0.5:30500" } })).toBe(
      "http://10.0.0.5:30500",
    );
  });

  it("defaults to the pull-through front's port on the cache Service, the registry's without the front", async () => {
    expect(await endpointFor({})).toBe(`http://${RELEASE}-cache.${NAMESPACE}.svc:5002`);
    expect(await endpointFor({ cache: { front: { enabled: false } } })).toBe(
      `http://${RELEASE}-cache.${NAMESPACE}.svc:5000`,
    );
  });
});

describe("host network and a webhook reached by URL", () => {
  const values: Values = {
    controller: { hostNetwork: true },
    agent: { hostNetwork: true },
    cache: { hostNetwork: true, controllerEndpoint: "http://10.0.0.5:5000" },
    webhook: { enabled: true, url: "https://stowage-webhook.ml.internal:9443/mutate-pods" },
  };

  it("runs each component on the host network with cluster DNS kept, only when asked", async () => {
    const withIt = await render({ values: [values] });
    const without = await render({});
    for (const [kind, name] of [
      ["Deployment", `${RELEASE}-controller`],
      ["DaemonSet", `${RELEASE}-agent`],
      ["StatefulSet", `${RELEASE}-cache`],
    ] as const) {
      // biome-ignore lint/suspicious/noExplicitAny: rendered objects are free-form
      const spec = (objects: any) => getObject(objects, kind, name).spec.template.spec;
      expect(spec(withIt)).toMatchObject({ hostNetwork: true, dnsPolicy: "ClusterFirstWithHostNet" });
      expect(spec(without).hostNetwork).toBeUndefined();
      expect(spec(without).dnsPolicy).toBeUndefined();
    }
  });

  it("points the webhook at the URL instead of a Service and names its host in the controller's certificate", async () => {
    const objects = await render({ values: [values] });
    const config = getObject(objects, "MutatingWebhookConfiguration", `${RELEASE}-webhook`);
    expect(config.webhooks[0].clientConfig).toEqual({
      url: "https://stowage-webhook.ml.internal:9443/mutate-pods",
    });
    expect(objects.some((o) => o.kind === "Service" && o.metadata.name === `${RELEASE}-webhook`)).toBe(false);
    const container = containerOf(getObject(objects, "Deployment", `${RELEASE}-controller`), "controller");
    const [, ...args] = container.args ?? [];
    const invocation = await parseControllerArgs(args, environment(container));
    if (invocation === "help") throw new Error("unexpected help");
    expect(invocation.webhook?.certHosts).toEqual({
      dnsNames: ["stowage-webhook.ml.internal"],
      ipAddresses: [],
    });
    expect(invocation.cache).toMatchObject({ registry: "10.0.0.5:5000", insecure: true });
  });

  it("refuses a webhook URL that is not https", async () => {
    await expect(
      render({ values: [{ webhook: { enabled: true, url: "http://10.0.0.7:9443/mutate-pods" } }] }),
    ).rejects.toThrow(/webhook\.url|url/);
  });
});

describe("agent.enabled", () => {
  const prewarmOf = async (values: Values) => {
    const objects = await render({ values: [values] });
    const container = containerOf(getObject(objects, "Deployment", `${RELEASE}-controller`), "controller");
    const [, ...args] = container.args ?? [];
    const invocation = await parseControllerArgs(args, environment(container));
    if (invocation === "help") throw new Error("unexpected help");
    return invocation.prewarm;
  };

  it("turns the pre-warm planner off without the agent, so no NodeCache waits for an agent that is not there", async () => {
    expect(await prewarmOf({ agent: { enabled: false } })).toBeUndefined();
  });

  it("keeps the planner on with the agent", async () => {
    expect(await prewarmOf({})).toMatchObject({ warmingTaint: expect.any(Boolean) });
  });
});
