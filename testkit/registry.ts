/**
 * Starts a real CNCF distribution 2.8 registry (`/usr/bin/docker-registry`) as a child
 * process, with optional htpasswd or token auth and TLS, for tests and benchmarks.
 */
import { type ChildProcess, execFile, spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { request as httpRequest } from "node:http";
import { request as httpsRequest } from "node:https";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { stringify } from "yaml";
import { freePort } from "./ports.ts";
import { makeServerCertificate } from "./tls.ts";
import { type RunningTokenIssuer, startTokenIssuer } from "./tokenIssuer.ts";

const run = promisify(execFile);
const REGISTRY_BINARY = "/usr/bin/docker-registry";

export interface RegistryOptions {
  auth?: "none" | "htpasswd" | "token";
  users?: { username: string; password: string }[];
  tls?: boolean;
  storageDir?: string;
  port?: number;
  /** auth=token only: anonymous callers get pull access (a public registry). Default false. */
  anonymousPull?: boolean;
  /** auth=token only: token lifetime in seconds (default 300). */
  tokenExpiresIn?: number;
  /**
   * Store in S3 (e.g. testkit/s3.ts) instead of the filesystem; several registries given the same
   * bucket and httpSecret behave as replicas of one registry.
   */
  s3?: RegistryS3Storage;
  /** A storage section used as is (e.g. one a chart rendered), in place of filesystem or s3. */
  storage?: Record<string, unknown>;
  /** http.secret (default random): replicas sharing storage must share it. */
  httpSecret?: string;
  /** Environment for the registry process, added to this process's (e.g. REGISTRY_STORAGE_S3_ACCESSKEY). */
  env?: Record<string, string>;
  /** storage.maintenance.readonly: refuse pushes and deletes (what garbage collection needs). */
  readOnly?: boolean;
}

export interface RegistryS3Storage {
  endpoint: string;
  bucket: string;
  region: string;
  accessKey: string;
  secretKey: string;
  rootDirectory?: string;
}

/**
 * The registry's environment. With object storage, none of this process's AWS_* variables: the
 * keys come from the config, and distribution 2.8 panics at start when AWS_CA_BUNDLE is set
 * ("LoadCustomCABundleError: ... HTTPClient's transport unsupported type"), as it is on machines
 * that point the AWS SDKs at the system CAs.
 */
function registryEnv(opts: RegistryOptions): NodeJS.ProcessEnv | undefined {
  if (!opts.s3 && !opts.storage && !opts.env) return undefined;
  const env: NodeJS.ProcessEnv = {};
  for (const [name, value] of Object.entries(process.env)) if (!name.startsWith("AWS_")) env[name] = value;
  return { ...env, ...opts.env };
}

function s3StorageSection(s3: RegistryS3Storage): Record<string, unknown> {
  return {
    s3: {
      accesskey: s3.accessKey,
      secretkey: s3.secretKey,
      region: s3.region,
      regionendpoint: s3.endpoint,
      forcepathstyle: true,
      bucket: s3.bucket,
      rootdirectory: s3.rootDirectory ?? "/stowage",
    },
    // Blob GETs are served by the registry, not redirected to the S3 server.
    redirect: { disable: true },
  };
}

export interface RunningRegistry {
  host: string;
  url: string;
  storageDir: string;
  caPem?: string;
  users: { username: string; password: string }[];
  tokenIssuer?: { url: string; requests: () => { scope: string[]; account?: string }[] };
  /** The registry's process (benchmarks read its CPU time). */
  pid?: number;
  /** Request lines from the registry's access log, oldest first. */
  requests(): Promise<{ method: string; path: string; status: number }[]>;
  stop(): Promise<void>;
}

// Registries still running when the test process exits (a test that forgot stop(), a
// crash) are killed rather than left behind holding ports.
const running = new Set<ChildProcess>();
process.once("exit", () => {
  for (const child of running) child.kill("SIGKILL");
});

export const TOKEN_SERVICE = "stowage-test-registry";
export const TOKEN_ISSUER = "stowage-test-issuer";

// Combined log format written by the registry's access log handler on stdout:
// 127.0.0.1 - - [26/Nov/2026:20:00:00 +0000] "GET /v2/ HTTP/1.1" 200 2 "" "ua"
const ACCESS_LINE = /"([A-Z]+) (\S+) HTTP\/[\d.]+" (\d{3}) /;

function probe(url: string, caPem: string | undefined): Promise<boolean> {
  return new Promise((resolve) => {
    const requestFn = url.startsWith("https:") ? httpsRequest : httpRequest;
    const req = requestFn(`${url}/v2/`, { method: "GET", ca: caPem, timeout: 1000 }, (res) => {
      res.resume();
      resolve(res.statusCode === 200 || res.statusCode === 401);
    });
    req.on("error", () => resolve(false));
    req.on("timeout", () => req.destroy());
    req.end();
  });
}

export async function startRegistry(opts: RegistryOptions = {}): Promise<RunningRegistry> {
  // A port picked by freePort can be taken before the registry binds it; try a few.
  const attempts = opts.port === undefined ? 4 : 1;
  let lastError: unknown;
  for (let attempt = 0; attempt < attempts; attempt++) {
    try {
      return await startOnce(opts);
    } catch (err) {
      lastError = err;
    }
  }
  throw lastError;
}

async function startOnce(opts: RegistryOptions): Promise<RunningRegistry> {
  const workDir = await mkdtemp(join(tmpdir(), "stowage-registry-"));
  const storageDir = opts.storageDir ?? join(workDir, "storage");
  const users = opts.users ?? [{ username: "stowage", password: "s3cret" }];
  const auth = opts.auth ?? "none";
  const port = opts.port ?? (await freePort());
  const host = `127.0.0.1:${port}`;
  let tokenIssuer: RunningTokenIssuer | undefined;
  let child: ChildProcess | undefined;

  const cleanup = async () => {
    if (child && child.exitCode === null && child.signalCode === null) {
      const exited = new Promise<void>((resolve) => child?.once("exit", () => resolve()));
      child.kill("SIGTERM");
      const timer = setTimeout(() => child?.kill("SIGKILL"), 5000);
      await exited;
      clearTimeout(timer);
    }
    await tokenIssuer?.stop();
    await rm(workDir, { recursive: true, force: true });
  };

  try {
    const config: Record<string, unknown> = {
      version: 0.1,
      log: { level: "info", formatter: "text", accesslog: { disabled: false } },
      storage: {
        ...(opts.storage ??
          (opts.s3 ? s3StorageSection(opts.s3) : { filesystem: { rootdirectory: storageDir } })),
        delete: { enabled: true },
        maintenance: {
          uploadpurging: { enabled: false },
          ...(opts.readOnly ? { readonly: { enabled: true } } : {}),
        },
      },
      http: {
        addr: host,
        secret: opts.httpSecret ?? randomBytes(16).toString("hex"),
        headers: { "X-Content-Type-Options": ["nosniff"] },
      },
    };
    const http = config.http as Record<string, unknown>;
    let caPem: string | undefined;
    if (opts.tls) {
      const certificate = await makeServerCertificate(workDir);
      caPem = certificate.caPem;
      http.tls = { certificate: certificate.certPath, key: certificate.keyPath };
    }
    if (auth === "htpasswd") {
      const lines: string[] = [];
      for (const user of users) {
        const { stdout } = await run("htpasswd", ["-Bbn", user.username, user.password]);
        lines.push(stdout.trim());
      }
      const htpasswdPath = join(workDir, "htpasswd");
      await writeFile(htpasswdPath, `${lines.join("\n")}\n`);
      config.auth = { htpasswd: { realm: "stowage-test", path: htpasswdPath } };
    } else if (auth === "token") {
      tokenIssuer = await startTokenIssuer({
        dir: workDir,
        users,
        service: TOKEN_SERVICE,
        issuer: TOKEN_ISSUER,
        anonymousPull: opts.anonymousPull,
        expiresIn: opts.tokenExpiresIn,
      });
      config.auth = {
        token: {
          realm: tokenIssuer.url,
          service: TOKEN_SERVICE,
          issuer: TOKEN_ISSUER,
          rootcertbundle: tokenIssuer.certPath,
        },
      };
    }
    const configPath = join(workDir, "config.yml");
    await writeFile(configPath, stringify(config));

    const accessLines: string[] = [];
    let stdoutRest = "";
    let stderrTail = "";
    child = spawn(REGISTRY_BINARY, ["serve", configPath], {
      stdio: ["ignore", "pipe", "pipe"],
      env: registryEnv(opts),
    });
    running.add(child);
    const started = child;
    child.once("exit", () => running.delete(started));
    child.stdout?.setEncoding("utf8");
    child.stdout?.on("data", (chunk: string) => {
      const parts = (stdoutRest + chunk).split("\n");
      stdoutRest = parts.pop() ?? "";
      for (const line of parts) if (ACCESS_LINE.test(line)) accessLines.push(line);
    });
    child.stderr?.setEncoding("utf8");
    child.stderr?.on("data", (chunk: string) => {
      stderrTail = (stderrTail + chunk).slice(-4000);
    });
    const spawned = child;
    const exitedEarly = new Promise<never>((_, reject) => {
      spawned.once("exit", (code, signal) =>
        reject(new Error(`docker-registry exited (${code ?? signal}) during start: ${stderrTail}`)),
      );
      spawned.once("error", reject);
    });
    exitedEarly.catch(() => {});

    const url = `${opts.tls ? "https" : "http"}://${host}`;
    const deadline = Date.now() + 20_000;
    for (;;) {
      const ready = await Promise.race([probe(url, caPem), exitedEarly]);
      if (ready) break;
      if (Date.now() > deadline)
        throw new Error(`docker-registry at ${url} did not answer /v2/: ${stderrTail}`);
      await new Promise((resolve) => setTimeout(resolve, 50));
    }

    const issuer = tokenIssuer;
    return {
      host,
      url,
      pid: child.pid,
      storageDir,
      caPem,
      users,
      tokenIssuer: issuer
        ? {
            url: issuer.url,
            requests: () => issuer.requests().map(({ scope, account }) => ({ scope, account })),
          }
        : undefined,
      async requests() {
        // The access log line is written after the handler returns, which can be just
        // after the client saw the response: give the pipe a moment to deliver it.
        await new Promise((resolve) => setTimeout(resolve, 150));
        return accessLines.flatMap((line) => {
          const match = ACCESS_LINE.exec(line);
          return match ? [{ method: match[1], path: match[2], status: Number(match[3]) }] : [];
        });
      },
      // A caller-given storageDir lives outside workDir, so cleanup never removes it.
      stop: cleanup,
    };
  } catch (err) {
    await cleanup();
    throw err;
  }
}
