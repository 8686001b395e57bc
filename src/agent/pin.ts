/**
 * Pinning pre-warmed images against the kubelet's image garbage collection. CRI has no call to
 * pin an image; containerd 1.7 and 2.x report `pinned: true` in CRI ImageStatus/ListImages for
 * an image labelled `io.cri-containerd.pinned=pinned` (the label it puts on the sandbox image),
 * and the kubelet's image GC skips pinned images. So the agent sets that label through
 * containerd's own images API, on the same socket, in CRI's namespace `k8s.io`, on every name
 * CRI keeps for the image (the tag, the repo digest, the image id).
 *
 * containerd 1.6 (Debian 12's, the one on these machines) keeps the label but does not report
 * `pinned` and so gives no protection: the agent reports what the runtime says (status
 * `images[].pinned`), never what it merely asked for. CRI-O answers no containerd API at all.
 */
import { fileURLToPath } from "node:url";
import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";
import { criError, type DynamicClient, type ServiceConstructor } from "./cri.ts";

const PROTO_PATH = fileURLToPath(new URL("./proto/containerd_images.proto", import.meta.url));

/** The label containerd's CRI plugin reads (pkg/cri/labels PinnedImageLabelKey/Value). */
export const PINNED_LABEL = "io.cri-containerd.pinned";
export const PINNED_VALUE = "pinned";
/** CRI's containerd namespace. */
const CRI_NAMESPACE = "k8s.io";

/** Sets or clears the pin label on the runtime's image records; the real one is `ContainerdPinner`. */
export interface ImagePinner {
  /** Label (or unlabel) every given name that exists; false when none does. */
  setPinned(names: string[], pinned: boolean): Promise<boolean>;
  /** Whether the image record `name` carries the pin label (undefined when there is no such record). */
  isLabelled(name: string): Promise<boolean | undefined>;
  close(): void;
}

let imagesService: ServiceConstructor | undefined;

function loadService(): ServiceConstructor {
  if (imagesService) return imagesService;
  const definition = protoLoader.loadSync(PROTO_PATH, { keepCase: false, longs: Number, defaults: true });
  const root = grpc.loadPackageDefinition(definition) as unknown as {
    containerd: { services: { images: { v1: { Images: ServiceConstructor } } } };
  };
  imagesService = root.containerd.services.images.v1.Images;
  return imagesService;
}

interface WireImage {
  name?: string;
  labels?: Record<string, string>;
}

export class ContainerdPinner implements ImagePinner {
  readonly #client: DynamicClient;
  readonly #socketPath: string;

  constructor(socketPath: string) {
    this.#socketPath = socketPath;
    const Images = loadService();
    this.#client = new Images(`unix://${socketPath}`, grpc.credentials.createInsecure(), {
      "grpc.max_reconnect_backoff_ms": 2000,
    });
  }

  async isLabelled(name: string): Promise<boolean | undefined> {
    const image = await this.#get(name);
    return image ? image.labels?.[PINNED_LABEL] === PINNED_VALUE : undefined;
  }

  async setPinned(names: string[], pinned: boolean): Promise<boolean> {
    let found = false;
    for (const name of names) {
      const image = await this.#get(name);
      if (!image) continue;
      found = true;
      if ((image.labels?.[PINNED_LABEL] === PINNED_VALUE) === pinned) continue;
      // A field mask naming only this label: containerd sets it when given, removes it when absent.
      await this.#call("update", {
        image: { name, labels: pinned ? { [PINNED_LABEL]: PINNED_VALUE } : {} },
        updateMask: { paths: [`labels.${PINNED_LABEL}`] },
      });
    }
    return found;
  }

  close(): void {
    this.#client.close();
  }

  async #get(name: string): Promise<WireImage | undefined> {
    try {
      return ((await this.#call("get", { name })) as { image?: WireImage }).image ?? undefined;
    } catch (err) {
      if ((err as { code?: number }).code === grpc.status.NOT_FOUND) return undefined;
      throw err;
    }
  }

  #call(method: string, request: object): Promise<unknown> {
    return new Promise((resolve, reject) => {
      const metadata = new grpc.Metadata();
      metadata.set("containerd-namespace", CRI_NAMESPACE);
      this.#client[method].call(this.#client, request, metadata, (err, response) => {
        if (!err) return resolve(response);
        if (err.code === grpc.status.NOT_FOUND) return reject(err);
        reject(criError(err, this.#socketPath));
      });
    });
  }
}
