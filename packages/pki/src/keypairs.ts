/**
 * Key pairs with versions, for the software root: the private key is generated with Node's
 * WebCrypto, exported once as PKCS#8, and stored only as a Keywarden envelope under a KEK
 * (`kek`, default "pki"), so it is wrapped by the root exactly as far as KEK material is — one
 * level down: root → KEK → this envelope. What that buys over putting PKCS#8 into a KEK version
 * record directly:
 *  - root rotation, rekey and KEK rotation carry key pairs along with nothing to do here (the KEK
 *    versions move; the envelopes stay valid), and crypto-shredding the KEK version destroys every
 *    private key under it;
 *  - KEK-only operations (rotateDue, generateDataKey) never see a key pair, and RSA-3072 PKCS#8
 *    (~1.8 KB) does not have to fit a root's wrapped-key bound (1 KiB for the software root).
 *
 * The records are one meta record per key pair (`pki/keypair/<name>`, JSON, non-secret apart from
 * the envelopes). Versions follow the KEK rules (docs/lifecycle.md): 1, 2, 3 … never reused; a new
 * version becomes primary; the primary cannot be disabled or destroyed; destroyed erases the
 * envelope and is terminal. Writes are read-modify-write of that record: one writer per key pair
 * (the store's meta API has no compare-and-swap yet; see docs/pki.md).
 */
import { webcrypto } from 'node:crypto';
import {
  InvalidInputError,
  KeyDestroyedError,
  KeyExistsError,
  KeyNotFoundError,
  KeyStateError,
  type Keywarden,
  StoreCorruptError,
  wipe,
} from '@keywarden/core';
import { type KeyPairAlgorithm, SoftwareSigner, type Signer, webCryptoParams } from './signer.js';

export type KeyPairVersionState = 'enabled' | 'disabled' | 'destroyed';

export interface KeyPairVersionInfo {
  version: number;
  state: KeyPairVersionState;
  /** SubjectPublicKeyInfo, DER. Kept after destroy (certificates still name it). */
  publicKey: Uint8Array;
  createdAt: Date;
}

export interface KeyPairInfo {
  name: string;
  algorithm: KeyPairAlgorithm;
  /** The KEK whose envelopes hold the private keys. */
  kek: string;
  primaryVersion: number;
  versions: KeyPairVersionInfo[];
}

interface StoredVersion {
  version: number;
  state: KeyPairVersionState;
  publicKey: string;
  /** Base64 of the Keywarden envelope of the PKCS#8 private key; "" once destroyed. */
  privateKey: string;
  createdAt: string;
}

interface StoredKeyPair {
  format: 1;
  name: string;
  algorithm: KeyPairAlgorithm;
  kek: string;
  primaryVersion: number;
  versions: StoredVersion[];
}

export interface KeyPairsOptions {
  keywarden: Keywarden;
  /** Name of the KEK that wraps the private keys (created by the caller). Default "pki". */
  kek?: string;
}

const NAME_RE = /^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$/;
const META_PREFIX = 'pki/keypair/';

export class KeyPairs {
  readonly #kw: Keywarden;
  readonly #kek: string;

  constructor(options: KeyPairsOptions) {
    this.#kw = options.keywarden;
    this.#kek = options.kek ?? 'pki';
  }

  /** Create a key pair; version 1 is primary. KeyExistsError if the name is taken. */
  async create(name: string, options: { algorithm: KeyPairAlgorithm }): Promise<KeyPairInfo> {
    checkName(name);
    webCryptoParams(options.algorithm);
    if ((await this.#kw.store.getMeta(META_PREFIX + name)) !== undefined) {
      throw new KeyExistsError(`pki: key pair ${name} already exists`);
    }
    const record: StoredKeyPair = {
      format: 1,
      name,
      algorithm: options.algorithm,
      kek: this.#kek,
      primaryVersion: 1,
      versions: [await this.#newVersion(name, options.algorithm, this.#kek, 1)],
    };
    await this.#write(record);
    return infoOf(record);
  }

  /** A new version made primary; the old ones stay enabled (certificates under them overlap). */
  async rotate(name: string): Promise<KeyPairInfo> {
    const record = await this.#read(name);
    const next = Math.max(...record.versions.map((v) => v.version)) + 1;
    record.versions.push(await this.#newVersion(name, record.algorithm, record.kek, next));
    record.primaryVersion = next;
    await this.#write(record);
    return infoOf(record);
  }

  async get(name: string): Promise<KeyPairInfo> {
    return infoOf(await this.#read(name));
  }

  /** Names of the key pairs, sorted. */
  async list(): Promise<string[]> {
    const store = this.#kw.store;
    const out: string[] = [];
    for (const name of await this.#indexed()) {
      // The index is written before the record (#write): a name whose record never landed is skipped.
      if ((await store.getMeta(META_PREFIX + name)) !== undefined) out.push(name);
    }
    return out;
  }

  /** The meta API has no listing; key pairs are found through an index record. */
  async #indexed(): Promise<string[]> {
    const index = await this.#kw.store.getMeta(`${META_PREFIX}index`);
    return index === undefined ? [] : (JSON.parse(new TextDecoder().decode(index)) as string[]);
  }

  async disable(name: string, version: number): Promise<KeyPairInfo> {
    return this.#setState(name, version, 'disabled');
  }

  async enable(name: string, version: number): Promise<KeyPairInfo> {
    return this.#setState(name, version, 'enabled');
  }

  /** Erase the version's private key (its envelope); the public key is kept. Terminal. */
  async destroy(name: string, version: number): Promise<KeyPairInfo> {
    return this.#setState(name, version, 'destroyed');
  }

  /**
   * A signer for one version (default: the primary). The private key is unwrapped through the
   * KEK, imported as a non-extractable CryptoKey, and the PKCS#8 bytes are wiped.
   */
  async signer(name: string, version?: number): Promise<Signer> {
    const record = await this.#read(name);
    const v = version ?? record.primaryVersion;
    const stored = findVersion(record, v);
    if (stored.state === 'destroyed') throw new KeyDestroyedError(`pki: key pair ${name} v${v} is destroyed`);
    if (stored.state !== 'enabled') throw new KeyStateError(`pki: key pair ${name} v${v} is ${stored.state}`);
    const pkcs8 = await this.#kw.decrypt(fromB64(stored.privateKey), {
      key: record.kek,
      context: contextOf(name, v),
    });
    try {
      return await SoftwareSigner.fromPkcs8(record.algorithm, pkcs8, fromB64(stored.publicKey));
    } finally {
      wipe(pkcs8);
    }
  }

  async #setState(name: string, version: number, state: KeyPairVersionState): Promise<KeyPairInfo> {
    const record = await this.#read(name);
    const stored = findVersion(record, version);
    if (stored.state === 'destroyed') throw new KeyDestroyedError(`pki: key pair ${name} v${version} is destroyed`);
    if (state !== 'enabled' && version === record.primaryVersion) {
      throw new KeyStateError(`pki: key pair ${name} v${version} is the primary version; rotate first`);
    }
    stored.state = state;
    if (state === 'destroyed') stored.privateKey = '';
    await this.#write(record);
    return infoOf(record);
  }

  async #newVersion(name: string, algorithm: KeyPairAlgorithm, kek: string, version: number): Promise<StoredVersion> {
    const params = webCryptoParams(algorithm);
    // Extractable once, only to be wrapped; the signer imports it again as non-extractable.
    const pair = (await webcrypto.subtle.generateKey(params.generate, true, [
      'sign',
      'verify',
    ])) as webcrypto.CryptoKeyPair;
    const pkcs8 = new Uint8Array(await webcrypto.subtle.exportKey('pkcs8', pair.privateKey));
    const spki = new Uint8Array(await webcrypto.subtle.exportKey('spki', pair.publicKey));
    try {
      const envelope = await this.#kw.encrypt(pkcs8, { key: kek, context: contextOf(name, version) });
      return {
        version,
        state: 'enabled',
        publicKey: toB64(spki),
        privateKey: toB64(envelope),
        createdAt: new Date().toISOString(),
      };
    } finally {
      wipe(pkcs8);
    }
  }

  async #read(name: string): Promise<StoredKeyPair> {
    checkName(name);
    const raw = await this.#kw.store.getMeta(META_PREFIX + name);
    if (raw === undefined) throw new KeyNotFoundError(`pki: no key pair named ${name}`);
    let parsed: StoredKeyPair;
    try {
      parsed = JSON.parse(new TextDecoder().decode(raw)) as StoredKeyPair;
    } catch {
      throw new StoreCorruptError(`pki: the record of key pair ${name} is not valid JSON`);
    }
    if (parsed.format !== 1 || parsed.name !== name || !Array.isArray(parsed.versions)) {
      throw new StoreCorruptError(`pki: the record of key pair ${name} is not a format-1 key pair record`);
    }
    return parsed;
  }

  async #write(record: StoredKeyPair): Promise<void> {
    const store = this.#kw.store;
    // Index first, record second: a crash in between leaves an index entry without a record, which
    // list() skips and create() may reuse — never a key pair that list() cannot find.
    const names = await this.#indexed();
    if (!names.includes(record.name)) {
      names.push(record.name);
      await store.putMeta(`${META_PREFIX}index`, new TextEncoder().encode(JSON.stringify(names.sort())));
    }
    await store.putMeta(META_PREFIX + record.name, new TextEncoder().encode(JSON.stringify(record)));
  }
}

function checkName(name: string): void {
  if (typeof name !== 'string' || !NAME_RE.test(name) || name === 'index') {
    throw new InvalidInputError(
      'pki: key pair names are 1..128 characters of [A-Za-z0-9._:-] starting with a letter or digit (not "index")',
    );
  }
}

function findVersion(record: StoredKeyPair, version: number): StoredVersion {
  const found = record.versions.find((v) => v.version === version);
  if (!found) throw new KeyNotFoundError(`pki: key pair ${record.name} has no version ${version}`);
  return found;
}

/** Bound into the envelope's AAD: an envelope moved to another key pair or version fails to open. */
function contextOf(name: string, version: number): Record<string, string> {
  return { pki_key_pair: name, pki_version: String(version) };
}

function infoOf(record: StoredKeyPair): KeyPairInfo {
  return {
    name: record.name,
    algorithm: record.algorithm,
    kek: record.kek,
    primaryVersion: record.primaryVersion,
    versions: record.versions.map((v) => ({
      version: v.version,
      state: v.state,
      publicKey: fromB64(v.publicKey),
      createdAt: new Date(v.createdAt),
    })),
  };
}

const toB64 = (b: Uint8Array): string => Buffer.from(b).toString('base64');
const fromB64 = (s: string): Uint8Array => new Uint8Array(Buffer.from(s, 'base64'));
