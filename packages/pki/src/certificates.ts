/**
 * The certificates a key pair holds: which certificate belongs to which key pair version, whether
 * it was issued by a CA of this store or imported (made elsewhere, e.g. by `openssl req -x509` or
 * another CA, for a key pair kept here), and leaf renewal (a new key pair version, a request with
 * the old certificate's subject and names, a certificate from the CA, the old one optionally
 * revoked as superseded).
 *
 * One meta record per key pair, `pki/certs/<name>` (JSON, public data only), changed under the
 * store's lock (updateRecord, _meta.ts): certificates added at once by several processes all land.
 */
import { X509Certificate } from 'node:crypto';
import { InvalidInputError, KeyNotFoundError, type Keywarden, StoreCorruptError } from '@keywarden/core';
import type { CertificateAuthority } from './ca.js';
import { encodeJson, updateRecord } from './_meta.js';
import type { KeyPairs } from './keypairs.js';
import { type CertificateProfile, createCsr, type DistinguishedName, serialOf, subjectOf } from './x509.js';

/** A certificate held for a key pair version. */
export interface HeldCertificate {
  keyPair: string;
  keyVersion: number;
  /** DER. */
  certificate: Uint8Array;
  /** Lowercase hex, as serialOf gives it (and CertificateAuthority.revoke takes it). */
  serialNumber: string;
  subject: DistinguishedName;
  /** The issuer's distinguished name as openssl prints it (RFC 2253 order reversed, one per line). */
  issuer: string;
  notBefore: Date;
  notAfter: Date;
  profile: CertificateProfile;
  dnsNames: string[];
  ipAddresses: string[];
  /** "issued": by a CA of this key store (named in `ca`); "imported": made elsewhere. */
  source: 'issued' | 'imported';
  ca?: string;
}

interface StoredCertificate {
  keyVersion: number;
  certificate: string;
  source: 'issued' | 'imported';
  ca?: string;
}

interface StoredBook {
  format: 1;
  keyPair: string;
  certificates: StoredCertificate[];
}

export interface CertificatesOptions {
  keywarden: Keywarden;
  keyPairs: KeyPairs;
}

export interface RenewOptions {
  /** The CA that issues the new certificate. */
  ca: CertificateAuthority;
  validityDays: number;
  /** Revoke the previous certificate at the CA as "superseded" (default: keep it for the overlap). */
  revokePrevious?: boolean;
  /** Default: the previous certificate's profile. */
  profile?: Exclude<CertificateProfile, 'ca'>;
}

const META_PREFIX = 'pki/certs/';

export class Certificates {
  readonly #kw: Keywarden;
  readonly #pairs: KeyPairs;

  constructor(options: CertificatesOptions) {
    this.#kw = options.keywarden;
    this.#pairs = options.keyPairs;
  }

  /**
   * Add a certificate to the key pair it certifies. Precondition: its public key is the public key
   * of one of `keyPair`'s versions (InvalidInputError otherwise: a certificate for another key is
   * refused, whoever made it). Adding the same certificate twice changes nothing.
   */
  async add(
    keyPair: string,
    der: Uint8Array,
    origin: { source: 'issued'; ca: string } | { source: 'imported' } = { source: 'imported' },
  ): Promise<HeldCertificate> {
    const parsed = parse(der);
    const info = await this.#pairs.get(keyPair);
    const spki = spkiOf(parsed);
    const version = info.versions.find((v) => Buffer.from(v.publicKey).equals(spki));
    if (!version) {
      throw new InvalidInputError(
        `pki: the certificate's public key is not the public key of any version of key pair ${keyPair}`,
      );
    }
    const b64 = Buffer.from(der).toString('base64');
    let stored: StoredCertificate | undefined;
    await updateRecord(this.#kw.store, META_PREFIX + keyPair, (current) => {
      const book = parseBook(keyPair, current);
      stored = book.certificates.find((c) => c.certificate === b64);
      if (stored) return undefined;
      stored = {
        keyVersion: version.version,
        certificate: b64,
        source: origin.source,
        ...(origin.source === 'issued' ? { ca: origin.ca } : {}),
      };
      book.certificates.push(stored);
      return encodeJson(book);
    });
    if (!stored) throw new StoreCorruptError(`pki: the certificate record of key pair ${keyPair} was not written`);
    return held(keyPair, stored);
  }

  /**
   * After a CA of this store issued `der`: add it to the key pair of this store that holds its key,
   * if there is one (a request made elsewhere has none). Returns the key pair's name.
   */
  async recordIssued(der: Uint8Array, ca: string): Promise<string | undefined> {
    const spki = spkiOf(parse(der));
    for (const name of await this.#pairs.list()) {
      const info = await this.#pairs.get(name);
      if (info.versions.some((v) => Buffer.from(v.publicKey).equals(spki))) {
        await this.add(name, der, { source: 'issued', ca });
        return name;
      }
    }
    return undefined;
  }

  /** The certificates of a key pair, oldest first. */
  async list(keyPair: string): Promise<HeldCertificate[]> {
    return (await this.#read(keyPair)).certificates.map((c) => held(keyPair, c));
  }

  /** The newest certificate of a key pair (KeyNotFoundError when it has none). */
  async latest(keyPair: string): Promise<HeldCertificate> {
    const all = await this.list(keyPair);
    const last = all[all.length - 1];
    if (!last) throw new KeyNotFoundError(`pki: key pair ${keyPair} has no certificate`);
    return last;
  }

  /**
   * Renew a leaf: a new key pair version (primary from now on), a request signed by it with the
   * previous certificate's subject and names, and a certificate from `options.ca`. The previous
   * certificate stays valid until it expires (the overlap) unless `revokePrevious`.
   */
  async renew(keyPair: string, options: RenewOptions): Promise<HeldCertificate> {
    const previous = await this.latest(keyPair);
    if (previous.profile === 'ca') {
      throw new InvalidInputError(`pki: ${keyPair} holds a CA certificate; renew a CA with CertificateAuthority.renew`);
    }
    const rotated = await this.#pairs.rotate(keyPair);
    const signer = await this.#pairs.signer(keyPair, rotated.primaryVersion);
    const csr = await createCsr(signer, {
      subject: previous.subject,
      dnsNames: previous.dnsNames,
      ipAddresses: previous.ipAddresses,
    });
    const der = await options.ca.issue({
      csr,
      profile: options.profile ?? previous.profile,
      validityDays: options.validityDays,
    });
    const renewed = await this.add(keyPair, der, { source: 'issued', ca: options.ca.name });
    if (options.revokePrevious && previous.ca === options.ca.name) {
      await options.ca.revoke(previous.serialNumber, { reason: 'superseded' });
    }
    return renewed;
  }

  async #read(keyPair: string): Promise<StoredBook> {
    const raw = await this.#kw.store.getMeta(META_PREFIX + keyPair);
    if (raw === undefined) await this.#pairs.get(keyPair); // KeyNotFoundError for a key pair that does not exist
    return parseBook(keyPair, raw);
  }
}

/** A key pair's certificate book from its meta record (absent: empty). */
function parseBook(keyPair: string, raw: Uint8Array | undefined): StoredBook {
  if (raw === undefined) return { format: 1, keyPair, certificates: [] };
  let parsed: StoredBook;
  try {
    parsed = JSON.parse(new TextDecoder().decode(raw)) as StoredBook;
  } catch {
    throw new StoreCorruptError(`pki: the certificate record of key pair ${keyPair} is not valid JSON`);
  }
  if (parsed.format !== 1 || parsed.keyPair !== keyPair || !Array.isArray(parsed.certificates)) {
    throw new StoreCorruptError(`pki: the certificate record of key pair ${keyPair} is not a format-1 record`);
  }
  return parsed;
}

/**
 * A certificate, a request or a CRL from a file's bytes: PEM (RFC 7468, the first block with this
 * label) or DER as is.
 */
export function fromPem(
  input: Uint8Array | string,
  label: 'CERTIFICATE' | 'CERTIFICATE REQUEST' | 'X509 CRL' | 'PUBLIC KEY',
): Uint8Array {
  const text = typeof input === 'string' ? input : Buffer.from(input).toString('latin1');
  if (!text.includes('-----BEGIN')) {
    if (typeof input === 'string') throw new InvalidInputError(`pki: no PEM ${label} block`);
    return input;
  }
  const re = new RegExp(`-----BEGIN ${label}-----([A-Za-z0-9+/=\\s]*)-----END ${label}-----`);
  const m = re.exec(text);
  if (!m?.[1]) throw new InvalidInputError(`pki: no PEM ${label} block`);
  return new Uint8Array(Buffer.from(m[1].replace(/\s+/g, ''), 'base64'));
}

function parse(der: Uint8Array): X509Certificate {
  try {
    return new X509Certificate(der);
  } catch {
    throw new InvalidInputError('pki: not a DER X.509 certificate');
  }
}

function spkiOf(cert: X509Certificate): Buffer {
  return cert.publicKey.export({ type: 'spki', format: 'der' });
}

const SERVER_AUTH = '1.3.6.1.5.5.7.3.1';
const CLIENT_AUTH = '1.3.6.1.5.5.7.3.2';

function held(keyPair: string, stored: StoredCertificate): HeldCertificate {
  const der = new Uint8Array(Buffer.from(stored.certificate, 'base64'));
  const cert = parse(der);
  const dnsNames: string[] = [];
  const ipAddresses: string[] = [];
  // Node prints the SAN as "DNS:a, IP Address:1.2.3.4" (names with commas or quotes are quoted).
  for (const part of (cert.subjectAltName ?? '').split(/,\s*/)) {
    if (part.startsWith('DNS:')) dnsNames.push(part.slice(4));
    else if (part.startsWith('IP Address:')) ipAddresses.push(part.slice(11).toLowerCase());
  }
  const eku = cert.keyUsage ?? [];
  const server = eku.includes(SERVER_AUTH);
  const client = eku.includes(CLIENT_AUTH);
  const profile: CertificateProfile = cert.ca
    ? 'ca'
    : server && client
      ? 'server-client'
      : client
        ? 'client'
        : 'server';
  return {
    keyPair,
    keyVersion: stored.keyVersion,
    certificate: der,
    serialNumber: serialOf(der),
    subject: subjectOf(der),
    issuer: cert.issuer,
    notBefore: new Date(cert.validFrom),
    notAfter: new Date(cert.validTo),
    profile,
    dnsNames,
    ipAddresses,
    source: stored.source,
    ...(stored.ca !== undefined ? { ca: stored.ca } : {}),
  };
}
