/**
 * A token-auth upstream where users reach only some repositories, as on Docker Hub or GHCR
 * (testkit's token issuer grants every user everything). A small HTTP server in front of a
 * real token-auth distribution registry: registry traffic passes through with the challenge's
 * realm pointed at this server, whose /token drops the scopes a user may not have before
 * asking the real issuer, so the registry itself refuses the token for those repositories.
 */
import { createServer, type IncomingMessage, request, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import type { RunningRegistry } from "../../testkit/registry.ts";

export interface ScopedUpstream {
  host: string;
  url: string;
  stop(): Promise<void>;
}

function userOf(req: IncomingMessage): string | undefined {
  const header = req.headers.authorization;
  if (!header?.toLowerCase().startsWith("basic ")) return undefined;
  const decoded = Buffer.from(header.slice(6), "base64").toString("utf8");
  return decoded.slice(0, decoded.indexOf(":"));
}

function forward(
  target: string,
  req: IncomingMessage,
  res: ServerResponse,
  rewrite?: (headers: Record<string, string | string[] | undefined>) => void,
) {
  const url = new URL(target);
  const upstream = request(
    target,
    { method: req.method, headers: { ...req.headers, host: url.host }, agent: false },
    (answer) => {
      const headers = { ...answer.headers };
      rewrite?.(headers);
      res.writeHead(answer.statusCode ?? 502, headers);
      answer.pipe(res);
    },
  );
  upstream.on("error", () => {
    if (!res.headersSent) res.writeHead(502);
    res.end();
  });
  req.pipe(upstream);
}

/** `repositories[user]`: repository prefixes the user may pull; users not listed may pull anything. */
export async function startScopedUpstream(
  registry: RunningRegistry,
  repositories: Record<string, string[]>,
): Promise<ScopedUpstream> {
  const issuer = registry.tokenIssuer?.url;
  if (!issuer) throw new Error("startScopedUpstream needs a registry with auth: token");
  let self = "";
  const server = createServer((req, res) => {
    const url = new URL(req.url ?? "/", "http://scoped.invalid");
    if (url.pathname === "/token") {
      const user = userOf(req);
      const allowed = user === undefined ? undefined : repositories[user];
      const query = new URLSearchParams(url.searchParams);
      if (allowed) {
        query.delete("scope");
        for (const scope of url.searchParams.getAll("scope").flatMap((value) => value.split(" "))) {
          const name = scope.split(":")[1] ?? "";
          if (allowed.some((prefix) => name.startsWith(prefix))) query.append("scope", scope);
        }
      }
      forward(`${issuer}?${query}`, req, res);
      return;
    }
    forward(`${registry.url}${req.url}`, req, res, (headers) => {
      const challenge = headers["www-authenticate"];
      if (typeof challenge === "string")
        headers["www-authenticate"] = challenge.replace(issuer, `${self}/token`);
    });
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as AddressInfo;
  self = `http://127.0.0.1:${port}`;
  return {
    host: `127.0.0.1:${port}`,
    url: self,
    stop: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}
