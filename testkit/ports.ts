import { createServer } from "node:net";

/** A port that was free a moment ago on 127.0.0.1 (bind :0, read it, close). */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.unref();
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const address = server.address();
      if (address === null || typeof address === "string") {
        server.close();
        reject(new Error("could not read the bound port"));
        return;
      }
      const { port } = address;
      server.close(() => resolve(port));
    });
  });
}

/** Whether nothing listens on `host:port` right now. */
function portFreeOn(host: string, port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const server = createServer();
    server.unref();
    server.once("error", () => resolve(false));
    server.listen(port, host, () => server.close(() => resolve(true)));
  });
}

/**
 * A port free on every one of `addresses` (loopback addresses such as 127.0.0.41): sandbox nodes
 * that each bind their own address share one port, as agents on real nodes share the peer port.
 */
export async function portFreeOnAll(addresses: readonly string[]): Promise<number> {
  for (let attempt = 0; attempt < 20; attempt++) {
    const port = await freePort();
    if ((await Promise.all(addresses.map((a) => portFreeOn(a, port)))).every(Boolean)) return port;
  }
  throw new Error(`no port was free on all of ${addresses.join(", ")} in 20 tries`);
}
