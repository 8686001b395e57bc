/**
 * A real Kubernetes control plane for tests, started the way envtest starts one: etcd,
 * kube-apiserver, kube-controller-manager and kube-scheduler (built from tools/k8s) as child
 * processes on 127.0.0.1, free ports, one temp dir. The apiserver authenticates client
 * certificates from a generated CA, static tokens and service-account tokens, and authorizes
 * with RBAC (and the Node authorizer), so RBAC tests mean something. The controller-manager runs
 * the controllers tests lean on (garbage collector, namespaces, service accounts, workloads);
 * the node lifecycle controllers are off, so Nodes created by tests without a kubelet are not
 * tainted or evicted. Test-only: production code never imports testkit/.
 */
import { type ChildProcess, execFile, spawn } from "node:child_process";
import { createWriteStream, type WriteStream } from "node:fs";
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { request } from "node:https";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { stringify } from "yaml";
import { k8sBin } from "../k8sTools.ts";
import { freePort } from "../ports.ts";

const run = promisify(execFile);

export interface ControlPlaneOptions {
  /** static bearer tokens → identities (`--token-auth-file`), besides the admin's */
  users?: Record<string, { name: string; uid?: string; groups?: string[] }>;
  /** run kube-controller-manager (default true) */
  controllerManager?: boolean;
  /** run kube-scheduler (default true) */
  scheduler?: boolean;
  /**
   * CRDs created before the controller-manager starts, so its garbage collector watches their
   * objects from the start (it notices CRDs created later only on its next discovery, up to 30 s)
   */
  crds?: object[];
  /** extra kube-apiserver flags, `--name=value` */
  apiserverFlags?: string[];
}

export interface ClientIdentity {
  /** a kubeconfig file for this identity */
  kubeconfigPath: string;
  kubeconfig: string;
}

export interface ControlPlane {
  url: string;
  /** kubeconfig of a `system:masters` admin (client certificate) */
  kubeconfigPath: string;
  kubeconfig: string;
  /** the cluster CA (PEM), which signs the apiserver's serving cert and client certs */
  caPem: string;
  dir: string;
  /** the etcd client URL (for compaction in watch tests) */
  etcdUrl: string;
  /** the admin's static bearer token */
  adminToken: string;
  /** a kubeconfig authenticating with a bearer token (static or service-account) */
  kubeconfigForToken(token: string, name?: string): Promise<ClientIdentity>;
  /** a kubeconfig with a client certificate for user `name` in `groups`, signed by the cluster CA */
  kubeconfigForUser(name: string, groups?: string[]): Promise<ClientIdentity>;
  /** a kubeconfig for ServiceAccount `namespace/name` (TokenRequest; the account is created if missing) */
  kubeconfigForServiceAccount(namespace: string, name: string): Promise<ClientIdentity & { token: string }>;
  /** resolves once a CRD just created is Established and served */
  waitForCrd(crd: CrdShape): Promise<void>;
  /** one JSON request as the admin: `{status, body}`; body is parsed JSON when it is JSON */
  request(method: string, path: string, body?: unknown, contentType?: string): Promise<ApiResponse>;
  /**
   * Every request the apiserver answered, oldest first, read from its audit log (the real
   * server's own record): method, path, verb, status and who asked.
   */
  requestLog(): Promise<RequestLogEntry[]>;
  /** forget the requests logged so far */
  resetRequestLog(): Promise<void>;
  /**
   * Compacts etcd's history up to its current revision (what the apiserver's own compactor does
   * every 5 minutes) and returns that revision. A watch resuming from an older resourceVersion
   * then gets 410 Gone, but only for a resource the apiserver does not keep in its watch cache
   * (`--watch-cache-sizes=RESOURCE#0`): the cache serves its history from memory.
   */
  compact(): Promise<string>;
  /** a component's log so far */
  log(component: "etcd" | "kube-apiserver" | "kube-controller-manager" | "kube-scheduler"): Promise<string>;
  stop(): Promise<void>;
}

export interface RequestLogEntry {
  method: string;
  path: string;
  verb: string;
  status: number;
  user: string;
}

export interface ApiResponse {
  status: number;
  // biome-ignore lint/suspicious/noExplicitAny: JSON from the API server, shaped by the caller's request
  body: any;
  headers: Record<string, string | string[] | undefined>;
}

// Control planes still running when the test process exits are killed, not left holding ports.
const running = new Set<ChildProcess>();
process.once("exit", () => {
  for (const child of running) child.kill("SIGKILL");
});

async function openssl(dir: string, args: string[]): Promise<void> {
  await run("openssl", args, { cwd: dir });
}

/** A key and a certificate signed by the CA in `dir` (ca.key/ca.crt), with the given extensions. */
async function signedCertificate(
  dir: string,
  name: string,
  subject: string,
  extensions: string,
): Promise<void> {
  await openssl(dir, ["ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", `${name}.key`]);
  await openssl(dir, ["req", "-new", "-key", `${name}.key`, "-out", `${name}.csr`, "-subj", subject]);
  await writeFile(join(dir, `${name}.ext`), extensions);
  await openssl(dir, [
    "x509",
    "-req",
    "-in",
    `${name}.csr`,
    "-CA",
    "ca.crt",
    "-CAkey",
    "ca.key",
    "-CAcreateserial",
    "-out",
    `${name}.crt`,
    "-days",
    "3",
    "-extfile",
    `${name}.ext`,
  ]);
}

function kubeconfigText(url: string, caPem: string, user: Record<string, string>, name: string): string {
  return stringify({
    apiVersion: "v1",
    kind: "Config",
    clusters: [{ name: "stowage-test", cluster: { server: url, "certificate-authority-data": b64(caPem) } }],
    users: [{ name, user }],
    contexts: [{ name, context: { cluster: "stowage-test", user: name, namespace: "default" } }],
    "current-context": name,
    preferences: {},
  });
}

function b64(text: string): string {
  return Buffer.from(text).toString("base64");
}

/** Escapes one CSV field of the apiserver's token file. */
function csvField(value: string): string {
  return /[",]/.test(value) ? `"${value.replaceAll('"', '""')}"` : value;
}

interface Process {
  child: ChildProcess;
  logPath: string;
  logStream: WriteStream;
}

/**
 * Starts a control plane. Its ports are picked free a moment before its processes bind them; when
 * another process took one meanwhile (other test runs share the machine), it starts again on new ones.
 */
export async function startControlPlane(options: ControlPlaneOptions = {}): Promise<ControlPlane> {
  for (let attempt = 1; ; attempt++) {
    try {
      return await startControlPlaneOnce(options);
    } catch (err) {
      if (attempt >= 3 || !/address already in use/.test((err as Error).message)) throw err;
    }
  }
}

async function startControlPlaneOnce(options: ControlPlaneOptions): Promise<ControlPlane> {
  const dir = await mkdtemp(join(tmpdir(), "stowage-k8s-"));
  const processes: Process[] = [];
  const start = (name: string, binary: string, args: string[]): Process => {
    const logPath = join(dir, `${name}.log`);
    const logStream = createWriteStream(logPath);
    const child = spawn(binary, args, { stdio: ["ignore", "pipe", "pipe"], cwd: dir });
    child.stdout?.pipe(logStream, { end: false });
    child.stderr?.pipe(logStream, { end: false });
    running.add(child);
    child.once("exit", () => running.delete(child));
    const proc = { child, logPath, logStream };
    processes.push(proc);
    return proc;
  };
  const stop = async () => {
    // Reverse order: the apiserver goes before etcd so it does not log a storm of errors.
    for (const { child, logStream } of processes.reverse()) {
      if (child.exitCode === null && child.signalCode === null) {
        const exited = new Promise((resolve) => child.once("exit", resolve));
        child.kill("SIGTERM");
        const timer = setTimeout(() => child.kill("SIGKILL"), 5_000);
        await exited;
        clearTimeout(timer);
      }
      logStream.end();
    }
    await rm(dir, { recursive: true, force: true });
  };

  try {
    // Certificates: one CA signs the serving cert and the client certs; a separate key signs
    // service-account tokens, as on a real cluster.
    await openssl(dir, ["ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "ca.key"]);
    await openssl(dir, [
      "req",
      "-x509",
      "-new",
      "-key",
      "ca.key",
      "-out",
      "ca.crt",
      "-days",
      "3",
      "-subj",
      "/CN=stowage-test-cluster-ca",
      "-addext",
      "basicConstraints=critical,CA:TRUE",
      "-addext",
      "keyUsage=critical,keyCertSign,cRLSign,digitalSignature",
    ]);
    await signedCertificate(
      dir,
      "apiserver",
      "/CN=kube-apiserver",
      "subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc\n" +
        "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n",
    );
    await signedCertificate(
      dir,
      "admin",
      "/O=system:masters/CN=stowage-test-admin",
      "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth\n",
    );
    // The controller-manager and the scheduler authenticate as themselves, as under kubeadm, so the
    // audit log tells their requests from a test's (the admin's).
    for (const [file, user] of [
      ["controller-manager", "system:kube-controller-manager"],
      ["scheduler", "system:kube-scheduler"],
    ]) {
      await signedCertificate(
        dir,
        file,
        `/CN=${user}`,
        "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth\n",
      );
    }
    await run("openssl", ["genrsa", "-out", "sa.key", "2048"], { cwd: dir });
    await run("openssl", ["rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub"], { cwd: dir });

    const adminToken = `admin-${Math.random().toString(36).slice(2)}`;
    const tokenLines = [`${adminToken},stowage-test-admin-token,admin-token,system:masters`];
    for (const [token, user] of Object.entries(options.users ?? {})) {
      tokenLines.push(
        [token, user.name, user.uid ?? user.name, (user.groups ?? []).join(",")].map(csvField).join(","),
      );
    }
    await writeFile(join(dir, "tokens.csv"), `${tokenLines.join("\n")}\n`);
    // Metadata level: verb, URI, user and status of every request, no bodies.
    await writeFile(
      join(dir, "audit-policy.yaml"),
      stringify({
        apiVersion: "audit.k8s.io/v1",
        kind: "Policy",
        omitStages: ["RequestReceived"],
        rules: [{ level: "Metadata" }],
      }),
    );
    const auditPath = join(dir, "audit.log");

    const caPem = await readFile(join(dir, "ca.crt"), "utf8");
    const [etcdClientPort, etcdPeerPort, apiPort, cmPort, schedulerPort] = await Promise.all([
      freePort(),
      freePort(),
      freePort(),
      freePort(),
      freePort(),
    ]);
    const etcdUrl = `http://127.0.0.1:${etcdClientPort}`;
    const url = `https://127.0.0.1:${apiPort}`;
    const adminUser = {
      "client-certificate-data": b64(await readFile(join(dir, "admin.crt"), "utf8")),
      "client-key-data": b64(await readFile(join(dir, "admin.key"), "utf8")),
    };
    const kubeconfig = kubeconfigText(url, caPem, adminUser, "stowage-test-admin");
    const kubeconfigPath = join(dir, "admin.kubeconfig");
    await writeFile(kubeconfigPath, kubeconfig);
    const componentKubeconfig = async (file: string): Promise<string> => {
      const path = join(dir, `${file}.kubeconfig`);
      const user = {
        "client-certificate-data": b64(await readFile(join(dir, `${file}.crt`), "utf8")),
        "client-key-data": b64(await readFile(join(dir, `${file}.key`), "utf8")),
      };
      await writeFile(path, kubeconfigText(url, caPem, user, file));
      return path;
    };
    const controllerManagerKubeconfig = await componentKubeconfig("controller-manager");
    const schedulerKubeconfig = await componentKubeconfig("scheduler");

    const etcd = start("etcd", k8sBin("etcd"), [
      "--name=default",
      `--data-dir=${join(dir, "etcd")}`,
      `--listen-client-urls=${etcdUrl}`,
      `--advertise-client-urls=${etcdUrl}`,
      `--listen-peer-urls=http://127.0.0.1:${etcdPeerPort}`,
      `--initial-advertise-peer-urls=http://127.0.0.1:${etcdPeerPort}`,
      `--initial-cluster=default=http://127.0.0.1:${etcdPeerPort}`,
      // Test data is thrown away: skipping fsync makes etcd (and so every write) much faster.
      "--unsafe-no-fsync=true",
      "--log-level=warn",
    ]);
    await waitFor("etcd", etcd, () => httpOk(`${etcdUrl}/health`), 30_000);

    const apiserver = start("kube-apiserver", k8sBin("kube-apiserver"), [
      `--etcd-servers=${etcdUrl}`,
      "--bind-address=127.0.0.1",
      "--advertise-address=127.0.0.1",
      `--secure-port=${apiPort}`,
      `--cert-dir=${join(dir, "apiserver-certs")}`,
      `--tls-cert-file=${join(dir, "apiserver.crt")}`,
      `--tls-private-key-file=${join(dir, "apiserver.key")}`,
      `--client-ca-file=${join(dir, "ca.crt")}`,
      `--token-auth-file=${join(dir, "tokens.csv")}`,
      "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
      `--service-account-key-file=${join(dir, "sa.pub")}`,
      `--service-account-signing-key-file=${join(dir, "sa.key")}`,
      // Allocated, never routed: nothing here sends traffic to a Service IP.
      "--service-cluster-ip-range=10.0.0.0/24",
      "--authorization-mode=Node,RBAC",
      "--allow-privileged=true",
      // The apiserver would otherwise keep the `kubernetes` Service's endpoints pointed at itself.
      "--endpoint-reconciler-type=none",
      // It taints every new Node not-ready until the node lifecycle controller (off here, see
      // below) sees a kubelet; Nodes created by tests have no kubelet.
      "--disable-admission-plugins=TaintNodesByCondition",
      "--profiling=false",
      `--audit-policy-file=${join(dir, "audit-policy.yaml")}`,
      `--audit-log-path=${auditPath}`,
      "--audit-log-format=json",
      "--audit-log-mode=blocking",
      ...(options.apiserverFlags ?? []),
    ]);
    const probe = (path: string) => () =>
      adminRequest(url, caPem, adminToken, "GET", path).then((r) => r.status === 200);
    await waitFor("kube-apiserver", apiserver, probe("/readyz"), 90_000);
    for (const crd of options.crds ?? []) {
      const created = await adminRequest(
        url,
        caPem,
        adminToken,
        "POST",
        "/apis/apiextensions.k8s.io/v1/customresourcedefinitions",
        crd,
      );
      if (created.status !== 201)
        throw new Error(`creating CRD: ${created.status} ${JSON.stringify(created.body)}`);
      await waitForCrd(url, caPem, adminToken, created.body);
    }

    if (options.controllerManager !== false) {
      start("kube-controller-manager", k8sBin("kube-controller-manager"), [
        `--kubeconfig=${controllerManagerKubeconfig}`,
        `--authentication-kubeconfig=${controllerManagerKubeconfig}`,
        `--authorization-kubeconfig=${controllerManagerKubeconfig}`,
        // Each controller acts as its own ServiceAccount in kube-system, with its bootstrap role.
        "--use-service-account-credentials=true",
        "--bind-address=127.0.0.1",
        `--secure-port=${cmPort}`,
        "--leader-elect=false",
        // What tests lean on; node lifecycle stays off so API-only Nodes are not tainted or evicted.
        "--controllers=garbage-collector-controller,namespace-controller,serviceaccount-controller," +
          "serviceaccount-token-controller,root-ca-certificate-publisher-controller,deployment-controller," +
          "replicaset-controller,statefulset-controller,daemonset-controller,job-controller," +
          "endpointslice-controller,clusterrole-aggregation-controller,disruption-controller," +
          // PVCs carry kubernetes.io/pvc-protection from admission; without this controller a
          // deleted claim (e.g. a StatefulSet's, collected with it) stays Terminating for ever.
          "persistentvolumeclaim-protection-controller",
        `--service-account-private-key-file=${join(dir, "sa.key")}`,
        `--root-ca-file=${join(dir, "ca.crt")}`,
        `--cert-dir=${join(dir, "cm-certs")}`,
      ]);
    }
    if (options.scheduler !== false) {
      start("kube-scheduler", k8sBin("kube-scheduler"), [
        `--kubeconfig=${schedulerKubeconfig}`,
        `--authentication-kubeconfig=${schedulerKubeconfig}`,
        `--authorization-kubeconfig=${schedulerKubeconfig}`,
        "--bind-address=127.0.0.1",
        `--secure-port=${schedulerPort}`,
        "--leader-elect=false",
        `--cert-dir=${join(dir, "scheduler-certs")}`,
      ]);
    }
    // The default namespace's ServiceAccount appears once the controller-manager runs; pods
    // (ServiceAccount admission) need it, so ready means it exists.
    if (options.controllerManager !== false) {
      await waitFor(
        "the default ServiceAccount",
        apiserver,
        probe("/api/v1/namespaces/default/serviceaccounts/default"),
        60_000,
      );
    }

    const identityFile = async (name: string, user: Record<string, string>): Promise<ClientIdentity> => {
      const text = kubeconfigText(url, caPem, user, name);
      const path = join(
        dir,
        `${name.replaceAll(/[^a-zA-Z0-9.-]/g, "_")}-${Math.random().toString(36).slice(2, 8)}.kubeconfig`,
      );
      await writeFile(path, text);
      return { kubeconfigPath: path, kubeconfig: text };
    };
    let auditLinesSeen = 0;
    let signing: Promise<void> = Promise.resolve();
    const plane: ControlPlane = {
      url,
      kubeconfigPath,
      kubeconfig,
      caPem,
      dir,
      etcdUrl,
      adminToken,
      kubeconfigForToken: (token, name = "token-user") => identityFile(name, { token }),
      async kubeconfigForUser(name, groups = []) {
        const file = `user-${Math.random().toString(36).slice(2, 10)}`;
        const subject = [...groups.map((g) => `/O=${g}`), `/CN=${name}`].join("");
        // One signing at a time: concurrent `openssl x509 -CAcreateserial` runs race on ca.srl
        // ("Unable to load number from ca.srl"), e.g. two kubelet nodes started in parallel.
        const signed = signing.then(() =>
          signedCertificate(
            dir,
            file,
            subject,
            "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth\n",
          ),
        );
        signing = signed.catch(() => {});
        await signed;
        return identityFile(name, {
          "client-certificate-data": b64(await readFile(join(dir, `${file}.crt`), "utf8")),
          "client-key-data": b64(await readFile(join(dir, `${file}.key`), "utf8")),
        });
      },
      async kubeconfigForServiceAccount(namespace, name) {
        const sa = await plane.request("POST", `/api/v1/namespaces/${namespace}/serviceaccounts`, {
          apiVersion: "v1",
          kind: "ServiceAccount",
          metadata: { name, namespace },
        });
        if (sa.status !== 201 && sa.status !== 409)
          throw new Error(
            `creating ServiceAccount ${namespace}/${name}: ${sa.status} ${JSON.stringify(sa.body)}`,
          );
        const tr = await plane.request(
          "POST",
          `/api/v1/namespaces/${namespace}/serviceaccounts/${name}/token`,
          {
            apiVersion: "authentication.k8s.io/v1",
            kind: "TokenRequest",
            spec: { expirationSeconds: 3600 },
          },
        );
        if (tr.status !== 201)
          throw new Error(`TokenRequest for ${namespace}/${name}: ${tr.status} ${JSON.stringify(tr.body)}`);
        const token = tr.body.status.token as string;
        return { ...(await identityFile(`system:serviceaccount:${namespace}:${name}`, { token })), token };
      },
      async requestLog() {
        const text = await readFile(auditPath, "utf8").catch(() => "");
        return text
          .split("\n")
          .slice(auditLinesSeen)
          .filter((line) => line.startsWith("{"))
          .map((line) => auditEntry(JSON.parse(line)))
          .filter((entry): entry is RequestLogEntry => entry !== undefined);
      },
      async resetRequestLog() {
        const text = await readFile(auditPath, "utf8").catch(() => "");
        auditLinesSeen = text.split("\n").length - 1;
      },
      async compact() {
        const etcd = async (path: string, body: object) => {
          const res = await fetch(`${etcdUrl}${path}`, {
            method: "POST",
            body: JSON.stringify(body),
            signal: AbortSignal.timeout(10_000),
          });
          if (!res.ok) throw new Error(`etcd ${path}: ${res.status} ${await res.text()}`);
          return (await res.json()) as { header: { revision: string } };
        };
        // Any read answers with the store's current revision in its header.
        const { revision } = (await etcd("/v3/kv/range", { key: b64("/") })).header;
        await etcd("/v3/kv/compaction", { revision, physical: true });
        return revision;
      },
      request: (method, path, body, contentType) =>
        adminRequest(url, caPem, adminToken, method, path, body, contentType),
      waitForCrd: (crd) => waitForCrd(url, caPem, adminToken, crd),
      async log(component) {
        const proc = processes.find((p) => p.logPath.endsWith(`/${component}.log`));
        return proc ? readFile(proc.logPath, "utf8") : "";
      },
      stop,
    };
    return plane;
  } catch (err) {
    const logs = await Promise.all(
      processes.map(
        async (p) => `--- ${p.logPath}\n${(await readFile(p.logPath, "utf8").catch(() => "")).slice(-3000)}`,
      ),
    );
    await stop();
    throw new Error(`the control plane did not start: ${(err as Error).message}\n${logs.join("\n")}`);
  }
}

/** Waits until a new CRD is Established and listed by discovery for every served version. */
export async function waitForCrd(url: string, caPem: string, token: string, crd: CrdShape): Promise<void> {
  const deadline = Date.now() + 30_000;
  const get = (path: string) => adminRequest(url, caPem, token, "GET", path);
  while (Date.now() < deadline) {
    const got = await get(`/apis/apiextensions.k8s.io/v1/customresourcedefinitions/${crd.metadata.name}`);
    const established = (got.body?.status?.conditions ?? []).some(
      (c: { type: string; status: string }) => c.type === "Established" && c.status === "True",
    );
    if (established) {
      const listed = await Promise.all(
        crd.spec.versions
          .filter((v) => v.served)
          .map(async (v) => {
            const res = await get(`/apis/${crd.spec.group}/${v.name}`);
            return (
              res.status === 200 &&
              (res.body.resources as { name: string }[]).some((r) => r.name === crd.spec.names.plural)
            );
          }),
      );
      if (listed.every(Boolean)) return;
    }
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  throw new Error(`CRD ${crd.metadata.name} was not served within 30 s`);
}

export interface CrdShape {
  metadata: { name: string };
  spec: { group: string; names: { plural: string }; versions: { name: string; served: boolean }[] };
}

/**
 * Whether an audited request came from the control plane itself (the apiserver's loopback client,
 * the controller-manager and its controllers' ServiceAccounts, the scheduler) rather than from a
 * test or the code it runs: what the API double, which has no such components, never sees.
 */
export function isControlPlaneComponent(user: string): boolean {
  return (
    user === "system:apiserver" ||
    user === "system:kube-controller-manager" ||
    user === "system:kube-scheduler" ||
    user.startsWith("system:serviceaccount:kube-system:")
  );
}

const methodOfVerb: Record<string, string> = {
  create: "POST",
  update: "PUT",
  patch: "PATCH",
  delete: "DELETE",
  deletecollection: "DELETE",
};

interface AuditEvent {
  stage?: string;
  verb?: string;
  requestURI?: string;
  user?: { username?: string };
  responseStatus?: { code?: number };
}

/** One audit event (stage ResponseComplete or Panic) as a request log entry. */
function auditEntry(event: AuditEvent): RequestLogEntry | undefined {
  if (event.stage !== "ResponseComplete" && event.stage !== "Panic") return undefined;
  const verb = event.verb ?? "";
  return {
    method: methodOfVerb[verb] ?? "GET",
    path: new URL(event.requestURI ?? "/", "http://localhost").pathname,
    verb,
    status: event.responseStatus?.code ?? 0,
    user: event.user?.username ?? "",
  };
}

function httpOk(url: string): Promise<boolean> {
  return fetch(url, { signal: AbortSignal.timeout(2_000) }).then(
    (r) => r.ok,
    () => false,
  );
}

/** Polls `ready` until true; fails at once when the process exits, or after `timeoutMs`. */
async function waitFor(
  what: string,
  proc: Process,
  ready: () => Promise<boolean>,
  timeoutMs: number,
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (proc.child.exitCode !== null) throw new Error(`${what} exited with code ${proc.child.exitCode}`);
    if (await ready().catch(() => false)) return;
    await new Promise((resolve) => setTimeout(resolve, 200));
  }
  throw new Error(`${what} was not ready after ${timeoutMs} ms`);
}

function adminRequest(
  url: string,
  caPem: string,
  token: string,
  method: string,
  path: string,
  body?: unknown,
  contentType = "application/json",
): Promise<ApiResponse> {
  return new Promise((resolve, reject) => {
    const payload = body === undefined ? undefined : typeof body === "string" ? body : JSON.stringify(body);
    const req = request(
      `${url}${path}`,
      {
        method,
        ca: caPem,
        headers: {
          authorization: `Bearer ${token}`,
          accept: "application/json",
          ...(payload === undefined
            ? {}
            : { "content-type": contentType, "content-length": Buffer.byteLength(payload) }),
        },
        timeout: 30_000,
      },
      (res) => {
        const chunks: Buffer[] = [];
        res.on("data", (c: Buffer) => chunks.push(c));
        res.on("end", () => {
          const text = Buffer.concat(chunks).toString("utf8");
          let parsed: unknown = text;
          try {
            parsed = JSON.parse(text);
          } catch {
            // not JSON (e.g. /readyz says "ok")
          }
          resolve({ status: res.statusCode ?? 0, body: parsed, headers: res.headers });
        });
        res.on("error", reject);
      },
    );
    req.on("timeout", () => req.destroy(new Error(`${method} ${path} timed out`)));
    req.on("error", reject);
    req.end(payload);
  });
}
