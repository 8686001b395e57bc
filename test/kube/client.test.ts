import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { createServer as createHttpServer, type IncomingMessage, type Server } from "node:http";
import { createServer as createHttpsServer } from "node:https";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { stringify } from "yaml";
import { KubeApiError, KubeClient, Resources } from "../../src/kube/client.ts";
import { EventRecorder } from "../../src/kube/events.ts";
import { loadClusterConfig } from "../../src/kube/kubeconfig.ts";
import { makeServerCertificate } from "../../testkit/tls.ts";

interface Seen {
  method: string;
  url: string;
  authorization?: string;
  contentType?: string;
  body: string;
}

let dir: string;
const servers: Server[] = [];

beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), "stowage-kube-client-"));
});

afterAll(async () => {
  await Promise.all(servers.map((s) => new Promise((resolve) => s.close(resolve))));
  rmSync(dir, { recursive: true, force: true });
});

/** A small HTTP(S) endpoint that records requests and answers through `respond`. */
async function recordingServer(
  respond: (req: IncomingMessage, body: string) => { status: number; body: unknown },
  tls?: { cert: string; key: string },
) {
  const seen: Seen[] = [];
  const handler = (req: IncomingMessage, res: import("node:http").ServerResponse) => {
    let body = "";
    req.on("data", (chunk) => {
      body += chunk;
    });
    req.on("end", () => {
      seen.push({
        method: req.method ?? "",
        url: req.url ?? "",
        authorization: req.headers.authorization,
        contentType: req.headers["content-type"],
        body,
      });
      const answer = respond(req, body);
      res.writeHead(answer.status, { "content-type": "application/json" }).end(JSON.stringify(answer.body));
    });
  };
  const server = tls ? createHttpsServer(tls, handler) : createHttpServer(handler);
  servers.push(server);
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as { port: number };
  return { seen, port };
}

function kubeconfig(
  server: string,
  cluster: Record<string, unknown>,
  user: Record<string, unknown>,
  name = "test",
) {
  return stringify({
    apiVersion: "v1",
    kind: "Config",
    clusters: [{ name, cluster: { server, ...cluster } }],
    users: [{ name, user }],
    contexts: [{ name, context: { cluster: name, user: name, namespace: "ml" } }],
    "current-context": name,
  });
}

describe("kube client", () => {
  it("verifies the server against the kubeconfig's CA file (relative to the kubeconfig) and sends the token from token-file", async () => {
    const cert = await makeServerCertificate(dir);
    const { seen, port } = await recordingServer(
      () => ({ status: 200, body: { metadata: { name: "a", namespace: "ml" } } }),
      { cert: cert.certPem, key: cert.keyPem },
    );
    writeFileSync(join(dir, "token"), "sa-token-1\n");
    const path = join(dir, "kubeconfig-tls");
    writeFileSync(
      path,
      kubeconfig(
        `https://127.0.0.1:${port}`,
        { "certificate-authority": "ca.pem" },
        { tokenFile: join(dir, "token") },
      ),
    );
    const client = KubeClient.load({ path });
    expect(client.config.namespace).toBe("ml");
    await client.resource(Resources.ConfigMap).get("a", "ml");
    expect(seen[0]).toMatchObject({
      method: "GET",
      url: "/api/v1/namespaces/ml/configmaps/a",
      authorization: "Bearer sa-token-1",
    });

    // Without the CA the same server is refused.
    const untrusted = join(dir, "kubeconfig-untrusted");
    writeFileSync(untrusted, kubeconfig(`https://127.0.0.1:${port}`, {}, { token: "t" }));
    await expect(
      KubeClient.load({ path: untrusted }).resource(Resources.ConfigMap).get("a", "ml"),
    ).rejects.toThrow(KubeApiError);
  });

  it("authenticates with the token an exec credential plugin prints, through client-node", async () => {
    const { seen, port } = await recordingServer(() => ({ status: 200, body: { items: [], metadata: {} } }));
    const credential = JSON.stringify({
      apiVersion: "client.authentication.k8s.io/v1",
      kind: "ExecCredential",
      status: { token: "exec-issued-token" },
    });
    const path = join(dir, "kubeconfig-exec");
    writeFileSync(
      path,
      kubeconfig(
        `http://127.0.0.1:${port}`,
        { "insecure-skip-tls-verify": true },
        {
          exec: {
            apiVersion: "client.authentication.k8s.io/v1",
            command: process.execPath,
            args: ["-e", `process.stdout.write(${JSON.stringify(credential)})`],
            interactiveMode: "Never",
          },
        },
      ),
    );
    const client = KubeClient.load({ path });
    expect(client.config.delegateAuth).toBe(true);
    await client.resource(Resources.Node).list();
    expect(seen[0]).toMatchObject({
      method: "GET",
      url: "/api/v1/nodes",
      authorization: "Bearer exec-issued-token",
    });
  });

  it("merges the files listed in KUBECONFIG, the first file's current-context winning", async () => {
    const first = join(dir, "kc-first");
    const second = join(dir, "kc-second");
    writeFileSync(
      first,
      stringify({
        "current-context": "prod",
        contexts: [{ name: "prod", context: { cluster: "c", user: "u" } }],
      }),
    );
    writeFileSync(
      second,
      stringify({
        clusters: [{ name: "c", cluster: { server: "http://127.0.0.1:1/" } }],
        users: [{ name: "u", user: { token: "merged" } }],
        contexts: [{ name: "prod", context: { cluster: "other", user: "other" } }],
      }),
    );
    const previous = process.env.KUBECONFIG;
    process.env.KUBECONFIG = `${first}:${second}`;
    try {
      const config = loadClusterConfig();
      expect(config.server).toBe("http://127.0.0.1:1");
      expect(config.token).toBe("merged");
      expect(config.source).toEqual({ kind: "env", context: undefined });
    } finally {
      if (previous === undefined) delete process.env.KUBECONFIG;
      else process.env.KUBECONFIG = previous;
    }
  });

  it("fails a call with reason Timeout when the server never answers, or stops halfway, instead of waiting on TCP", async () => {
    // Accepts, reads, answers nothing (a half-open connection behind a load balancer).
    const silent = createHttpServer(() => {});
    // Sends the headers and part of the body, then nothing.
    const stalling = createHttpServer((_req, res) => {
      res.writeHead(200, { "content-type": "application/json", "content-length": "100" });
      res.write('{"kind":"NamespaceList",');
    });
    for (const server of [silent, stalling]) {
      servers.push(server);
      await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
    }
    for (const server of [silent, stalling]) {
      const { port } = server.address() as { port: number };
      const client = new KubeClient({
        server: `http://127.0.0.1:${port}`,
        tls: { insecureSkipTLSVerify: false },
        delegateAuth: false,
        source: { kind: "string", text: "" },
      });
      client.requestTimeoutMs = 300;
      const started = performance.now();
      const error = await client.request("GET", "/api/v1/namespaces").then(
        () => undefined,
        (err: unknown) => err,
      );
      expect(error).toBeInstanceOf(KubeApiError);
      expect((error as KubeApiError).reason).toBe("Timeout");
      expect((error as KubeApiError).retryable).toBe(true);
      expect((error as KubeApiError).message).toMatch(
        /GET \/api\/v1\/namespaces: no complete answer within 300 ms/,
      );
      // The deadline, not TCP, ended it (generous bound: a loaded machine is slow, TCP is minutes).
      expect(performance.now() - started).toBeLessThan(20_000);
      // A caller's own abort is still reported as its abort, not as a timeout.
      const abort = new AbortController();
      const aborted = client.request("GET", "/api/v1/namespaces", { signal: abort.signal }).then(
        () => undefined,
        (err: unknown) => err,
      );
      abort.abort(new Error("caller gave up"));
      expect(((await aborted) as Error).message).toMatch(/caller gave up/);
      client.close();
    }
  });

  it("sends merge patches with the merge-patch content type and JSON patches with the json-patch one", async () => {
    const { seen, port } = await recordingServer(() => ({ status: 200, body: {} }));
    const path = join(dir, "kubeconfig-patch");
    writeFileSync(path, kubeconfig(`http://127.0.0.1:${port}`, {}, { token: "t" }));
    const widgets = KubeClient.load({ path }).resource({
      group: "stowage.dev",
      version: "v1alpha1",
      plural: "modelimages",
      kind: "ModelImage",
      namespaced: true,
    });
    await widgets.patch("m", { spec: { x: 1 } }, { namespace: "ml" });
    await widgets.patch("m", [{ op: "add", path: "/metadata/finalizers/-", value: "f" }], {
      namespace: "ml",
    });
    await widgets.patchStatus("m", { status: { phase: "Ready" } }, "ml");
    expect(seen.map((s) => `${s.method} ${s.url} ${s.contentType}`)).toEqual([
      "PATCH /apis/stowage.dev/v1alpha1/namespaces/ml/modelimages/m?fieldManager=stowage application/merge-patch+json",
      "PATCH /apis/stowage.dev/v1alpha1/namespaces/ml/modelimages/m?fieldManager=stowage application/json-patch+json",
      "PATCH /apis/stowage.dev/v1alpha1/namespaces/ml/modelimages/m/status?fieldManager=stowage application/merge-patch+json",
    ]);
  });

  it("records core/v1 Events, counting repeats, when events.k8s.io/v1 is not served", async () => {
    const { seen, port } = await recordingServer((req) =>
      req.url?.startsWith("/apis/events.k8s.io")
        ? { status: 404, body: { kind: "Status", reason: "NotFound", code: 404 } }
        : { status: 201, body: {} },
    );
    const path = join(dir, "kubeconfig-events");
    writeFileSync(path, kubeconfig(`http://127.0.0.1:${port}`, {}, { token: "t" }));
    let now = Date.parse("2026-01-01T00:00:00Z");
    const recorder = new EventRecorder({
      client: KubeClient.load({ path }),
      reportingController: "stowage.dev/controller",
      reportingInstance: "pod-0",
      clock: { now: () => now, sleep: async () => {} },
    });
    const regarding = { apiVersion: "v1", kind: "Node", metadata: { name: "gpu-1", uid: "u1" } };
    const event = { type: "Warning" as const, reason: "PullFailed", action: "Prewarm", note: "disk full" };
    await recorder.event(regarding, event);
    now += 5000;
    await recorder.event(regarding, event);
    await recorder.event(regarding, event);
    // Without the query: every write carries ?fieldManager= (test/kube/fieldManager.test.ts).
    const calls = seen.map(
      (s) => `${s.method} ${s.url.split("?")[0].replace(/gpu-1\.[0-9a-f]+/, "gpu-1.*")}`,
    );
    expect(calls).toEqual([
      "POST /apis/events.k8s.io/v1/namespaces/default/events",
      "POST /api/v1/namespaces/default/events",
      "PATCH /api/v1/namespaces/default/events/gpu-1.*",
      "PATCH /api/v1/namespaces/default/events/gpu-1.*",
    ]);
    const created = JSON.parse(seen[1].body);
    expect(created).toMatchObject({
      kind: "Event",
      involvedObject: { kind: "Node", name: "gpu-1", uid: "u1" },
      reason: "PullFailed",
      message: "disk full",
      type: "Warning",
      count: 1,
      source: { component: "stowage.dev/controller" },
    });
    expect(JSON.parse(seen[3].body)).toEqual({ count: 3, lastTimestamp: "2026-01-01T00:00:05Z" });
  });
});
