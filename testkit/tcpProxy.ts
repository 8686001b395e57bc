/**
 * A TCP forwarder on 127.0.0.1 that a test can cut: every open connection dropped at once (a
 * load balancer resetting, an API server restarting), the port going dark and coming back (an
 * outage), or the traffic sent to another backend (a Service whose endpoints changed). Bytes are
 * passed through untouched, so TLS is end to end and certificates are checked as without it.
 */
import { createServer, type Server, Socket } from "node:net";

export interface TcpProxy {
  /** `127.0.0.1:PORT`, stable across `down()` and `up()` */
  host: string;
  port: number;
  /** where new connections go */
  target: { host: string; port: number };
  /** send new connections to another backend and drop the open ones (keep-alive would pin them) */
  retarget(target: { host?: string; port: number }): void;
  /** reset every open connection; new ones are still accepted */
  dropConnections(): void;
  /** stop listening (connections are refused) and drop the open ones */
  down(): Promise<void>;
  /** listen again on the same port */
  up(): Promise<void>;
  /** connections accepted so far */
  accepted(): number;
  stop(): Promise<void>;
}

export interface TcpProxyOptions {
  /** a fixed port to listen on; default a free one */
  port?: number;
  /** start without listening (as after `down()`): the port is known but refuses connections */
  startDown?: boolean;
}

export async function startTcpProxy(
  target: { host?: string; port: number },
  options: TcpProxyOptions = {},
): Promise<TcpProxy> {
  let current = { host: target.host ?? "127.0.0.1", port: target.port };
  const open = new Set<Socket>();
  let accepted = 0;
  let server: Server | undefined;

  const listen = async (port: number): Promise<number> => {
    const next = createServer((client) => {
      accepted++;
      const upstream = new Socket();
      open.add(client);
      open.add(upstream);
      const close = () => {
        client.destroy();
        upstream.destroy();
        open.delete(client);
        open.delete(upstream);
      };
      client.on("error", close);
      upstream.on("error", close);
      client.on("close", close);
      upstream.on("close", close);
      upstream.connect(current.port, current.host, () => {
        client.pipe(upstream);
        upstream.pipe(client);
      });
    });
    await new Promise<void>((resolve, reject) => {
      next.once("error", reject);
      next.listen(port, "127.0.0.1", () => {
        next.off("error", reject);
        resolve();
      });
    });
    server = next;
    return (next.address() as { port: number }).port;
  };

  const dropConnections = () => {
    for (const socket of [...open]) socket.destroy();
    open.clear();
  };

  const stopListening = async () => {
    const listening = server;
    server = undefined;
    dropConnections();
    if (listening) await new Promise<void>((resolve) => listening.close(() => resolve()));
  };

  let port = await listen(options.port ?? 0);
  if (options.startDown) await stopListening();

  return {
    host: `127.0.0.1:${port}`,
    port,
    get target() {
      return { ...current };
    },
    retarget(next) {
      current = { host: next.host ?? "127.0.0.1", port: next.port };
      dropConnections();
    },
    dropConnections,
    down: stopListening,
    async up() {
      if (!server) port = await listen(port);
    },
    accepted: () => accepted,
    stop: stopListening,
  };
}
