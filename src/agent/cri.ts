/**
 * A client for the CRI ImageService (and RuntimeService.Version) over the container runtime's
 * unix socket: containerd's `/run/containerd/containerd.sock`, CRI-O's `/var/run/crio/crio.sock`.
 * gRPC reconnects by itself after a runtime restart; calls made while the runtime is down fail
 * with `RuntimeUnavailable` and the caller retries.
 */
import { fileURLToPath } from "node:url";
import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";
import { type Reason, StowageError } from "../util/errors.ts";

const PROTO_PATH = fileURLToPath(new URL("./proto/cri_image.proto", import.meta.url));

export interface CriImage {
  id: string;
  repoTags: string[];
  repoDigests: string[];
  sizeBytes: number;
  /** The runtime keeps it from the kubelet's image GC (containerd 1.7+: the pin label; 1.6: never). */
  pinned?: boolean;
}

export interface CriFilesystem {
  mountpoint: string;
  usedBytes: number;
  inodesUsed?: number;
}

export interface CriVersion {
  runtimeName: string;
  runtimeVersion: string;
  runtimeApiVersion: string;
}

/** What the runtime says of its own configuration (CRI Status, verbose); containerd only. */
export interface RuntimeConfig {
  /** containerd's CRI registry `config_path`; "" when it is not set. */
  registryConfigPath: string;
  /** containerd's root (`/var/lib/containerd`, k3s: `/var/lib/rancher/k3s/agent/containerd`). */
  rootDir?: string;
}

/** Registry credentials for one pull (the cache's, when it needs them); never logged. */
export interface CriAuth {
  username?: string;
  password?: string;
  serverAddress?: string;
  registryToken?: string;
}

/** What the agent needs from a container runtime; the real one is `CriClient`. */
export interface ImageRuntime {
  version(): Promise<CriVersion>;
  imageStatus(image: string): Promise<CriImage | undefined>;
  pullImage(image: string, options?: { signal?: AbortSignal; auth?: CriAuth }): Promise<string>;
  removeImage(image: string): Promise<void>;
  imageFsInfo(): Promise<CriFilesystem[]>;
  listImages(): Promise<CriImage[]>;
  /** The runtime's own configuration, or undefined when it does not report one (CRI-O, an older containerd). */
  runtimeConfig?(): Promise<RuntimeConfig | undefined>;
}

interface WireImage {
  id?: string;
  repoTags?: string[];
  repoDigests?: string[];
  size?: number | string;
  pinned?: boolean;
}

interface WireFsUsage {
  fsId?: { mountpoint?: string };
  usedBytes?: { value?: number | string };
  inodesUsed?: { value?: number | string };
}

type Callback<R> = (err: grpc.ServiceError | null, response?: R) => void;
type UnaryMethod = (
  request: object,
  metadata: grpc.Metadata,
  callback: Callback<unknown>,
) => grpc.ClientUnaryCall;

// The generated service clients are dynamic: look methods up by name.
export type DynamicClient = grpc.Client & Record<string, UnaryMethod>;
/** A service client class grpc.loadPackageDefinition makes from a .proto (CRI's, containerd's). */
export type ServiceConstructor = new (
  address: string,
  credentials: grpc.ChannelCredentials,
  options?: grpc.ChannelOptions,
) => DynamicClient;

let services: { image: ServiceConstructor; runtime: ServiceConstructor } | undefined;

function loadServices(): { image: ServiceConstructor; runtime: ServiceConstructor } {
  if (services) return services;
  const definition = protoLoader.loadSync(PROTO_PATH, {
    keepCase: false,
    longs: Number,
    defaults: true,
    oneofs: true,
  });
  const root = grpc.loadPackageDefinition(definition) as unknown as {
    runtime: { v1: { ImageService: ServiceConstructor; RuntimeService: ServiceConstructor } };
  };
  services = { image: root.runtime.v1.ImageService, runtime: root.runtime.v1.RuntimeService };
  return services;
}

export interface CriClientOptions {
  /** Cap on gRPC's reconnect backoff, so a restarted runtime is found again quickly (default 2 s). */
  maxReconnectBackoffMs?: number;
}

export class CriClient implements ImageRuntime {
  readonly socketPath: string;
  readonly #image: DynamicClient;
  readonly #runtime: DynamicClient;

  constructor(socketPath: string, options: CriClientOptions = {}) {
    this.socketPath = socketPath;
    const { image, runtime } = loadServices();
    const target = `unix://${socketPath}`;
    const channelOptions: grpc.ChannelOptions = {
      "grpc.max_reconnect_backoff_ms": options.maxReconnectBackoffMs ?? 2000,
      "grpc.initial_reconnect_backoff_ms": 200,
      "grpc.max_receive_message_length": 16 * 1024 * 1024,
    };
    this.#image = new image(target, grpc.credentials.createInsecure(), channelOptions);
    // A second client on the same target and options shares the underlying channel.
    this.#runtime = new runtime(target, grpc.credentials.createInsecure(), channelOptions);
  }

  async version(): Promise<CriVersion> {
    const response = (await this.#call(this.#runtime, "version", { version: "v1" })) as {
      runtimeName?: string;
      runtimeVersion?: string;
      runtimeApiVersion?: string;
    };
    return {
      runtimeName: response.runtimeName ?? "",
      runtimeVersion: response.runtimeVersion ?? "",
      runtimeApiVersion: response.runtimeApiVersion ?? "",
    };
  }

  /**
   * containerd answers a verbose CRI Status with its CRI plugin config as JSON: the registry
   * `config_path` it reads hosts.toml from, wherever its config.toml lives (k3s, RKE2 and
   * Bottlerocket keep it elsewhere than /etc/containerd). Undefined when the runtime reports none.
   */
  async runtimeConfig(): Promise<RuntimeConfig | undefined> {
    const response = (await this.#call(this.#runtime, "status", { verbose: true })) as {
      info?: Record<string, string>;
    };
    const text = response.info?.config;
    if (!text) return undefined;
    let config: { registry?: { configPath?: unknown }; containerdRootDir?: unknown };
    try {
      config = JSON.parse(text);
    } catch {
      return undefined; // not containerd's shape: as if it said nothing
    }
    if (!config || typeof config !== "object" || !config.registry) return undefined;
    const configPath = config.registry.configPath;
    return {
      registryConfigPath: typeof configPath === "string" ? configPath : "",
      ...(typeof config.containerdRootDir === "string" ? { rootDir: config.containerdRootDir } : {}),
    };
  }

  /** The image, or undefined when the runtime does not have it (CRI answers `image: null`). */
  async imageStatus(image: string): Promise<CriImage | undefined> {
    const response = (await this.#call(this.#image, "imageStatus", { image: { image } })) as {
      image?: WireImage | null;
    };
    return response.image?.id ? toImage(response.image) : undefined;
  }

  /**
   * Pull with no deadline (large images take long; the caller's stall detector decides when a
   * pull is stuck and aborts `signal`). Resolves to the runtime's image reference (its id).
   */
  async pullImage(image: string, options: { signal?: AbortSignal; auth?: CriAuth } = {}): Promise<string> {
    const request: Record<string, unknown> = { image: { image } };
    if (options.auth) request.auth = options.auth;
    const response = (await this.#call(this.#image, "pullImage", request, options.signal)) as {
      imageRef?: string;
    };
    return response.imageRef ?? "";
  }

  async removeImage(image: string): Promise<void> {
    await this.#call(this.#image, "removeImage", { image: { image } });
  }

  async imageFsInfo(): Promise<CriFilesystem[]> {
    const response = (await this.#call(this.#image, "imageFsInfo", {})) as {
      imageFilesystems?: WireFsUsage[];
    };
    return (response.imageFilesystems ?? []).map((fs) => ({
      mountpoint: fs.fsId?.mountpoint ?? "",
      usedBytes: Number(fs.usedBytes?.value ?? 0),
      ...(fs.inodesUsed ? { inodesUsed: Number(fs.inodesUsed.value ?? 0) } : {}),
    }));
  }

  async listImages(): Promise<CriImage[]> {
    const response = (await this.#call(this.#image, "listImages", {})) as { images?: WireImage[] };
    return (response.images ?? []).map(toImage);
  }

  close(): void {
    this.#image.close();
    this.#runtime.close();
  }

  #call(client: DynamicClient, method: string, request: object, signal?: AbortSignal): Promise<unknown> {
    return new Promise((resolve, reject) => {
      if (signal?.aborted) return reject(abortError(method, signal));
      const fn = client[method];
      let onAbort: (() => void) | undefined;
      const call = fn.call(client, request, new grpc.Metadata(), (err, response) => {
        if (onAbort) signal?.removeEventListener("abort", onAbort);
        if (err) {
          if (signal?.aborted) reject(abortError(method, signal));
          else reject(criError(err, this.socketPath));
        } else resolve(response);
      });
      if (signal) {
        onAbort = () => call.cancel();
        signal.addEventListener("abort", onAbort, { once: true });
      }
    });
  }
}

function toImage(wire: WireImage): CriImage {
  return {
    id: wire.id ?? "",
    repoTags: wire.repoTags ?? [],
    repoDigests: wire.repoDigests ?? [],
    sizeBytes: Number(wire.size ?? 0),
    pinned: wire.pinned === true,
  };
}

function abortError(method: string, signal: AbortSignal): StowageError {
  const why = signal.reason instanceof Error ? signal.reason.message : "cancelled";
  return new StowageError("Aborted", `CRI ${method} cancelled: ${why}`, { retryable: true });
}

/** A gRPC failure as a StowageError whose message is the runtime's own (it goes into status). */
export function criError(err: grpc.ServiceError, socketPath: string): StowageError {
  const code = err.code;
  let reason: Reason = "Internal";
  let retryable = true;
  if (code === grpc.status.UNAVAILABLE) reason = "RuntimeUnavailable";
  else if (code === grpc.status.NOT_FOUND) reason = "ImageNotFound";
  else if (code === grpc.status.UNAUTHENTICATED || code === grpc.status.PERMISSION_DENIED)
    reason = "AuthFailed";
  else if (code === grpc.status.INVALID_ARGUMENT) {
    reason = "InvalidArgument";
    retryable = false;
  } else if (code === grpc.status.DEADLINE_EXCEEDED) reason = "Timeout";
  else if (code === grpc.status.CANCELLED) reason = "Aborted";
  const detail = err.details || err.message;
  const message =
    reason === "RuntimeUnavailable"
      ? `container runtime at ${socketPath} is not answering (${detail})`
      : detail;
  return new StowageError(reason, message, { cause: err, retryable, status: code });
}
