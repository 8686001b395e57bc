/**
 * A local stand-in for the Amazon ECR API endpoint, speaking the AWS JSON 1.1 protocol the
 * SDK uses (`POST /` with `X-Amz-Target: AmazonEC2ContainerRegistry_V20150921.<Operation>`),
 * refusing requests without a valid SigV4 signature for the expected access key, and
 * recording every call. Serves GetAuthorizationToken, CreateRepository and DescribeRepositories.
 * Test-only: production code never imports testkit/.
 */
import { createHash, createHmac } from "node:crypto";
import { createServer, type IncomingMessage, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";

const TARGET_PREFIX = "AmazonEC2ContainerRegistry_V20150921.";

export interface FakeEcrOptions {
  accessKeyId: string;
  secretAccessKey: string;
  /** The account id repositories belong to. Default "123456789012". */
  accountId?: string;
  /** The registry password handed out (the token is base64 "AWS:<password>"); a function may vary it per call. */
  password: string | (() => string);
  /** Token lifetime in seconds from `now()`. Default 12 hours, as ECR's. */
  tokenLifetimeSeconds?: number;
  /** The fake's idea of the time, so tests with an injected clock get matching expiries. Default Date.now. */
  now?: () => number;
  /** Repositories that already exist. */
  repositories?: string[];
}

export interface FakeEcrCall {
  operation: string;
  body: Record<string, unknown>;
  accessKeyId: string;
  region: string;
}

export interface RunningFakeEcr {
  /** "http://127.0.0.1:PORT", for the SDK's `endpoint`. */
  endpoint: string;
  calls(operation?: string): FakeEcrCall[];
  repositories(): string[];
  /** The next `times` calls of `operation` fail with this AWS error type (e.g. AccessDeniedException). */
  failNext(operation: string, type: string, options?: { status?: number; times?: number }): void;
  stop(): Promise<void>;
}

class AwsError extends Error {
  readonly type: string;
  readonly status: number;
  constructor(type: string, message: string, status = 400) {
    super(message);
    this.type = type;
    this.status = status;
  }
}

export async function startFakeEcr(options: FakeEcrOptions): Promise<RunningFakeEcr> {
  const accountId = options.accountId ?? "123456789012";
  const now = options.now ?? Date.now;
  const repositories = new Map<string, number>();
  for (const name of options.repositories ?? []) repositories.set(name, now());
  const calls: FakeEcrCall[] = [];
  const failures = new Map<string, { type: string; status: number; times: number }>();

  const repositoryOf = (name: string, createdAt: number) => ({
    registryId: accountId,
    repositoryName: name,
    repositoryArn: `arn:aws:ecr:us-east-1:${accountId}:repository/${name}`,
    repositoryUri: `${accountId}.dkr.ecr.us-east-1.amazonaws.com/${name}`,
    createdAt: createdAt / 1000,
    imageTagMutability: "MUTABLE",
  });

  const operations: Record<string, (body: Record<string, unknown>) => unknown> = {
    GetAuthorizationToken: () => {
      const password = typeof options.password === "function" ? options.password() : options.password;
      return {
        authorizationData: [
          {
            authorizationToken: Buffer.from(`AWS:${password}`).toString("base64"),
            expiresAt: Math.floor(now() / 1000) + (options.tokenLifetimeSeconds ?? 12 * 3600),
            proxyEndpoint: `https://${accountId}.dkr.ecr.us-east-1.amazonaws.com`,
          },
        ],
      };
    },
    CreateRepository: (body) => {
      const name = body.repositoryName;
      if (
        typeof name !== "string" ||
        !/^[a-z0-9]+(?:[._-][a-z0-9]+)*(?:\/[a-z0-9]+(?:[._-][a-z0-9]+)*)*$/.test(name)
      ) {
        throw new AwsError("InvalidParameterException", `Invalid parameter at 'repositoryName'`);
      }
      if (repositories.has(name)) {
        throw new AwsError(
          "RepositoryAlreadyExistsException",
          `The repository with name '${name}' already exists in the registry with id '${accountId}'`,
        );
      }
      repositories.set(name, now());
      return { repository: repositoryOf(name, now()) };
    },
    DescribeRepositories: (body) => {
      const names = Array.isArray(body.repositoryNames) ? (body.repositoryNames as string[]) : undefined;
      if (!names) return { repositories: [...repositories].map(([name, at]) => repositoryOf(name, at)) };
      const missing = names.find((name) => !repositories.has(name));
      if (missing) {
        throw new AwsError(
          "RepositoryNotFoundException",
          `The repository with name '${missing}' does not exist in the registry with id '${accountId}'`,
        );
      }
      return { repositories: names.map((name) => repositoryOf(name, repositories.get(name) ?? 0)) };
    },
  };

  const handle = async (req: IncomingMessage, res: ServerResponse) => {
    const chunks: Buffer[] = [];
    for await (const chunk of req) chunks.push(chunk as Buffer);
    const payload = Buffer.concat(chunks);
    try {
      if (req.method !== "POST" || req.url !== "/") throw new AwsError("UnknownOperationException", "", 404);
      const target = String(req.headers["x-amz-target"] ?? "");
      const operation = target.startsWith(TARGET_PREFIX) ? target.slice(TARGET_PREFIX.length) : "";
      const run = operations[operation];
      if (!run) throw new AwsError("UnknownOperationException", `unknown operation ${target}`);
      const { accessKeyId, region } = verifySignature(req, payload, options);
      const body =
        payload.length > 0 ? (JSON.parse(payload.toString("utf8")) as Record<string, unknown>) : {};
      calls.push({ operation, body, accessKeyId, region });
      const failure = failures.get(operation);
      if (failure && failure.times > 0) {
        failure.times--;
        throw new AwsError(failure.type, `injected ${failure.type}`, failure.status);
      }
      send(res, 200, run(body));
    } catch (err) {
      const failure = err instanceof AwsError ? err : new AwsError("ServerException", String(err), 500);
      res.setHeader("x-amzn-errortype", failure.type);
      send(res, failure.status, { __type: failure.type, message: failure.message });
    }
  };

  const server = createServer((req, res) => {
    handle(req, res).catch(() => res.destroy());
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as AddressInfo;
  return {
    endpoint: `http://127.0.0.1:${port}`,
    calls: (operation) => calls.filter((call) => !operation || call.operation === operation),
    repositories: () => [...repositories.keys()],
    failNext: (operation, type, failOptions = {}) => {
      failures.set(operation, { type, status: failOptions.status ?? 400, times: failOptions.times ?? 1 });
    },
    stop: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}

function send(res: ServerResponse, status: number, body: unknown): void {
  const text = JSON.stringify(body);
  res.writeHead(status, {
    "content-type": "application/x-amz-json-1.1",
    "content-length": Buffer.byteLength(text),
    "x-amzn-requestid": `fake-${Date.now()}`,
  });
  res.end(text);
}

/**
 * Recomputes the AWS Signature Version 4 of the request with the expected secret key, as
 * the service would; a missing, foreign or wrong signature is refused like AWS refuses it.
 */
function verifySignature(
  req: IncomingMessage,
  payload: Buffer,
  options: FakeEcrOptions,
): { accessKeyId: string; region: string } {
  const header = String(req.headers.authorization ?? "");
  const match =
    /^AWS4-HMAC-SHA256 Credential=([^/]+)\/(\d{8})\/([^/]+)\/([^/]+)\/aws4_request, ?SignedHeaders=([^,]+), ?Signature=([0-9a-f]{64})$/.exec(
      header,
    );
  if (!match) throw new AwsError("MissingAuthenticationTokenException", "Missing Authentication Token", 400);
  const [, accessKeyId, date, region, service, signedHeaders, signature] = match;
  if (accessKeyId !== options.accessKeyId) {
    throw new AwsError(
      "UnrecognizedClientException",
      "The security token included in the request is invalid.",
    );
  }
  const amzDate = String(req.headers["x-amz-date"] ?? "");
  const canonicalHeaders = signedHeaders
    .split(";")
    .map(
      (name) =>
        `${name}:${String(req.headers[name] ?? "")
          .trim()
          .replace(/\s+/g, " ")}\n`,
    )
    .join("");
  const canonicalRequest = [
    req.method,
    "/",
    "",
    canonicalHeaders,
    signedHeaders,
    createHash("sha256").update(payload).digest("hex"),
  ].join("\n");
  const scope = `${date}/${region}/${service}/aws4_request`;
  const stringToSign = [
    "AWS4-HMAC-SHA256",
    amzDate,
    scope,
    createHash("sha256").update(canonicalRequest).digest("hex"),
  ].join("\n");
  let key: Buffer = createHmac("sha256", `AWS4${options.secretAccessKey}`).update(date).digest();
  for (const part of [region, service, "aws4_request"]) key = createHmac("sha256", key).update(part).digest();
  const expected = createHmac("sha256", key).update(stringToSign).digest("hex");
  if (expected !== signature || service !== "ecr") {
    throw new AwsError(
      "InvalidSignatureException",
      "The request signature we calculated does not match the signature you provided.",
    );
  }
  return { accessKeyId, region };
}
