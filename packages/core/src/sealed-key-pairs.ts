/**
 * Signing key pairs kept sealed in the key store under a key that the root wraps: the software
 * root's `keyPairs` capability (root.ts KeyPairRoot; docs/format.md §13, docs/pki.md §1).
 *
 * Two layers, because a PKCS#8 private key (RSA-3072: ~1.8 KB) is far larger than the key
 * material a root wraps (16..64 bytes):
 *
 *  - the key-pair key (KPK): 32 random bytes, made on the first `generate`, wrapped by the root
 *    (`root.wrapKey`, associated data "keywarden/root-key-pairs/key/v1", which no KEK wrap can
 *    carry: a KEK's begins "keywarden/kek/v1") and kept in meta "root-key-pairs/key" beside the
 *    root's id. It is unwrapped for each operation and wiped after it; a sealed root unwraps
 *    nothing, so a sealed root signs nothing (KeystoreSealedError);
 *  - one record per key pair, meta "root-key-pair/<id>": the algorithm, label and SPKI in the
 *    clear, and the PKCS#8 private key sealed with AES-256-GCM under the KPK, its associated data
 *    binding a purpose label, the key pair's id, algorithm, label and the SHA-256 of its SPKI
 *    (`privateKeyAad`): a sealed private key moved into another record, or under another id,
 *    algorithm or public key, does not open.
 *
 * The handle is the key pair's id ("kp_" ‖ 22 base64url characters from 16 CSPRNG bytes): not a
 * secret, and never a wrap of anything. `destroy(handle)` overwrites the record with a destroyed
 * marker (id, algorithm, time; the SQLite store zeroes freed space, `secure_delete`), so `sign`
 * afterwards is KeyDestroyedError, not KeyNotFoundError, and destroying again changes nothing.
 *
 * Root rotation moves the KPK only (the key-pair records do not change): `stageKeyPairKeyMove`
 * writes its wrap under the new root to meta "root-key-pairs/key/next" BEFORE the rotation's one
 * transaction, `finishKeyPairKeyMove` promotes it after. A crash before the commit leaves the old
 * root and its KPK; a crash after it leaves the new root and the staged KPK under it, which
 * `#loadKpk` (and the next rotation's stage) pick up. Rekey does not touch the root key, so
 * nothing here changes. Destroying the root crypto-shreds every key pair with the KPK's wrap.
 *
 * The private key is decrypted into a Buffer only to import it as a node:crypto KeyObject, and
 * the Buffer (and the KPK) is wiped at once; the KeyObject's own copy lives in OpenSSL's memory
 * until it is garbage-collected (node:crypto offers no way to wipe it).
 */
import { createHash, createPrivateKey, generateKeyPair, type KeyObject, sign as nodeSign } from 'node:crypto';
import { concatBytes, fromBase64Url, toBase64Url, u8, utf8, utf8Decoder, wipe } from './_bytes.js';
import { AES256_KEY_BYTES, GCM_NONCE_BYTES, gcmOpen, gcmSeal } from './aead.js';
import {
  ConflictError,
  FormatError,
  InvalidInputError,
  KeyDestroyedError,
  KeyNotFoundError,
  KeyStateError,
  KeystoreSealedError,
  KeywardenError,
  RootContractError,
} from './errors.js';
import type { KeyStore } from './keystore.js';
import type { RandomSource } from './random.js';
import {
  checkedRoot,
  type KeyPairRoot,
  type KeyWrapper,
  ROOT_KEY_PAIR_ALGORITHMS,
  type RootKeyPair,
  type RootKeyPairAlgorithm,
  type RootOfTrust,
} from './root.js';

export const KEY_PAIR_KEY_META_NAME = 'root-key-pairs/key';
export const KEY_PAIR_KEY_NEXT_META_NAME = 'root-key-pairs/key/next';
export const KEY_PAIR_META_PREFIX = 'root-key-pair/';
const KPK_AAD = utf8.encode('keywarden/root-key-pairs/key/v1');
const PRIVATE_KEY_DOMAIN = utf8.encode('keywarden/root-key-pair/private-key/v1');
const ID_RE = /^kp_[A-Za-z0-9_-]{22}$/;
const LABEL_RE = /^[\x20-\x7e]{1,128}$/;
/** Bound on a stored record (RSA-3072's sealed PKCS#8 and SPKI in base64url: ~3.1 KB). */
const MAX_RECORD_BYTES = 16_384;

/** node:crypto's parameters for each algorithm (RFC 5480 curves, RFC 8017, RFC 8410). */
const NODE_PARAMS: Record<
  RootKeyPairAlgorithm,
  { type: 'ec' | 'rsa' | 'ed25519'; curve?: string; bits?: number; hash: string | null }
> = {
  'ECDSA-P256': { type: 'ec', curve: 'P-256', hash: 'sha256' },
  'ECDSA-P384': { type: 'ec', curve: 'P-384', hash: 'sha384' },
  'RSA-2048': { type: 'rsa', bits: 2048, hash: 'sha256' },
  'RSA-3072': { type: 'rsa', bits: 3072, hash: 'sha384' },
  Ed25519: { type: 'ed25519', hash: null },
};

interface KpkDocument {
  v: 1;
  /** The root that wrapped the KPK (its RootDescription.id). */
  rootId: string;
  /** base64url: the root's wrap of the 32-byte KPK. */
  wrapped: string;
}

/** Stored key pair (meta "root-key-pair/<id>"), JSON; binary fields base64url. */
export interface SealedKeyPairRecord {
  v: 1;
  id: string;
  algorithm: RootKeyPairAlgorithm;
  state: 'active' | 'destroyed';
  /** Present while active. */
  label?: string;
  createdAt?: string;
  publicKey?: string;
  nonce?: string;
  /** AES-256-GCM(KPK, nonce, PKCS#8 DER, privateKeyAad) ciphertext ‖ tag. */
  sealedPrivateKey?: string;
  /** Present once destroyed. */
  destroyedAt?: string;
}

/** The meta record name of the key pair `handle` names (InvalidInputError for a handle not ours). */
export function keyPairMetaName(handle: Uint8Array): string {
  return KEY_PAIR_META_PREFIX + idOf(handle);
}

function idOf(handle: Uint8Array): string {
  let id: string;
  try {
    id = utf8Decoder.decode(handle);
  } catch {
    id = '';
  }
  if (!ID_RE.test(id)) throw new InvalidInputError('root: not a key pair handle of this root');
  return id;
}

/**
 * Associated data of a sealed private key: domain ‖ u8 len ‖ id ‖ u8 len ‖ algorithm ‖ u8 len ‖
 * label ‖ SHA-256(SPKI). Every field is length-prefixed, so no two records share it.
 */
export function privateKeyAad(id: string, algorithm: string, label: string, spki: Uint8Array): Uint8Array {
  const i = utf8.encode(id);
  const a = utf8.encode(algorithm);
  const l = utf8.encode(label);
  const spkiHash = new Uint8Array(createHash('sha256').update(spki).digest());
  return concatBytes(PRIVATE_KEY_DOMAIN, u8(i.length), i, u8(a.length), a, u8(l.length), l, spkiHash);
}

function decodeJson<T>(bytes: Uint8Array, what: string): T {
  if (bytes.length > MAX_RECORD_BYTES) throw new FormatError(`root: ${what} is too large`);
  try {
    return JSON.parse(utf8Decoder.decode(bytes)) as T;
  } catch {
    throw new FormatError(`root: ${what} is not valid JSON`);
  }
}

async function readKpkDoc(store: KeyStore, name: string): Promise<KpkDocument | undefined> {
  const bytes = await store.getMeta(name);
  if (!bytes) return undefined;
  const d = decodeJson<Partial<KpkDocument>>(bytes, 'the key-pair key record');
  if (d?.v !== 1 || typeof d.rootId !== 'string' || typeof d.wrapped !== 'string') {
    throw new FormatError('root: the key-pair key record is malformed');
  }
  return d as KpkDocument;
}

/** The KPK record the root `rootId` can open: the current one, or one staged by a rotation that
 * committed and stopped before promoting it. */
async function effectiveKpkDoc(store: KeyStore, rootId: string): Promise<KpkDocument | undefined> {
  const current = await readKpkDoc(store, KEY_PAIR_KEY_META_NAME);
  if (!current || current.rootId === rootId) return current;
  const staged = await readKpkDoc(store, KEY_PAIR_KEY_NEXT_META_NAME);
  if (staged?.rootId === rootId) return staged;
  throw new KeyStateError(
    `root: the key pairs of this store are sealed under root ${current.rootId}, not this root (${rootId})`,
  );
}

function decodeRecord(bytes: Uint8Array, id: string): SealedKeyPairRecord {
  const r = decodeJson<Partial<SealedKeyPairRecord>>(bytes, 'key pair record');
  if (
    r?.v !== 1 ||
    r.id !== id ||
    !ROOT_KEY_PAIR_ALGORITHMS.includes(r.algorithm as RootKeyPairAlgorithm) ||
    (r.state !== 'active' && r.state !== 'destroyed')
  ) {
    throw new FormatError('root: key pair record is malformed');
  }
  if (
    r.state === 'active' &&
    (typeof r.label !== 'string' ||
      typeof r.publicKey !== 'string' ||
      typeof r.nonce !== 'string' ||
      typeof r.sealedPrivateKey !== 'string')
  ) {
    throw new FormatError('root: key pair record is incomplete');
  }
  return r as SealedKeyPairRecord;
}

function generate(algorithm: RootKeyPairAlgorithm): Promise<{ publicKey: Buffer; privateKey: Buffer }> {
  const p = NODE_PARAMS[algorithm];
  const encoding = {
    publicKeyEncoding: { type: 'spki', format: 'der' },
    privateKeyEncoding: { type: 'pkcs8', format: 'der' },
  } as const;
  return new Promise((resolve, reject) => {
    const done = (err: Error | null, publicKey: Buffer, privateKey: Buffer): void => {
      if (err) reject(err);
      else resolve({ publicKey, privateKey });
    };
    if (p.type === 'ec') generateKeyPair('ec', { namedCurve: p.curve as string, ...encoding }, done);
    else if (p.type === 'rsa')
      generateKeyPair('rsa', { modulusLength: p.bits as number, publicExponent: 0x10001, ...encoding }, done);
    else generateKeyPair('ed25519', encoding, done);
  });
}

/** What a key pair's private key looks like when it was imported (defence in depth: a record
 * whose sealed key is of another algorithm than it says is refused before signing). */
function matches(key: KeyObject, algorithm: RootKeyPairAlgorithm): boolean {
  const p = NODE_PARAMS[algorithm];
  if (key.asymmetricKeyType !== p.type) return false;
  const d = key.asymmetricKeyDetails;
  if (p.type === 'ec') return d?.namedCurve === (p.curve === 'P-256' ? 'prime256v1' : 'secp384r1');
  if (p.type === 'rsa') return d?.modulusLength === p.bits;
  return true;
}

/**
 * KeyPairRoot over a key store and a root's wrap (see the file comment). `root` is the backend
 * itself (its wrapKey/unwrapKey refuse while sealed), `store` the store whose root it is.
 */
export class SealedKeyPairs implements KeyPairRoot {
  readonly algorithms: readonly RootKeyPairAlgorithm[] = ROOT_KEY_PAIR_ALGORITHMS;
  readonly #store: KeyStore;
  readonly #root: KeyWrapper & Pick<RootOfTrust, 'describe' | 'sealable'>;
  readonly #random: RandomSource;
  readonly #isStoreRoot: () => Promise<boolean>;

  /** `isStoreRoot`: whether `root` is still the root recorded in `store` (not rotated away). */
  constructor(
    store: KeyStore,
    root: KeyWrapper & Pick<RootOfTrust, 'describe' | 'sealable'>,
    random: RandomSource,
    isStoreRoot: () => Promise<boolean>,
  ) {
    this.#store = store;
    this.#root = root;
    this.#random = random;
    this.#isStoreRoot = isStoreRoot;
  }

  async generate(algorithm: RootKeyPairAlgorithm, label: string): Promise<RootKeyPair> {
    if (!NODE_PARAMS[algorithm]) throw new InvalidInputError(`root: unknown key pair algorithm ${String(algorithm)}`);
    if (typeof label !== 'string' || !LABEL_RE.test(label)) {
      throw new InvalidInputError('root: a key pair label is 1..128 printable ASCII characters');
    }
    // The KPK first: a sealed root refuses before any key is made.
    const kpk = await this.#loadKpk(true);
    let pkcs8: Buffer | undefined;
    try {
      const made = await generate(algorithm);
      pkcs8 = made.privateKey;
      const spki = new Uint8Array(made.publicKey);
      const id = `kp_${toBase64Url(await this.#random.randomBytes(16))}`;
      const nonce = await this.#random.randomBytes(GCM_NONCE_BYTES);
      const sealed = gcmSeal(kpk, nonce, pkcs8, privateKeyAad(id, algorithm, label, spki));
      const record: SealedKeyPairRecord = {
        v: 1,
        id,
        algorithm,
        state: 'active',
        label,
        createdAt: new Date().toISOString(),
        publicKey: toBase64Url(spki),
        nonce: toBase64Url(nonce),
        sealedPrivateKey: toBase64Url(sealed),
      };
      const name = KEY_PAIR_META_PREFIX + id;
      const value = utf8.encode(JSON.stringify(record));
      // Never overwrite a record (ids are never reused).
      if (this.#store.swapMeta) await this.#store.swapMeta(name, null, value);
      else {
        if (await this.#store.getMeta(name)) throw new ConflictError('root: key pair id collision');
        await this.#store.putMeta(name, value);
      }
      // A root rotation that committed while this ran moved (or will move) the KPK it saw; one
      // that committed before this root wrote a first KPK could not: refuse rather than hand
      // out a key pair that the store's root cannot open.
      if (!(await this.#isStoreRoot())) {
        await this.destroy(utf8.encode(id));
        throw new ConflictError(
          "root: the store's root was rotated while the key pair was made; open the new root and try again",
        );
      }
      return { handle: utf8.encode(id), publicKey: spki };
    } finally {
      wipe(kpk, pkcs8);
    }
  }

  async sign(handle: Uint8Array, data: Uint8Array): Promise<Uint8Array> {
    const id = idOf(handle);
    if (!(data instanceof Uint8Array)) throw new InvalidInputError('root: the data to sign must be a Uint8Array');
    // A sealed root signs nothing: the KPK is unwrapped first, by the root.
    const kpk = await this.#loadKpk(false);
    let pkcs8: Uint8Array | undefined;
    try {
      const record = await this.#record(id);
      if (record.state === 'destroyed') throw new KeyDestroyedError(`root: key pair ${id} was destroyed`);
      const spki = fromBase64Url(record.publicKey as string, 'root: key pair public key');
      const nonce = fromBase64Url(record.nonce as string, 'root: key pair nonce');
      if (nonce.length !== GCM_NONCE_BYTES) throw new FormatError('root: key pair nonce has the wrong length');
      pkcs8 = gcmOpen(
        kpk,
        nonce,
        fromBase64Url(record.sealedPrivateKey as string, 'root: sealed private key'),
        privateKeyAad(id, record.algorithm, record.label as string, spki),
        'root key pair',
      );
      const key = createPrivateKey({
        key: Buffer.from(pkcs8.buffer, pkcs8.byteOffset, pkcs8.length),
        format: 'der',
        type: 'pkcs8',
      });
      wipe(pkcs8);
      if (!matches(key, record.algorithm)) {
        throw new RootContractError(`root: key pair ${id} does not hold a ${record.algorithm} key`);
      }
      const p = NODE_PARAMS[record.algorithm];
      return new Uint8Array(nodeSign(p.hash, data, p.type === 'ec' ? { key, dsaEncoding: 'ieee-p1363' } : key));
    } finally {
      wipe(kpk, pkcs8);
    }
  }

  async destroy(handle: Uint8Array): Promise<void> {
    const id = idOf(handle);
    const bytes = await this.#store.getMeta(KEY_PAIR_META_PREFIX + id);
    if (!bytes) throw new KeyNotFoundError(`root: no key pair ${id} in this store`);
    const record = decodeRecord(bytes, id);
    if (record.state === 'destroyed') return;
    const marker: SealedKeyPairRecord = {
      v: 1,
      id,
      algorithm: record.algorithm,
      state: 'destroyed',
      destroyedAt: new Date().toISOString(),
    };
    await this.#store.putMeta(KEY_PAIR_META_PREFIX + id, utf8.encode(JSON.stringify(marker)));
  }

  /** The public key of `handle` as stored (non-secret; KeyDestroyedError once destroyed). */
  async publicKey(handle: Uint8Array): Promise<Uint8Array> {
    const id = idOf(handle);
    const record = await this.#record(id);
    if (record.state === 'destroyed') throw new KeyDestroyedError(`root: key pair ${id} was destroyed`);
    return fromBase64Url(record.publicKey as string, 'root: key pair public key');
  }

  async #record(id: string): Promise<SealedKeyPairRecord> {
    const bytes = await this.#store.getMeta(KEY_PAIR_META_PREFIX + id);
    if (!bytes) throw new KeyNotFoundError(`root: no key pair ${id} in this store`);
    return decodeRecord(bytes, id);
  }

  /** The KPK, unwrapped by the root (KeystoreSealedError while sealed); made on first use when
   * `create`. The caller wipes it. */
  async #loadKpk(create: boolean): Promise<Uint8Array> {
    // Said first, whatever the store holds (the root's unwrapKey would say it too, later).
    if (this.#root.sealable?.isSealed()) throw new KeystoreSealedError('root: the root is sealed; unseal it first');
    const rootId = this.#root.describe().id;
    for (let attempt = 0; attempt < 3; attempt++) {
      const doc = await effectiveKpkDoc(this.#store, rootId);
      if (doc) return this.#root.unwrapKey(fromBase64Url(doc.wrapped, 'root: key-pair key'), KPK_AAD);
      if (!create) throw new KeyNotFoundError('root: this store holds no key pairs of this root');
      const kpk = await this.#random.randomBytes(AES256_KEY_BYTES);
      try {
        const wrapped = await this.#root.wrapKey(kpk, KPK_AAD);
        const value = utf8.encode(JSON.stringify({ v: 1, rootId, wrapped: toBase64Url(wrapped) } as KpkDocument));
        if (this.#store.swapMeta) await this.#store.swapMeta(KEY_PAIR_KEY_META_NAME, null, value);
        else await this.#store.putMeta(KEY_PAIR_KEY_META_NAME, value);
        return kpk;
      } catch (err) {
        wipe(kpk);
        // Another process made the KPK first: use theirs.
        if (KeywardenError.isInstance(err) && (err as KeywardenError).code === 'KW_CONFLICT') continue;
        throw err;
      }
    }
    throw new ConflictError('root: the key-pair key kept changing while it was made; try again');
  }
}

/**
 * Root rotation, step 1 (before the new root is stored): the KPK wrapped by the new root, staged
 * in meta "root-key-pairs/key/next". Returns false when the store holds no key pairs. The old
 * root must be unsealed; the KPK is wiped before returning.
 */
export async function stageKeyPairKeyMove(store: KeyStore, from: RootOfTrust, to: RootOfTrust): Promise<boolean> {
  const oldRoot = checkedRoot(from);
  const newRoot = checkedRoot(to);
  // An earlier rotation that committed and stopped before promoting: promote first, so the
  // staged record this one overwrites is never the only KPK the current root can open.
  await finishKeyPairKeyMove(store, from);
  const doc = await effectiveKpkDoc(store, oldRoot.id);
  if (!doc) return false;
  const kpk = await oldRoot.unwrapKey(fromBase64Url(doc.wrapped, 'root: key-pair key'), KPK_AAD);
  try {
    const wrapped = await newRoot.wrapKey(kpk, KPK_AAD);
    const next: KpkDocument = { v: 1, rootId: newRoot.id, wrapped: toBase64Url(wrapped) };
    await store.putMeta(KEY_PAIR_KEY_NEXT_META_NAME, utf8.encode(JSON.stringify(next)));
    return true;
  } finally {
    wipe(kpk);
  }
}

/** Root rotation, step 2 (after the new root is stored): the staged KPK becomes the KPK. */
export function finishKeyPairKeyMove(store: KeyStore, to: RootOfTrust): Promise<void> {
  return finishKeyPairKeyMoveTo(store, checkedRoot(to).id);
}

/** finishKeyPairKeyMove by the id of the root in use (the promotion needs nothing else). */
export async function finishKeyPairKeyMoveTo(store: KeyStore, rootId: string): Promise<void> {
  const next = await readKpkDoc(store, KEY_PAIR_KEY_NEXT_META_NAME);
  if (!next || next.rootId !== rootId) return;
  await store.putMeta(KEY_PAIR_KEY_META_NAME, utf8.encode(JSON.stringify(next)));
  await store.deleteMeta(KEY_PAIR_KEY_NEXT_META_NAME);
}
