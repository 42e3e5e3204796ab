/**
 * PKCS#10 requests (RFC 2986), X.509 certificates and CRLs (RFC 5280), built with pkijs/asn1js —
 * no hand-written ASN.1 — and signed through a {@link Signer}, so the private key may live in any
 * root. The TBS bytes are encoded by pkijs, signed by the signer, and the signature placed back.
 */
import { createHash, createPublicKey, randomBytes, verify as nodeVerify } from 'node:crypto';
import { isIP } from 'node:net';
import { InvalidInputError } from '@keywarden/core';
import * as asn1js from 'asn1js';
import {
  AlgorithmIdentifier,
  Attribute,
  AttributeTypeAndValue,
  AuthorityKeyIdentifier,
  BasicConstraints,
  Certificate,
  CertificateRevocationList,
  CertificationRequest,
  ExtKeyUsage,
  Extension,
  Extensions,
  GeneralName,
  GeneralNames,
  PublicKeyInfo,
  RelativeDistinguishedNames,
  RevokedCertificate,
  Time,
} from 'pkijs';
import { type KeyPairAlgorithm, type Signer, webCryptoParams } from './signer.js';

/** A distinguished name: the attributes this package writes (RFC 5280 §4.1.2.4, App. A.1). */
export interface DistinguishedName {
  commonName: string;
  organization?: string;
  organizationalUnit?: string;
  /** Two-letter ISO 3166 code. */
  country?: string;
}

/** What a certificate is for: its keyUsage, extKeyUsage and basicConstraints follow from it. */
export type CertificateProfile = 'ca' | 'server' | 'client' | 'server-client';

const OID = {
  commonName: '2.5.4.3',
  organization: '2.5.4.10',
  organizationalUnit: '2.5.4.11',
  country: '2.5.4.6',
  extensionRequest: '1.2.840.113549.1.9.14',
  subjectKeyIdentifier: '2.5.29.14',
  keyUsage: '2.5.29.15',
  subjectAltName: '2.5.29.17',
  basicConstraints: '2.5.29.19',
  crlNumber: '2.5.29.20',
  crlReason: '2.5.29.21',
  authorityKeyIdentifier: '2.5.29.35',
  extKeyUsage: '2.5.29.37',
  serverAuth: '1.3.6.1.5.5.7.3.1',
  clientAuth: '1.3.6.1.5.5.7.3.2',
} as const;

// ── Signing ─────────────────────────────────────────────────────────────────────────────────────

function signatureAlgorithm(algorithm: KeyPairAlgorithm): AlgorithmIdentifier {
  const p = webCryptoParams(algorithm);
  return new AlgorithmIdentifier({
    algorithmId: p.signatureOid,
    ...(p.nullParams ? { algorithmParams: new asn1js.Null() } : {}),
  });
}

interface Tbs {
  encodeTBS(): asn1js.Sequence;
  tbsView: Uint8Array;
  signatureAlgorithm: AlgorithmIdentifier;
  signatureValue: asn1js.BitString;
}

/** Encode the TBS part with pkijs, sign it, set the signature (RFC 5280 §4.1.1.3). */
async function signTbs(obj: unknown, signer: Signer): Promise<Uint8Array> {
  const t = obj as Tbs;
  t.signatureAlgorithm = signatureAlgorithm(signer.algorithm);
  t.tbsView = new Uint8Array(t.encodeTBS().toBER());
  t.signatureValue = new asn1js.BitString({ valueHex: await signer.sign(t.tbsView) });
  return new Uint8Array((obj as { toSchema(): asn1js.Sequence }).toSchema().toBER());
}

/** The algorithm of a SubjectPublicKeyInfo, if it is one of ours. */
export function algorithmOfPublicKey(spki: Uint8Array): KeyPairAlgorithm {
  let key: ReturnType<typeof createPublicKey>;
  try {
    key = createPublicKey({ key: Buffer.from(spki), format: 'der', type: 'spki' });
  } catch {
    throw new InvalidInputError('pki: not a valid SubjectPublicKeyInfo');
  }
  const d = key.asymmetricKeyDetails ?? {};
  if (key.asymmetricKeyType === 'ec' && d.namedCurve === 'prime256v1') return 'ECDSA-P256';
  if (key.asymmetricKeyType === 'ec' && d.namedCurve === 'secp384r1') return 'ECDSA-P384';
  if (key.asymmetricKeyType === 'rsa' && d.modulusLength === 2048) return 'RSA-2048';
  if (key.asymmetricKeyType === 'rsa' && d.modulusLength === 3072) return 'RSA-3072';
  if (key.asymmetricKeyType === 'ed25519') return 'Ed25519';
  throw new InvalidInputError(
    `pki: unsupported public key (${key.asymmetricKeyType ?? 'unknown'}); supported: P-256, P-384, RSA-2048, RSA-3072, Ed25519`,
  );
}

/** Signature AlgorithmIdentifiers accepted on verification (RFC 5758 §3.2, RFC 8017 App. A.2.4, RFC 8410 §3). */
const VERIFY_ALGORITHMS: Readonly<Record<string, { family: 'ec' | 'rsa' | 'ed25519'; hash: string | null }>> = {
  '1.2.840.10045.4.3.2': { family: 'ec', hash: 'sha256' },
  '1.2.840.10045.4.3.3': { family: 'ec', hash: 'sha384' },
  '1.2.840.10045.4.3.4': { family: 'ec', hash: 'sha512' },
  '1.2.840.113549.1.1.11': { family: 'rsa', hash: 'sha256' },
  '1.2.840.113549.1.1.12': { family: 'rsa', hash: 'sha384' },
  '1.2.840.113549.1.1.13': { family: 'rsa', hash: 'sha512' },
  '1.3.101.112': { family: 'ed25519', hash: null },
};

/**
 * Verify `signature` (X.509 encoding, see Signer.sign) over `data` under a SubjectPublicKeyInfo
 * and a signature AlgorithmIdentifier OID, with node:crypto — independent of the WebCrypto signer.
 * The OID decides the hash (other parties sign a P-384 request with SHA-256, as openssl does by
 * default), and must be of the key's family: an RSA OID never verifies under an EC key. SHA-1 and
 * RSA-PSS are not accepted, nor a PKCS#1 v1.5 DigestInfo without its NULL parameters. Checked
 * against Wycheproof's ECDSA P-256 and P-384 DER and RSASSA-PKCS1-v1_5 2048/SHA-256 and
 * 3072/SHA-384 vectors (test/wycheproof.test.ts).
 */
export function verifySignature(
  spki: Uint8Array,
  algorithmOid: string,
  data: Uint8Array,
  signature: Uint8Array,
): boolean {
  const algorithm = algorithmOfPublicKey(spki);
  const accepted = Object.hasOwn(VERIFY_ALGORITHMS, algorithmOid) ? VERIFY_ALGORITHMS[algorithmOid] : undefined;
  const family = algorithm.startsWith('ECDSA') ? 'ec' : algorithm.startsWith('RSA') ? 'rsa' : 'ed25519';
  if (!accepted || accepted.family !== family) return false;
  const key = createPublicKey({ key: Buffer.from(spki), format: 'der', type: 'spki' });
  try {
    return nodeVerify(accepted.hash, data, key, signature);
  } catch {
    // A signature that does not even parse (bad DER) is a signature that does not verify.
    return false;
  }
}

// ── Names, times, serials ───────────────────────────────────────────────────────────────────────

function toRdn(name: DistinguishedName): RelativeDistinguishedNames {
  if (typeof name?.commonName !== 'string' || name.commonName.length === 0 || name.commonName.length > 64) {
    throw new InvalidInputError('pki: a name needs a commonName of 1..64 characters (RFC 5280 ub-common-name)');
  }
  const rdn = new RelativeDistinguishedNames();
  // Most significant first: C, O, OU, CN.
  if (name.country !== undefined) {
    if (!/^[A-Z]{2}$/.test(name.country)) throw new InvalidInputError('pki: country must be two capital letters');
    rdn.typesAndValues.push(
      new AttributeTypeAndValue({ type: OID.country, value: new asn1js.PrintableString({ value: name.country }) }),
    );
  }
  for (const [field, oid] of [
    ['organization', OID.organization],
    ['organizationalUnit', OID.organizationalUnit],
    ['commonName', OID.commonName],
  ] as const) {
    const value = name[field];
    if (value !== undefined) {
      rdn.typesAndValues.push(new AttributeTypeAndValue({ type: oid, value: new asn1js.Utf8String({ value }) }));
    }
  }
  return rdn;
}

function fromRdn(rdn: RelativeDistinguishedNames): DistinguishedName {
  const out: Partial<DistinguishedName> = {};
  for (const tv of rdn.typesAndValues) {
    const value = String(tv.value.valueBlock.value);
    if (tv.type === OID.commonName) out.commonName = value;
    else if (tv.type === OID.organization) out.organization = value;
    else if (tv.type === OID.organizationalUnit) out.organizationalUnit = value;
    else if (tv.type === OID.country) out.country = value;
  }
  return { commonName: out.commonName ?? '', ...out };
}

/** UTCTime through 2049, GeneralizedTime from 2050 (RFC 5280 §4.1.2.5); whole seconds. */
function toTime(date: Date): Time {
  const value = new Date(Math.floor(date.getTime() / 1000) * 1000);
  return new Time({ type: value.getUTCFullYear() < 2050 ? 0 : 1, value });
}

/** 16 random bytes, positive, no leading zero octet (RFC 5280 §4.1.2.2: ≤ 20 octets, unique). */
function newSerial(): Uint8Array {
  const serial = new Uint8Array(randomBytes(16));
  serial[0] = ((serial[0] ?? 0) & 0x7f) | 0x40;
  return serial;
}

const hex = (b: Uint8Array): string => Buffer.from(b).toString('hex');

// ── Extensions ──────────────────────────────────────────────────────────────────────────────────

function extension(extnID: string, critical: boolean, value: { toBER(): ArrayBuffer }): Extension {
  return new Extension({ extnID, critical, extnValue: value.toBER() });
}

/** SHA-1 of the subjectPublicKey BIT STRING contents (RFC 5280 §4.2.1.2, method 1). */
export function keyIdentifier(spki: Uint8Array): Uint8Array {
  const info = PublicKeyInfo.fromBER(spki);
  return new Uint8Array(createHash('sha1').update(info.subjectPublicKey.valueBlock.valueHexView).digest());
}

/** KeyUsage bits (RFC 5280 §4.2.1.3) as a DER BIT STRING with trailing zero bits dropped. */
function keyUsageBits(bits: number[]): asn1js.BitString {
  let value = 0;
  for (const b of bits) value |= 0x8000 >> b;
  const bytes = value & 0xff ? [value >> 8, value & 0xff] : [value >> 8];
  const last = bytes[bytes.length - 1] ?? 0;
  let unusedBits = 0;
  while (unusedBits < 7 && !(last & (1 << unusedBits))) unusedBits++;
  return new asn1js.BitString({ valueHex: new Uint8Array(bytes), unusedBits });
}

function sanNames(dnsNames: readonly string[], ipAddresses: readonly string[]): GeneralName[] {
  const names: GeneralName[] = [];
  for (const dns of dnsNames) {
    if (!/^(\*\.)?([A-Za-z0-9-]{1,63}\.)*[A-Za-z0-9-]{1,63}$/.test(dns) || dns.length > 253) {
      throw new InvalidInputError(`pki: ${JSON.stringify(dns)} is not a DNS name`);
    }
    names.push(new GeneralName({ type: 2, value: dns }));
  }
  for (const ip of ipAddresses) {
    const version = isIP(ip);
    if (version === 0) throw new InvalidInputError(`pki: ${JSON.stringify(ip)} is not an IP address`);
    names.push(new GeneralName({ type: 7, value: new asn1js.OctetString({ valueHex: ipBytes(ip, version) }) }));
  }
  return names;
}

function ipBytes(ip: string, version: number): Uint8Array {
  if (version === 4) return new Uint8Array(ip.split('.').map(Number));
  // IPv6: expand "::" and any embedded IPv4 tail to 16 bytes.
  let text = ip;
  const v4 = /(\d+\.\d+\.\d+\.\d+)$/.exec(text);
  if (v4?.[1]) {
    const [a, b, c, d] = v4[1].split('.').map(Number) as [number, number, number, number];
    text = `${text.slice(0, -v4[1].length)}${((a << 8) | b).toString(16)}:${((c << 8) | d).toString(16)}`;
  }
  const [head = '', tail] = text.split('::');
  const h = head ? head.split(':') : [];
  const t = tail ? tail.split(':') : [];
  const groups = [...h, ...Array(8 - h.length - t.length).fill('0'), ...t];
  const out = new Uint8Array(16);
  groups.forEach((g, i) => {
    const n = Number.parseInt(g, 16);
    out[2 * i] = n >> 8;
    out[2 * i + 1] = n & 0xff;
  });
  return out;
}

function ipText(bytes: Uint8Array): string {
  if (bytes.length === 4) return Array.from(bytes).join('.');
  const groups: string[] = [];
  for (let i = 0; i < 16; i += 2) groups.push((((bytes[i] ?? 0) << 8) | (bytes[i + 1] ?? 0)).toString(16));
  return groups.join(':');
}

// ── PKCS#10 ─────────────────────────────────────────────────────────────────────────────────────

export interface CsrOptions {
  subject: DistinguishedName;
  dnsNames?: string[];
  ipAddresses?: string[];
}

/** A PKCS#10 request (RFC 2986) signed by `signer`, with the SAN in an extensionRequest (RFC 2985 §5.4.2). */
export async function createCsr(signer: Signer, options: CsrOptions): Promise<Uint8Array> {
  const csr = new CertificationRequest();
  csr.version = 0;
  csr.subject = toRdn(options.subject);
  csr.subjectPublicKeyInfo = PublicKeyInfo.fromBER(signer.publicKey);
  const names = sanNames(options.dnsNames ?? [], options.ipAddresses ?? []);
  if (names.length > 0) {
    const extensions = new Extensions({
      extensions: [extension(OID.subjectAltName, false, new GeneralNames({ names }).toSchema())],
    });
    csr.attributes = [new Attribute({ type: OID.extensionRequest, values: [extensions.toSchema()] })];
  }
  return signTbs(csr, signer);
}

export interface CsrInfo {
  subject: DistinguishedName;
  publicKey: Uint8Array;
  algorithm: KeyPairAlgorithm;
  dnsNames: string[];
  ipAddresses: string[];
}

/** Parse a PKCS#10 request and check its proof of possession (the self-signature). */
export function readCsr(der: Uint8Array): CsrInfo {
  let csr: CertificationRequest;
  try {
    csr = CertificationRequest.fromBER(der);
  } catch {
    throw new InvalidInputError('pki: not a DER PKCS#10 certification request');
  }
  const publicKey = new Uint8Array(csr.subjectPublicKeyInfo.toSchema().toBER());
  const algorithm = algorithmOfPublicKey(publicKey);
  const ok = verifySignature(
    publicKey,
    csr.signatureAlgorithm.algorithmId,
    csr.tbsView,
    csr.signatureValue.valueBlock.valueHexView,
  );
  if (!ok) throw new InvalidInputError('pki: the certification request signature does not verify');
  const dnsNames: string[] = [];
  const ipAddresses: string[] = [];
  for (const attr of csr.attributes ?? []) {
    if (attr.type !== OID.extensionRequest) continue;
    for (const value of attr.values) {
      const extensions = new Extensions({ schema: value });
      for (const ext of extensions.extensions) {
        if (ext.extnID !== OID.subjectAltName) continue;
        for (const n of GeneralNames.fromBER(ext.extnValue.valueBlock.valueHexView).names) {
          if (n.type === 2) dnsNames.push(String(n.value));
          if (n.type === 7) ipAddresses.push(ipText((n.value as asn1js.OctetString).valueBlock.valueHexView));
        }
      }
    }
  }
  return { subject: fromRdn(csr.subject), publicKey, algorithm, dnsNames, ipAddresses };
}

// ── Certificates ────────────────────────────────────────────────────────────────────────────────

export interface CertificateOptions {
  subject: DistinguishedName;
  /** SubjectPublicKeyInfo (DER) of the key being certified. */
  publicKey: Uint8Array;
  profile: CertificateProfile;
  dnsNames?: string[];
  ipAddresses?: string[];
  /** Default: now. */
  notBefore?: Date;
  notAfter: Date;
  /** CA profile only: the pathLenConstraint (RFC 5280 §4.2.1.9). */
  pathLength?: number;
}

/** The issuing side: its signer and its own certificate (DER); none for a self-signed CA. */
export interface Issuer {
  signer: Signer;
  certificate?: Uint8Array;
}

/**
 * Issue an X.509 v3 certificate. With no `issuer.certificate` it is self-signed (subject =
 * issuer, AKI = SKI; profile must be "ca"). Extensions (RFC 5280 §4.2): basicConstraints
 * (critical), keyUsage (critical), extKeyUsage for leaves, SKI, AKI, SAN when names are given.
 */
export async function issueCertificate(issuer: Issuer, options: CertificateOptions): Promise<Uint8Array> {
  const notBefore = options.notBefore ?? new Date();
  if (!(options.notAfter instanceof Date) || !(options.notAfter > notBefore)) {
    throw new InvalidInputError('pki: notAfter must be a Date after notBefore');
  }
  const subjectAlgorithm = algorithmOfPublicKey(options.publicKey);
  let issuerName: RelativeDistinguishedNames;
  let issuerKeyId: Uint8Array;
  if (issuer.certificate === undefined) {
    if (options.profile !== 'ca') throw new InvalidInputError('pki: only a CA certificate can be self-signed');
    if (hex(issuer.signer.publicKey) !== hex(options.publicKey)) {
      throw new InvalidInputError('pki: a self-signed certificate must certify the signer’s own public key');
    }
    issuerName = toRdn(options.subject);
    issuerKeyId = keyIdentifier(options.publicKey);
  } else {
    const ca = parseCertificate(issuer.certificate);
    if (hex(new Uint8Array(ca.subjectPublicKeyInfo.toSchema().toBER())) !== hex(issuer.signer.publicKey)) {
      throw new InvalidInputError('pki: the issuer certificate is not for the signer’s key');
    }
    checkCanIssue(ca, options.profile === 'ca');
    issuerName = ca.subject;
    issuerKeyId = subjectKeyIdOf(ca) ?? keyIdentifier(issuer.signer.publicKey);
  }

  const cert = new Certificate();
  cert.version = 2;
  cert.serialNumber = new asn1js.Integer({ valueHex: newSerial() });
  cert.issuer = issuerName;
  cert.subject = toRdn(options.subject);
  cert.notBefore = toTime(notBefore);
  cert.notAfter = toTime(options.notAfter);
  cert.subjectPublicKeyInfo = PublicKeyInfo.fromBER(options.publicKey);
  cert.signature = signatureAlgorithm(issuer.signer.algorithm);

  const isCa = options.profile === 'ca';
  if (options.pathLength !== undefined && (!isCa || !Number.isInteger(options.pathLength) || options.pathLength < 0)) {
    throw new InvalidInputError('pki: pathLength is a non-negative integer, for CA certificates only');
  }
  const extensions: Extension[] = [
    extension(
      OID.basicConstraints,
      true,
      new BasicConstraints(
        isCa
          ? { cA: true, ...(options.pathLength !== undefined ? { pathLenConstraint: options.pathLength } : {}) }
          : {},
      ).toSchema(),
    ),
  ];
  // digitalSignature(0); keyEncipherment(2) for RSA TLS servers; keyCertSign(5) + cRLSign(6) for CAs.
  const bits = isCa ? [0, 5, 6] : subjectAlgorithm.startsWith('RSA') && options.profile !== 'client' ? [0, 2] : [0];
  extensions.push(extension(OID.keyUsage, true, keyUsageBits(bits)));
  if (!isCa) {
    const purposes =
      options.profile === 'server'
        ? [OID.serverAuth]
        : options.profile === 'client'
          ? [OID.clientAuth]
          : [OID.serverAuth, OID.clientAuth];
    extensions.push(extension(OID.extKeyUsage, false, new ExtKeyUsage({ keyPurposes: purposes }).toSchema()));
  }
  extensions.push(
    extension(OID.subjectKeyIdentifier, false, new asn1js.OctetString({ valueHex: keyIdentifier(options.publicKey) })),
  );
  extensions.push(
    extension(
      OID.authorityKeyIdentifier,
      false,
      new AuthorityKeyIdentifier({ keyIdentifier: new asn1js.OctetString({ valueHex: issuerKeyId }) }).toSchema(),
    ),
  );
  const names = sanNames(options.dnsNames ?? [], options.ipAddresses ?? []);
  if (names.length > 0) extensions.push(extension(OID.subjectAltName, false, new GeneralNames({ names }).toSchema()));
  cert.extensions = extensions;
  return signTbs(cert, issuer.signer);
}

/** Internal: not exported from the package, so that no pkijs type reaches the public .d.ts
 * (pkijs's declarations need the DOM lib, which a Node project does not load). */
function parseCertificate(der: Uint8Array): Certificate {
  try {
    return Certificate.fromBER(der);
  } catch {
    throw new InvalidInputError('pki: not a DER X.509 certificate');
  }
}

/**
 * Refuse to sign under a certificate a verifier would not accept as an issuer (RFC 5280 §6.1.4
 * (k), (l), (n)): it must be a CA, with keyCertSign when it has a keyUsage, and a CA certificate
 * may only be issued below it when its pathLenConstraint is not 0.
 */
function checkCanIssue(ca: Certificate, issuingCa: boolean): void {
  const bc = ca.extensions?.find((e) => e.extnID === OID.basicConstraints);
  const constraints = bc ? BasicConstraints.fromBER(bc.extnValue.valueBlock.valueHexView) : undefined;
  if (!constraints?.cA) throw new InvalidInputError('pki: the issuer certificate is not a CA certificate');
  const ku = ca.extensions?.find((e) => e.extnID === OID.keyUsage);
  if (ku) {
    const bits = asn1js.fromBER(ku.extnValue.valueBlock.valueHexView).result as asn1js.BitString;
    // keyCertSign is bit 5: 0x04 in the first octet.
    if (!((bits.valueBlock.valueHexView[0] ?? 0) & 0x04)) {
      throw new InvalidInputError('pki: the issuer certificate’s keyUsage does not allow keyCertSign');
    }
  }
  const pathLen = constraints.pathLenConstraint;
  const limit = pathLen === undefined ? undefined : typeof pathLen === 'number' ? pathLen : pathLen.valueBlock.valueDec;
  if (issuingCa && limit === 0) {
    throw new InvalidInputError('pki: the issuer’s pathLenConstraint is 0; it cannot issue CA certificates');
  }
}

function subjectKeyIdOf(cert: Certificate): Uint8Array | undefined {
  const ext = cert.extensions?.find((e) => e.extnID === OID.subjectKeyIdentifier);
  return ext ? new Uint8Array((ext.parsedValue as asn1js.OctetString).valueBlock.valueHexView) : undefined;
}

/** The SubjectPublicKeyInfo (DER) of a certificate. */
export function publicKeyOf(der: Uint8Array): Uint8Array {
  return new Uint8Array(parseCertificate(der).subjectPublicKeyInfo.toSchema().toBER());
}

/** The validity period of a certificate. */
export function validityOf(der: Uint8Array): { notBefore: Date; notAfter: Date } {
  const cert = parseCertificate(der);
  return { notBefore: cert.notBefore.value, notAfter: cert.notAfter.value };
}

/** The subject of a certificate (the attributes this package writes). */
export function subjectOf(der: Uint8Array): DistinguishedName {
  return fromRdn(parseCertificate(der).subject);
}

/** Serial number of a certificate, lowercase hex (as `openssl x509 -serial` prints it, lowercased). */
export function serialOf(der: Uint8Array): string {
  return hex(parseCertificate(der).serialNumber.valueBlock.valueHexView);
}

// ── CRLs ────────────────────────────────────────────────────────────────────────────────────────

/** CRLReason (RFC 5280 §5.3.1); 7 is unused. */
export const CRL_REASONS = {
  unspecified: 0,
  keyCompromise: 1,
  cACompromise: 2,
  affiliationChanged: 3,
  superseded: 4,
  cessationOfOperation: 5,
  certificateHold: 6,
  removeFromCRL: 8,
  privilegeWithdrawn: 9,
  aACompromise: 10,
} as const;
export type CrlReason = keyof typeof CRL_REASONS;

export interface RevokedEntry {
  /** Hex serial number, as serialOf returns it. */
  serialNumber: string;
  revokedAt: Date;
  reason?: CrlReason;
}

export interface CrlOptions {
  revoked: RevokedEntry[];
  /** Monotonically increasing CRL number (RFC 5280 §5.2.3). */
  crlNumber: number;
  thisUpdate?: Date;
  nextUpdate: Date;
}

/** A v2 CRL signed by the CA (RFC 5280 §5): AKI and cRLNumber; a reasonCode per entry when given. */
export async function createCrl(issuer: Required<Issuer>, options: CrlOptions): Promise<Uint8Array> {
  const ca = parseCertificate(issuer.certificate);
  if (hex(new Uint8Array(ca.subjectPublicKeyInfo.toSchema().toBER())) !== hex(issuer.signer.publicKey)) {
    throw new InvalidInputError('pki: the CA certificate is not for the signer’s key');
  }
  if (!Number.isSafeInteger(options.crlNumber) || options.crlNumber < 0) {
    throw new InvalidInputError('pki: crlNumber must be a non-negative integer');
  }
  const thisUpdate = options.thisUpdate ?? new Date();
  const crl = new CertificateRevocationList();
  crl.version = 1;
  crl.issuer = ca.subject;
  crl.thisUpdate = toTime(thisUpdate);
  crl.nextUpdate = toTime(options.nextUpdate);
  crl.signature = signatureAlgorithm(issuer.signer.algorithm);
  if (options.revoked.length > 0) {
    crl.revokedCertificates = options.revoked.map((r) => {
      if (!/^([0-9a-f]{2})+$/.test(r.serialNumber))
        throw new InvalidInputError('pki: a serial number is lowercase hex');
      const entry = new RevokedCertificate({
        userCertificate: new asn1js.Integer({ valueHex: new Uint8Array(Buffer.from(r.serialNumber, 'hex')) }),
        revocationDate: toTime(r.revokedAt),
      });
      if (r.reason !== undefined && r.reason !== 'unspecified') {
        const code = CRL_REASONS[r.reason];
        if (code === undefined) throw new InvalidInputError(`pki: unknown CRL reason ${JSON.stringify(r.reason)}`);
        entry.crlEntryExtensions = new Extensions({
          extensions: [extension(OID.crlReason, false, new asn1js.Enumerated({ value: code }))],
        });
      }
      return entry;
    });
  }
  crl.crlExtensions = new Extensions({
    extensions: [
      extension(
        OID.authorityKeyIdentifier,
        false,
        new AuthorityKeyIdentifier({
          keyIdentifier: new asn1js.OctetString({
            valueHex: subjectKeyIdOf(ca) ?? keyIdentifier(issuer.signer.publicKey),
          }),
        }).toSchema(),
      ),
      extension(OID.crlNumber, false, new asn1js.Integer({ value: options.crlNumber })),
    ],
  });
  return signTbs(crl, issuer.signer);
}

/** DER → PEM (RFC 7468). */
export function toPem(
  der: Uint8Array,
  label: 'CERTIFICATE' | 'CERTIFICATE REQUEST' | 'X509 CRL' | 'PUBLIC KEY',
): string {
  const b64 = Buffer.from(der).toString('base64').replace(/.{64}/g, '$&\n');
  return `-----BEGIN ${label}-----\n${b64}${b64.endsWith('\n') ? '' : '\n'}-----END ${label}-----\n`;
}
