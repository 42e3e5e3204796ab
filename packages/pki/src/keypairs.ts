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
 *    (~1.8 KB) does not have to fit what a root wraps (16..64 bytes of key material).
 *
 * The records are one meta record per key pair (`pki/keypair/<name>`, JSON, non-secret apart from
 * the envelopes). Versions follow the KEK rules (docs/lifecycle.md): 1, 2, 3 … never reused; a new
 * version becomes primary; the primary cannot be disabled or destroyed; destroyed erases the
 * envelope and is terminal. Writes change that record under the store's lock (updateRecord,
 * _meta.ts), applied to the record as it is at commit time, so processes writing one key pair at
 * once lose no update: a state change re-checks its preconditions on the current record; a new
 * version whose number another process took first is made again under the next number (the
 * number is bound into its envelope's context), up to ROTATE_ATTEMPTS times, then ConflictError;
 * of two creates of one name, the second gets KeyExistsError (docs/pki.md §3.1).
 *
 * Key pairs held in the root (`storage: "root"`, docs/pki.md §1): the root's `keyPairs`
 * capability makes the key pair (a PKCS#11 token: C_GenerateKeyPair, private key sensitive and
 * never extractable; a TPM: a persistent signing key; the software root: node:crypto, the PKCS#8
 * sealed in the root's own store records, core sealed-key-pairs.ts) and every signature is a root
 * call (RootSigner). The record names the root's id; a later root is accepted when it reports the
 * version's SPKI for the handle (KeyPairRoot.publicKey): the software root's key pairs follow a
 * root rotation, which gives the root a new id. The record keeps the root's
 * non-secret handle twice: in clear (`handle`, for destroy) and as an envelope under the KEK (in
 * `privateKey`, with the same context plus pki_storage=root), which signer() opens, so that using
 * a key held in the root is, as for a software key, a `decrypt` under its KEK: the same policy
 * decides who may sign, and the audit log records it.
 */
import { createHash, webcrypto } from 'node:crypto';
import {
  checkedRoot,
  ConflictError,
  InvalidInputError,
  KeyDestroyedError,
  KeyExistsError,
  KeyNotFoundError,
  KeyStateError,
  type Keywarden,
  requireKeyPairs,
  StoreCorruptError,
  wipe,
} from '@keywarden/core';
import { encodeJson, updateRecord } from './_meta.js';
import { RootSigner } from './root-signer.js';
import { type KeyPairAlgorithm, SoftwareSigner, type Signer, webCryptoParams } from './signer.js';

/** Where private keys live: envelopes under the KEK ("kek", any root) or in the root ("root"). */
export type KeyPairStorage = 'kek' | 'root';

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
  /** The KEK whose envelopes hold the private keys (or, for storage "root", the handles). */
  kek: string;
  storage: KeyPairStorage;
  primaryVersion: number;
  versions: KeyPairVersionInfo[];
}

interface StoredVersion {
  version: number;
  state: KeyPairVersionState;
  publicKey: string;
  /** Base64 of the Keywarden envelope of the PKCS#8 private key (storage "root": of the root's
   * handle); "" once destroyed. */
  privateKey: string;
  /** Storage "root": base64 of the root's handle; "" once destroyed. */
  handle?: string;
  createdAt: string;
}

interface StoredKeyPair {
  format: 1;
  name: string;
  algorithm: KeyPairAlgorithm;
  kek: string;
  /** Absent: "kek". */
  storage?: 'root';
  /** Storage "root": the id of the root holding the private keys. */
  rootId?: string;
  primaryVersion: number;
  versions: StoredVersion[];
}

export interface KeyPairsOptions {
  keywarden: Keywarden;
  /** Name of the KEK that wraps the private keys (created by the caller). Default "pki". */
  kek?: string;
  /** Where create() puts new key pairs (a CA's too). Default "kek"; "root" needs a root with the
   * `keyPairs` capability (PKCS#11). */
  storage?: KeyPairStorage;
}

const NAME_RE = /^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$/;
const META_PREFIX = 'pki/keypair/';
/** How many times rotate() makes a new version again after other processes took its number. */
const ROTATE_ATTEMPTS = 16;

export class KeyPairs {
  readonly #kw: Keywarden;
  readonly #kek: string;
  readonly #storage: KeyPairStorage;

  constructor(options: KeyPairsOptions) {
    this.#kw = options.keywarden;
    this.#kek = options.kek ?? 'pki';
    this.#storage = options.storage ?? 'kek';
    checkStorage(this.#storage);
  }

  /** Create a key pair; version 1 is primary. KeyExistsError if the name is taken. */
  async create(name: string, options: { algorithm: KeyPairAlgorithm; storage?: KeyPairStorage }): Promise<KeyPairInfo> {
    checkName(name);
    webCryptoParams(options.algorithm);
    const storage = options.storage ?? this.#storage;
    checkStorage(storage);
    if (storage === 'root') await this.#rootKeyPairs();
    if ((await this.#kw.store.getMeta(META_PREFIX + name)) !== undefined) {
      throw new KeyExistsError(`pki: key pair ${name} already exists`);
    }
    const record: StoredKeyPair = {
      format: 1,
      name,
      algorithm: options.algorithm,
      kek: this.#kek,
      ...(storage === 'root' ? { storage: 'root' as const, rootId: this.#kw.root.describe().id } : {}),
      primaryVersion: 1,
      versions: [],
    };
    const first = await this.#newVersion(record, 1);
    record.versions.push(first);
    await this.#addToIndex(name);
    try {
      await updateRecord(this.#kw.store, META_PREFIX + name, (current) => {
        if (current !== undefined) throw new KeyExistsError(`pki: key pair ${name} already exists`);
        return encodeJson(record);
      });
    } catch (err) {
      // Another process created the name first: its record stands, this version was never stored.
      // (On any other error the write may have landed, so nothing is destroyed.)
      if (err instanceof KeyExistsError) await this.#discard(record, first);
      throw err;
    }
    return infoOf(record);
  }

  /** A new version made primary; the old ones stay enabled (certificates under them overlap). */
  async rotate(name: string): Promise<KeyPairInfo> {
    for (let attempt = 0; attempt < ROTATE_ATTEMPTS; attempt++) {
      const read = await this.#read(name);
      const next = Math.max(...read.versions.map((v) => v.version)) + 1;
      const made = await this.#newVersion(read, next);
      let committed: StoredKeyPair | undefined;
      let taken = false;
      try {
        await updateRecord(this.#kw.store, META_PREFIX + name, (current) => {
          const record = parseRecord(name, current);
          taken = Math.max(...record.versions.map((v) => v.version)) + 1 !== next;
          // Another process committed version `next` since the read: make it again under a new number.
          // (A KeywardenError, so that stores rethrow it as it is.)
          if (taken) throw new ConflictError(`pki: key pair ${name} v${next} was taken by another writer`);
          record.versions.push(made);
          record.primaryVersion = next;
          committed = record;
          return encodeJson(record);
        });
      } catch (err) {
        if (!taken) throw err;
        await this.#discard(read, made);
        continue;
      }
      if (!committed) throw new StoreCorruptError(`pki: the record of key pair ${name} was not written`);
      return infoOf(committed);
    }
    throw new ConflictError(
      `pki: key pair ${name}: ${ROTATE_ATTEMPTS} new versions in a row were taken by concurrent writers; nothing was changed, try again`,
    );
  }

  async get(name: string): Promise<KeyPairInfo> {
    return infoOf(await this.#read(name));
  }

  /** Names of the key pairs, sorted. */
  async list(): Promise<string[]> {
    const store = this.#kw.store;
    const out: string[] = [];
    for (const name of await this.#indexed()) {
      // The index is written before the record (create): a name whose record never landed is skipped.
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
    if (record.storage === 'root') {
      const keyPairs = await this.#rootKeyPairs(record, stored);
      // The decrypt is the access check and the audit record of the use (see the file comment).
      const handle = await this.#kw.decrypt(fromB64(stored.privateKey), {
        key: record.kek,
        context: rootContextOf(name, v),
      });
      return new RootSigner(record.algorithm, fromB64(stored.publicKey), keyPairs, handle);
    }
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
    const check = (record: StoredKeyPair): StoredVersion => {
      const stored = findVersion(record, version);
      if (stored.state === 'destroyed') throw new KeyDestroyedError(`pki: key pair ${name} v${version} is destroyed`);
      if (state !== 'enabled' && version === record.primaryVersion) {
        throw new KeyStateError(`pki: key pair ${name} v${version} is the primary version; rotate first`);
      }
      return stored;
    };
    const read = await this.#read(name);
    const before = check(read);
    if (state === 'destroyed' && read.storage === 'root' && before.handle) {
      // The device objects first: a crash before the record is written leaves a version whose
      // signer fails with KeyDestroyedError, and destroy runs again (the root's destroy is idempotent).
      await (await this.#rootKeyPairs(read, before)).destroy(fromB64(before.handle));
    }
    // Applied to the record as it is now: another process's change since the read is kept, and
    // the preconditions are checked again on it (a version destroyed meanwhile: KeyDestroyedError).
    let committed: StoredKeyPair | undefined;
    await updateRecord(this.#kw.store, META_PREFIX + name, (current) => {
      const record = parseRecord(name, current);
      const stored = check(record);
      stored.state = state;
      if (state === 'destroyed') {
        stored.privateKey = '';
        if (stored.handle !== undefined) stored.handle = '';
      }
      committed = record;
      return encodeJson(record);
    });
    if (!committed) throw new StoreCorruptError(`pki: the record of key pair ${name} was not written`);
    return infoOf(committed);
  }

  /** A version made but not committed: a device key pair is destroyed (an envelope is just dropped). */
  async #discard(record: StoredKeyPair, made: StoredVersion): Promise<void> {
    if (record.storage === 'root' && made.handle) {
      await this.#rootKeyPairs(record)
        .then((keyPairs) => keyPairs.destroy(fromB64(made.handle as string)))
        .catch(() => undefined);
    }
  }

  /**
   * The root's checked key-pair capability; for a record, also that it is the root holding it:
   * the root the record names, or a root that reports the version's public key for its handle
   * (KeyPairRoot.publicKey: the software root's key pairs move with a root rotation, which gives
   * the root a new id).
   */
  async #rootKeyPairs(record?: StoredKeyPair, version?: StoredVersion) {
    const root = checkedRoot(this.#kw.root);
    const keyPairs = requireKeyPairs(root);
    if (record?.rootId !== undefined && root.describe().id !== record.rootId) {
      const probe = version ?? record.versions.find((v) => v.state !== 'destroyed' && v.handle);
      let holds = false;
      if (keyPairs.publicKey && probe?.handle) {
        const spki = await keyPairs.publicKey(fromB64(probe.handle)).catch(() => undefined);
        holds = spki !== undefined && Buffer.from(spki).equals(Buffer.from(fromB64(probe.publicKey)));
      }
      if (!holds) {
        throw new KeyStateError(
          `pki: key pair ${record.name} is held in root ${record.rootId}, not in this Keywarden's root ${root.describe().id}`,
        );
      }
    }
    return keyPairs;
  }

  async #newVersion(record: StoredKeyPair, version: number): Promise<StoredVersion> {
    const { name, algorithm, kek } = record;
    if (record.storage === 'root') {
      const keyPairs = await this.#rootKeyPairs(record);
      const pair = await keyPairs.generate(algorithm, deviceLabel(name, version));
      try {
        const envelope = await this.#kw.encrypt(pair.handle, { key: kek, context: rootContextOf(name, version) });
        return {
          version,
          state: 'enabled',
          publicKey: toB64(pair.publicKey),
          privateKey: toB64(envelope),
          handle: toB64(pair.handle),
          createdAt: new Date().toISOString(),
        };
      } catch (err) {
        // Not allowed to encrypt under the KEK, or the store failed: leave no orphan in the root.
        await keyPairs.destroy(pair.handle).catch(() => undefined);
        throw err;
      }
    }
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
    return parseRecord(name, await this.#kw.store.getMeta(META_PREFIX + name));
  }

  /**
   * Index first, record second (create): a crash in between leaves an index entry without a
   * record, which list() skips and create() may reuse — never a key pair that list() cannot find.
   * The index is its own read-modify-write, so concurrent creates of different names all land.
   */
  async #addToIndex(name: string): Promise<void> {
    await updateRecord(this.#kw.store, `${META_PREFIX}index`, (current) => {
      const names = current === undefined ? [] : (JSON.parse(new TextDecoder().decode(current)) as string[]);
      if (names.includes(name)) return undefined;
      names.push(name);
      return encodeJson(names.sort());
    });
  }
}

function parseRecord(name: string, raw: Uint8Array | undefined): StoredKeyPair {
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

function checkName(name: string): void {
  if (typeof name !== 'string' || !NAME_RE.test(name) || name === 'index') {
    throw new InvalidInputError(
      'pki: key pair names are 1..128 characters of [A-Za-z0-9._:-] starting with a letter or digit (not "index")',
    );
  }
}

function checkStorage(storage: unknown): void {
  if (storage !== 'kek' && storage !== 'root') {
    throw new InvalidInputError(
      'pki: key pair storage is "kek" (an envelope under the KEK) or "root" (in the root of trust)',
    );
  }
}

/** The object label in the root: "kw-kp/<name>/v<version>", or a digest of a name too long for it. */
function deviceLabel(name: string, version: number): string {
  const plain = `kw-kp/${name}/v${version}`;
  if (plain.length <= 128) return plain;
  return `kw-kp/${createHash('sha256').update(name).digest('base64url').slice(0, 22)}/v${version}`;
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

/** A root-held key pair's handle envelope: its own context, so it never opens as a PKCS#8 one. */
function rootContextOf(name: string, version: number): Record<string, string> {
  return { ...contextOf(name, version), pki_storage: 'root' };
}

function infoOf(record: StoredKeyPair): KeyPairInfo {
  return {
    name: record.name,
    algorithm: record.algorithm,
    kek: record.kek,
    storage: record.storage === 'root' ? 'root' : 'kek',
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
