/**
 * Test certificates made with the openssl CLI: a throwaway CA and a server certificate for
 * 127.0.0.1 / localhost, and self-signed signing certificates for the token issuer.
 */
import { execFile } from "node:child_process";
import { readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { promisify } from "node:util";

const run = promisify(execFile);

async function openssl(dir: string, args: string[]): Promise<void> {
  await run("openssl", args, { cwd: dir });
}

export interface ServerCertificate {
  caPem: string;
  caCertPath: string;
  certPath: string;
  keyPath: string;
  certPem: string;
  keyPem: string;
}

/** A CA and a server cert (IP SAN 127.0.0.1, DNS localhost) signed by it, written into `dir`. */
export async function makeServerCertificate(dir: string): Promise<ServerCertificate> {
  const caKey = join(dir, "ca.key");
  const caCertPath = join(dir, "ca.pem");
  const keyPath = join(dir, "server.key");
  const csr = join(dir, "server.csr");
  const certPath = join(dir, "server.pem");
  const ext = join(dir, "server.ext");
  await openssl(dir, ["ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", caKey]);
  await openssl(dir, [
    "req",
    "-x509",
    "-new",
    "-key",
    caKey,
    "-out",
    caCertPath,
    "-days",
    "3",
    "-subj",
    "/CN=stowage-test-ca",
    "-addext",
    "basicConstraints=critical,CA:TRUE",
    "-addext",
    "keyUsage=critical,keyCertSign,cRLSign",
  ]);
  await openssl(dir, ["ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", keyPath]);
  await openssl(dir, ["req", "-new", "-key", keyPath, "-out", csr, "-subj", "/CN=127.0.0.1"]);
  await writeFile(
    ext,
    "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n" +
      "keyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n",
  );
  await openssl(dir, [
    "x509",
    "-req",
    "-in",
    csr,
    "-CA",
    caCertPath,
    "-CAkey",
    caKey,
    "-CAcreateserial",
    "-out",
    certPath,
    "-days",
    "3",
    "-extfile",
    ext,
  ]);
  return {
    caPem: await readFile(caCertPath, "utf8"),
    caCertPath,
    certPath,
    keyPath,
    certPem: await readFile(certPath, "utf8"),
    keyPem: await readFile(keyPath, "utf8"),
  };
}

export interface SigningCertificate {
  certPath: string;
  certPem: string;
  keyPem: string;
  /** DER of the certificate, base64 (the JWT `x5c` entry). */
  certDerBase64: string;
}

/** An RSA key and a self-signed certificate for signing registry tokens (RS256). */
export async function makeSigningCertificate(dir: string): Promise<SigningCertificate> {
  const keyPath = join(dir, "token.key");
  const certPath = join(dir, "token.pem");
  await openssl(dir, [
    "req",
    "-x509",
    "-newkey",
    "rsa:2048",
    "-nodes",
    "-keyout",
    keyPath,
    "-out",
    certPath,
    "-days",
    "3",
    "-subj",
    "/CN=stowage-test-token-issuer",
  ]);
  const certPem = await readFile(certPath, "utf8");
  const certDerBase64 = certPem.replace(/-----BEGIN CERTIFICATE-----|-----END CERTIFICATE-----|\s+/g, "");
  return { certPath, certPem, keyPem: await readFile(keyPath, "utf8"), certDerBase64 };
}
