/**
 * A real S3 server for tests: SeaweedFS's `weed server -s3` (master, volume server, filer and S3
 * gateway in one process), built from the pinned Go module in tools/s3 by scripts/build-s3.sh (a
 * no-op once built; STOWAGE_S3_BIN names a folder holding `weed` instead). Started on loopback on
 * free ports in a temp dir, with one access key and one bucket made before it is handed out.
 */
import { type ChildProcess, execFile, execFileSync, spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { existsSync } from "node:fs";
import { mkdir, mkdtemp, rm, writeFile } from "node:fs/promises";
import { request } from "node:http";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { freePort } from "./ports.ts";

const root = fileURLToPath(new URL("..", import.meta.url));

let weedPath: string | undefined;

/** The built `weed`; builds it the first time (minutes), progress on stderr. */
export function weedBinary(): string {
  if (weedPath) return weedPath;
  const fromEnv = process.env.STOWAGE_S3_BIN;
  const dir =
    fromEnv ??
    execFileSync("bash", [join(root, "scripts/build-s3.sh")], {
      encoding: "utf8",
      stdio: ["ignore", "pipe", "inherit"],
    })
      .trim()
      .split("\n")
      .pop() ??
    "";
  const path = join(dir, "weed");
  if (!existsSync(path)) throw new Error(`${path} is missing: run \`bash scripts/build-s3.sh\``);
  weedPath = path;
  return path;
}

export interface RunningS3 {
  /** http://127.0.0.1:PORT, the S3 endpoint (path-style). */
  endpoint: string;
  bucket: string;
  region: string;
  accessKey: string;
  secretKey: string;
  stop(): Promise<void>;
}

const running = new Set<ChildProcess>();
process.once("exit", () => {
  for (const child of running) child.kill("SIGKILL");
});

function answers(url: string): Promise<boolean> {
  return new Promise((resolve) => {
    const req = request(url, { method: "GET", timeout: 1000 }, (res) => {
      res.resume();
      resolve(true);
    });
    req.on("error", () => resolve(false));
    req.on("timeout", () => req.destroy());
    req.end();
  });
}

function runWeed(
  args: string[],
  stdin: string,
  timeoutMs: number,
): Promise<{ code: number; output: string }> {
  return new Promise((resolve) => {
    const child = execFile(weedBinary(), args, { timeout: timeoutMs }, (err, stdout, stderr) => {
      const code = err ? (typeof err.code === "number" ? err.code : 1) : 0;
      resolve({ code, output: `${stdout}${stderr}` });
    });
    child.stdin?.end(stdin);
  });
}

export async function startS3(opts: { bucket?: string } = {}): Promise<RunningS3> {
  const bin = weedBinary();
  const dir = await mkdtemp(join(tmpdir(), "stowage-s3-"));
  const bucket = opts.bucket ?? "stowage-cache";
  const accessKey = `stowage${randomBytes(6).toString("hex")}`;
  const secretKey = randomBytes(20).toString("hex");
  const [master, masterGrpc, volume, volumeGrpc, filer, filerGrpc, s3, s3Grpc] = await Promise.all(
    Array.from({ length: 8 }, () => freePort()),
  );
  await mkdir(join(dir, "data"));
  const s3Config = join(dir, "s3.json");
  await writeFile(
    s3Config,
    JSON.stringify({
      identities: [
        {
          name: "stowage",
          credentials: [{ accessKey, secretKey }],
          actions: ["Admin", "Read", "List", "Tagging", "Write"],
        },
      ],
    }),
  );
  const args = [
    "server",
    `-dir=${join(dir, "data")}`,
    "-ip=127.0.0.1",
    "-ip.bind=127.0.0.1",
    `-master.port=${master}`,
    `-master.port.grpc=${masterGrpc}`,
    "-master.telemetry=false",
    "-master.volumeSizeLimitMB=256",
    `-volume.port=${volume}`,
    `-volume.port.grpc=${volumeGrpc}`,
    "-volume.max=32",
    "-filer",
    `-filer.port=${filer}`,
    `-filer.port.grpc=${filerGrpc}`,
    `-filer.localSocket=${join(dir, "filer.sock")}`,
    "-s3",
    `-s3.port=${s3}`,
    `-s3.port.grpc=${s3Grpc}`,
    "-s3.port.iceberg=0",
    "-s3.port.lance=0",
    `-s3.localSocket=${join(dir, "s3.sock")}`,
    `-s3.config=${s3Config}`,
  ];
  let outputTail = "";
  const child = spawn(bin, args, { cwd: dir, stdio: ["ignore", "pipe", "pipe"] });
  running.add(child);
  child.once("exit", () => running.delete(child));
  const keepTail = (chunk: Buffer) => {
    outputTail = (outputTail + chunk.toString("utf8")).slice(-4000);
  };
  child.stdout?.on("data", keepTail);
  child.stderr?.on("data", keepTail);

  const stop = async () => {
    if (child.exitCode === null && child.signalCode === null) {
      const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()));
      child.kill("SIGTERM");
      const timer = setTimeout(() => child.kill("SIGKILL"), 10_000);
      await exited;
      clearTimeout(timer);
    }
    await rm(dir, { recursive: true, force: true });
    // weed server puts each service's local gRPC socket in /tmp whatever -dir says.
    const sockets = { master: masterGrpc, volume: volumeGrpc, filer: filerGrpc, s3: s3Grpc };
    await Promise.all(
      Object.entries(sockets).map(([service, port]) =>
        rm(`/tmp/seaweedfs-${service}-grpc-${port}.sock`, { force: true }),
      ),
    );
  };

  try {
    const endpoint = `http://127.0.0.1:${s3}`;
    const deadline = Date.now() + 60_000;
    const failIfExited = () => {
      if (child.exitCode !== null || child.signalCode !== null)
        throw new Error(`weed server exited (${child.exitCode ?? child.signalCode}): ${outputTail}`);
    };
    while (!(await answers(`${endpoint}/`))) {
      failIfExited();
      if (Date.now() > deadline)
        throw new Error(`weed S3 gateway at ${endpoint} did not answer: ${outputTail}`);
      await new Promise((resolve) => setTimeout(resolve, 200));
    }
    // The bucket is made through the filer (weed shell), not through S3: no request signing here.
    // The shell needs the master to have a volume server and the filer registered: retried.
    for (;;) {
      failIfExited();
      const made = await runWeed(
        ["shell", `-master=127.0.0.1:${master}.${masterGrpc}`, `-filer=127.0.0.1:${filer}.${filerGrpc}`],
        `s3.bucket.create -name ${bucket}\ns3.bucket.list\nexit\n`,
        20_000,
      );
      if (made.code === 0 && made.output.includes(bucket)) break;
      if (Date.now() > deadline) throw new Error(`could not create bucket ${bucket}: ${made.output}`);
      await new Promise((resolve) => setTimeout(resolve, 500));
    }
    return { endpoint, bucket, region: "us-east-1", accessKey, secretKey, stop };
  } catch (err) {
    await stop();
    throw err;
  }
}
