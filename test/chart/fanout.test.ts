/**
 * Peer-assisted pre-warm (issue 15, docs/fanout.md) in the chart, rendered by the real helm:
 * `fanout.mode` off renders what the chart rendered before; planned gives the agents and the
 * controller their fan-out flags (read back by the commands' own parsers), the same peer-token
 * secret file, the agents' ports and host networking; external gives the agents the peer layer's
 * mirror and nothing else. What the schema or the templates refuse, they refuse naming the value.
 */
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { parseAgentArgs } from "../../src/agent/command.ts";
import { parseControllerArgs, readFanoutSecret } from "../../src/controller/command.ts";
import {
  type Container,
  containerOf,
  findObject,
  flagValues,
  getObject,
  helmTemplate,
  RELEASE,
  type RenderedObject,
  render,
  type Values,
  volumeFor,
} from "./render.ts";

const agentOf = (objects: RenderedObject[]) => getObject(objects, "DaemonSet", `${RELEASE}-agent`);
const controllerOf = (objects: RenderedObject[]) => getObject(objects, "Deployment", `${RELEASE}-controller`);
const GENERATED_SECRET = `${RELEASE}-fanout`;

/** The arguments after the subcommand. */
const argsOf = (container: Container) => (container.args ?? []).slice(1);
const fanoutArgs = (container: Container) => argsOf(container).filter((a) => a.startsWith("--fanout-"));
// biome-ignore lint/suspicious/noExplicitAny: rendered container ports are free-form
const portsOf = (workload: RenderedObject): any[] => workload.spec.template.spec.containers[0].ports ?? [];

async function agentInvocation(objects: RenderedObject[]) {
  const container = containerOf(agentOf(objects), "agent");
  const invocation = parseAgentArgs(argsOf(container), { NODE_NAME: "node-a" });
  if (invocation === "help") throw new Error("unexpected help");
  return invocation;
}

async function controllerInvocation(objects: RenderedObject[]) {
  const container = containerOf(controllerOf(objects), "controller");
  const invocation = await parseControllerArgs(argsOf(container), {});
  if (invocation === "help") throw new Error("unexpected help");
  return invocation;
}

const planned: Values = { fanout: { mode: "planned" }, agent: { hostNetwork: true } };

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), "stowage-fanout-chart-"));
});
afterAll(async () => {
  if (dir) await rm(dir, { recursive: true, force: true });
});

describe("fanout.mode off (the default)", () => {
  it("renders no fan-out flag, port, secret mount or Secret, and leaves the agent off the host network", async () => {
    // A values file saying `mode: off` bare, which Helm's YAML 1.1 parser reads as false.
    const bareOff = join(dir, "bare-off.yaml");
    await writeFile(bareOff, "fanout:\n  mode: off\n");
    for (const options of [{}, { files: [bareOff] }]) {
      const objects = await render({ ...options, values: [{ networkPolicy: { enabled: true } }] });
      const agent = agentOf(objects);
      const controller = controllerOf(objects);
      expect(fanoutArgs(containerOf(agent, "agent"))).toEqual([]);
      expect(fanoutArgs(containerOf(controller, "controller"))).toEqual([]);
      expect(portsOf(agent).map((p) => p.name)).toEqual(["http-metrics"]);
      for (const workload of [agent, controller]) {
        const volumes = workload.spec.template.spec.volumes.map((v: { name: string }) => v.name);
        expect(volumes).not.toContain("fanout-secret");
      }
      expect(agent.spec.template.spec.hostNetwork).toBeUndefined();
      expect(findObject(objects, "Secret", GENERATED_SECRET)).toBeUndefined();
      const env = (containerOf(agent, "agent").env ?? []).map((e) => e.name);
      expect(env).not.toContain("HOST_IP");
      const policy = getObject(objects, "NetworkPolicy", `${RELEASE}-agent`);
      expect(JSON.stringify(policy.spec)).not.toMatch(/fanout|5007/);
      // and the commands see fan-out off
      expect((await agentInvocation(objects)).fanout.mode).toBe("off");
      expect((await controllerInvocation(objects)).prewarm?.fanout).toBeUndefined();
    }
  });
});

describe("fanout.mode planned", () => {
  const tuned: Values = {
    fanout: {
      mode: "planned",
      peerPort: 6007,
      mirrorPort: 6008,
      peerSlots: 4,
      cacheSlots: 2,
      pieceSize: 32 * 1024 * 1024,
      // above 2^31 and written in full, not as 1.25e+10
      servingRate: 12_500_000_000,
      servingConcurrency: 5,
      stallTimeout: "3s",
    },
    agent: { hostNetwork: true },
  };

  it("gives the agents and the controller the fan-out settings from values, as their own parsers read them", async () => {
    const objects = await render({ values: [tuned] });
    const agent = await agentInvocation(objects);
    expect(agent.fanout).toMatchObject({
      mode: "planned",
      peerPort: 6007,
      mirrorPort: 6008,
      servingBytesPerSecond: 12_500_000_000,
      servingConcurrency: 5,
      stallTimeoutMs: 3000,
    });
    expect(agent.config.fanoutMirror).toEqual({ localMirror: { port: 6008 } });
    const controller = await controllerInvocation(objects);
    expect(controller.prewarm?.fanout).toMatchObject({
      peerPort: 6007,
      peerSlots: 4,
      cacheSlots: 2,
      pieceBytes: 32 * 1024 * 1024,
    });
    // the defaults reach them too: 64 MiB pieces written as bytes, k = 3, one cache copy
    const defaults = await controllerInvocation(await render({ values: [planned] }));
    expect(defaults.prewarm?.fanout).toMatchObject({
      peerPort: 5007,
      peerSlots: 3,
      cacheSlots: 1,
      pieceBytes: 64 * 1024 * 1024,
    });
  });

  it("mounts one generated secret read-only into the agents and the controller, at the file their flags name", async () => {
    const objects = await render({ values: [planned] });
    const secret = getObject(objects, "Secret", GENERATED_SECRET);
    const value = Buffer.from(secret.data.secret, "base64");
    expect(value.toString()).toMatch(/^[A-Za-z0-9]{64}$/);

    const files: string[] = [];
    for (const [workload, name, file] of [
      [agentOf(objects), "agent", (await agentInvocation(objects)).fanout.secretFile],
      [
        controllerOf(objects),
        "controller",
        (await controllerInvocation(objects)).prewarm?.fanout?.secretFile,
      ],
    ] as const) {
      expect(file, `${name} has a secret file`).toBeDefined();
      const container = containerOf(workload, name);
      const mounted = volumeFor(workload, container, file ?? "");
      expect(mounted?.volume.secret).toEqual({
        secretName: GENERATED_SECRET,
        items: [{ key: "secret", path: mounted?.file }],
      });
      const mount = container.volumeMounts?.find((m) => m.mountPath === mounted?.mountPath);
      expect(mount?.readOnly, `${name} mounts it read-only`).toBe(true);
      files.push(file ?? "");
    }
    expect(files[0]).toBe(files[1]);

    // The controller reads it byte for byte and takes it (16 bytes or more); the agents read the same file.
    await writeFile(join(dir, "secret"), value);
    expect((await readFanoutSecret(join(dir, "secret"))).equals(value)).toBe(true);
  });

  it("gives the agent's mirror a writable spool on the node's disk, not the 64 MiB /tmp, limited by fanout.spoolSizeLimit", async () => {
    for (const [limit, expected] of [
      [undefined, {}],
      ["200Gi", { sizeLimit: "200Gi" }],
    ] as const) {
      const objects = await render({
        values: [planned, ...(limit ? [{ fanout: { spoolSizeLimit: limit } }] : [])],
      });
      const agent = agentOf(objects);
      const spoolDir = (await agentInvocation(objects)).fanout.spoolDir;
      const mounted = volumeFor(agent, containerOf(agent, "agent"), spoolDir);
      expect(mounted?.file, "the spool dir is a volume's root").toBe("");
      expect(mounted?.volume.emptyDir).toEqual(expected);
      const mount = containerOf(agent, "agent").volumeMounts?.find((m) => m.mountPath === mounted?.mountPath);
      expect(mount?.readOnly).toBeFalsy();
    }
  });

  it("uses fanout.secret.existingSecret and its key instead of generating one", async () => {
    const objects = await render({
      values: [planned, { fanout: { secret: { existingSecret: "peer-tokens", key: "hmac" } } }],
    });
    expect(findObject(objects, "Secret", GENERATED_SECRET)).toBeUndefined();
    expect(objects.filter((o) => o.kind === "Secret").map((o) => o.metadata.name)).not.toContain(
      "peer-tokens",
    );
    for (const [workload, name] of [
      [agentOf(objects), "agent"],
      [controllerOf(objects), "controller"],
    ] as const) {
      const container = containerOf(workload, name);
      const file = flagValues(argsOf(container)).get("fanout-secret-file")?.[0] ?? "";
      const mounted = volumeFor(workload, container, file);
      expect(mounted?.volume.secret).toEqual({
        secretName: "peer-tokens",
        items: [{ key: "hmac", path: mounted?.file }],
      });
    }
  });

  it("runs the agent on the host network with its peer port declared, and lets peers reach it through the NetworkPolicy", async () => {
    const objects = await render({
      values: [tuned, { networkPolicy: { enabled: true, nodeCidrs: ["10.0.0.0/16"] } }],
    });
    const agent = agentOf(objects);
    expect(agent.spec.template.spec.hostNetwork).toBe(true);
    expect(agent.spec.template.spec.dnsPolicy).toBe("ClusterFirstWithHostNet");
    expect(portsOf(agent)).toContainEqual({ name: "fanout-peer", containerPort: 6007, protocol: "TCP" });
    expect(portsOf(agent)).toContainEqual({ name: "fanout-mirror", containerPort: 6008, protocol: "TCP" });

    const policy = getObject(objects, "NetworkPolicy", `${RELEASE}-agent`);
    const toPeerPort = policy.spec.ingress.find((rule: { ports: { port: string }[] }) =>
      rule.ports.some((p) => p.port === "fanout-peer"),
    );
    // peers on the host network come from their nodes' addresses
    expect(toPeerPort?.from).toEqual([{ ipBlock: { cidr: "10.0.0.0/16" } }]);
    const toPeers = policy.spec.egress.find((rule: { ports?: { port: number }[] }) =>
      rule.ports?.some((p) => p.port === 6007),
    );
    expect(toPeers?.to).toEqual([{ ipBlock: { cidr: "10.0.0.0/16" } }]);
    // the mirror fetches what no peer serves from the cache (the front and the registry)
    const toCache = policy.spec.egress.find((rule: { to?: { podSelector?: object }[] }) =>
      rule.to?.some((peer) => peer.podSelector),
    );
    expect(toCache?.ports).toEqual([{ port: 5000 }, { port: 5002 }]);
  });

  it("refuses to render without agent host networking, saying what to set", async () => {
    const result = await helmTemplate({ values: [{ fanout: { mode: "planned" } }] });
    expect(result.code).not.toBe(0);
    expect(result.stderr).toMatch(/fanout\.mode planned needs agent\.hostNetwork true/);
    expect(result.stderr).toMatch(/127\.0\.0\.1/);
  });

  it("refuses to render without the agent or without its hosts.toml", async () => {
    const noAgent = await helmTemplate({ values: [planned, { agent: { enabled: false } }] });
    expect(noAgent.code).not.toBe(0);
    expect(noAgent.stderr).toMatch(/fanout\.mode planned needs the node agent: set agent\.enabled true/);
    const noMirror = await helmTemplate({ values: [planned, { agent: { mirrorConfig: false } }] });
    expect(noMirror.code).not.toBe(0);
    expect(noMirror.stderr).toMatch(/fanout\.mode planned needs agent\.mirrorConfig true/);
  });
});

describe("fanout.mode external", () => {
  it("gives the agents only the mode and the peer layer's mirror, with the node's address to put in it", async () => {
    const objects = await render({
      values: [{ fanout: { mode: "external", externalMirror: "http://$(HOST_IP):30020" } }],
    });
    const agent = agentOf(objects);
    const container = containerOf(agent, "agent");
    expect(fanoutArgs(container)).toEqual([
      "--fanout-mode=external",
      "--fanout-external-mirror=http://$(HOST_IP):30020",
    ]);
    // Kubernetes expands $(HOST_IP) in args from this variable
    expect(container.env).toContainEqual({
      name: "HOST_IP",
      valueFrom: { fieldRef: { fieldPath: "status.hostIP" } },
    });
    const expanded = parseAgentArgs(
      argsOf(container).map((a) => a.replace("$(HOST_IP)", "10.0.0.7")),
      { NODE_NAME: "node-a" },
    );
    if (expanded === "help") throw new Error("unexpected help");
    expect(expanded.config.fanoutMirror).toEqual({ externalMirror: "http://10.0.0.7:30020" });

    expect(portsOf(agent).map((p) => p.name)).toEqual(["http-metrics"]);
    expect(agent.spec.template.spec.hostNetwork).toBeUndefined();
    expect(findObject(objects, "Secret", GENERATED_SECRET)).toBeUndefined();
    // the controller plans nothing
    const controller = containerOf(controllerOf(objects), "controller");
    expect(fanoutArgs(controller)).toEqual(["--fanout-mode=external"]);
    expect((await controllerInvocation(objects)).prewarm?.fanout).toBeUndefined();
  });

  it("refuses to render without fanout.externalMirror, saying what it is", async () => {
    const result = await helmTemplate({ values: [{ fanout: { mode: "external" } }] });
    expect(result.code).not.toBe(0);
    expect(result.stderr).toMatch(/fanout\.mode external needs fanout\.externalMirror/);
  });
});

describe("fan-out values the schema refuses", () => {
  it.each([
    [
      "a misspelt mode",
      { mode: "planed" },
      /\/fanout\/mode': value must be one of 'off', 'planned', 'external'/,
    ],
    ["negative peer slots", { peerSlots: -1 }, /\/fanout\/peerSlots': minimum: got -1, want 0/],
    ["no cache slots", { cacheSlots: 0 }, /\/fanout\/cacheSlots': minimum: got 0, want 1/],
    ["slots as a string", { peerSlots: "3" }, /\/fanout\/peerSlots': got string, want integer/],
    ["pieces under 1 MiB", { pieceSize: 4096 }, /\/fanout\/pieceSize': minimum: got 4,096, want 1\.048576/],
    ["a negative serving rate", { servingRate: -1 }, /\/fanout\/servingRate': minimum: got -1, want 0/],
    ["no serving concurrency", { servingConcurrency: 0 }, /\/fanout\/servingConcurrency': minimum/],
    [
      "a stall timeout without a unit",
      { stallTimeout: "2" },
      /\/fanout\/stallTimeout': '2' does not match pattern/,
    ],
    [
      "an external mirror with a path",
      { externalMirror: "http://10.0.0.7:30020/v2" },
      /\/fanout\/externalMirror'/,
    ],
    ["an unknown key", { peerslots: 3 }, /\/fanout': additional properties 'peerslots' not allowed/],
  ])("refuses %s, naming the value", async (_name, fanout, message) => {
    const result = await helmTemplate({ values: [{ fanout }] });
    expect(result.code).not.toBe(0);
    expect(result.stderr).toMatch(message);
  });
});
