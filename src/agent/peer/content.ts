/**
 * Blobs from containerd's content store through its content gRPC service (CRI has no content
 * API), in CRI's namespace `k8s.io`, on the socket the agent already uses for CRI.
 */
import { fileURLToPath } from "node:url";
import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";
import { criError } from "../cri.ts";

const PROTO_PATH = fileURLToPath(new URL("../proto/containerd_content.proto", import.meta.url));
const CRI_NAMESPACE = "k8s.io";

/** Where the peer server reads complete blobs from; the real one is `ContainerdContent`. */
export interface BlobStore {
  /** The blob's size, or undefined when the store does not hold it. */
  size(digest: string): Promise<number | undefined>;
  /** Bytes [offset, offset + length) in order. */
  read(digest: string, offset: number, length: number): AsyncIterable<Buffer>;
  close(): void;
}

interface ContentClient extends grpc.Client {
  info(
    request: object,
    metadata: grpc.Metadata,
    callback: (err: grpc.ServiceError | null, response?: { info?: { size?: number } }) => void,
  ): grpc.ClientUnaryCall;
  read(request: object, metadata: grpc.Metadata): grpc.ClientReadableStream<{ data?: Buffer }>;
}

type ContentConstructor = new (
  address: string,
  credentials: grpc.ChannelCredentials,
  options?: grpc.ChannelOptions,
) => ContentClient;

let contentService: ContentConstructor | undefined;

function loadService(): ContentConstructor {
  if (contentService) return contentService;
  const definition = protoLoader.loadSync(PROTO_PATH, { keepCase: false, longs: Number, defaults: true });
  const root = grpc.loadPackageDefinition(definition) as unknown as {
    containerd: { services: { content: { v1: { Content: ContentConstructor } } } };
  };
  contentService = root.containerd.services.content.v1.Content;
  return contentService;
}

function namespaced(): grpc.Metadata {
  const metadata = new grpc.Metadata();
  metadata.set("containerd-namespace", CRI_NAMESPACE);
  return metadata;
}

export class ContainerdContent implements BlobStore {
  readonly #client: ContentClient;
  readonly #socketPath: string;

  constructor(socketPath: string) {
    this.#socketPath = socketPath;
    const Content = loadService();
    this.#client = new Content(`unix://${socketPath}`, grpc.credentials.createInsecure(), {
      "grpc.max_reconnect_backoff_ms": 2000,
    });
  }

  size(digest: string): Promise<number | undefined> {
    return new Promise((resolve, reject) => {
      this.#client.info({ digest }, namespaced(), (err, response) => {
        if (!err) return resolve(Number(response?.info?.size ?? 0));
        if (err.code === grpc.status.NOT_FOUND) return resolve(undefined);
        reject(criError(err, this.#socketPath));
      });
    });
  }

  async *read(digest: string, offset: number, length: number): AsyncIterable<Buffer> {
    if (length <= 0) return;
    const stream = this.#client.read({ digest, offset, size: length }, namespaced());
    try {
      for await (const message of stream as AsyncIterable<{ data?: Buffer }>) {
        if (message.data && message.data.length > 0) yield message.data;
      }
    } catch (err) {
      throw criError(err as grpc.ServiceError, this.#socketPath);
    } finally {
      stream.cancel();
    }
  }

  close(): void {
    this.#client.close();
  }
}
