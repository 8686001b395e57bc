/**
 * A small Docker/OCI token server (the `auth.token` realm of a distribution registry).
 * Issues RS256 JWTs whose header carries the signing certificate in `x5c`, so the registry
 * verifies them against its `rootcertbundle` exactly as it would a real issuer's.
 */
import { createSign, randomUUID } from "node:crypto";
import { createServer, type IncomingMessage, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import { makeSigningCertificate, type SigningCertificate } from "./tls.ts";

export interface TokenIssuerOptions {
  /** Directory for the signing key and certificate. */
  dir: string;
  users: { username: string; password: string }[];
  service: string;
  issuer: string;
  /** Grant `pull` to callers without credentials (a public repository). Default false. */
  anonymousPull?: boolean;
  /** Token lifetime in seconds. Default 300. */
  expiresIn?: number;
}

export interface TokenRequestRecord {
  scope: string[];
  account?: string;
  /** "GET" for the docker token flow, "POST" for the oauth2 flow. */
  method: string;
}

export interface RunningTokenIssuer {
  /** The realm: "http://127.0.0.1:PORT/token". */
  url: string;
  certPath: string;
  requests(): TokenRequestRecord[];
  stop(): Promise<void>;
}

interface Access {
  type: string;
  name: string;
  actions: string[];
}

function base64url(input: Buffer | string): string {
  return Buffer.from(input).toString("base64url");
}

/** "repository:library/alpine:pull,push" → {type, name, actions}; the name may not hold ':'. */
function parseScope(scope: string): Access | undefined {
  const first = scope.indexOf(":");
  const last = scope.lastIndexOf(":");
  if (first < 0 || last <= first) return undefined;
  return {
    type: scope.slice(0, first),
    name: scope.slice(first + 1, last),
    actions: scope
      .slice(last + 1)
      .split(",")
      .filter(Boolean),
  };
}

function basicCredentials(req: IncomingMessage): { username: string; password: string } | undefined {
  const header = req.headers.authorization;
  if (!header?.toLowerCase().startsWith("basic ")) return undefined;
  const decoded = Buffer.from(header.slice(6).trim(), "base64").toString("utf8");
  const colon = decoded.indexOf(":");
  if (colon < 0) return undefined;
  return { username: decoded.slice(0, colon), password: decoded.slice(colon + 1) };
}

async function readBody(req: IncomingMessage): Promise<string> {
  const chunks: Buffer[] = [];
  for await (const chunk of req) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks).toString("utf8");
}

export async function startTokenIssuer(options: TokenIssuerOptions): Promise<RunningTokenIssuer> {
  const signing: SigningCertificate = await makeSigningCertificate(options.dir);
  const expiresIn = options.expiresIn ?? 300;
  const records: TokenRequestRecord[] = [];
  const refreshTokens = new Map<string, string>();

  const sign = (account: string | undefined, access: Access[]): string => {
    const now = Math.floor(Date.now() / 1000);
    const header = { typ: "JWT", alg: "RS256", x5c: [signing.certDerBase64] };
    const claims = {
      iss: options.issuer,
      sub: account ?? "",
      aud: options.service,
      exp: now + expiresIn,
      nbf: now - 10,
      iat: now,
      jti: randomUUID(),
      access,
    };
    const signingInput = `${base64url(JSON.stringify(header))}.${base64url(JSON.stringify(claims))}`;
    const signature = createSign("RSA-SHA256").update(signingInput).sign(signing.keyPem);
    return `${signingInput}.${base64url(signature)}`;
  };

  const grant = (account: string | undefined, scopes: string[]): Access[] => {
    const granted: Access[] = [];
    for (const scope of scopes) {
      const access = parseScope(scope);
      if (!access) continue;
      if (account !== undefined) granted.push(access);
      else if (options.anonymousPull && access.type === "repository") {
        const actions = access.actions.filter((action) => action === "pull");
        if (actions.length > 0) granted.push({ ...access, actions });
      }
    }
    return granted;
  };

  const deny = (res: ServerResponse, message: string) => {
    res.writeHead(401, { "content-type": "application/json" });
    res.end(JSON.stringify({ errors: [{ code: "UNAUTHORIZED", message, detail: null }] }));
  };

  const checkUser = (username: string, password: string): boolean =>
    options.users.some((user) => user.username === username && user.password === password);

  const server = createServer((req, res) => {
    handle(req, res).catch((err: unknown) => {
      res.writeHead(500);
      res.end(String(err));
    });
  });

  async function handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const url = new URL(req.url ?? "/", "http://token.invalid");
    if (url.pathname !== "/token") {
      res.writeHead(404);
      res.end();
      return;
    }
    let account: string | undefined;
    let scopes: string[];
    let offline = false;
    if (req.method === "POST") {
      const form = new URLSearchParams(await readBody(req));
      scopes = form.get("scope")?.split(" ").filter(Boolean) ?? [];
      records.push({ scope: scopes, method: "POST", account: form.get("username") ?? undefined });
      const grantType = form.get("grant_type");
      if (grantType === "password") {
        const username = form.get("username") ?? "";
        if (!checkUser(username, form.get("password") ?? ""))
          return deny(res, "invalid username or password");
        account = username;
        offline = form.get("access_type") === "offline";
      } else if (grantType === "refresh_token") {
        account = refreshTokens.get(form.get("refresh_token") ?? "");
        if (account === undefined) return deny(res, "invalid refresh token");
      } else {
        res.writeHead(400, { "content-type": "application/json" });
        res.end(JSON.stringify({ error: "unsupported_grant_type" }));
        return;
      }
      records[records.length - 1].account = account;
    } else {
      scopes = url.searchParams.getAll("scope").flatMap((scope) => scope.split(" ").filter(Boolean));
      const credentials = basicCredentials(req);
      records.push({ scope: scopes, method: "GET", account: credentials?.username });
      if (credentials) {
        if (!checkUser(credentials.username, credentials.password)) {
          return deny(res, "invalid username or password");
        }
        account = credentials.username;
      }
      offline = url.searchParams.get("offline_token") === "true";
    }
    const token = sign(account, grant(account, scopes));
    const body: Record<string, unknown> = {
      token,
      access_token: token,
      expires_in: expiresIn,
      issued_at: new Date().toISOString(),
    };
    if (offline && account !== undefined) {
      const refresh = randomUUID();
      refreshTokens.set(refresh, account);
      body.refresh_token = refresh;
    }
    res.writeHead(200, { "content-type": "application/json" });
    res.end(JSON.stringify(body));
  }

  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}/token`,
    certPath: signing.certPath,
    requests: () => records.map((record) => ({ ...record, scope: [...record.scope] })),
    stop: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}
