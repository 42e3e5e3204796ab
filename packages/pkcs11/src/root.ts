/**
 * The PKCS#11 root of trust: an AES-256 key object generated inside a token (C_GenerateKey;
 * CKA_TOKEN, CKA_PRIVATE, CKA_SENSITIVE true, CKA_EXTRACTABLE false, usages encrypt/decrypt
 * only), used there and never seen by this process. Capabilities (core's root.ts):
 *
 *   wrap/unwrap  AES-256-GCM C_Encrypt/C_Decrypt under the root object, binding domain ‖ root id ‖ aad
 *   random       C_GenerateRandom
 *   sealable     C_Login / C_Logout with the user PIN (unsealSecret kind "user-pin")
 *   destroyable  C_DestroyObject of the root and of every KEK it made, a tombstone in the store
 *   kekInRoot    KEKs as AES-256 token objects: every data-key seal/open is an AES-GCM call in the
 *                token with Keywarden's associated data (suite 0x01: AES-256-GCM, 12-byte IV)
 *   keyPairs     signing key pairs made by C_GenerateKeyPair, private key sensitive and never
 *                extractable; C_Sign in the token (keypairs.ts)
 *
 * Why C_Encrypt and not C_WrapKey: C_WrapKey wraps a key OBJECT, and the KEK material Keywarden
 * hands a root is bytes; SoftHSM2 also has no AES-GCM wrapping mechanism (CKM_AES_GCM is
 * encrypt/decrypt only: `pkcs11-tool -M`), and CKM_AES_KEY_WRAP(_PAD) (RFC 3394/5649) binds no
 * associated data. AES-GCM encryption with the AAD is what binds the wrap to its KEK version.
 *
 * The root's record in the key store (meta "root", JSON, no secret) names the token and the object
 * (label and CKA_ID); the root id is "p11_" ‖ base64url(CKA_ID). A destruction writes meta
 * "pkcs11-root-tombstone" first, so a store whose root was destroyed reads as destroyed, never as
 * damaged, and an interrupted destruction can be finished.
 */
import { createHash, randomFillSync } from 'node:crypto';
import {
  ClosedError,
  constantTimeEqual,
  concatBytes,
  DecryptionError,
  type Destroyable,
  FormatError,
  InvalidInputError,
  type KekInRoot,
  type KeyPairRoot,
  type KeyStore,
  KeyStoreError,
  KeystoreSealedError,
  kekAad as kekAadOf,
  parsePkcs11Uri,
  type RandomSource,
  RootDestroyedError,
  type RootDescription,
  RootMissingError,
  type RootOfTrust,
  readPkcs11Pin,
  type Sealable,
  type UnsealSecretDescription,
  toBase64Url,
  wipe,
} from '@keywarden/core';
import { DEFAULT_POOL_KIND, type PoolKind, type PoolRequest, WorkerFailureError, WorkerPool } from './_pool.js';
import { Pkcs11UnavailableError, Pkcs11UnsealError, pkcs11Error } from './errors.js';
import type { Pkcs11KeyPairAlgorithm } from './_worker-keypairs.js';
import { Pkcs11KeyPairs } from './keypairs.js';

export const PKCS11_ROOT_META_NAME = 'root';
export const PKCS11_TOMBSTONE_META_NAME = 'pkcs11-root-tombstone';
const WRAP_FORMAT = 0x01;
const IV_BYTES = 12;
const TAG_BYTES = 16;
const ROOT_ID_BYTES = 16;
const KEK_SUFFIX_BYTES = 8;
const enc = new TextEncoder();
const WRAP_DOMAIN = enc.encode('keywarden/pkcs11-root/kek-wrap/v1');
/** kekAad(id, version) = domain ‖ u8 len ‖ id ‖ u32 version (core keywarden.ts). */
const KEK_AAD_DOMAIN = kekAadOf('', 0).subarray(0, -5);
const MAX_PIN_BYTES = 255;

/** IVs are taken from a buffer of random bytes filled 340 IVs at a time (node:crypto's CSPRNG),
 * each handed out once as a copy: one randomFillSync per IV was a measurable share of the host's
 * work per data key under full load (issue #8). IVs are public (they are in every wrap). */
const IV_POOL = new Uint8Array(IV_BYTES * 340);
let ivOffset = IV_POOL.length;

function freshIv(): Uint8Array {
  if (ivOffset + IV_BYTES > IV_POOL.length) {
    randomFillSync(IV_POOL);
    ivOffset = 0;
  }
  const iv = IV_POOL.slice(ivOffset, ivOffset + IV_BYTES);
  IV_POOL.fill(0, ivOffset, ivOffset + IV_BYTES);
  ivOffset += IV_BYTES;
  return iv;
}

/** The stored record: non-secret, enough to find the object again. */
export interface Pkcs11RootRecord {
  format: 1;
  kind: 'pkcs11';
  rootId: string;
  /** Token label (RFC 7512 "token"). */
  token: string;
  /** Token serial number when the root was made (reported if it changes: a re-initialised token). */
  tokenSerial: string;
  /** Object label (RFC 7512 "object") and CKA_ID (base64url). */
  object: string;
  id: string;
  createdAt: string;
  wrapAlgorithm: 'AES-256-GCM';
}

export interface Pkcs11RootOptions {
  /** The key store the root's record lives in. */
  store: KeyStore;
  /** The user PIN (e.g. recombined from shares); else the URI's pin-source / pin-value; else sealed. */
  secret?: Uint8Array;
  /** Make a new root object and record (refused when the store has a root). Needs the PIN. */
  create?: boolean;
  /** Workers in the pool (default: the number of cores). */
  poolSize?: number;
  /** Where the workers run: 'threads' or 'processes' (default: DEFAULT_POOL_KIND) (child processes, each with its own
   * module and login; SoftHSM2 serialises the threads of one process: docs/pkcs11.md). The URI's
   * query attribute `pool=threads|processes` is used when this is not given. */
  pool?: PoolKind;
  /** Deadline of one PKCS#11 request in milliseconds (default 15 000). */
  callTimeoutMs?: number;
  /** Processes only: the niceness added to each worker process (default 0: the host's priority).
   * Workers below the host in CPU priority do not delay its event loop when they are what keeps the
   * cores busy, but yield their share when other work does (docs/pkcs11.md, Measured speed). */
  workerNice?: number;
  /** The module when the URI has no module-path (default: KEYWARDEN_PKCS11_MODULE). */
  modulePath?: string;
  env?: Readonly<Record<string, string | undefined>>;
}

function b64urlDecode(s: string): Uint8Array {
  return new Uint8Array(Buffer.from(s, 'base64url'));
}

function encodeRecord(r: Pkcs11RootRecord): Uint8Array {
  return enc.encode(JSON.stringify(r));
}

export function decodePkcs11Record(bytes: Uint8Array): Pkcs11RootRecord {
  let r: Partial<Pkcs11RootRecord>;
  try {
    r = JSON.parse(Buffer.from(bytes).toString('utf8')) as Partial<Pkcs11RootRecord>;
  } catch {
    throw new FormatError('pkcs11: the root record is not valid JSON');
  }
  if (r?.kind !== 'pkcs11') throw new FormatError('pkcs11: the key store root is not a PKCS#11 root');
  if (r.format !== 1) throw new FormatError(`pkcs11: unsupported root record format ${String(r.format)}`);
  if (
    typeof r.rootId !== 'string' ||
    !/^p11_[A-Za-z0-9_-]{22}$/.test(r.rootId) ||
    typeof r.token !== 'string' ||
    typeof r.object !== 'string' ||
    typeof r.id !== 'string' ||
    b64urlDecode(r.id).length !== ROOT_ID_BYTES ||
    `p11_${r.id}` !== r.rootId
  ) {
    throw new FormatError('pkcs11: the root record is malformed');
  }
  return r as Pkcs11RootRecord;
}

/** Label of a KEK object: "kw-kek/<key id>/v<version>" for Keywarden's kekAad, else a digest. */
/** kekLabel's answers for the KEK versions in use (every data key asks; bounded). */
const KEK_LABELS = new Map<string, string>();

export function kekLabel(kekAad: Uint8Array): string {
  const key = Buffer.from(kekAad.buffer, kekAad.byteOffset, kekAad.byteLength).toString('latin1');
  let label = KEK_LABELS.get(key);
  if (label === undefined) {
    label = kekLabelOf(kekAad);
    if (KEK_LABELS.size >= 256) KEK_LABELS.clear();
    KEK_LABELS.set(key, label);
  }
  return label;
}

function kekLabelOf(kekAad: Uint8Array): string {
  const d = KEK_AAD_DOMAIN;
  if (kekAad.length > d.length + 5 && Buffer.from(kekAad.subarray(0, d.length)).equals(Buffer.from(d))) {
    const n = kekAad[d.length] as number;
    if (kekAad.length === d.length + 1 + n + 4) {
      const id = Buffer.from(kekAad.subarray(d.length + 1, d.length + 1 + n)).toString('utf8');
      const version = Buffer.from(kekAad.subarray(d.length + 1 + n)).readUInt32BE(0);
      if (/^[\x21-\x7e]+$/.test(id)) return `kw-kek/${id}/v${version}`;
    }
  }
  return `kw-kek/${createHash('sha256').update(kekAad).digest('base64url').slice(0, 22)}`;
}

export class Pkcs11Root implements RootOfTrust, Sealable, Destroyable, KekInRoot, RandomSource {
  readonly sealable: Sealable = this;
  readonly destroyable: Destroyable = this;
  readonly kekInRoot: KekInRoot = this;
  readonly random: RandomSource = this;
  readonly keyPairs: KeyPairRoot;
  readonly suite = 0x01 as const;
  readonly #pool: WorkerPool;
  readonly #record: Pkcs11RootRecord;
  readonly #objectId: Uint8Array;
  #pin: Uint8Array | undefined;
  /** Bumped when a seal has logged the token out: a result from an earlier epoch is refused. */
  #epoch = 0;
  /** Calls in flight, counted by cohort: a seal starts a new cohort and lets the old one finish
   * (its calls began unsealed) before it logs out. A count, not a Set of promises: a Set emptied
   * and refilled by every call shrank and regrew its table under full load (issue #8, the host's
   * allocations per data key). */
  #cohort: Cohort = { calls: 0, idle: [] };
  #closed = false;
  readonly #listeners = new Set<() => void>();

  private constructor(pool: WorkerPool, record: Pkcs11RootRecord, algorithms: readonly Pkcs11KeyPairAlgorithm[]) {
    this.#pool = pool;
    this.#record = record;
    this.#objectId = b64urlDecode(record.id);
    this.keyPairs = new Pkcs11KeyPairs({
      rootObjectId: this.#objectId,
      algorithms,
      run: (request) => this.#run(this.#requireUnsealed(), request),
      randomBytes: (length) => this.randomBytes(length),
    });
  }

  /**
   * Open (or with `create`, make) the root named by an RFC 7512 URI:
   * `pkcs11:token=keywarden;object=kw-root?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=env:KW_PIN`.
   * The token is found by label (SoftHSM2 gives tokens random slot ids). With a PIN it opens
   * unsealed; without one, sealed.
   */
  static async open(uri: string, options: Pkcs11RootOptions): Promise<Pkcs11Root> {
    if (!options || typeof options !== 'object' || !options.store) {
      throw new InvalidInputError('pkcs11: open needs { store }');
    }
    const parsed = parsePkcs11Uri(uri);
    let pin: Uint8Array | undefined;
    try {
      pin = await readPkcs11Pin(parsed, { secret: options.secret, env: options.env });
    } finally {
      wipe(parsed.pinValue);
    }
    try {
      const env = options.env ?? process.env;
      const modulePath = parsed.modulePath ?? options.modulePath ?? env.KEYWARDEN_PKCS11_MODULE;
      if (!modulePath) {
        throw new InvalidInputError(
          'pkcs11: the root URI names no module (module-path=…) and KEYWARDEN_PKCS11_MODULE is not set',
        );
      }
      if (!parsed.token) throw new InvalidInputError('pkcs11: the root URI must name the token by label (token=…)');
      const store = options.store;
      if (await store.getMeta(PKCS11_TOMBSTONE_META_NAME)) {
        throw new RootDestroyedError(
          (await store.getMeta(PKCS11_ROOT_META_NAME))
            ? 'pkcs11: the destruction of this root was started and not finished: run the destruction again to finish it'
            : 'pkcs11: the root of this key store was destroyed: nothing in it can be unwrapped',
        );
      }
      const stored = await store.getMeta(PKCS11_ROOT_META_NAME);
      if (options.create) {
        if (stored) throw new KeyStoreError('pkcs11: this key store already has a root');
        if (!pin) throw new InvalidInputError('pkcs11: creating a root needs the user PIN');
      } else if (!stored) {
        throw new RootMissingError(
          'pkcs11: this key store has no root record: it was never initialized with a PKCS#11 root, or it is damaged',
        );
      }
      const kind = options.pool ?? poolKindOf(parsed.vendorQuery.pool);
      const pool = new WorkerPool({
        modulePath,
        token: parsed.token,
        size: options.poolSize,
        callTimeoutMs: options.callTimeoutMs,
        ...(options.workerNice !== undefined ? { workerNice: options.workerNice } : {}),
        kind,
        ...(kind === 'processes' ? { env: childEnv(env, parsed.pinSource) } : {}),
      });
      await pool.start().catch((err: unknown) => {
        throw refine(err, 'open');
      });
      try {
        // Which key pair algorithms the token's mechanism list allows (Ed25519 on some tokens only).
        const algorithms = await pool.call<Pkcs11KeyPairAlgorithm[]>({ op: 'kp-algorithms' }).catch((err: unknown) => {
          throw refine(err, 'open');
        });
        if (options.create) {
          return await Pkcs11Root.#create(
            pool,
            store,
            parsed.token,
            parsed.object ?? 'kw-root',
            pin as Uint8Array,
            algorithms,
          );
        }
        const record = decodePkcs11Record(stored as Uint8Array);
        if (record.token !== parsed.token || (parsed.object !== undefined && parsed.object !== record.object)) {
          throw new InvalidInputError('pkcs11: the root URI names another token or object than the key store records');
        }
        if (parsed.id !== undefined && toBase64Url(parsed.id) !== record.id) {
          throw new InvalidInputError('pkcs11: the root URI names another CKA_ID than the key store records');
        }
        const root = new Pkcs11Root(pool, record, algorithms);
        if (pin) await root.unseal(pin);
        return root;
      } catch (err) {
        await pool.close();
        throw err;
      }
    } finally {
      wipe(pin);
    }
  }

  static async #create(
    pool: WorkerPool,
    store: KeyStore,
    token: string,
    object: string,
    pin: Uint8Array,
    algorithms: readonly Pkcs11KeyPairAlgorithm[],
  ): Promise<Pkcs11Root> {
    await login(pool, pin);
    const id = await pool.call<Uint8Array>({ op: 'random', length: ROOT_ID_BYTES }).catch((err: unknown) => {
      throw refine(err, 'random');
    });
    if (await pool.call<boolean>({ op: 'exists', label: object, id })) {
      throw new KeyStoreError(
        `pkcs11: the token already holds an object labelled "${object}"; name another (object=…)`,
      );
    }
    const info = await pool.call<{ serial: string }>({ op: 'info' });
    const record: Pkcs11RootRecord = {
      format: 1,
      kind: 'pkcs11',
      rootId: `p11_${toBase64Url(id)}`,
      token,
      tokenSerial: info.serial,
      object,
      id: toBase64Url(id),
      createdAt: new Date().toISOString(),
      wrapAlgorithm: 'AES-256-GCM',
    };
    await pool.call({ op: 'generate', label: object, id: id.slice(), usage: 'root' }).catch((err: unknown) => {
      throw refine(err, 'generate');
    });
    try {
      await store.putMeta(PKCS11_ROOT_META_NAME, encodeRecord(record));
    } catch (err) {
      // Nothing records the object: remove it rather than leave an orphan in the token.
      await pool.call({ op: 'destroy', label: object, id: id.slice() }).catch(() => undefined);
      throw err;
    }
    const root = new Pkcs11Root(pool, record, algorithms);
    root.#pin = pin.slice();
    pool.holdPin(pin);
    await pool.broadcast(() => ({ op: 'login', pin: pin.slice(), hold: true }));
    return root;
  }

  /** The stored record (non-secret). */
  get record(): Pkcs11RootRecord {
    return { ...this.#record };
  }

  /** The pool, for status (size, requests in flight, replaced workers) and the fault tests. */
  get pool(): WorkerPool {
    return this.#pool;
  }

  describe(): RootDescription {
    return {
      kind: 'pkcs11',
      id: this.#record.rootId,
      label: `PKCS#11 token "${this.#record.token}", object "${this.#record.object}"`,
      wrapAlgorithm: 'AES-256-GCM',
    };
  }

  storeRecord(): { name: string; value: Uint8Array } {
    return { name: PKCS11_ROOT_META_NAME, value: encodeRecord(this.#record) };
  }

  // ── Sealable ────────────────────────────────────────────────────────────────────────────────

  isSealed(): boolean {
    return this.#pin === undefined;
  }

  unsealSecret(): UnsealSecretDescription {
    return {
      kind: 'user-pin',
      minBytes: 1,
      maxBytes: MAX_PIN_BYTES,
      label: `user PIN of PKCS#11 token "${this.#record.token}"`,
    };
  }

  /** C_Login with the user PIN (CKR_PIN_INCORRECT is an UnsealError), then check the root object is there. */
  async unseal(secret: Uint8Array): Promise<void> {
    this.#checkOpen();
    checkPin(secret);
    if (this.#pin) {
      // Already logged in: C_Login would answer CKR_USER_ALREADY_LOGGED_IN whatever the PIN, so a
      // wrong PIN is caught here and never looks accepted.
      if (!constantTimeEqual(this.#pin, secret)) {
        throw new Pkcs11UnsealError('C_Login', 'CKR_PIN_INCORRECT');
      }
      return;
    }
    await login(this.#pool, secret);
    const exists = await this.#pool
      .call<boolean>({ op: 'exists', label: this.#record.object, id: this.#objectId.slice() })
      .catch((err: unknown) => {
        throw refine(err, 'exists');
      });
    if (!exists) {
      await logout(this.#pool);
      throw new Pkcs11UnavailableError(
        'C_FindObjects',
        '',
        `the root key object "${this.#record.object}" is not on token "${this.#record.token}" (re-initialised or another token?)`,
      );
    }
    this.#pin = secret.slice();
    this.#pool.holdPin(secret);
    await this.#pool.broadcast(() => ({ op: 'login', pin: secret.slice(), hold: true }));
  }

  /** Immediate for everything that follows: new calls are refused at once and the listeners (key
   * managers' KEK caches) are told before anything is awaited. Calls already in flight (begun
   * unsealed) finish; then every worker forgets the PIN and the token is logged out (C_Logout).
   * When this resolves nothing more succeeds. */
  async seal(): Promise<void> {
    const wasUnsealed = this.#pin !== undefined;
    wipe(this.#pin);
    this.#pin = undefined;
    this.#pool.holdPin(undefined);
    for (const l of [...this.#listeners]) l();
    if (!wasUnsealed || this.#closed) return;
    const cohort = this.#cohort;
    this.#cohort = { calls: 0, idle: [] };
    if (cohort.calls > 0) await new Promise<void>((resolve) => cohort.idle.push(resolve));
    this.#epoch++;
    await this.#pool.broadcast(() => ({ op: 'forget' })).catch(() => undefined);
    await logout(this.#pool);
  }

  onSeal(listener: () => void): () => void {
    this.#listeners.add(listener);
    return () => {
      this.#listeners.delete(listener);
    };
  }

  // ── wrap / unwrap ──────────────────────────────────────────────────────────────────────────

  /** Wire: 0x01 ‖ IV (12) ‖ ciphertext ‖ tag (16). AAD: domain ‖ u32 len(root id) ‖ root id ‖ aad. */
  async wrapKey(material: Uint8Array, aad: Uint8Array): Promise<Uint8Array> {
    const epoch = this.#requireUnsealed();
    const iv = freshIv();
    const sealed = await this.#run<Uint8Array>(epoch, {
      op: 'encrypt',
      label: this.#record.object,
      id: this.#objectId.slice(),
      iv,
      aad: this.#wrapAad(aad),
      data: material.slice(),
    });
    return concatBytes(Uint8Array.of(WRAP_FORMAT), iv, sealed);
  }

  async unwrapKey(wrapped: Uint8Array, aad: Uint8Array): Promise<Uint8Array> {
    const epoch = this.#requireUnsealed();
    if (
      !(wrapped instanceof Uint8Array) ||
      wrapped.length < 1 + IV_BYTES + 16 + TAG_BYTES ||
      wrapped.length > 1 + IV_BYTES + 64 + TAG_BYTES
    ) {
      throw new FormatError('pkcs11: wrapped key has an invalid length');
    }
    if (wrapped[0] !== WRAP_FORMAT) throw new FormatError(`pkcs11: unsupported wrapped key format ${wrapped[0]}`);
    return this.#run<Uint8Array>(
      epoch,
      {
        op: 'decrypt',
        label: this.#record.object,
        id: this.#objectId.slice(),
        iv: wrapped.slice(1, 1 + IV_BYTES),
        aad: this.#wrapAad(aad),
        data: wrapped.slice(1 + IV_BYTES),
      },
      'root',
    );
  }

  // ── random ─────────────────────────────────────────────────────────────────────────────────

  /** C_GenerateRandom in the token. */
  async randomBytes(length: number): Promise<Uint8Array> {
    if (!Number.isSafeInteger(length) || length < 1 || length > 65_536) {
      throw new InvalidInputError(`random: length must be 1..65536, got ${length}`);
    }
    this.#checkOpen();
    return this.#pool.call<Uint8Array>({ op: 'random', length }).catch((err: unknown) => {
      throw refine(err, 'random');
    });
  }

  // ── KEK in the root ────────────────────────────────────────────────────────────────────────

  /** A new AES-256 KEK object in the token; the reference is its CKA_ID: the root's id ‖ 8 random bytes. */
  async createKek(kekAad: Uint8Array): Promise<Uint8Array> {
    const epoch = this.#requireUnsealed();
    const suffix = await this.randomBytes(KEK_SUFFIX_BYTES);
    const ref = concatBytes(this.#objectId, suffix);
    await this.#run(epoch, { op: 'generate', label: kekLabel(kekAad), id: ref.slice(), usage: 'kek' });
    return ref;
  }

  async sealDataKey(
    ref: Uint8Array,
    kekAad: Uint8Array,
    dek: Uint8Array,
    aad: Uint8Array,
  ): Promise<{ nonce: Uint8Array; sealed: Uint8Array }> {
    const epoch = this.#requireUnsealed();
    this.#checkRef(ref);
    const nonce = freshIv();
    // id and aad are only read (into the batch frame, again for a retry), never kept or wiped by
    // the pool: no copy (issue #8, the host's allocations per data key). The key is a copy: the
    // pool wipes it once the call is settled.
    const sealed = await this.#run<Uint8Array>(
      epoch,
      { op: 'encrypt', label: kekLabel(kekAad), id: ref, iv: nonce, aad, data: dek.slice() },
      'data key',
    );
    return { nonce, sealed };
  }

  async openDataKey(
    ref: Uint8Array,
    kekAad: Uint8Array,
    nonce: Uint8Array,
    sealed: Uint8Array,
    aad: Uint8Array,
  ): Promise<Uint8Array> {
    const epoch = this.#requireUnsealed();
    this.#checkRef(ref);
    return this.#run<Uint8Array>(
      epoch,
      {
        op: 'decrypt',
        label: kekLabel(kekAad),
        // Read only, as in sealDataKey; the sealed key is a copy (wiped once settled).
        id: ref,
        iv: nonce,
        aad,
        data: sealed.slice(),
      },
      'data key',
    );
  }

  async destroyKek(ref: Uint8Array, kekAad: Uint8Array): Promise<void> {
    const epoch = this.#requireUnsealed();
    this.#checkRef(ref);
    await this.#run(epoch, { op: 'destroy', label: kekLabel(kekAad), id: ref.slice() });
  }

  // ── destroy ────────────────────────────────────────────────────────────────────────────────

  /**
   * Crypto-shred: check the consent (the user PIN), write the tombstone, C_DestroyObject every KEK
   * this root made and the root object, delete the record, seal. Idempotent: run again to finish.
   */
  async destroy(store: KeyStore, consent: Uint8Array, now: Date): Promise<void> {
    this.#checkOpen();
    checkPin(consent);
    const stored = await store.getMeta(PKCS11_ROOT_META_NAME);
    const tomb = await store.getMeta(PKCS11_TOMBSTONE_META_NAME);
    if (!stored && !tomb) throw new RootMissingError('pkcs11: this key store has no root record and no tombstone');
    if (stored && decodePkcs11Record(stored).rootId !== this.#record.rootId) {
      throw new InvalidInputError(
        `pkcs11: the key store's root is another root than ${this.#record.rootId}; nothing was changed`,
      );
    }
    if (this.#pin) {
      if (!constantTimeEqual(this.#pin, consent)) throw new Pkcs11UnsealError('C_Login', 'CKR_PIN_INCORRECT');
    } else {
      await login(this.#pool, consent);
      this.#pin = consent.slice();
      this.#pool.holdPin(consent);
    }
    if (!tomb) {
      await store.putMeta(
        PKCS11_TOMBSTONE_META_NAME,
        enc.encode(
          JSON.stringify({ format: 1, kind: 'pkcs11', rootId: this.#record.rootId, destroyedAt: now.toISOString() }),
        ),
      );
    }
    await this.#pool.call({ op: 'destroy', id: this.#objectId.slice(), prefix: true }).catch((err: unknown) => {
      throw refine(err, 'destroy');
    });
    // The key pairs it made (keypairs.ts): private and public key objects under the same CKA_ID prefix.
    await this.#pool.call({ op: 'kp-destroy', id: this.#objectId.slice(), prefix: true }).catch((err: unknown) => {
      throw refine(err, 'destroy');
    });
    await this.#pool
      .call({ op: 'destroy', label: this.#record.object, id: this.#objectId.slice() })
      .catch((err: unknown) => {
        throw refine(err, 'destroy');
      });
    if (stored) await store.deleteMeta(PKCS11_ROOT_META_NAME);
    await this.seal();
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    await this.seal();
    this.#closed = true;
    this.#listeners.clear();
    await this.#pool.close();
  }

  // ── internals ──────────────────────────────────────────────────────────────────────────────

  #wrapAad(aad: Uint8Array): Uint8Array {
    const id = enc.encode(this.#record.rootId);
    const len = new Uint8Array(4);
    new DataView(len.buffer).setUint32(0, id.length);
    return concatBytes(WRAP_DOMAIN, len, id, aad);
  }

  #checkRef(ref: Uint8Array): void {
    // (Not a secret: the reference is the KEK object's CKA_ID, stored in the clear.)
    let same = ref.length === ROOT_ID_BYTES + KEK_SUFFIX_BYTES;
    for (let i = 0; same && i < ROOT_ID_BYTES; i++) same = ref[i] === this.#objectId[i];
    if (!same) {
      // Not a KEK this root made: nothing to authenticate against.
      throw new DecryptionError('data key');
    }
  }

  #checkOpen(): void {
    if (this.#closed) throw new ClosedError('pkcs11: the root is closed');
  }

  #requireUnsealed(): number {
    this.#checkOpen();
    if (!this.#pin)
      throw new KeystoreSealedError('pkcs11: the root is sealed (token logged out); unseal it with the user PIN');
    return this.#epoch;
  }

  /** A pool call that counts only if the root was not sealed or closed while it ran. (Written with
   * then, not as an async function: one promise and two closures per call, the fewest it takes.) */
  #run<T>(epoch: number, request: PoolRequest, decryptComponent?: string): Promise<T> {
    const cohort = this.#cohort;
    let call: Promise<T>;
    try {
      call = this.#pool.call<T>(request);
    } catch (err) {
      return Promise.reject(err);
    }
    cohort.calls++;
    return call.then(
      (result) => {
        leave(cohort);
        if (this.#epoch !== epoch || this.#closed) {
          if (result instanceof Uint8Array) wipe(result);
          throw this.#sealedNow();
        }
        return result;
      },
      (err: unknown) => {
        leave(cohort);
        if (this.#epoch !== epoch || this.#closed) throw this.#sealedNow();
        throw refine(err, request.op, decryptComponent);
      },
    );
  }

  #sealedNow(): Error {
    return this.#closed
      ? new ClosedError('pkcs11: the root is closed')
      : new KeystoreSealedError('pkcs11: the root was sealed while the call ran');
  }
}

/** The calls begun between two seals, and who waits for them to finish (a seal). */
interface Cohort {
  calls: number;
  idle: Array<() => void>;
}

function leave(cohort: Cohort): void {
  cohort.calls--;
  if (cohort.calls === 0 && cohort.idle.length > 0) for (const resolve of cohort.idle.splice(0)) resolve();
}

function checkPin(pin: Uint8Array): void {
  if (!(pin instanceof Uint8Array) || pin.length < 1 || pin.length > MAX_PIN_BYTES) {
    throw new InvalidInputError(`pkcs11: a user PIN is 1..${MAX_PIN_BYTES} bytes`);
  }
}

/** One C_Login on the first worker: a wrong PIN is counted once by the token, not once per worker. */
async function login(pool: WorkerPool, pin: Uint8Array): Promise<void> {
  await pool.callOn(0, { op: 'login', pin: pin.slice(), hold: false }).catch((err: unknown) => {
    throw refine(err, 'login');
  });
  // The login state belongs to the application (PKCS#11 v2.40 §5.6): one worker's C_Login logs in
  // every thread of the process, but each child process is an application of its own.
  if (pool.kind === 'processes' && pool.size > 1) {
    await pool
      .broadcast(() => ({ op: 'login', pin: pin.slice(), hold: false }))
      .catch((err: unknown) => {
        throw refine(err, 'login');
      });
  }
}

/** C_Logout: once for the threads' one application, in every child for processes. */
async function logout(pool: WorkerPool): Promise<void> {
  if (pool.kind === 'processes') await pool.broadcast(() => ({ op: 'logout' })).catch(() => undefined);
  else await pool.callOn(0, { op: 'logout' }).catch(() => undefined);
}

/** A worker failure as the typed error: CKR → errors.ts; a refused tag → DecryptionError. */
function refine(err: unknown, op: string, decryptComponent?: string): Error {
  if (!(err instanceof WorkerFailureError)) return err as Error;
  const f = err.failure;
  if (decryptComponent && (f.kind === 'decrypt' || f.kind === 'missing')) return new DecryptionError(decryptComponent);
  if (f.kind === 'missing') {
    return new Pkcs11UnavailableError(
      f.fn,
      '',
      'the key object is not on the token (destroyed, or the token was re-initialised)',
    );
  }
  if (f.kind === 'ckr' || f.kind === 'decrypt') return pkcs11Error(f.fn, f.ckr, f.detail);
  return new Pkcs11UnavailableError(f.fn === 'worker' ? op : f.fn, '', f.detail);
}

/** The URI's `pool=` query attribute: threads or processes (DEFAULT_POOL_KIND when absent). */
function poolKindOf(values: string[] | undefined): PoolKind {
  if (!values || values.length === 0) return DEFAULT_POOL_KIND;
  const v = values[0];
  if (values.length > 1 || (v !== 'threads' && v !== 'processes')) {
    throw new InvalidInputError('pkcs11: the root URI\'s "pool" attribute must appear once, as threads or processes');
  }
  return v;
}

/** The environment of pool child processes: this one, without the variable a pin-source=env:
 * names (the PIN reaches a child over its IPC channel only). */
function childEnv(
  env: Readonly<Record<string, string | undefined>>,
  pinSource: string | undefined,
): Record<string, string | undefined> {
  const out = { ...process.env, ...env };
  if (pinSource?.startsWith('env:')) delete out[pinSource.slice('env:'.length)];
  return out;
}
