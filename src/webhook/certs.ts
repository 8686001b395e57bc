/**
 * The webhook's own PKI, for clusters without cert-manager: an ECDSA P-256 CA and a serving
 * certificate it signs. Keys come from WebCrypto (node:crypto); X.509 encoding from
 * @peculiar/x509, because node:crypto can read certificates but not create them.
 */
import { createPrivateKey, X509Certificate as NodeX509Certificate, webcrypto } from "node:crypto";
import "reflect-metadata";
import * as x509 from "@peculiar/x509";

type KeyPair = webcrypto.CryptoKeyPair;

const keyAlgorithm = { name: "ECDSA", namedCurve: "P-256" } as const;
const signingAlgorithm = { name: "ECDSA", hash: "SHA-256" } as const;
/** Backdating tolerates clocks a little behind ours (what kubeadm and cert-manager do too). */
const CLOCK_SKEW_MS = 5 * 60_000;

export interface CertificateAuthority {
  certPem: string;
  keyPem: string;
}

export interface ServingCertificate {
  certPem: string;
  keyPem: string;
}

export interface IssueOptions {
  now: number;
  validityMs: number;
}

function pem(label: string, der: ArrayBuffer): string {
  const base64 = Buffer.from(der).toString("base64");
  const lines = base64.match(/.{1,64}/g) ?? [];
  return `-----BEGIN ${label}-----\n${lines.join("\n")}\n-----END ${label}-----\n`;
}

/** PEM blocks end with a newline, so bundles can be concatenated and still parse. */
function withNewline(text: string): string {
  return text.endsWith("\n") ? text : `${text}\n`;
}

async function newKeyPair(): Promise<KeyPair> {
  return (await webcrypto.subtle.generateKey(keyAlgorithm, true, ["sign", "verify"])) as KeyPair;
}

async function privateKeyPem(keys: KeyPair): Promise<string> {
  return pem("PRIVATE KEY", await webcrypto.subtle.exportKey("pkcs8", keys.privateKey));
}

function validity(options: IssueOptions): { notBefore: Date; notAfter: Date } {
  return {
    notBefore: new Date(options.now - CLOCK_SKEW_MS),
    notAfter: new Date(options.now + options.validityMs),
  };
}

/** A new CA (`CN=<commonName>`, CA:TRUE, keyCertSign) valid from `now` for `validityMs`. */
export async function createCertificateAuthority(
  commonName: string,
  options: IssueOptions,
): Promise<CertificateAuthority> {
  const keys = await newKeyPair();
  const cert = await x509.X509CertificateGenerator.createSelfSigned({
    name: `CN=${commonName}`,
    keys,
    signingAlgorithm,
    ...validity(options),
    extensions: [
      new x509.BasicConstraintsExtension(true, 0, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign, true),
      await x509.SubjectKeyIdentifierExtension.create(keys.publicKey),
    ],
  });
  return { certPem: withNewline(cert.toString("pem")), keyPem: await privateKeyPem(keys) };
}

/** A serving certificate for `dnsNames` and `ipAddresses`, signed by `ca`. */
export async function issueServingCertificate(
  ca: CertificateAuthority,
  names: { dnsNames: string[]; ipAddresses: string[] },
  options: IssueOptions,
): Promise<ServingCertificate> {
  const caCert = new x509.X509Certificate(ca.certPem);
  const caKeyDer = createPrivateKey(ca.keyPem).export({ type: "pkcs8", format: "der" });
  const caKey = await webcrypto.subtle.importKey("pkcs8", caKeyDer, keyAlgorithm, false, ["sign"]);
  const keys = await newKeyPair();
  const commonName = names.dnsNames[0] ?? names.ipAddresses[0] ?? "stowage-webhook";
  const cert = await x509.X509CertificateGenerator.create({
    subject: `CN=${commonName}`,
    issuer: caCert.subject,
    publicKey: keys.publicKey,
    signingKey: caKey,
    signingAlgorithm,
    ...validity(options),
    extensions: [
      new x509.BasicConstraintsExtension(false, undefined, true),
      new x509.KeyUsagesExtension(
        x509.KeyUsageFlags.digitalSignature | x509.KeyUsageFlags.keyEncipherment,
        true,
      ),
      new x509.ExtendedKeyUsageExtension([x509.ExtendedKeyUsage.serverAuth]),
      new x509.SubjectAlternativeNameExtension([
        ...names.dnsNames.map((value) => ({ type: "dns" as const, value })),
        ...names.ipAddresses.map((value) => ({ type: "ip" as const, value })),
      ]),
      await x509.AuthorityKeyIdentifierExtension.create(caCert),
    ],
  });
  return { certPem: withNewline(cert.toString("pem")), keyPem: await privateKeyPem(keys) };
}

/** The certificates of a PEM bundle, in order. Unparseable blocks are skipped. */
export function splitPemBundle(bundle: string): string[] {
  return (
    bundle
      .match(/-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----\n?/g)
      ?.map((block) => (block.endsWith("\n") ? block : `${block}\n`)) ?? []
  );
}

export interface CertificateInfo {
  notBefore: number;
  notAfter: number;
  fingerprint256: string;
  subject: string;
  /** Subject alternative names. */
  dnsNames: string[];
  ipAddresses: string[];
}

/** Validity and identity of a PEM certificate, read with node:crypto; undefined if it does not parse. */
export function certificateInfo(certPem: string): CertificateInfo | undefined {
  try {
    const cert = new NodeX509Certificate(certPem);
    return {
      notBefore: Date.parse(cert.validFrom),
      notAfter: Date.parse(cert.validTo),
      fingerprint256: cert.fingerprint256,
      subject: cert.subject,
      ...subjectAltNames(cert.subjectAltName),
    };
  } catch {
    return undefined;
  }
}

/** Node renders SANs as `DNS:a, IP Address:127.0.0.1`; names with commas are quoted (none here). */
function subjectAltNames(text: string | undefined): { dnsNames: string[]; ipAddresses: string[] } {
  const dnsNames: string[] = [];
  const ipAddresses: string[] = [];
  for (const entry of (text ?? "").split(", ")) {
    if (entry.startsWith("DNS:")) dnsNames.push(entry.slice(4));
    else if (entry.startsWith("IP Address:")) ipAddresses.push(entry.slice(11));
  }
  return { dnsNames, ipAddresses };
}

/** True when `certPem` was signed by `caPem`'s key. */
export function isSignedBy(certPem: string, caPem: string): boolean {
  try {
    const cert = new NodeX509Certificate(certPem);
    const ca = new NodeX509Certificate(caPem);
    return cert.checkIssued(ca) && cert.verify(ca.publicKey);
  } catch {
    return false;
  }
}
