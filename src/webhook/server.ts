/**
 * The admission webhook's HTTPS server. The serving certificate can be swapped while it runs
 * (rotation): new connections get the new certificate, open ones finish with the old.
 */
import type { IncomingMessage, ServerResponse } from "node:http";
import { createServer, type Server } from "node:https";
import type { AddressInfo } from "node:net";
import { type Logger, silentLogger } from "../util/log.ts";
import { type AdmissionLookups, reviewPodAdmission } from "./admission.ts";

export const MUTATE_PODS_PATH = "/mutate-pods";
/** The API server sends at most 3 MiB objects; a review holds two of them. */
const MAX_BODY_BYTES = 8 * 1024 * 1024;

export interface WebhookServerOptions {
  host?: string;
  /** 0 picks a free port. */
  port: number;
  certPem: string;
  keyPem: string;
  lookups: AdmissionLookups;
  log?: Logger;
  /** Called after every pod admission the webhook decided to hold. */
  onHeld?: (namespace: string, heldFor: string[]) => void;
}

export interface WebhookServer {
  readonly port: number;
  readonly url: string;
  setCertificate(certPem: string, keyPem: string): void;
  close(): Promise<void>;
}

async function readBody(req: IncomingMessage): Promise<string | undefined> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of req) {
    size += (chunk as Buffer).length;
    if (size > MAX_BODY_BYTES) return undefined;
    chunks.push(chunk as Buffer);
  }
  return Buffer.concat(chunks).toString("utf8");
}

function send(res: ServerResponse, status: number, body: unknown): void {
  const text = typeof body === "string" ? body : JSON.stringify(body);
  res.writeHead(status, {
    "content-type": typeof body === "string" ? "text/plain; charset=utf-8" : "application/json",
    "content-length": Buffer.byteLength(text),
  });
  res.end(text);
}

export async function startWebhookServer(options: WebhookServerOptions): Promise<WebhookServer> {
  const log = (options.log ?? silentLogger()).child({ component: "webhook" });
  const handle = async (req: IncomingMessage, res: ServerResponse): Promise<void> => {
    const path = (req.url ?? "").split("?")[0];
    if (req.method === "GET" && (path === "/healthz" || path === "/readyz")) return send(res, 200, "ok");
    if (path !== MUTATE_PODS_PATH) return send(res, 404, "not found");
    if (req.method !== "POST") return send(res, 405, "method not allowed");
    const text = await readBody(req);
    let body: unknown = text;
    if (text !== undefined) {
      try {
        body = JSON.parse(text);
      } catch {
        body = text;
      }
    }
    const outcome = reviewPodAdmission(body, options.lookups);
    const decision = outcome.decision;
    if (decision?.hold) {
      const held = decision.matches.map(
        (m) => `${m.modelImage.metadata?.namespace}/${m.modelImage.metadata?.name}`,
      );
      const request = (body as { request?: { namespace?: string; name?: string } }).request;
      log.info({ namespace: request?.namespace, pod: request?.name, heldFor: held }, "pod held for prewarm");
      options.onHeld?.(request?.namespace ?? "", held);
    } else if (outcome.review.response.warnings) {
      log.warn({ warnings: outcome.review.response.warnings }, "admission request not understood; allowed");
    }
    send(res, 200, outcome.review);
  };
  const server: Server = createServer({ cert: options.certPem, key: options.keyPem }, (req, res) => {
    handle(req, res).catch((err: unknown) => {
      log.error({ err }, "admission handler failed");
      if (!res.headersSent) send(res, 500, "internal error");
    });
  });
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(options.port, options.host ?? "0.0.0.0", () => {
      server.off("error", reject);
      resolve();
    });
  });
  const port = (server.address() as AddressInfo).port;
  const host = options.host && options.host !== "0.0.0.0" ? options.host : "127.0.0.1";
  return {
    port,
    url: `https://${host}:${port}${MUTATE_PODS_PATH}`,
    setCertificate(certPem, keyPem) {
      server.setSecureContext({ cert: certPem, key: keyPem });
    },
    close() {
      return new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      });
    },
  };
}
