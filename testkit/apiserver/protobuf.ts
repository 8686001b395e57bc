import { unsupportedMediaType } from "./errors.ts";
import type { Json, KubeObject } from "./types.ts";

/**
 * Just enough of the Kubernetes protobuf encoding for what kubectl's imperative commands send
 * (`kubectl create namespace|secret|configmap`): typed clients POST `application/vnd.kubernetes.protobuf`
 * with no JSON fallback. The envelope is "k8s\0" + runtime.Unknown{typeMeta, raw}; `raw` is decoded
 * for Namespace, Secret and ConfigMap with their generated.proto field numbers. Other kinds get 415.
 */
type Field = { wire: number; value: bigint | Buffer };
type Message = Map<number, Field[]>;

function readVarint(buf: Buffer, offset: number): [bigint, number] {
  let result = 0n;
  let shift = 0n;
  let pos = offset;
  for (;;) {
    const byte = buf[pos++];
    if (byte === undefined) throw new Error("truncated varint");
    result |= BigInt(byte & 0x7f) << shift;
    if ((byte & 0x80) === 0) return [result, pos];
    shift += 7n;
  }
}

function decodeMessage(buf: Buffer): Message {
  const fields: Message = new Map();
  let pos = 0;
  while (pos < buf.length) {
    const [key, afterKey] = readVarint(buf, pos);
    pos = afterKey;
    const number = Number(key >> 3n);
    const wire = Number(key & 7n);
    let value: bigint | Buffer;
    if (wire === 0) [value, pos] = readVarint(buf, pos);
    else if (wire === 2) {
      const [length, afterLength] = readVarint(buf, pos);
      value = buf.subarray(afterLength, afterLength + Number(length));
      pos = afterLength + Number(length);
    } else if (wire === 1) {
      value = buf.readBigUInt64LE(pos);
      pos += 8;
    } else if (wire === 5) {
      value = BigInt(buf.readUInt32LE(pos));
      pos += 4;
    } else throw new Error(`unsupported wire type ${wire}`);
    const list = fields.get(number) ?? [];
    list.push({ wire, value });
    fields.set(number, list);
  }
  return fields;
}

const bytesOf = (m: Message, n: number): Buffer | undefined => {
  const last = m.get(n)?.at(-1)?.value;
  return Buffer.isBuffer(last) ? last : undefined;
};
const stringOf = (m: Message, n: number): string | undefined => {
  const text = bytesOf(m, n)?.toString("utf8");
  return text ? text : undefined;
};
const intOf = (m: Message, n: number): number | undefined => {
  const v = m.get(n)?.at(-1)?.value;
  return typeof v === "bigint" ? Number(BigInt.asIntN(64, v)) : undefined;
};
const boolOf = (m: Message, n: number): boolean | undefined => {
  const v = intOf(m, n);
  return v === undefined ? undefined : v !== 0;
};
const messagesOf = (m: Message, n: number): Message[] =>
  (m.get(n) ?? []).flatMap((f) => (Buffer.isBuffer(f.value) ? [decodeMessage(f.value)] : []));
const stringsOf = (m: Message, n: number): string[] =>
  (m.get(n) ?? []).flatMap((f) => (Buffer.isBuffer(f.value) ? [f.value.toString("utf8")] : []));

function mapOf(m: Message, n: number, values: "string" | "base64"): Record<string, string> | undefined {
  const entries = messagesOf(m, n);
  if (entries.length === 0) return undefined;
  const out: Record<string, string> = {};
  for (const entry of entries) {
    const key = bytesOf(entry, 1)?.toString("utf8") ?? "";
    const raw = bytesOf(entry, 2) ?? Buffer.alloc(0);
    out[key] = values === "base64" ? raw.toString("base64") : raw.toString("utf8");
  }
  return out;
}

function time(m: Message | undefined): string | undefined {
  if (!m) return undefined;
  const seconds = intOf(m, 1) ?? 0;
  return seconds === 0 ? undefined : new Date(seconds * 1000).toISOString().replace(/\.\d{3}Z$/, "Z");
}

function prune(obj: Json): Json {
  for (const [key, value] of Object.entries(obj)) if (value === undefined) delete obj[key];
  return obj;
}

function objectMeta(m: Message): Json {
  return prune({
    name: stringOf(m, 1),
    generateName: stringOf(m, 2),
    namespace: stringOf(m, 3),
    uid: stringOf(m, 5),
    resourceVersion: stringOf(m, 6),
    creationTimestamp: time(messagesOf(m, 8)[0]),
    labels: mapOf(m, 11, "string"),
    annotations: mapOf(m, 12, "string"),
    ownerReferences: messagesOf(m, 13).map((ref) =>
      prune({
        apiVersion: stringOf(ref, 5),
        kind: stringOf(ref, 1),
        name: stringOf(ref, 3),
        uid: stringOf(ref, 4),
        controller: boolOf(ref, 6),
        blockOwnerDeletion: boolOf(ref, 7),
      }),
    ),
    finalizers: stringsOf(m, 14),
  });
}

const decoders: Record<string, (m: Message) => Json> = {
  "v1/Namespace": (m) => {
    const finalizers = stringsOf(messagesOf(m, 2)[0] ?? new Map(), 1);
    return finalizers.length > 0 ? { spec: { finalizers } } : {};
  },
  "v1/Secret": (m) =>
    prune({
      data: mapOf(m, 2, "base64"),
      type: stringOf(m, 3),
      stringData: mapOf(m, 4, "string"),
      immutable: boolOf(m, 5),
    }),
  "v1/ConfigMap": (m) =>
    prune({ data: mapOf(m, 2, "string"), binaryData: mapOf(m, 3, "base64"), immutable: boolOf(m, 4) }),
};

export function decodeKubeProtobuf(body: Buffer, contentType: string): KubeObject {
  if (body.subarray(0, 4).toString("latin1") !== "k8s\0") throw unsupportedMediaType(contentType);
  const envelope = decodeMessage(body.subarray(4));
  const typeMeta = messagesOf(envelope, 1)[0] ?? new Map();
  const apiVersion = stringOf(typeMeta, 1) ?? "";
  const kind = stringOf(typeMeta, 2) ?? "";
  const decode = decoders[`${apiVersion}/${kind}`];
  if (!decode) throw unsupportedMediaType(`${contentType} (${apiVersion} ${kind})`);
  const raw = decodeMessage(bytesOf(envelope, 2) ?? Buffer.alloc(0));
  const metadata = objectMeta(messagesOf(raw, 1)[0] ?? new Map());
  for (const key of ["labels", "annotations", "finalizers", "ownerReferences"])
    if (Array.isArray(metadata[key]) && metadata[key].length === 0) delete metadata[key];
  return { apiVersion, kind, metadata, ...decode(raw) };
}
