/**
 * A small certificate authority over a key pair of {@link KeyPairs}: a self-signed root CA (or an
 * intermediate, issued by another CA), leaf certificates from PKCS#10 requests, renewal with a new
 * key pair version and an overlap period, revocation and CRLs. Its book (certificates of the CA
 * itself, serials issued, revocations, the CRL number) is one meta record `pki/ca/<name>`, changed
 * under the store's lock (updateRecord, _meta.ts) and applied to the record as it is at commit
 * time: processes issuing, revoking, renewing and making CRLs of one CA at once lose no entry, and
 * each CRL number is given out once, with the revocations as they are at that moment.
 */
import { InvalidInputError, KeyExistsError, KeyNotFoundError, KeyStateError, type Keywarden } from '@keywarden/core';
import { encodeJson, updateRecord } from './_meta.js';
import type { KeyPairs } from './keypairs.js';
import type { KeyPairAlgorithm } from './signer.js';
import {
  type CertificateProfile,
  type CrlReason,
  type DistinguishedName,
  createCrl,
  issueCertificate,
  readCsr,
  serialOf,
  subjectOf,
  validityOf,
} from './x509.js';

const DAY_MS = 86_400_000;

interface CaRecord {
  format: 1;
  name: string;
  /** The CA's certificates, one per key pair version, oldest first (base64 DER). */
  certificates: Array<{ keyVersion: number; certificate: string }>;
  issued: Array<{ serialNumber: string; commonName: string; notAfter: string; caKeyVersion: number }>;
  revoked: Array<{ serialNumber: string; revokedAt: string; reason: CrlReason; caKeyVersion: number }>;
  crlNumber: number;
}

export interface CreateCaOptions {
  subject: DistinguishedName;
  algorithm: KeyPairAlgorithm;
  validityDays: number;
  pathLength?: number;
  /** Make an intermediate: this CA signs its certificate. Default: self-signed root. */
  parent?: CertificateAuthority;
}

export interface IssueOptions {
  /** A PKCS#10 request (DER); its signature is checked, its subject and SAN are used. */
  csr: Uint8Array;
  profile: Exclude<CertificateProfile, 'ca'>;
  validityDays: number;
}

export class CertificateAuthority {
  readonly name: string;
  readonly #kw: Keywarden;
  readonly #pairs: KeyPairs;

  private constructor(name: string, keywarden: Keywarden, keyPairs: KeyPairs) {
    this.name = name;
    this.#kw = keywarden;
    this.#pairs = keyPairs;
  }

  /** Create the CA: a new key pair `name` and its first CA certificate. */
  static async create(
    keywarden: Keywarden,
    keyPairs: KeyPairs,
    name: string,
    options: CreateCaOptions,
  ): Promise<CertificateAuthority> {
    checkDays(options.validityDays);
    if ((await keywarden.store.getMeta(metaName(name))) !== undefined) {
      throw new KeyExistsError(`pki: certificate authority ${name} already exists`);
    }
    await keyPairs.create(name, { algorithm: options.algorithm });
    const ca = new CertificateAuthority(name, keywarden, keyPairs);
    const certificate = await ca.#caCertificate(
      1,
      options.subject,
      options.validityDays,
      options.pathLength,
      options.parent,
    );
    await updateRecord(keywarden.store, metaName(name), (current) => {
      if (current !== undefined) throw new KeyExistsError(`pki: certificate authority ${name} already exists`);
      return encodeJson({
        format: 1,
        name,
        certificates: [{ keyVersion: 1, certificate: b64(certificate) }],
        issued: [],
        revoked: [],
        crlNumber: 0,
      } satisfies CaRecord);
    });
    return ca;
  }

  static async open(keywarden: Keywarden, keyPairs: KeyPairs, name: string): Promise<CertificateAuthority> {
    const ca = new CertificateAuthority(name, keywarden, keyPairs);
    await ca.#read();
    return ca;
  }

  /** The current CA certificate (DER). */
  async certificate(): Promise<Uint8Array> {
    const record = await this.#read();
    const last = record.certificates[record.certificates.length - 1];
    if (!last) throw new KeyStateError(`pki: certificate authority ${this.name} has no certificate`);
    return unb64(last.certificate);
  }

  /** Every CA certificate, oldest first: during an overlap, relying parties trust them all. */
  async certificates(): Promise<Uint8Array[]> {
    return (await this.#read()).certificates.map((c) => unb64(c.certificate));
  }

  /** Issue a leaf certificate for a PKCS#10 request, signed by the CA's current key. */
  async issue(options: IssueOptions): Promise<Uint8Array> {
    checkDays(options.validityDays);
    if ((options.profile as string) === 'ca') {
      throw new InvalidInputError('pki: issue() makes leaf certificates; create an intermediate with parent');
    }
    const request = readCsr(options.csr);
    const record = await this.#read();
    const current = record.certificates[record.certificates.length - 1];
    if (!current) throw new KeyStateError(`pki: certificate authority ${this.name} has no certificate`);
    const signer = await this.#pairs.signer(this.name, current.keyVersion);
    const caCert = unb64(current.certificate);
    const notBefore = new Date();
    // A leaf never outlives its issuer (RFC 5280 §6.1.3 would reject it at the issuer's expiry).
    const caNotAfter = validityOf(caCert).notAfter;
    const notAfter = new Date(Math.min(notBefore.getTime() + options.validityDays * DAY_MS, caNotAfter.getTime()));
    const certificate = await issueCertificate(
      { signer, certificate: caCert },
      {
        subject: request.subject,
        publicKey: request.publicKey,
        profile: options.profile,
        dnsNames: request.dnsNames,
        ipAddresses: request.ipAddresses,
        notBefore,
        notAfter,
      },
    );
    const entry = {
      serialNumber: serialOf(certificate),
      commonName: request.subject.commonName,
      notAfter: notAfter.toISOString(),
      caKeyVersion: current.keyVersion,
    };
    await this.#update((record) => {
      record.issued.push(entry);
      return record;
    });
    return certificate;
  }

  /**
   * Renew the CA: a new key pair version and a new CA certificate under it. The old key stays
   * enabled, so certificates it issued keep verifying against the old CA certificate (the
   * overlap) and it keeps signing their CRL; disable it once they have all expired.
   */
  async renew(options: {
    validityDays: number;
    subject?: DistinguishedName;
    parent?: CertificateAuthority;
  }): Promise<Uint8Array> {
    checkDays(options.validityDays);
    const record = await this.#read();
    const info = await this.#pairs.rotate(this.name);
    const last = record.certificates[record.certificates.length - 1];
    const subject = options.subject ?? (last ? subjectOf(unb64(last.certificate)) : undefined);
    if (!subject) throw new KeyStateError(`pki: certificate authority ${this.name} has no certificate to renew`);
    const certificate = await this.#caCertificate(
      info.primaryVersion,
      subject,
      options.validityDays,
      undefined,
      options.parent,
    );
    await this.#update((current) => {
      // Oldest first by key version, also when another renewal committed in between.
      current.certificates.push({ keyVersion: info.primaryVersion, certificate: b64(certificate) });
      current.certificates.sort((a, b) => a.keyVersion - b.keyVersion);
      return current;
    });
    return certificate;
  }

  /** Revoke a certificate this CA issued (by serial number, lowercase hex). */
  async revoke(serialNumber: string, options: { reason?: CrlReason; at?: Date } = {}): Promise<void> {
    const revokedAt = (options.at ?? new Date()).toISOString();
    await this.#update((record) => {
      const issued = record.issued.find((i) => i.serialNumber === serialNumber);
      if (!issued)
        throw new KeyNotFoundError(`pki: certificate authority ${this.name} issued no certificate ${serialNumber}`);
      // Revoked already (here or by another process): the first revocation stands.
      if (record.revoked.some((r) => r.serialNumber === serialNumber)) return undefined;
      record.revoked.push({
        serialNumber,
        revokedAt,
        reason: options.reason ?? 'unspecified',
        caKeyVersion: issued.caKeyVersion,
      });
      return record;
    });
  }

  /** Revoked serial numbers (lowercase hex). */
  async revoked(): Promise<string[]> {
    return (await this.#read()).revoked.map((r) => r.serialNumber);
  }

  /**
   * A new CRL (cRLNumber + 1) listing the certificates revoked under one CA key version (default:
   * the current one), signed by that version's key.
   */
  async crl(options: { nextUpdateHours: number; keyVersion?: number }): Promise<Uint8Array> {
    if (!(options.nextUpdateHours > 0)) throw new InvalidInputError('pki: nextUpdateHours must be positive');
    const record = await this.#read();
    const entry =
      options.keyVersion === undefined
        ? record.certificates[record.certificates.length - 1]
        : record.certificates.find((c) => c.keyVersion === options.keyVersion);
    if (!entry)
      throw new KeyNotFoundError(`pki: certificate authority ${this.name} has no key version ${options.keyVersion}`);
    const signer = await this.#pairs.signer(this.name, entry.keyVersion);
    // The number is taken, with the revocations as they are at that moment, before signing: two
    // processes never sign two CRLs with one number, and a higher number never lists fewer
    // revocations. A crash after this leaves an unused number (cRLNumber only has to increase).
    let taken: CaRecord | undefined;
    await this.#update((current) => {
      current.crlNumber += 1;
      taken = current;
      return current;
    });
    if (!taken) throw new KeyNotFoundError(`pki: no certificate authority named ${this.name}`);
    const now = new Date();
    return createCrl(
      { signer, certificate: unb64(entry.certificate) },
      {
        crlNumber: taken.crlNumber,
        thisUpdate: now,
        nextUpdate: new Date(now.getTime() + options.nextUpdateHours * 3_600_000),
        revoked: taken.revoked
          .filter((r) => r.caKeyVersion === entry.keyVersion)
          .map((r) => ({ serialNumber: r.serialNumber, revokedAt: new Date(r.revokedAt), reason: r.reason })),
      },
    );
  }

  async #caCertificate(
    keyVersion: number,
    subject: DistinguishedName,
    validityDays: number,
    pathLength: number | undefined,
    parent: CertificateAuthority | undefined,
  ): Promise<Uint8Array> {
    const signer = await this.#pairs.signer(this.name, keyVersion);
    const notBefore = new Date();
    const notAfter = new Date(notBefore.getTime() + validityDays * DAY_MS);
    const options = {
      subject,
      publicKey: signer.publicKey,
      profile: 'ca' as const,
      notBefore,
      notAfter,
      ...(pathLength !== undefined ? { pathLength } : {}),
    };
    if (!parent) return issueCertificate({ signer }, options);
    return parent.#issueCa(options);
  }

  /** Sign an intermediate's CA certificate with this CA's current key. */
  async #issueCa(options: Parameters<typeof issueCertificate>[1]): Promise<Uint8Array> {
    const record = await this.#read();
    const current = record.certificates[record.certificates.length - 1];
    if (!current) throw new KeyStateError(`pki: certificate authority ${this.name} has no certificate`);
    const signer = await this.#pairs.signer(this.name, current.keyVersion);
    const certificate = await issueCertificate({ signer, certificate: unb64(current.certificate) }, options);
    const entry = {
      serialNumber: serialOf(certificate),
      commonName: options.subject.commonName,
      notAfter: options.notAfter.toISOString(),
      caKeyVersion: current.keyVersion,
    };
    await this.#update((record) => {
      record.issued.push(entry);
      return record;
    });
    return certificate;
  }

  async #read(): Promise<CaRecord> {
    return this.#parse(await this.#kw.store.getMeta(metaName(this.name)));
  }

  #parse(raw: Uint8Array | undefined): CaRecord {
    if (raw === undefined) throw new KeyNotFoundError(`pki: no certificate authority named ${this.name}`);
    return JSON.parse(new TextDecoder().decode(raw)) as CaRecord;
  }

  /** Change the CA's record as it is at commit time (see the file comment); undefined: no write. */
  async #update(change: (record: CaRecord) => CaRecord | undefined): Promise<void> {
    await updateRecord(this.#kw.store, metaName(this.name), (raw) => {
      const next = change(this.#parse(raw));
      return next === undefined ? undefined : encodeJson(next);
    });
  }
}

function checkDays(days: number): void {
  if (!Number.isFinite(days) || days <= 0 || days > 36_500) {
    throw new InvalidInputError('pki: validityDays must be a number of days in (0, 36500]');
  }
}

const metaName = (name: string): string => `pki/ca/${name}`;
const b64 = (b: Uint8Array): string => Buffer.from(b).toString('base64');
const unb64 = (s: string): Uint8Array => new Uint8Array(Buffer.from(s, 'base64'));
