/**
 * A node's peer endpoint in a process of its own, so a test can kill it (SIGKILL) in the middle of
 * a transfer as a node crash would. Serves containerd's content store at the socket in argv[2],
 * verifying peer tokens with the hex secret in STOWAGE_TEST_FANOUT_SECRET (not argv: visible in
 * ps), at most argv[3] bytes/s. Prints `{"url": ...}` on stdout once it listens.
 */
import { ContainerdContent } from "../../../src/agent/peer/content.ts";
import { startPeerServer } from "../../../src/agent/peer/server.ts";

const [socketPath, rate] = process.argv.slice(2);
const secret = Buffer.from(process.env.STOWAGE_TEST_FANOUT_SECRET ?? "", "hex");
const peer = await startPeerServer({
  store: new ContainerdContent(socketPath),
  secret,
  host: "127.0.0.1",
  port: 0,
  bytesPerSecond: Number(rate),
  log: (message) => process.stderr.write(`${message}\n`),
});
process.stdout.write(`${JSON.stringify({ url: peer.url })}\n`);
