/**
 * The agent's part of the chart after the hardening of issue 16, rendered by the real helm: no
 * privileged mode (root and no capability), containerd's config.toml mounted only when asked for,
 * GPU taints tolerated, a PodMonitor that scrapes every agent, and the health bind address of the
 * controller and the agent set from values. That the unprivileged agent really works in a pod on
 * a real kubelet is test/real/chart-on-kubelet.test.ts.
 */
import { describe, expect, it } from "vitest";
import { parseAgentArgs } from "../../src/agent/command.ts";
import { uninstallHelp } from "../../src/agent/uninstall.ts";
import { parseControllerArgs } from "../../src/controller/command.ts";
import {
  containerOf,
  flagValues,
  getObject,
  helmTemplate,
  type RenderedObject,
  render,
  type Values,
} from "./render.ts";

const agentOf = (objects: RenderedObject[]) => getObject(objects, "DaemonSet", "stowage-agent");

describe("the agent DaemonSet's privileges", () => {
  it("runs the agent as root without privileged mode, privilege escalation or any capability", async () => {
    const agent = containerOf(agentOf(await render()), "agent") as unknown as { securityContext: Values };
    expect(agent.securityContext).toEqual({
      privileged: false,
      runAsUser: 0,
      runAsGroup: 0,
      allowPrivilegeEscalation: false,
      readOnlyRootFilesystem: true,
      capabilities: { drop: ["ALL"] },
    });
  });

  it("takes the security context from values, e.g. an SELinux type for the runtime socket", async () => {
    const securityContext = { seLinuxOptions: { type: "spc_t" } };
    const objects = await render({ values: [{ agent: { securityContext } }] });
    const agent = containerOf(agentOf(objects), "agent") as unknown as { securityContext: Values };
    // helm merges the map into the defaults: still not privileged
    expect(agent.securityContext).toMatchObject({ ...securityContext, privileged: false });
  });

  it("renders no privileged container anywhere by default", async () => {
    const objects = await render({ values: [{ webhook: { enabled: true } }] });
    const privileged = objects
      .filter((o) => o.spec?.template?.spec)
      .flatMap((o) =>
        (o.spec.template.spec.containers as { name: string; securityContext?: Values }[])
          .filter((c) => c.securityContext?.privileged === true)
          .map((c) => `${o.kind}/${o.metadata.name}/${c.name}`),
      );
    expect(privileged).toEqual([]);
  });
});

describe("containerd's config.toml for the agent", () => {
  it("mounts nothing by default, so a node without /etc/containerd/config.toml (k3s, RKE2, Bottlerocket) still starts the pod", async () => {
    const daemonSet = agentOf(await render());
    const agent = containerOf(daemonSet, "agent");
    expect(flagValues(agent.args ?? []).has("containerd-config")).toBe(false);
    const hostPaths = (
      daemonSet.spec.template.spec.volumes as { hostPath?: { path: string; type?: string } }[]
    )
      .filter((v) => v.hostPath)
      .map((v) => v.hostPath);
    expect(hostPaths.map((h) => h?.path)).not.toContain("/etc/containerd/config.toml");
    // Only the CRI socket must pre-exist; the certs.d directory is created when missing.
    expect(hostPaths.filter((h) => h?.type === "File")).toEqual([]);
  });

  it("mounts a configured config.toml read-only and passes --containerd-config, with k3s's paths", async () => {
    const k3s = "/var/lib/rancher/k3s/agent/etc/containerd";
    const daemonSet = agentOf(
      await render({
        values: [
          {
            agent: {
              criSocket: "/run/k3s/containerd/containerd.sock",
              containerdConfigPath: `${k3s}/certs.d`,
              containerdRoot: "/var/lib/rancher/k3s/agent/containerd",
              containerdConfigFile: `${k3s}/config.toml`,
            },
          },
        ],
      }),
    );
    const agent = containerOf(daemonSet, "agent");
    const flags = flagValues(agent.args ?? []);
    expect(flags.get("containerd-config")).toEqual(["/host/containerd-config.toml"]);
    expect(flags.get("containerd-config-path")).toEqual([`${k3s}/certs.d`]);
    const volumes = daemonSet.spec.template.spec.volumes as { name: string; hostPath?: Values }[];
    expect(volumes.find((v) => v.name === "containerd-config")?.hostPath).toEqual({
      path: `${k3s}/config.toml`,
      type: "File",
    });
    expect(volumes.find((v) => v.name === "cri-socket")?.hostPath).toMatchObject({
      path: "/run/k3s/containerd/containerd.sock",
    });
    expect(agent.volumeMounts?.find((m) => m.name === "containerd-config")).toMatchObject({ readOnly: true });
  });
});

describe("agent scheduling and scraping", () => {
  it("tolerates the common GPU taints and the warming taint by default", async () => {
    const tolerations = agentOf(await render()).spec.template.spec.tolerations;
    for (const toleration of [
      { key: "nvidia.com/gpu", operator: "Exists", effect: "NoSchedule" },
      { key: "amd.com/gpu", operator: "Exists", effect: "NoSchedule" },
      { key: "habana.ai/gaudi", operator: "Exists", effect: "NoSchedule" },
      { key: "sku", operator: "Equal", value: "gpu", effect: "NoSchedule" },
      { key: "stowage.dev/warming", operator: "Exists", effect: "NoSchedule" },
    ])
      expect(tolerations).toContainEqual(toleration);
  });

  it("renders a PodMonitor whose selector and port name match the agent pods, when the monitoring API is served", async () => {
    const objects = await render({
      apiVersions: ["monitoring.coreos.com/v1", "monitoring.coreos.com/v1/PodMonitor"],
    });
    const monitor = getObject(objects, "PodMonitor", "stowage-agent");
    const daemonSet = agentOf(objects);
    const podLabels = daemonSet.spec.template.metadata.labels as Record<string, string>;
    for (const [key, value] of Object.entries(monitor.spec.selector.matchLabels as Record<string, string>))
      expect(podLabels[key], key).toBe(value);
    // The controller's ServiceMonitor selects only controller and cache Services: not the agents twice.
    const ports = containerOf(daemonSet, "agent") as unknown as { ports: { name: string }[] };
    expect(ports.ports.map((p) => p.name)).toContain(monitor.spec.podMetricsEndpoints[0].port);
    expect(monitor.spec.podMetricsEndpoints[0]).toMatchObject({ path: "/metrics", interval: "30s" });
    expect(monitor.spec.namespaceSelector.matchNames).toEqual(["stowage-system"]);
  });

  it("renders no PodMonitor without the monitoring API unless forced, nor when disabled", async () => {
    const kinds = async (values: Values, apiVersions: string[] = []) =>
      (await render({ values: [values], apiVersions })).map((o) => o.kind);
    expect(await kinds({})).not.toContain("PodMonitor");
    // ServiceMonitor's group version alone is not the PodMonitor kind
    expect(await kinds({}, ["monitoring.coreos.com/v1"])).not.toContain("PodMonitor");
    expect(await kinds({ agent: { podMonitor: { force: true } } })).toContain("PodMonitor");
    expect(
      await kinds({ agent: { podMonitor: { enabled: false } } }, ["monitoring.coreos.com/v1/PodMonitor"]),
    ).not.toContain("PodMonitor");
    expect(await kinds({ agent: { enabled: false } }, ["monitoring.coreos.com/v1/PodMonitor"])).not.toContain(
      "PodMonitor",
    );
  });
});

describe("health bind addresses from values", () => {
  it("passes controller.healthBindAddress to the controller, which parses it", async () => {
    const objects = await render({ values: [{ controller: { healthBindAddress: "10.1.2.3" } }] });
    const args = containerOf(getObject(objects, "Deployment", "stowage-controller"), "controller").args ?? [];
    expect(flagValues(args).get("health-bind-address")).toEqual(["10.1.2.3"]);
    expect(
      await parseControllerArgs(args.slice(1), { POD_NAMESPACE: "stowage-system", POD_NAME: "controller-0" }),
    ).toMatchObject({
      healthBindAddress: "10.1.2.3",
    });
    const defaults = containerOf(getObject(await render(), "Deployment", "stowage-controller"), "controller");
    expect(flagValues(defaults.args ?? []).has("health-bind-address")).toBe(false);
  });

  it("binds the agent to its pod IP with agent.healthBindAddress=podIP (the kubelet expands $(POD_IP))", async () => {
    const daemonSet = agentOf(await render({ values: [{ agent: { healthBindAddress: "podIP" } }] }));
    const agent = containerOf(daemonSet, "agent");
    expect(flagValues(agent.args ?? []).get("health-bind-address")).toEqual(["$(POD_IP)"]);
    expect(agent.env).toContainEqual({
      name: "POD_IP",
      valueFrom: { fieldRef: { fieldPath: "status.podIP" } },
    });
    // What the agent gets once the kubelet has expanded it.
    const expanded = (agent.args ?? []).slice(1).map((a) => a.replace("$(POD_IP)", "10.0.0.7"));
    const parsed = parseAgentArgs(expanded, { NODE_NAME: "n1" });
    expect(parsed === "help" ? undefined : parsed.healthBindAddress).toBe("10.0.0.7");
  });

  it("refuses a loopback or non-IP bind address in the values schema: the kubelet probes the pod IP", async () => {
    for (const values of [
      { controller: { healthBindAddress: "127.0.0.1" } },
      { controller: { healthBindAddress: "localhost" } },
      { agent: { healthBindAddress: "::1" } },
      { agent: { healthBindAddress: "node-ip" } },
    ]) {
      const result = await helmTemplate({ values: [values] });
      expect(result.code, JSON.stringify(values)).not.toBe(0);
      expect(result.stderr).toMatch(/healthBindAddress/);
    }
  });
});

describe("the uninstall hook", () => {
  it("runs stowage uninstall as a pre-delete hook, with only flags it knows, on its own hook-scoped RBAC", async () => {
    const objects = await render();
    const job = getObject(objects, "Job", "stowage-uninstall");
    expect(job.metadata.annotations).toMatchObject({
      "helm.sh/hook": "pre-delete",
      "helm.sh/hook-delete-policy": "before-hook-creation,hook-succeeded",
    });
    const args = containerOf(job, "uninstall").args ?? [];
    expect(args[0]).toBe("uninstall");
    for (const flag of args.slice(1).map((a) => a.split("=")[0]))
      expect(uninstallHelp, flag).toMatch(new RegExp(`^  ${flag}[ =]`, "m"));
    expect(flagValues(args).get("controller-deployment")).toEqual(["stowage-controller"]);
    // Its ServiceAccount and RBAC are hooks created before it (lower weight), so helm deletes
    // them after the Job, not with the release's own objects while it runs.
    for (const kind of ["ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"]) {
      const object = getObject(objects, kind, "stowage-uninstall");
      expect(object.metadata.annotations?.["helm.sh/hook"], kind).toBe("pre-delete");
      expect(Number(object.metadata.annotations?.["helm.sh/hook-weight"]), kind).toBeLessThan(0);
    }
    expect(job.spec.template.spec.serviceAccountName).toBe("stowage-uninstall");
    const role = getObject(objects, "Role", "stowage-uninstall");
    expect(role.rules).toEqual([
      {
        apiGroups: ["apps"],
        resources: ["deployments"],
        resourceNames: ["stowage-controller"],
        verbs: ["get", "patch"],
      },
    ]);
    expect(
      await render({ values: [{ agent: { uninstallCleanup: { enabled: false } } }] }),
    ).not.toContainEqual(expect.objectContaining({ kind: "Job" }));
  });
});
