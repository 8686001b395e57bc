/**
 * A WAN-like link for bench:podstart: a TCP forwarder on 127.0.0.1 that paces what the server
 * sends on each connection to `bytesPerSecond` (a registry's per-connection limit: parallel
 * connections each get the rate) and delays what the client sends by `latencyMs`.
 *
 * Why not the fault proxy's throttle action: at 2f3ff8e it can end a response before its last
 * paced chunk is written (the upstream's `end` is handled on a timer that may fire first), so a
 * small manifest comes back empty ("transfer closed with 397 bytes remaining", containerd
 * "failed to read expected number of bytes: unexpected EOF"). Pacing bytes in a stream Transform
 * keeps them in order by construction. The fault proxy still sits behind this link, unthrottled,
 * to record every request.
 */

import type { AddressInfo } from "node:net";
import { connect, createServer, type Socket } from "node:net";
import { pipeline, Transform } from "node:stream";

export interface WanLink {
  /** `127.0.0.1:PORT` */
  host: string;
  stop(): Promise<void>;
}

/** Lets each chunk through once the connection's byte budget allows it. */
function pace(bytesPerSecond: number): Transform {
  let freeAt = 0;
  return new Transform({
    transform(chunk: Buffer, _encoding, done) {
      if (!(bytesPerSecond > 0)) return done(null, chunk);
      const now = performance.now();
      // The schedule is kept in ideal time, so a timer firing late is made up by the next chunk.
      freeAt = Math.max(now, freeAt) + (chunk.length / bytesPerSecond) * 1000;
      const wait = freeAt - now;
      if (wait < 1) done(null, chunk);
      else setTimeout(() => done(null, chunk), wait);
    },
  });
}

/** Delays every chunk by `ms` (requests are one chunk or a few). */
function delay(ms: number): Transform {
  return new Transform({
    transform(chunk: Buffer, _encoding, done) {
      if (ms > 0) setTimeout(() => done(null, chunk), ms);
      else done(null, chunk);
    },
  });
}

export async function startWanLink(
  targetPort: number,
  options: { bytesPerSecond: number; latencyMs: number },
): Promise<WanLink> {
  const open = new Set<Socket>();
  const server = createServer((client) => {
    const upstream = connect(targetPort, "127.0.0.1");
    for (const socket of [client, upstream]) {
      open.add(socket);
      socket.once("close", () => open.delete(socket));
    }
    const closeBoth = () => {
      client.destroy();
      upstream.destroy();
    };
    pipeline(client, delay(options.latencyMs), upstream, (err) => err && closeBoth());
    pipeline(upstream, pace(options.bytesPerSecond), client, (err) => err && closeBoth());
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as AddressInfo;
  return {
    host: `127.0.0.1:${port}`,
    stop: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        for (const socket of open) socket.destroy();
      }),
  };
}
