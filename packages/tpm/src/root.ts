/**
 * The TPM root of trust (docs/tpm.md).
 *
 * The root key is the TPM's storage primary key in the owner hierarchy (the TCG storage template,
 * ECC NIST P-256 or RSA-2048), re-derived from the hierarchy's seed on every open and never stored
 * anywhere — or, with `handle=`, a persistent key at that handle. It never leaves the TPM.
 *
 * wrapKey: TPM2_Create of a sealed data object (keyedhash) under the root, holding the material;
 * its auth value is derived from the associated data, so the TPM itself refuses to unseal under
 * another AAD:
 *
 *   authValue = HMAC-SHA-256(K, "keywarden/tpm/kek-auth/v1" ‖ 0x00 ‖ aad)    (sealable root)
 *             = SHA-256("keywarden/tpm/kek-auth/v1" ‖ 0x00 ‖ aad)            (no auth value)
 *
 * where K is a 32-byte secret the TPM generated, sealed in the root's "check object" under the
 * root's own auth value (dictionary-attack protected). The wrapped blob is TPM2B_PUBLIC ‖
 * TPM2B_PRIVATE of the sealed object, exactly what `tpm2_create -u/-r` writes. The objects carry
 * noDA, so a wrong AAD (TPM_RC_BAD_AUTH) never counts towards a lockout; a wrong root auth value
 * (the check object) does.
 *
 * unwrapKey: Load + Unseal + FlushContext. Create and Unseal run in an HMAC session salted with
 * the root key, with AES-128-CFB parameter encryption (the material crosses the TPM interface
 * encrypted in both directions). With `pcrs=`, each sealed object's policy is PolicyPCR (the
 * values at wrap time) + PolicyAuthValue, and unsealing after one of those PCRs changed fails with
 * TpmPcrPolicyError.
 *
 * Every command has a deadline; a TPM that goes away is reconnected on the next call (the root key
 * is re-derived, or found again at its handle, and checked to be the same key), and the call that
 * met the lost connection is retried once.
 */
import { createHash, createHmac } from 'node:crypto';
import {
  ClosedError,
  DecryptionError,
  FormatError,
  InvalidInputError,
  KeyStoreError,
  type KeyStore,
  KeystoreSealedError,
  type RandomSource,
  RootDestroyedError,
  RootDeviceError,
  type RootDescription,
  type RootOfTrust,
  type Sealable,
  type Destroyable,
  type UnsealSecretDescription,
  UnsealError,
  wipe,
} from '@keywarden/core';
import { TpmKeyPairs } from './keypairs.js';
import {
  Esys,
  ESYS_TR,
  type EsysTR,
  isTpmRc,
  sealedObjectTemplate,
  storagePrimaryTemplate,
  TPM2_ALG,
  TPM2_HR,
  TPMA_SESSION,
  TssError,
  TssLockoutError,
  TssUnavailableError,
  defaultLockFile,
  lockDevice,
  unmarshalTpm2bPublic,
  WireReader,
} from '@keywarden/tss2';

export const TPM_ROOT_META_NAME = 'tpm-root';
export const TPM_TOMBSTONE_META_NAME = 'tpm-root-tombstone';
/** The store's software-root record: a store holds one root. */
const SOFTWARE_ROOT_META_NAME = 'root';
const KEK_AUTH_DOMAIN = Buffer.from('keywarden/tpm/kek-auth/v1\0', 'utf8');
/** TPM_PT_MANUFACTURER (TPM_PT_FIXED + 5), the first of the fixed properties tpmInfo() reads. */
const TPM_PT_MANUFACTURER = 0x105;
const AUTH_MIN = 8;
const AUTH_MAX = 32;

/** The root's record in the key store (meta "tpm-root"): non-secret. */
export interface TpmRootRecord {
  v: 1;
  kind: 'tpm';
  alg: 'ecc' | 'rsa';
  /** Persistent handle of the root key, when it is not re-derived. */
  handle?: number;
  /** The root key's TPM name (hex): the same key on every open, or the open is refused. */
  primaryName: string;
  /** SHA-256 PCRs every KEK is bound to. */
  pcrs?: number[];
  /** The check object (base64 TPM2B_PUBLIC ‖ TPM2B_PRIVATE): K sealed under the root auth value. */
  check?: string;
  /** The root id's check tag (16 hex digits) once the auth value was changed (changeAuth): the id
   * keeps the tag of the first check object, so the KEK versions it wrapped still name this root. */
  idTag?: string;
  createdAt: string;
}

export interface TpmRootOptions {
  store: KeyStore;
  /** TCTI configuration (see @keywarden/tss2). Default: KEYWARDEN_TPM_TCTI, then tpm2-tss's default. */
  tcti?: string;
  /** Deadline per TPM command, ms (default 10 000). */
  timeoutMs?: number;
  /**
   * The cross-process lock file taken around every operation (flock; docs/tpm.md §Several
   * processes): default `<tmpdir>/keywarden-tpm-<hash of the TCTI>.lock`; `false`: none (a TPM
   * behind a resource manager, e.g. /dev/tpmrm0, does not need it).
   */
  lockFile?: string | false;
}

export interface TpmRootCreateOptions extends TpmRootOptions {
  alg?: 'ecc' | 'rsa';
  handle?: number;
  pcrs?: number[];
  /** The root's auth value (8..32 bytes): makes the root sealable and destroyable. The caller
   * wipes it. */
  authValue?: Uint8Array;
}

/** Unsealing failed because a PCR the key is bound to changed (TPM_RC_POLICY_FAIL). */
export class TpmPcrPolicyError extends RootDeviceError {}

/**
 * A connection to the TPM. Between operations it holds nothing in the TPM: the transient root key
 * is kept as its saved context (TPM2_ContextSave) and loaded for each operation, with a new salted
 * HMAC session; both are flushed when the operation ends (swtpm's three object slots and three
 * session slots are shared by every process using it).
 */
interface Connection {
  esys: Esys;
  /** The storage key, valid during an operation (a persistent root: always). */
  primary: EsysTR;
  /** The salted HMAC session of the current operation. */
  session: EsysTR;
  /** The transient storage key's saved context; undefined for a persistent root. */
  saved?: Uint8Array;
}

/** TPM warnings that another client's loaded objects or sessions cause: flush ours, back off, retry. */
function isTpmMemory(err: unknown): boolean {
  return isTpmRc(err, 'TPM_RC_OBJECT_MEMORY') || isTpmRc(err, 'TPM_RC_SESSION_MEMORY');
}
const MEMORY_RETRIES = 8;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** The lock file for these options (undefined: none). */
function lockFileOf(options: TpmRootOptions, tcti: string | undefined): string | undefined {
  if (options.lockFile === false) return undefined;
  return options.lockFile ?? defaultLockFile(tcti);
}

function lockWaitMs(timeoutMs: number | undefined): number {
  return Math.max(30_000, 3 * (timeoutMs ?? 10_000));
}

function hex(b: Uint8Array): string {
  return Buffer.from(b).toString('hex');
}

/** The root id's tag of a check object: the first 16 hex digits of SHA-256 of its base64 form. */
function checkTagOf(check: string): string {
  return createHash('sha256').update(check).digest('hex').slice(0, 16);
}

export function encodeTpmRecord(r: TpmRootRecord): Uint8Array {
  return new Uint8Array(Buffer.from(JSON.stringify(r), 'utf8'));
}

export function decodeTpmRecord(bytes: Uint8Array): TpmRootRecord {
  let r: TpmRootRecord;
  try {
    r = JSON.parse(Buffer.from(bytes).toString('utf8')) as TpmRootRecord;
  } catch {
    throw new FormatError('tpm: the root record in the key store is not readable (damaged store?)');
  }
  if (
    typeof r !== 'object' ||
    r === null ||
    r.v !== 1 ||
    r.kind !== 'tpm' ||
    (r.alg !== 'ecc' && r.alg !== 'rsa') ||
    typeof r.primaryName !== 'string' ||
    !/^[0-9a-f]{4,132}$/.test(r.primaryName) ||
    (r.handle !== undefined && !Number.isInteger(r.handle)) ||
    (r.check !== undefined && typeof r.check !== 'string') ||
    (r.idTag !== undefined && (typeof r.idTag !== 'string' || !/^[0-9a-f]{16}$/.test(r.idTag))) ||
    (r.pcrs !== undefined && (!Array.isArray(r.pcrs) || r.pcrs.some((p) => !Number.isInteger(p) || p < 0 || p > 23)))
  ) {
    throw new FormatError('tpm: the root record in the key store is malformed (damaged store?)');
  }
  return r;
}

/** Split a wrapped blob into TPM2B_PUBLIC and TPM2B_PRIVATE (wire form); FormatError when it is not
 * exactly those two of a sealed data object. */
export function splitSealedBlob(blob: Uint8Array): { outPublic: Uint8Array; outPrivate: Uint8Array } {
  try {
    const r = new WireReader(blob);
    const pubSize = r.u16();
    r.bytes(pubSize);
    const pubEnd = r.offset;
    const privSize = r.u16();
    r.bytes(privSize);
    if (r.remaining !== 0 || pubSize === 0 || privSize === 0) throw new RangeError('sizes');
    const outPublic = blob.slice(0, pubEnd);
    const pub = unmarshalTpm2bPublic(new WireReader(outPublic));
    if (pub.type !== 'keyedhash') throw new RangeError('type');
    return { outPublic, outPrivate: blob.slice(pubEnd) };
  } catch {
    throw new FormatError(
      'tpm: a wrapped key is a sealed TPM object (TPM2B_PUBLIC ‖ TPM2B_PRIVATE); this one is malformed',
    );
  }
}

function defaultTcti(): string | undefined {
  return process.env.KEYWARDEN_TPM_TCTI || undefined;
}

export class TpmRoot implements RootOfTrust {
  readonly random: RandomSource;
  readonly sealable?: Sealable;
  readonly destroyable?: Destroyable;
  /** Signing key pairs under the storage key (keypairs.ts). */
  readonly keyPairs: TpmKeyPairs;
  #record: TpmRootRecord;
  readonly #tcti: string | undefined;
  readonly #timeoutMs: number | undefined;
  readonly #lockFile: string | undefined;
  readonly #id: string;
  #conn: Connection | undefined;
  #k: Uint8Array | undefined;
  #generation = 0;
  #closed = false;
  #destroyed = false;
  #lock: Promise<unknown> = Promise.resolve();
  readonly #listeners = new Set<() => void>();

  private constructor(record: TpmRootRecord, options: TpmRootOptions, conn: Connection | undefined, k?: Uint8Array) {
    this.#record = record;
    this.#tcti = options.tcti ?? defaultTcti();
    this.#timeoutMs = options.timeoutMs;
    this.#lockFile = lockFileOf(options, this.#tcti);
    this.#conn = conn;
    this.#k = k;
    const checkTag = record.idTag ? `-${record.idTag}` : record.check ? `-${checkTagOf(record.check)}` : '';
    this.#id = `tpm-${record.primaryName.slice(4, 36)}${checkTag}`;
    this.random = {
      randomBytes: (n: number) => this.#withTpm((c) => c.esys.getRandom(n), false, undefined, false),
    };
    this.keyPairs = new TpmKeyPairs({
      withTpm: (body) => this.#withTpm(body, true),
      derive: (data) => {
        const h = this.#k ? createHmac('sha256', this.#k) : createHash('sha256');
        return new Uint8Array(h.update(data).digest());
      },
    });
    if (record.check) {
      this.sealable = {
        isSealed: () => this.#k === undefined,
        seal: async () => this.#seal(),
        unseal: (secret: Uint8Array) => this.#unseal(secret),
        unsealSecret: (): UnsealSecretDescription => ({
          kind: 'auth-value',
          minBytes: AUTH_MIN,
          maxBytes: AUTH_MAX,
          label: `TPM root auth value (${AUTH_MIN}..${AUTH_MAX} bytes)`,
        }),
        onSeal: (listener: () => void) => {
          this.#listeners.add(listener);
          return () => this.#listeners.delete(listener);
        },
      };
      this.destroyable = { destroy: (store, consent, now) => this.#destroy(store, consent, now) };
    }
  }

  /** Make a new TPM root in `store` (refused when it has a root, or the record of a destroyed one). */
  static async create(options: TpmRootCreateOptions): Promise<TpmRoot> {
    const { store } = options;
    if ((await store.getMeta(TPM_ROOT_META_NAME)) || (await store.getMeta(SOFTWARE_ROOT_META_NAME))) {
      throw new KeyStoreError('tpm: this key store already has a root');
    }
    if (await store.getMeta(TPM_TOMBSTONE_META_NAME)) {
      throw new RootDestroyedError("tpm: this key store's root was destroyed; make a new store");
    }
    const auth = options.authValue;
    if (auth !== undefined && (!(auth instanceof Uint8Array) || auth.length < AUTH_MIN || auth.length > AUTH_MAX)) {
      throw new InvalidInputError(`tpm: the root auth value is ${AUTH_MIN}..${AUTH_MAX} bytes`);
    }
    // Out of TPM memory (another client's handles): everything of ours is flushed; back off, retry.
    for (let attempt = 0; ; attempt++) {
      try {
        return await TpmRoot.#createOnce(options, auth);
      } catch (err) {
        if (!isTpmMemory(err) || attempt >= MEMORY_RETRIES) throw err;
        await sleep((5 << attempt) * (0.5 + Math.random()));
      }
    }
  }

  static async #createOnce(options: TpmRootCreateOptions, auth: Uint8Array | undefined): Promise<TpmRoot> {
    const { store } = options;
    const alg = options.alg ?? 'ecc';
    const tcti = options.tcti ?? defaultTcti();
    const lockFile = lockFileOf(options, tcti);
    const lock = lockFile ? await lockDevice(lockFile, lockWaitMs(options.timeoutMs)) : undefined;
    let esys: Esys;
    try {
      esys = await Esys.open({ tcti, timeoutMs: options.timeoutMs });
    } catch (err) {
      lock?.release();
      throw err;
    }
    let k: Uint8Array | undefined;
    try {
      let primary: EsysTR;
      let name: Uint8Array;
      if (options.handle !== undefined) {
        const existing = await esys.handles(TPM2_HR.PERSISTENT);
        if (existing.includes(options.handle)) {
          // Adopt a key provisioned at the handle (tpm2_evictcontrol, an earlier store).
          primary = await esys.trFromTPMPublic(options.handle);
          name = (await esys.readPublic(primary)).name;
        } else {
          // A fresh key with a random unique field, so that evicting it destroys it for good (the
          // same template alone could re-derive it).
          const template = storagePrimaryTemplate(alg);
          const unique = await esys.getRandom(32);
          template.unique = alg === 'ecc' ? [unique, new Uint8Array(0)] : [unique];
          const p = await esys.createPrimary(ESYS_TR.RH_OWNER, template);
          primary = await esys.evictControl(ESYS_TR.RH_OWNER, p.handle, options.handle);
          await esys.flushContext(p.handle);
          name = p.name;
        }
      } else {
        const p = await esys.createPrimary(ESYS_TR.RH_OWNER, storagePrimaryTemplate(alg));
        primary = p.handle;
        name = p.name;
      }
      const session = await esys.startAuthSession({ tpmKey: primary, type: 'hmac' });
      let check: string | undefined;
      if (auth) {
        k = await esys.getRandom(32);
        await esys.setSessionAttributes(session, TPMA_SESSION.CONTINUESESSION | TPMA_SESSION.DECRYPT);
        // DA-protected (no noDA): guessing the root auth value meets the TPM's lockout.
        const sealed = await esys.create(primary, sealedObjectTemplate(), {
          userAuth: auth,
          data: k,
          sessions: [session],
        });
        check = Buffer.concat([sealed.outPublic, sealed.outPrivate]).toString('base64');
      }
      const record: TpmRootRecord = {
        v: 1,
        kind: 'tpm',
        alg,
        ...(options.handle !== undefined ? { handle: options.handle } : {}),
        primaryName: hex(name),
        ...(options.pcrs?.length ? { pcrs: [...options.pcrs] } : {}),
        ...(check ? { check } : {}),
        createdAt: new Date().toISOString(),
      };
      // Hold nothing between operations: the session goes, a transient root key is saved and
      // flushed (a persistent one stays where it is).
      await esys.flushContext(session);
      let saved: Uint8Array | undefined;
      if (options.handle === undefined) {
        saved = await esys.contextSave(primary);
        await esys.flushContext(primary);
      }
      await store.putMeta(TPM_ROOT_META_NAME, encodeTpmRecord(record));
      return new TpmRoot(record, options, { esys, primary, session: ESYS_TR.NONE, saved }, k);
    } catch (err) {
      if (k) wipe(k);
      await esys.close();
      throw err;
    } finally {
      lock?.release();
    }
  }

  /** Open the TPM root recorded in `store`, sealed when it has an auth value (unseal it). */
  static async load(options: TpmRootOptions): Promise<TpmRoot> {
    const bytes = await options.store.getMeta(TPM_ROOT_META_NAME);
    if (!bytes) {
      if (await options.store.getMeta(TPM_TOMBSTONE_META_NAME)) {
        throw new RootDestroyedError(
          "tpm: this key store's TPM root was destroyed; nothing it wrapped can be unwrapped",
        );
      }
      throw new KeyStoreError('tpm: this key store has no TPM root');
    }
    const root = new TpmRoot(decodeTpmRecord(bytes), options, undefined);
    // Connect now: a wrong TPM or an unreachable one is reported at open, not at first use.
    await root.#withTpm(async () => undefined, false, undefined, false);
    return root;
  }

  /** The root's record (non-secret). */
  get record(): Readonly<TpmRootRecord> {
    return this.#record;
  }

  describe(): RootDescription {
    const r = this.#record;
    const where = r.handle !== undefined ? `persistent at 0x${r.handle.toString(16)}` : 'owner hierarchy, re-derived';
    return {
      kind: 'tpm',
      id: this.#id,
      label: `TPM ${r.alg === 'ecc' ? 'ECC P-256' : 'RSA-2048'} storage key (${where})${r.pcrs ? `, KEKs bound to PCRs ${r.pcrs.join(',')}` : ''}`,
      wrapAlgorithm: 'TPM2 sealed data object under the storage key',
    };
  }

  storeRecord(): { name: string; value: Uint8Array } {
    return { name: TPM_ROOT_META_NAME, value: encodeTpmRecord(this.#record) };
  }

  /** Handle counts of the current TPM connection (leak tests): ESAPI buffers, tracked handles
   * (none between operations for a re-derived root; a persistent root's ESYS_TR is not counted). */
  stats(): { liveBuffers: number; liveHandles: number; commands: number } | undefined {
    const s = this.#conn?.esys.stats();
    return s ? { liveBuffers: s.liveBuffers, liveHandles: s.liveHandles, commands: s.commands } : undefined;
  }

  /** The TPM's loaded transient objects (by anyone), for leak tests. */
  transientHandles(): Promise<number[]> {
    return this.#withTpm((c) => c.esys.transientHandles(), false, undefined, false);
  }

  // ── plumbing ─────────────────────────────────────────────────────────────────────────────────

  #exclusive<T>(body: () => Promise<T>): Promise<T> {
    const next = this.#lock.then(body, body);
    this.#lock = next.catch(() => undefined);
    return next;
  }

  #assertOpen(needUnsealed: boolean): void {
    if (this.#closed) throw new ClosedError('tpm: the root is closed');
    if (this.#destroyed) throw new RootDestroyedError('tpm: this root was destroyed');
    if (needUnsealed && this.sealable && this.#k === undefined) {
      throw new KeystoreSealedError('tpm: the root is sealed; unseal it with its auth value');
    }
  }

  /**
   * What the TPM says it is, from TPM2_GetCapability(TPM_CAP_TPM_PROPERTIES) of the fixed properties
   * TPM_PT_MANUFACTURER (0x105), TPM_PT_VENDOR_STRING_1..4 (0x106..0x109) and
   * TPM_PT_FIRMWARE_VERSION_1/2 (0x10B, 0x10C, as four hex 16-bit halves): e.g. manufacturer "IBM",
   * vendor "SW   TPM" for swtpm.
   * Nothing secret; works sealed.
   */
  async tpmInfo(): Promise<{ manufacturer: string; vendor: string; firmwareVersion: string }> {
    const p = await this.#withTpm((c) => c.esys.properties(TPM_PT_MANUFACTURER, 8), false, undefined, false);
    const text = (...ids: number[]) =>
      ids
        .map((id) => {
          const v = p.get(id) ?? 0;
          return String.fromCharCode(v >>> 24, (v >>> 16) & 0xff, (v >>> 8) & 0xff, v & 0xff);
        })
        .join('')
        .replace(/[^\x20-\x7e]/g, '')
        .trimEnd();
    const f1 = p.get(TPM_PT_MANUFACTURER + 6) ?? 0;
    const f2 = p.get(TPM_PT_MANUFACTURER + 7) ?? 0;
    return {
      manufacturer: text(TPM_PT_MANUFACTURER),
      vendor: text(0x106, 0x107, 0x108, 0x109),
      firmwareVersion: [f1 >>> 16, f1 & 0xffff, f2 >>> 16, f2 & 0xffff].map((n) => n.toString(16)).join('.'),
    };
  }

  async #connect(): Promise<Connection> {
    if (this.#conn && !this.#conn.esys.broken) return this.#conn;
    await this.#drop();
    const esys = await Esys.open({ tcti: this.#tcti, timeoutMs: this.#timeoutMs });
    try {
      const c: Connection = { esys, primary: ESYS_TR.NONE, session: ESYS_TR.NONE };
      await this.#derivePrimary(c);
      if (c.saved) {
        await esys.flushContext(c.primary);
        c.primary = ESYS_TR.NONE;
      }
      this.#conn = c;
      return c;
    } catch (err) {
      await esys.close();
      throw err;
    }
  }

  /** The storage key, loaded (re-derived, or found at its handle) and checked to be the store's;
   * a transient one's context is saved in `c.saved`. */
  async #derivePrimary(c: Connection): Promise<void> {
    const r = this.#record;
    let name: Uint8Array;
    if (r.handle !== undefined) {
      c.primary = await c.esys.trFromTPMPublic(r.handle);
      name = (await c.esys.readPublic(c.primary)).name;
    } else {
      const p = await c.esys.createPrimary(ESYS_TR.RH_OWNER, storagePrimaryTemplate(r.alg));
      c.primary = p.handle;
      name = p.name;
    }
    if (hex(name) !== r.primaryName) {
      throw new RootDeviceError(
        "tpm: this TPM's storage key is not the one the store's root was made with (another TPM, or its owner hierarchy was cleared); nothing was changed",
      );
    }
    if (r.handle === undefined) c.saved = await c.esys.contextSave(c.primary);
  }

  /** Load what an operation needs: the storage key (from its saved context) and a new salted
   * HMAC session. */
  async #begin(c: Connection): Promise<void> {
    if (c.saved) {
      try {
        c.primary = await c.esys.contextLoad(c.saved);
      } catch (err) {
        if (!(err instanceof TssError) || isTpmMemory(err)) throw err;
        // The saved context no longer loads (the TPM was reset): derive the key again.
        await this.#derivePrimary(c);
      }
    }
    try {
      c.session = await c.esys.startAuthSession({ tpmKey: c.primary, type: 'hmac' });
    } catch (err) {
      await this.#end(c);
      throw err;
    }
  }

  /** Flush what #begin loaded (only our own handles). */
  async #end(c: Connection): Promise<void> {
    if (c.session !== ESYS_TR.NONE) {
      await c.esys.flushContext(c.session).catch(() => undefined);
      c.session = ESYS_TR.NONE;
    }
    if (c.saved && c.primary !== ESYS_TR.NONE) {
      await c.esys.flushContext(c.primary).catch(() => undefined);
      c.primary = ESYS_TR.NONE;
    }
  }

  /** One operation: under the cross-process lock, on a connection, with the storage key and a
   * session loaded for it only when `keyed`. */
  async #operate<T>(body: (c: Connection) => Promise<T>, keyed: boolean): Promise<T> {
    const lock = this.#lockFile ? await lockDevice(this.#lockFile, lockWaitMs(this.#timeoutMs)) : undefined;
    try {
      const c = await this.#connect();
      if (!keyed) return await body(c);
      await this.#begin(c);
      try {
        return await body(c);
      } finally {
        await this.#end(c);
      }
    } finally {
      lock?.release();
    }
  }

  /** #operate, retried with backoff while the TPM is out of object or session memory (another
   * client's handles: never flushed by us), and once on a new connection after a lost one. */
  async #attempt<T>(body: (c: Connection) => Promise<T>, keyed: boolean): Promise<T> {
    for (let attempt = 0; ; attempt++) {
      try {
        return await this.#operate(body, keyed);
      } catch (err) {
        if (!isTpmMemory(err) || attempt >= MEMORY_RETRIES || this.#closed) throw err;
        await sleep((5 << attempt) * (0.5 + Math.random()));
      }
    }
  }

  async #drop(): Promise<void> {
    const c = this.#conn;
    this.#conn = undefined;
    if (c) await c.esys.close().catch(() => undefined);
  }

  /**
   * Run `body` on the TPM, alone. A lost connection (TssUnavailableError) is reconnected and the
   * body retried once. `needUnsealed`: refuse while sealed, and refuse the result when the root
   * was sealed while the body ran (the result is wiped by `onSealedResult`).
   */
  #withTpm<T>(
    body: (c: Connection) => Promise<T>,
    needUnsealed: boolean,
    onSealedResult?: (v: T) => void,
    keyed = true,
  ): Promise<T> {
    this.#assertOpen(needUnsealed);
    const generation = this.#generation;
    return this.#exclusive(async () => {
      this.#assertOpen(needUnsealed);
      if (needUnsealed && generation !== this.#generation) throw new KeystoreSealedError('tpm: the root was sealed');
      let result: T;
      try {
        result = await this.#attempt(body, keyed);
      } catch (err) {
        // A busy lock (command "flock") is not a lost connection: no retry.
        if (!(err instanceof TssUnavailableError) || err.command === 'flock' || this.#closed) throw err;
        await this.#drop();
        try {
          result = await this.#attempt(body, keyed);
        } catch (again) {
          if (again instanceof TssUnavailableError) await this.#drop();
          throw again;
        }
      }
      if (needUnsealed && (generation !== this.#generation || this.#k === undefined) && this.sealable) {
        onSealedResult?.(result);
        throw new KeystoreSealedError('tpm: the root was sealed');
      }
      return result;
    });
  }

  #kekAuth(aad: Uint8Array): Uint8Array {
    const h = this.#k ? createHmac('sha256', this.#k) : createHash('sha256');
    h.update(KEK_AUTH_DOMAIN);
    h.update(aad);
    return new Uint8Array(h.digest());
  }

  #pcrSelection(): { hash: number; pcrs: number[] }[] {
    return [{ hash: TPM2_ALG.SHA256, pcrs: this.#record.pcrs ?? [] }];
  }

  /** The policy digest for the PCRs' current values + PolicyAuthValue (a trial session). */
  async #pcrPolicy(c: Connection): Promise<Uint8Array> {
    const trial = await c.esys.startAuthSession({ type: 'trial', symmetric: null });
    try {
      await c.esys.policyPCR(trial, this.#pcrSelection());
      await c.esys.policyAuthValue(trial);
      return await c.esys.policyGetDigest(trial);
    } finally {
      await c.esys.flushContext(trial);
    }
  }

  // ── wrap / unwrap ────────────────────────────────────────────────────────────────────────────

  async wrapKey(material: Uint8Array, aad: Uint8Array): Promise<Uint8Array> {
    if (!(material instanceof Uint8Array) || material.length < 1 || material.length > 128) {
      throw new InvalidInputError('tpm: key material is 1..128 bytes');
    }
    if (!(aad instanceof Uint8Array)) throw new InvalidInputError('tpm: associated data must be a Uint8Array');
    return this.#withTpm(async (c) => {
      const auth = this.#kekAuth(aad);
      try {
        const policy = this.#record.pcrs ? await this.#pcrPolicy(c) : undefined;
        await c.esys.setSessionAttributes(c.session, TPMA_SESSION.CONTINUESESSION | TPMA_SESSION.DECRYPT);
        const sealed = await c.esys.create(c.primary, sealedObjectTemplate({ noDA: true, authPolicy: policy }), {
          userAuth: auth,
          data: material,
          sessions: [c.session],
        });
        return new Uint8Array(Buffer.concat([sealed.outPublic, sealed.outPrivate]));
      } finally {
        wipe(auth);
      }
    }, true);
  }

  async unwrapKey(wrapped: Uint8Array, aad: Uint8Array): Promise<Uint8Array> {
    if (!(wrapped instanceof Uint8Array)) throw new InvalidInputError('tpm: a wrapped key must be a Uint8Array');
    if (!(aad instanceof Uint8Array)) throw new InvalidInputError('tpm: associated data must be a Uint8Array');
    if (wrapped.length > 4096) throw new FormatError('tpm: a wrapped key is at most 4096 bytes');
    const { outPublic, outPrivate } = splitSealedBlob(wrapped);
    return this.#withTpm(
      async (c) => {
        let item: EsysTR;
        try {
          // Load needs no parameter encryption (the private part is encrypted under the root key).
          item = await c.esys.load(c.primary, outPrivate, outPublic, [ESYS_TR.PASSWORD]);
        } catch (err) {
          throw this.#unwrapError(err);
        }
        const auth = this.#kekAuth(aad);
        try {
          await c.esys.trSetAuth(item, auth);
          let out: Uint8Array;
          if (this.#record.pcrs) {
            const policy = await c.esys.startAuthSession({ tpmKey: c.primary, type: 'policy' });
            try {
              await c.esys.policyPCR(policy, this.#pcrSelection());
              await c.esys.policyAuthValue(policy);
              await c.esys.setSessionAttributes(policy, TPMA_SESSION.CONTINUESESSION | TPMA_SESSION.ENCRYPT);
              out = await c.esys.unseal(item, [policy]);
            } finally {
              await c.esys.flushContext(policy).catch(() => undefined);
            }
          } else {
            await c.esys.setSessionAttributes(c.session, TPMA_SESSION.CONTINUESESSION | TPMA_SESSION.ENCRYPT);
            out = await c.esys.unseal(item, [c.session]);
          }
          if (out.length < 16 || out.length > 64) {
            wipe(out);
            throw new DecryptionError('root');
          }
          return out;
        } catch (err) {
          throw this.#unwrapError(err);
        } finally {
          wipe(auth);
          await c.esys.flushContext(item).catch(() => undefined);
        }
      },
      true,
      (m) => wipe(m),
    );
  }

  #unwrapError(err: unknown): unknown {
    if (err instanceof TssUnavailableError || err instanceof TssLockoutError) return err;
    if (isTpmRc(err, 'TPM_RC_POLICY_FAIL') || isTpmRc(err, 'TPM_RC_PCR_CHANGED')) {
      return new TpmPcrPolicyError(
        'tpm: the PCR values differ from those the key was sealed under (TPM_RC_POLICY_FAIL); it cannot be unsealed in this machine state',
      );
    }
    // TPM warnings (format zero, 0x900: out of object memory, retry, testing…) are about the TPM's
    // state, not the blob: they stay device errors.
    if (err instanceof TssError && err.layer === 0 && (err.base & 0x900) === 0x900) return err;
    if (err instanceof TssError || err instanceof InvalidInputError || err instanceof DecryptionError) {
      return new DecryptionError('root');
    }
    return err;
  }

  // ── seal / unseal / destroy ──────────────────────────────────────────────────────────────────

  #seal(): void {
    this.#generation++;
    if (this.#k) wipe(this.#k);
    this.#k = undefined;
    for (const l of [...this.#listeners]) l();
  }

  /**
   * Change the root's auth value (TPM2_ObjectChangeAuth on the check object, in the salted session
   * with the new value encrypted on the way in): `current` must open it (UnsealError otherwise).
   * The TPM keeps nothing; the new check object is written to `store` in one write, the instant the
   * new value takes over (until then the old check object, and so the old value, still opens it).
   */
  async changeAuth(store: KeyStore, current: Uint8Array, next: Uint8Array): Promise<void> {
    for (const v of [current, next]) {
      if (!(v instanceof Uint8Array) || v.length < AUTH_MIN || v.length > AUTH_MAX) {
        throw new InvalidInputError(`tpm: the root auth value is ${AUTH_MIN}..${AUTH_MAX} bytes`);
      }
    }
    const record = this.#record;
    if (!record.check) throw new InvalidInputError('tpm: this root has no auth value to change');
    const check = await this.#withTpm(async (c) => {
      const blob = Buffer.from(record.check as string, 'base64');
      const { outPublic, outPrivate } = splitSealedBlob(new Uint8Array(blob));
      const item = await c.esys.load(c.primary, outPrivate, outPublic, [ESYS_TR.PASSWORD]);
      try {
        await c.esys.trSetAuth(item, current);
        await c.esys.setSessionAttributes(c.session, TPMA_SESSION.CONTINUESESSION | TPMA_SESSION.DECRYPT);
        const priv = await c.esys.objectChangeAuth(item, c.primary, next, [c.session]);
        return Buffer.concat([outPublic, priv]).toString('base64');
      } catch (err) {
        if (isTpmRc(err, 'TPM_RC_AUTH_FAIL') || isTpmRc(err, 'TPM_RC_BAD_AUTH')) {
          throw new UnsealError('tpm: the auth value does not open this TPM root');
        }
        throw err;
      } finally {
        await c.esys.flushContext(item).catch(() => undefined);
      }
    }, false);
    const updated: TpmRootRecord = { ...record, check, idTag: record.idTag ?? checkTagOf(record.check) };
    await store.putMeta(TPM_ROOT_META_NAME, encodeTpmRecord(updated));
    this.#record = updated;
  }

  /** K from the check object, authorized with `secret` (UnsealError when wrong). */
  async #openCheck(c: Connection, secret: Uint8Array): Promise<Uint8Array> {
    const blob = Buffer.from(this.#record.check as string, 'base64');
    const { outPublic, outPrivate } = splitSealedBlob(new Uint8Array(blob));
    const item = await c.esys.load(c.primary, outPrivate, outPublic, [ESYS_TR.PASSWORD]);
    try {
      await c.esys.trSetAuth(item, secret);
      await c.esys.setSessionAttributes(c.session, TPMA_SESSION.CONTINUESESSION | TPMA_SESSION.ENCRYPT);
      return await c.esys.unseal(item, [c.session]);
    } catch (err) {
      if (isTpmRc(err, 'TPM_RC_AUTH_FAIL') || isTpmRc(err, 'TPM_RC_BAD_AUTH')) {
        throw new UnsealError('tpm: the auth value does not open this TPM root');
      }
      throw err;
    } finally {
      await c.esys.flushContext(item).catch(() => undefined);
    }
  }

  async #unseal(secret: Uint8Array): Promise<void> {
    if (!(secret instanceof Uint8Array) || secret.length < AUTH_MIN || secret.length > AUTH_MAX) {
      throw new InvalidInputError(`tpm: the root auth value is ${AUTH_MIN}..${AUTH_MAX} bytes`);
    }
    const k = await this.#withTpm((c) => this.#openCheck(c, secret), false);
    if (this.#closed || this.#destroyed) {
      wipe(k);
      throw new ClosedError('tpm: the root is closed');
    }
    if (this.#k) wipe(this.#k);
    this.#k = k;
  }

  async #destroy(store: KeyStore, consent: Uint8Array, now: Date): Promise<void> {
    if (this.#closed) throw new ClosedError('tpm: the root is closed');
    if (!(await store.getMeta(TPM_ROOT_META_NAME))) {
      if (await store.getMeta(TPM_TOMBSTONE_META_NAME)) return; // finished already
      throw new KeyStoreError('tpm: this key store has no TPM root');
    }
    const k = await this.#withTpm((c) => this.#openCheck(c, consent), false);
    wipe(k);
    await store.putMeta(
      TPM_TOMBSTONE_META_NAME,
      new Uint8Array(
        Buffer.from(JSON.stringify({ v: 1, kind: 'tpm', rootId: this.#id, destroyedAt: now.toISOString() }), 'utf8'),
      ),
    );
    const handle = this.#record.handle;
    if (handle !== undefined) {
      await this.#withTpm(async (c) => {
        await c.esys.evictControl(ESYS_TR.RH_OWNER, c.primary, handle);
      }, false);
      await this.#drop();
    }
    await store.deleteMeta(TPM_ROOT_META_NAME);
    this.#seal();
    this.#destroyed = true;
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    this.#seal();
    await this.#lock.catch(() => undefined);
    await this.#drop();
  }
}
