/**
 * Split knowledge for a device root's unlocking secret (docs/split-knowledge.md §11): the PKCS#11
 * token's user PIN or the TPM root's auth value is split M-of-N among custodians at init, so that
 * no single person can log in to the token or open the TPM root. The split, the padding and the
 * keyed verifier are @keywarden/split-knowledge's (`splitHardwareSecret`, purposes `hsm-pin` and
 * `tpm-auth`: a forged or foreign share never reaches the device as a guessed PIN); the hand-out,
 * the custodians and the crash-safe staging are the software root's split init's (split.ts).
 *
 *   PKCS#11: the user PIN comes from the URI's pin-source (or the caller's `secret`, a prompt); the
 *            URI recorded in D/root.uri has its pin-source removed, so nothing in the folder leads
 *            to the PIN. (The token keeps its PIN: change it first if people know it.)
 *   TPM:     the auth value is 32 bytes drawn from the CSPRNG at init; it never exists anywhere but
 *            in memory during the init and during an unseal, and as shares.
 *
 * The share set's description (not secret: id, M, N, purpose, a commitment to each share) is the
 * store's meta `device/secret-shares`. The folder's agent collects a quorum, recombines the secret
 * in memory, unseals the root with it and wipes it (@keywarden/agent, `secretShares`).
 *
 * Crash safety, as for the split init: the store is built as D/keystore.db.staged; the order is
 * split → record (share set + pending hand-out in the staged store) → every share handed out and
 * fsynced → the root made in the device → the staged store moved into place → the pending record
 * dropped. A kill at any instant leaves either nothing that looks initialized, or the finished
 * folder; and either nothing in the device, or every share written: `init --resume` finishes an
 * init whose root was made, `init --abort` removes the rest — with a quorum of the shares
 * (`--share-file`) it also logs in and destroys the root object the init made; without, it names
 * the object. A forged share never reaches the device from here, so nothing counts towards a
 * lockout; the PIN given at init is tried once, when the root is made (a wrong one undoes the
 * hand-out).
 */
import { randomFillSync } from 'node:crypto';
import { chmod, mkdir, open, readFile, rename, rm } from 'node:fs/promises';
import * as path from 'node:path';
import {
  CeremonyError,
  FormatError,
  InvalidInputError,
  type KeyStore,
  openRoot,
  parsePkcs11Uri,
  type RootDescription,
  type RootOfTrust,
  readPkcs11Pin,
  type RootSecretHooks,
  rootSecretHooks,
  rootUriScheme,
  UnsealError,
  wipe,
} from '@keywarden/core';
import {
  combineHardwareSecret,
  encryptShareForCustodian,
  type HardwareSecretPurpose,
  handOutDigest,
  type PendingCeremony,
  type ShareSetInfo,
  shareCommitment,
  splitHardwareSecret,
} from '@keywarden/split-knowledge';
import { SqliteKeyStore } from '@keywarden/store-sqlite';
import { readStagedPending } from './pending.js';
import { fsyncPath, messageOf } from './_files.js';
import {
  exists,
  openStoreFile,
  refuseExistingStore,
  refusePendingPostgresInit,
  removeStoreFiles,
  ROOT_URI_FILE,
  SHARES_OUT_DIR,
  type StoreLocation,
  stagedStorePath,
} from './layout.js';
import {
  askQuorum,
  type CeremonyHooks,
  type CustodianKeys,
  checkHandOutFiles,
  checkShareParameters,
  clearAbandonedInit,
  custodiansFor,
  descriptionOf,
  HandOut,
  type HandOutDescription,
  type HandOutResult,
  handOutResultOf,
  isCallback,
  type QuorumSource,
  removeHandOutFiles,
  renameStagedStore,
  type ShareDestination,
} from './split.js';

/** Meta record: the share set of the device root's unlocking secret (JSON, not secret). */
export const DEVICE_SECRET_SHARES_META = 'device/secret-shares';
/** Meta record of a device init whose shares are being handed out (in the staged store only). */
export const DEVICE_PENDING_INIT_META = 'device/pending-init';
/**
 * Meta record (staged store only) of a device init's change of the token's user PIN to the fresh
 * one that was split: "setting" is written (and fsynced) before C_SetPIN, "set" after. Absent: the
 * PIN was not touched. "setting": either PIN may be the token's; resume and abort find out by
 * logging in with the new one (from a quorum of its shares).
 */
export const DEVICE_SECRET_CHANGE_META = 'device/secret-change';
/** The TPM auth value drawn at init (the TPM root takes 8..32 bytes). */
const TPM_AUTH_BYTES = 32;
/** The meta records in which the device backends keep their root record. */
const DEVICE_ROOT_RECORDS: Readonly<Record<string, string>> = { pkcs11: 'root', tpm: 'tpm-root' };

const enc = new TextEncoder();

/** The share set of a device root's PIN / auth value, as the store records it. */
export interface DeviceSecretShares {
  format: 1;
  purpose: HardwareSecretPurpose;
  shareSetId: string;
  threshold: number;
  shares: number;
  /** The commitment to each share (split-knowledge's shareCommitment), share order. */
  commitments: string[];
  createdAt: string;
}

interface DevicePendingInit {
  format: 1;
  kind: 'init';
  device: string;
  createdAt: string;
  shareSet: ShareSetInfo;
  digests: string[];
  handOut: HandOutDescription;
  /**
   * PKCS#11: the shares are of a fresh PIN that this init sets on the token (C_SetPIN) once they
   * are all written; `from` is where the PIN given at init came from (the URI's pin-source, not
   * the PIN: "env:NAME", "file:/PATH"), for an abort that sets it back. Absent: a prompt.
   */
  pinChange?: { from?: string };
}

/** Which share purpose a device scheme's secret has. */
export function secretPurposeOf(scheme: string): HardwareSecretPurpose {
  if (scheme === 'pkcs11') return 'hsm-pin';
  if (scheme === 'tpm') return 'tpm-auth';
  throw new InvalidInputError(`init: a ${scheme}: root has no PIN or auth value to split`);
}

/** Decode the share-set record (FormatError when it is not one). */
export function decodeDeviceSecretShares(bytes: Uint8Array): DeviceSecretShares {
  let r: Partial<DeviceSecretShares>;
  try {
    r = JSON.parse(Buffer.from(bytes).toString('utf8')) as Partial<DeviceSecretShares>;
  } catch {
    throw new FormatError('device: the secret share-set record is not valid JSON');
  }
  if (
    r?.format !== 1 ||
    (r.purpose !== 'hsm-pin' && r.purpose !== 'tpm-auth') ||
    typeof r.shareSetId !== 'string' ||
    !/^ss_[A-Za-z0-9_-]{16}$/.test(r.shareSetId) ||
    !Number.isInteger(r.threshold) ||
    !Number.isInteger(r.shares) ||
    (r.threshold as number) < 2 ||
    (r.threshold as number) > (r.shares as number) ||
    !Array.isArray(r.commitments) ||
    r.commitments.length !== r.shares ||
    r.commitments.some((c) => typeof c !== 'string')
  ) {
    throw new FormatError('device: the secret share-set record is malformed');
  }
  return r as DeviceSecretShares;
}

/** The store's device-secret share set, if its root's secret was split. */
export async function readDeviceSecretShares(store: KeyStore): Promise<DeviceSecretShares | undefined> {
  const bytes = await store.getMeta(DEVICE_SECRET_SHARES_META);
  return bytes ? decodeDeviceSecretShares(bytes) : undefined;
}

/** The share set of D's device root's secret, read-only; undefined for a folder without one. */
export async function folderDeviceSecretShares(loc: StoreLocation): Promise<DeviceSecretShares | undefined> {
  return readLiveStore(loc, readDeviceSecretShares);
}

/**
 * `read` on D's live store file opened read-only (openStoreFile), closed after; undefined when D has
 * no store file yet (a device root lives in D/keystore.db).
 */
async function readLiveStore<T>(loc: StoreLocation, read: (store: KeyStore) => Promise<T>): Promise<T | undefined> {
  if (!(await exists(loc.dbPath))) return undefined;
  const store = openStoreFile(loc, 'read');
  try {
    return await read(store);
  } finally {
    await store.close();
  }
}

/** The URI without the query attributes that say where the PIN / auth value comes from. */
export function withoutSecretSource(uri: string): string {
  const q = uri.indexOf('?');
  if (q === -1) return uri;
  const kept = uri
    .slice(q + 1)
    .split('&')
    .filter((p) => p !== '' && !/^(pin-source|pin-value|auth-env|auth-file)=/i.test(p));
  return kept.length > 0 ? `${uri.slice(0, q)}?${kept.join('&')}` : uri.slice(0, q);
}

/** The pending device init recorded in a staged store (undefined: none, or not a device init). */
export async function readDevicePendingInit(store: KeyStore): Promise<PendingCeremony | undefined> {
  const bytes = await store.getMeta(DEVICE_PENDING_INIT_META);
  if (!bytes) return undefined;
  let p: Partial<DevicePendingInit>;
  try {
    p = JSON.parse(Buffer.from(bytes).toString('utf8')) as Partial<DevicePendingInit>;
  } catch {
    throw new FormatError('device: the pending init record is not valid JSON');
  }
  if (p?.format !== 1 || p.kind !== 'init' || !p.shareSet || !Array.isArray(p.digests) || !p.handOut) {
    throw new FormatError('device: the pending init record is malformed');
  }
  // The fields the hand-out checks and the status report read have the split init's shape.
  return p as unknown as PendingCeremony;
}

// ── Init ──────────────────────────────────────────────────────────────────────────────────────

export interface DeviceSplitInitOptions extends CeremonyHooks {
  /** The root URI (`pkcs11:…?pin-source=…`, `tpm:…`); recorded in D/root.uri without its PIN source. */
  uri: string;
  /** PKCS#11: the user PIN when the URI names no source (a prompt); not modified. */
  secret?: Uint8Array;
  env?: Readonly<Record<string, string | undefined>>;
  shares: number;
  threshold: number;
  custodians?: CustodianKeys;
  /** Where the shares go; default files in D/shares-out. */
  destination?: ShareDestination;
}

export interface DeviceSplitInitResult extends HandOutResult {
  rootId: string;
  description: RootDescription;
  rootUriPath: string;
  /** The URI as recorded (no PIN source). */
  recordedUri: string;
}

/**
 * Create D, a key store and a root in the device, with the device's unlocking secret split M-of-N
 * and handed out (see the file comment). Refuses when D has a key store (KeyStoreError) or an
 * unfinished init (CeremonyPendingError). On an ordinary failure nothing is left behind: the root
 * object made in the device is destroyed again, the share files written are removed.
 */
export async function initDeviceSplitStoreDir(
  loc: StoreLocation,
  options: DeviceSplitInitOptions,
): Promise<DeviceSplitInitResult> {
  const cwd = options.cwd ?? process.cwd();
  const scheme = rootUriScheme(options.uri);
  const purpose = secretPurposeOf(scheme);
  if (/[?&;]pin-value=/i.test(options.uri)) {
    throw new InvalidInputError(
      'init: the root URI carries the PIN (pin-value=); name a pin-source=file:… or env:NAME instead',
    );
  }
  if (/[\r\n]/.test(options.uri)) throw new InvalidInputError('init: a root URI is one line');
  checkShareParameters(options.shares, options.threshold);
  const custodians = await custodiansFor(options.custodians, options.shares);
  await refuseExistingStore(loc);
  await refusePendingPostgresInit(loc);
  await clearAbandonedInit(loc, options);
  const recordedUri = withoutSecretSource(options.uri);

  const given = await secretFor(scheme, options);
  // PKCS#11: the PIN given is only the way in. The PIN that gets split is a fresh random one, set on
  // the token (C_SetPIN) once its shares are all written: nobody who typed the old one knows it.
  let hooks: RootSecretHooks | undefined;
  let typed: Uint8Array | undefined;
  let secret = given;
  if (scheme === 'pkcs11') {
    typed = given;
    try {
      hooks = rootSecretHooks(options.uri);
      const env = options.env ? { env: options.env } : {};
      if (!(await hooks.check(options.uri, typed, env))) {
        throw new UnsealError(
          'init: the token refused the user PIN given (C_Login: CKR_PIN_INCORRECT); nothing was made',
        );
      }
      secret = await hooks.draw(options.uri, env);
    } catch (err) {
      wipe(typed);
      throw err;
    }
  }
  let pinChange: 'none' | 'setting' | 'set' = 'none';
  let store: SqliteKeyStore | undefined;
  let root: RootOfTrust | undefined;
  let handOut: HandOut | undefined;
  const stagedPath = stagedStorePath(loc);
  const uriPath = path.join(loc.dir, ROOT_URI_FILE);
  let activated = false;
  try {
    // Split and encrypt first: a bad custodian key or parameter fails before anything is written.
    const set = await splitHardwareSecret(secret, { shares: options.shares, threshold: options.threshold, purpose });
    const shareSet: ShareSetInfo = {
      shareSetId: set.shareSetId,
      threshold: set.threshold,
      shares: set.shares,
      purpose: set.purpose,
    };
    const commitments = set.encoded.map((s) => shareCommitment(s));
    const texts = custodians ? set.encoded.map((s, i) => encryptShareForCustodian(s, custodians[i]!.pem)) : set.encoded;
    if (custodians) set.encoded.length = 0;

    const created = await mkdir(loc.dir, { recursive: true, mode: 0o700 });
    if (created !== undefined) await chmod(loc.dir, 0o700);
    const destination = options.destination ?? { kind: 'files', dir: path.join(loc.dir, SHARES_OUT_DIR) };
    handOut = await HandOut.plan(destination, options.shares, custodians, cwd);

    await writeUri(uriPath, recordedUri);
    store = SqliteKeyStore.open(stagedPath);
    options.onStep?.('init:store-created');
    const record: DeviceSecretShares = {
      format: 1,
      purpose,
      ...pick(shareSet),
      commitments,
      createdAt: new Date().toISOString(),
    };
    const pending: DevicePendingInit = {
      format: 1,
      kind: 'init',
      device: scheme,
      createdAt: record.createdAt,
      shareSet,
      digests: texts.map(digestOf),
      handOut: handOut.describe(false),
      ...(typed ? { pinChange: pinSourceOf(options.uri) } : {}),
    };
    await store.putMeta(DEVICE_PENDING_INIT_META, enc.encode(JSON.stringify(pending)));
    await store.putMeta(DEVICE_SECRET_SHARES_META, enc.encode(JSON.stringify(record)));
    await chmod(stagedPath, 0o600);
    fsyncPath(stagedPath);
    fsyncPath(loc.dir);
    options.onStep?.('init:recorded');

    // Every share is handed out before the root is made in the device: a kill before this point
    // leaves nothing in the device, a kill after it leaves every share written (resume, or abort
    // with a quorum of them, which destroys the object).
    await handOut.write(texts, shareSet, 'init', options);
    texts.length = 0;
    set.encoded.length = 0;
    options.onStep?.('init:shares-written');

    if (hooks && typed) {
      // The point after which the token opens only with the new PIN: its shares are durable, and
      // the record says a change may have happened (resume and abort then ask the token).
      await store.putMeta(DEVICE_SECRET_CHANGE_META, enc.encode('setting'));
      fsyncPath(stagedPath);
      pinChange = 'setting';
      options.onStep?.('init:pin-changing');
      await hooks.change(recordedUri, typed, secret, options.env ? { env: options.env } : {});
      pinChange = 'set';
      options.onStep?.('init:pin-changed');
      await store.putMeta(DEVICE_SECRET_CHANGE_META, enc.encode('set'));
      fsyncPath(stagedPath);
    }

    root = await openRoot(recordedUri, {
      store,
      create: true,
      secret,
      ...(options.env ? { env: options.env } : {}),
    });
    const description = root.describe();
    fsyncPath(stagedPath);
    options.onStep?.('init:root-created');

    await root.close();
    root = undefined;
    await store.close();
    store = undefined;
    await moveIntoPlace(loc, options);
    activated = true;
    return {
      rootId: description.id,
      description,
      rootUriPath: uriPath,
      recordedUri,
      ...handOut.result(shareSet),
    };
  } catch (err) {
    if (activated || (!(await exists(stagedPath)) && (await exists(loc.dbPath)))) {
      throw new CeremonyError(
        `init: the key store is in place, but the clean-up failed (${messageOf(err)}); run \`keywarden init --resume\``,
        { cause: err },
      );
    }
    if (root && store) {
      // Undo in the device too: the object this init made must not block the next one.
      await root.destroyable?.destroy(store, secret, new Date()).catch(() => {});
    }
    await root?.close().catch(() => {});
    root = undefined;
    if (pinChange !== 'none' && hooks && typed) {
      // The token may take only the new PIN now: set the one given back before its shares go.
      const env = options.env ? { env: options.env } : {};
      const restored = await hooks
        .check(recordedUri, secret, env)
        .then(async (isNew) => {
          if (isNew) await hooks.change(recordedUri, secret, typed, env);
          return true;
        })
        .catch(() => false);
      if (!restored) {
        await store?.close().catch(() => {});
        throw new CeremonyError(
          `init: failed after the token's user PIN was changed to the split one (${messageOf(err)}), and the PIN given could not be set back: its shares are kept; run \`keywarden init --resume --share-file …\` or \`keywarden init --abort --share-file …\` with a quorum of them`,
          { cause: err },
        );
      }
    }
    await store?.close().catch(() => {});
    store = undefined;
    await handOut?.abort();
    await removeStoreFiles(stagedPath);
    await rm(uriPath, { force: true }).catch(() => {});
    await rm(`${uriPath}.tmp`, { force: true }).catch(() => {});
    throw err;
  } finally {
    wipe(secret);
    wipe(typed);
    await root?.close().catch(() => {});
    await store?.close().catch(() => {});
  }
}

/** Where the URI says the PIN comes from ("env:NAME", "file:/PATH"; not the PIN), for an abort. */
function pinSourceOf(uri: string): { from?: string } {
  const parsed = parsePkcs11Uri(uri);
  wipe(parsed.pinValue);
  return parsed.pinSource !== undefined ? { from: parsed.pinSource } : {};
}

function pick(s: ShareSetInfo): Pick<DeviceSecretShares, 'shareSetId' | 'threshold' | 'shares'> {
  return { shareSetId: s.shareSetId, threshold: s.threshold, shares: s.shares };
}

/** The split init's hand-out digest (what a resume checks each share file against). */
function digestOf(text: string): string {
  return handOutDigest(text);
}

/**
 * The secret to split. PKCS#11: the token's user PIN, from the caller or the URI's pin-source
 * (required). TPM: 32 bytes from the CSPRNG; an auth value named by the URI or the caller is
 * refused (with shares, nobody is meant to know it).
 */
async function secretFor(scheme: string, options: DeviceSplitInitOptions): Promise<Uint8Array> {
  if (scheme === 'tpm') {
    if (options.secret !== undefined || /[?&;](auth-env|auth-file)=/i.test(options.uri)) {
      throw new InvalidInputError(
        'init: with --auth-shares the TPM auth value is drawn at random and exists only as shares: drop auth-env=/auth-file= from the URI',
      );
    }
    return randomFillSync(new Uint8Array(TPM_AUTH_BYTES));
  }
  const parsed = parsePkcs11Uri(options.uri);
  try {
    const pin = await readPkcs11Pin(parsed, {
      ...(options.secret ? { secret: options.secret } : {}),
      ...(options.env ? { env: options.env } : {}),
    });
    if (!pin) {
      throw new InvalidInputError(
        'init: splitting the user PIN needs the PIN once: add pin-source=file:/PATH or pin-source=env:NAME to the URI, or run on a terminal to be asked',
      );
    }
    return pin;
  } finally {
    wipe(parsed.pinValue);
  }
}

async function writeUri(uriPath: string, uri: string): Promise<void> {
  const tmp = `${uriPath}.tmp`;
  await rm(tmp, { force: true });
  const fh = await open(tmp, 'wx', 0o600);
  try {
    await fh.chmod(0o600);
    await fh.writeFile(`${uri}\n`, 'utf8');
    await fh.sync();
  } finally {
    await fh.close();
  }
  await rename(tmp, uriPath);
}

/** D/keystore.db.staged becomes D/keystore.db (split.ts's renameStagedStore), then the pending record goes. */
async function moveIntoPlace(loc: StoreLocation, hooks: CeremonyHooks): Promise<void> {
  await renameStagedStore(loc, hooks);
  await dropPendingRecord(loc.dbPath);
  hooks.onStep?.('init:done');
}

async function dropPendingRecord(dbPath: string): Promise<boolean> {
  const store = SqliteKeyStore.open(dbPath, { create: false });
  try {
    if (!(await store.getMeta(DEVICE_PENDING_INIT_META))) return false;
    // The PIN change's record goes first: a rekey reads one in the live store as its own.
    await store.deleteMeta(DEVICE_SECRET_CHANGE_META);
    await store.deleteMeta(DEVICE_PENDING_INIT_META);
    return true;
  } finally {
    await store.close();
  }
}

// ── Resume and abort ──────────────────────────────────────────────────────────────────────────

/** The pending device init in D's staged store, if any (what routes `init --resume/--abort`). */
export async function devicePendingInitOf(loc: StoreLocation): Promise<PendingCeremony | undefined> {
  const stagedPath = stagedStorePath(loc);
  if (!(await exists(stagedPath))) {
    // Stopped between the move into place and the removal of its record: the live store holds it
    // (`init --resume` removes it; the store itself is complete).
    return readLiveStore(loc, readDevicePendingInit);
  }
  const p = await readStagedPending(stagedPath);
  return p && (p as unknown as Partial<DevicePendingInit>).device !== undefined ? p : undefined;
}

export interface DeviceResumeOptions extends CeremonyHooks {
  /** A test quorum of the new shares (required when they went to a callback, e.g. stdout; and
   * when the init stopped while changing the token's PIN to the split one). */
  quorum?: QuorumSource;
  testQuorum?: boolean;
  env?: Readonly<Record<string, string | undefined>>;
  /** The PIN given at init, when it came from a prompt (a PIN change that never happened is made). */
  oldSecret?: () => Promise<Uint8Array | undefined>;
}

export interface DeviceResumeResult extends HandOutResult {
  alreadyActivated: boolean;
  quorumOf?: 'new';
}

/**
 * Finish a device init whose shares were all handed out (`keywarden init --resume`): the root must
 * have been made in the device, every share file must be whole (or a test quorum of the shares
 * must recombine the secret, when they went to a callback), then the store moves into place.
 */
export async function resumeDeviceInit(
  loc: StoreLocation,
  options: DeviceResumeOptions = {},
): Promise<DeviceResumeResult> {
  const cwd = options.cwd ?? process.cwd();
  const stagedPath = stagedStorePath(loc);
  if (!(await exists(stagedPath))) {
    // Stopped after the move into place: the store is complete; only its pending record is left.
    const inPlace = await devicePendingInitOf(loc);
    if (inPlace && (await dropPendingRecord(loc.dbPath))) {
      return { alreadyActivated: true, ...handOutResultOf(inPlace) };
    }
    throw new CeremonyError(`init --resume: no init is pending in ${loc.display}`);
  }
  const store = SqliteKeyStore.open(stagedPath, { create: false });
  let pending: PendingCeremony;
  let quorumOf: 'new' | undefined;
  try {
    const p = await readDevicePendingInit(store);
    if (!p) throw new CeremonyError(`init --resume: no device init is pending in ${loc.display}`);
    pending = p;
    const device = (p as unknown as DevicePendingInit).device;
    if (
      !(await store.getMeta(DEVICE_ROOT_RECORDS[device] ?? 'root')) &&
      (p as unknown as DevicePendingInit).pinChange &&
      (await store.getMeta(DEVICE_SECRET_CHANGE_META))
    ) {
      // Stopped between the hand-out and the root: finish the PIN change, then make the root.
      await finishPinChange(loc, store, p as unknown as DevicePendingInit, options);
      quorumOf = 'new';
    }
    if (!(await store.getMeta(DEVICE_ROOT_RECORDS[device] ?? 'root'))) {
      throw new CeremonyError(
        'init --resume: the earlier init stopped before the root was made in the device; nothing can be resumed: run `keywarden init --abort`, then init again',
      );
    }
    const record = await readDeviceSecretShares(store);
    if (!record)
      throw new CeremonyError('init --resume: the staged store has no share-set record; run `keywarden init --abort`');
    const h = descriptionOf(pending);
    if (quorumOf === undefined && (options.testQuorum || isCallback(h))) {
      const shares = await askQuorum(options.quorum, {
        operation: `init --resume${isCallback(h) ? ' (the shares were printed, so a test quorum must show they were received; or `keywarden init --abort`)' : ''}`,
        title: 'Test quorum',
        which: 'new',
        shareSet: pending.shareSet,
      });
      try {
        wipe(
          await combineHardwareSecret(shares, {
            ...pick(record),
            purpose: record.purpose,
            commitments: record.commitments,
          }),
        );
      } finally {
        shares.length = 0;
      }
      quorumOf = 'new';
    }
  } finally {
    await store.close().catch(() => {});
  }
  const problems = isCallback(descriptionOf(pending)) ? [] : await checkHandOutFiles(pending, cwd);
  if (problems.length > 0) {
    throw new CeremonyError(
      `init --resume: the shares were not all written (${problems.join('; ')}); nothing was activated: run \`keywarden init --abort\`, then init again`,
    );
  }
  await moveIntoPlace(loc, options);
  return { alreadyActivated: false, ...(quorumOf ? { quorumOf } : {}), ...handOutResultOf(pending) };
}

export interface DeviceAbortOptions extends CeremonyHooks {
  /** A quorum of the shares written, to log in and destroy the root object the init made (and set
   * the token's user PIN back to the one given at init, when the init had changed it). */
  quorum?: QuorumSource;
  env?: Readonly<Record<string, string | undefined>>;
  /** The PIN given at init, when it came from a prompt. */
  oldSecret?: () => Promise<Uint8Array | undefined>;
}

/**
 * Remove an unfinished device init (`keywarden init --abort`): the root object it made in the
 * device (destroyed when a quorum of its shares is given; else named, to be removed by hand or
 * left), its share files, its staged store and D/root.uri. Returns one line per thing done.
 */
export async function abortDeviceInit(loc: StoreLocation, options: DeviceAbortOptions = {}): Promise<string[]> {
  const cwd = options.cwd ?? process.cwd();
  const stagedPath = stagedStorePath(loc);
  const uriPath = path.join(loc.dir, ROOT_URI_FILE);
  if (!(await exists(stagedPath))) {
    if (await devicePendingInitOf(loc)) {
      throw new CeremonyError(
        `init --abort: the init had already put the key store in place in ${loc.display} (it stopped before its last clean-up), so there is nothing to undo: run \`keywarden init --resume\` to finish it`,
      );
    }
    throw new CeremonyError(`init --abort: no init is pending in ${loc.display}`);
  }
  const notes: string[] = [];
  let pending: PendingCeremony | undefined;
  const store = SqliteKeyStore.open(stagedPath, { create: false });
  try {
    pending = await readDevicePendingInit(store);
    const device = (pending as unknown as DevicePendingInit | undefined)?.device;
    const rootRecord = device ? await store.getMeta(DEVICE_ROOT_RECORDS[device] ?? 'root') : undefined;
    const changing =
      (pending as unknown as DevicePendingInit | undefined)?.pinChange !== undefined &&
      (await store.getMeta(DEVICE_SECRET_CHANGE_META)) !== undefined;
    if (changing) {
      // The token may open only with the new PIN, whose shares this abort would remove: it first
      // logs in with them (a quorum), destroys the root object if one was made, and sets the PIN
      // given at init back. Without a quorum nothing is removed.
      notes.push(...(await undoPinChange(store, uriPath, pending as unknown as DevicePendingInit, options)));
    } else if (rootRecord) notes.push(...(await destroyStagedRoot(store, uriPath, options)));
  } finally {
    await store.close().catch(() => {});
  }
  notes.push(...(await removeHandOutFiles(pending, cwd)));
  await removeStoreFiles(stagedPath);
  await rm(uriPath, { force: true });
  fsyncPath(loc.dir);
  return notes;
}

/** The URI D/root.uri records (CeremonyError when it is gone). */
async function recordedUriAt(uriPath: string, operation: string): Promise<string> {
  try {
    return (await readFile(uriPath, 'utf8')).replace(/\r?\n$/, '');
  } catch {
    throw new CeremonyError(`${operation}: D/root.uri is gone, so the token cannot be found; nothing was changed`);
  }
}

/** The new secret, recombined from a quorum of the staged share set (checked against its commitments). */
async function stagedQuorumSecret(
  store: KeyStore,
  quorum: QuorumSource | undefined,
  operation: string,
  why: string,
): Promise<Uint8Array> {
  const record = await readDeviceSecretShares(store);
  if (!record) throw new CeremonyError(`${operation}: the staged store has no share-set record`);
  if (typeof quorum !== 'function') {
    throw new CeremonyError(
      `${operation}: ${why}: give a quorum of the new shares (--share-file); nothing was changed`,
    );
  }
  return quorumSecretOf(record, quorum, { operation, title: 'The new user PIN', which: 'new' });
}

/** The PIN given at init: from the source the pending record names, else the caller's prompt. */
async function pinGivenAtInit(
  pending: DevicePendingInit,
  options: { env?: Readonly<Record<string, string | undefined>>; oldSecret?: () => Promise<Uint8Array | undefined> },
  operation: string,
): Promise<Uint8Array> {
  const from = pending.pinChange?.from;
  const pin =
    from !== undefined
      ? await readPkcs11Pin(
          { pinSource: from, vendorPath: {}, vendorQuery: {} },
          options.env ? { env: options.env } : {},
        )
      : await options.oldSecret?.();
  if (!pin) {
    throw new CeremonyError(
      `${operation}: the user PIN given at init is needed (${from !== undefined ? `its source ${from.replace(/^file:.*/, 'file:…')} gives none` : 'it was typed: run on a terminal'}); nothing was changed`,
    );
  }
  return pin;
}

/**
 * `init --resume` of an init stopped between the hand-out and the root: the token's PIN becomes
 * the new one (unless it already is: a login with it tells), then the root is made in the device.
 */
async function finishPinChange(
  loc: StoreLocation,
  store: SqliteKeyStore,
  pending: DevicePendingInit,
  options: DeviceResumeOptions,
): Promise<void> {
  const operation = 'init --resume';
  const uri = await recordedUriAt(path.join(loc.dir, ROOT_URI_FILE), operation);
  const hooks = rootSecretHooks(uri);
  const env = options.env ? { env: options.env } : {};
  const secret = await stagedQuorumSecret(
    store,
    options.quorum,
    operation,
    "the init stopped while setting the token's user PIN to the split one",
  );
  try {
    if (!(await hooks.check(uri, secret, env))) {
      const old = await pinGivenAtInit(pending, options, operation);
      try {
        await hooks.change(uri, old, secret, env);
      } finally {
        wipe(old);
      }
    }
    options.onStep?.('init:pin-changed');
    await store.putMeta(DEVICE_SECRET_CHANGE_META, enc.encode('set'));
    const root = await openRoot(uri, { store, create: true, secret, ...env });
    await root.close();
    fsyncPath(stagedStorePath(loc));
    options.onStep?.('init:root-created');
  } finally {
    wipe(secret);
  }
}

/** `init --abort` of an init that may have changed the token's PIN (see abortDeviceInit). */
async function undoPinChange(
  store: KeyStore,
  uriPath: string,
  pending: DevicePendingInit,
  options: DeviceAbortOptions,
): Promise<string[]> {
  const operation = 'init --abort';
  const uri = await recordedUriAt(uriPath, operation);
  const hooks = rootSecretHooks(uri);
  const env = options.env ? { env: options.env } : {};
  const secret = await stagedQuorumSecret(
    store,
    options.quorum,
    operation,
    "the init had begun setting the token's user PIN to the split one, so its shares may be the only way into the token",
  );
  const notes: string[] = [];
  try {
    if (!(await hooks.check(uri, secret, env))) return notes; // the PIN given at init is still the token's
    if (await store.getMeta(DEVICE_ROOT_RECORDS[pending.device] ?? 'root')) {
      const root = await openRoot(uri, { store, secret, ...env });
      try {
        await root.destroyable?.destroy(store, secret, new Date());
      } finally {
        await root.close().catch(() => {});
      }
      notes.push(`destroyed the root object this init made (${describeObject(uri)})`);
    }
    const old = await pinGivenAtInit(pending, options, operation);
    try {
      await hooks.change(uri, secret, old, env);
    } finally {
      wipe(old);
    }
    notes.push("set the token's user PIN back to the one given at init");
  } finally {
    wipe(secret);
  }
  return notes;
}

async function destroyStagedRoot(store: KeyStore, uriPath: string, options: DeviceAbortOptions): Promise<string[]> {
  const record = await readDeviceSecretShares(store);
  let uri: string;
  try {
    uri = (await readFile(uriPath, 'utf8')).replace(/\r?\n$/, '');
  } catch {
    return ['the device may keep the root object this init made (D/root.uri is gone): remove it by hand'];
  }
  const where = describeObject(uri);
  if (!record || typeof options.quorum !== 'function') {
    return [
      `the device keeps the root object this init made (${where}): give \`init --abort\` a quorum of the shares written (--share-file) to destroy it, or remove it by hand`,
    ];
  }
  const shares = await askQuorum(options.quorum, {
    operation: 'init --abort',
    title: 'Destroying the root object',
    which: 'new',
    shareSet: { ...pick(record), purpose: record.purpose },
  });
  let secret: Uint8Array | undefined;
  try {
    secret = await combineHardwareSecret(shares, {
      ...pick(record),
      purpose: record.purpose,
      commitments: record.commitments,
    });
  } finally {
    shares.length = 0;
  }
  try {
    const root = await openRoot(uri, { store, secret, ...(options.env ? { env: options.env } : {}) });
    try {
      if (!root.destroyable) return [`the device keeps the root object (${where}): this root cannot be destroyed`];
      await root.destroyable.destroy(store, secret, new Date());
    } finally {
      await root.close().catch(() => {});
    }
  } finally {
    wipe(secret);
  }
  return [`destroyed the root object this init made (${where})`];
}

/** Non-secret: which object in which device (no module path, no query). */
function describeObject(uri: string): string {
  const q = uri.indexOf('?');
  return q === -1 ? uri : uri.slice(0, q);
}

// ── Rekey ─────────────────────────────────────────────────────────────────────────────────────

/** Meta record of a rekey of the device's secret whose new shares are being handed out. */
export const DEVICE_PENDING_REKEY_META = 'device/pending-rekey';

interface DevicePendingRekey {
  format: 1;
  kind: 'rekey';
  device: string;
  createdAt: string;
  shareSet: ShareSetInfo;
  digests: string[];
  handOut: HandOutDescription;
  /** The new set's record, made the store's `device/secret-shares` once the device has the new secret. */
  record: DeviceSecretShares;
  previous: ShareSetInfo;
}

export interface DeviceRekeyOptions extends CeremonyHooks {
  /** New N and M (default: the current N, and M capped at N). */
  shares?: number;
  threshold?: number;
  custodians?: CustodianKeys;
  destination?: ShareDestination;
  /** A quorum of the CURRENT shares. */
  quorum?: QuorumSource;
  env?: Readonly<Record<string, string | undefined>>;
}

export interface DeviceRekeyResult extends HandOutResult {
  previous: ShareSetInfo;
}

/** A pending rekey of a device's secret, as `keywarden status` shows it (nothing secret). */
export interface DevicePendingRekeyInfo {
  /** The new share set. */
  shareSet: ShareSetInfo;
  /** When the rekey started (ISO 8601). */
  createdAt: string;
  /** Activated only after a test quorum of the new shares (`rekey --verify-quorum`). */
  testQuorum: boolean;
}

/** The pending rekey of D's device secret, if any (what routes `rekey --resume/--abort`, and what
 * `keywarden status` shows). */
export async function devicePendingRekeyOf(loc: StoreLocation): Promise<DevicePendingRekeyInfo | undefined> {
  const p = await readLiveStore(loc, readPendingRekey);
  return p && { shareSet: p.shareSet, createdAt: p.createdAt, testQuorum: p.handOut.requireNewQuorum === true };
}

async function readPendingRekey(store: KeyStore): Promise<DevicePendingRekey | undefined> {
  const bytes = await store.getMeta(DEVICE_PENDING_REKEY_META);
  if (!bytes) return undefined;
  let p: Partial<DevicePendingRekey>;
  try {
    p = JSON.parse(Buffer.from(bytes).toString('utf8')) as Partial<DevicePendingRekey>;
  } catch {
    throw new FormatError('device: the pending rekey record is not valid JSON');
  }
  if (p?.format !== 1 || p.kind !== 'rekey' || !p.shareSet || !Array.isArray(p.digests) || !p.handOut || !p.record) {
    throw new FormatError('device: the pending rekey record is malformed');
  }
  decodeDeviceSecretShares(enc.encode(JSON.stringify(p.record)));
  return p as DevicePendingRekey;
}

/** The device's secret for a quorum of the given share set (checked against its commitments). */
async function quorumSecretOf(
  record: DeviceSecretShares,
  quorum: QuorumSource | undefined,
  request: { operation: string; title: string; which: 'current' | 'new' },
): Promise<Uint8Array> {
  const shares = await askQuorum(quorum, { ...request, shareSet: { ...pick(record), purpose: record.purpose } });
  try {
    return await combineHardwareSecret(shares, {
      ...pick(record),
      purpose: record.purpose,
      commitments: record.commitments,
    });
  } finally {
    shares.length = 0;
  }
}

/** The new share set becomes the store's, then the pending records go (a resume finishes this). */
async function activateDeviceRekey(store: KeyStore, dbPath: string, pending: DevicePendingRekey): Promise<void> {
  await store.putMeta(DEVICE_SECRET_SHARES_META, enc.encode(JSON.stringify(pending.record)));
  fsyncPath(dbPath);
  await store.deleteMeta(DEVICE_SECRET_CHANGE_META);
  await store.deleteMeta(DEVICE_PENDING_REKEY_META);
  fsyncPath(dbPath);
}

function pendingAsCeremony(p: DevicePendingRekey): PendingCeremony {
  return p as unknown as PendingCeremony;
}

/**
 * `keywarden rekey` on a folder whose PKCS#11 user PIN or TPM auth value is split: a quorum of the
 * current shares gives the current secret; a new random one is drawn and split (new N and M
 * allowed); its shares are handed out and fsynced; then the device changes over (PKCS#11
 * `C_SetPIN(current, new)`; TPM: TPM2_ObjectChangeAuth on the root's check object, whose new
 * private part replaces the old in the store in one write), and the new share set becomes the
 * store's. Until `C_SetPIN` the current shares open the token; from then on the new ones (which
 * were durable before it). A kill leaves `device/pending-rekey`: `resumeDeviceRekey` (a quorum of
 * the new shares) finishes it once the token has the new PIN, `abortDeviceRekey` drops it while the
 * token still has the current one.
 */
export async function rekeyDeviceSecret(loc: StoreLocation, options: DeviceRekeyOptions): Promise<DeviceRekeyResult> {
  const cwd = options.cwd ?? process.cwd();
  const uri = await recordedUriAt(path.join(loc.dir, ROOT_URI_FILE), 'rekey');
  const scheme = rootUriScheme(uri);
  const hooks = rootSecretHooks(uri);
  const store = SqliteKeyStore.open(loc.dbPath, { create: false });
  // The TPM's hooks open the root from the store (its check object is what changes).
  const env = { store, ...(options.env ? { env: options.env } : {}) };
  let old: Uint8Array | undefined;
  let secret: Uint8Array | undefined;
  let handOut: HandOut | undefined;
  let recorded = false;
  let changing = false;
  try {
    const current = await readDeviceSecretShares(store);
    if (!current) throw new CeremonyError(`rekey: ${loc.display} has no split device secret`);
    const waiting = await readPendingRekey(store);
    if (waiting) {
      throw new CeremonyError(
        `rekey: a rekey to share set ${waiting.shareSet.shareSetId} is pending: \`keywarden rekey --resume --share-file NEW…\` finishes it, \`keywarden rekey --abort\` drops it`,
      );
    }
    const previous: ShareSetInfo = { ...pick(current), purpose: current.purpose };
    const shares = options.shares ?? current.shares;
    const threshold = options.threshold ?? Math.min(current.threshold, shares);
    checkShareParameters(shares, threshold);
    const custodians = await custodiansFor(options.custodians, shares);
    old = await quorumSecretOf(current, options.quorum, { operation: 'rekey', title: 'Rekey', which: 'current' });
    if (!(await hooks.check(uri, old, env))) {
      throw new UnsealError(
        `rekey: the device refused the secret the current shares hold${scheme === 'pkcs11' ? ' (C_Login: CKR_PIN_INCORRECT)' : ''}; nothing was changed`,
      );
    }
    secret = await hooks.draw(uri, env);
    const set = await splitHardwareSecret(secret, { shares, threshold, purpose: current.purpose });
    const shareSet: ShareSetInfo = {
      shareSetId: set.shareSetId,
      threshold: set.threshold,
      shares: set.shares,
      purpose: set.purpose,
    };
    const texts = custodians ? set.encoded.map((s, i) => encryptShareForCustodian(s, custodians[i]!.pem)) : set.encoded;
    const record: DeviceSecretShares = {
      format: 1,
      purpose: current.purpose,
      ...pick(shareSet),
      commitments: set.encoded.map((s) => shareCommitment(s)),
      createdAt: new Date().toISOString(),
    };
    if (custodians) set.encoded.length = 0;
    const destination = options.destination ?? { kind: 'files', dir: path.join(loc.dir, SHARES_OUT_DIR) };
    handOut = await HandOut.plan(destination, shares, custodians, cwd);
    const pending: DevicePendingRekey = {
      format: 1,
      kind: 'rekey',
      device: scheme,
      createdAt: record.createdAt,
      shareSet,
      digests: texts.map(digestOf),
      handOut: handOut.describe(false),
      record,
      previous,
    };
    await store.putMeta(DEVICE_PENDING_REKEY_META, enc.encode(JSON.stringify(pending)));
    fsyncPath(loc.dbPath);
    recorded = true;
    options.onStep?.('rekey:recorded');
    await handOut.write(texts, shareSet, 'rekey', options);
    texts.length = 0;
    set.encoded.length = 0;
    options.onStep?.('rekey:shares-written');

    await store.putMeta(DEVICE_SECRET_CHANGE_META, enc.encode('setting'));
    fsyncPath(loc.dbPath);
    changing = true;
    options.onStep?.('rekey:pin-changing');
    await hooks.change(uri, old, secret, env);
    options.onStep?.('rekey:pin-changed');
    await activateDeviceRekey(store, loc.dbPath, pending);
    options.onStep?.('rekey:activated');
    return { ...handOut.result(shareSet), previous };
  } catch (err) {
    if (changing && secret) {
      // Did C_SetPIN happen? If the token takes the new PIN (or cannot say), the new shares stay.
      const isNew = await hooks.check(uri, secret, env).catch(() => undefined);
      if (isNew !== false) {
        throw new CeremonyError(
          `rekey: failed after the device's secret may have become the new one (${messageOf(err)}); the new shares are kept: run \`keywarden rekey --resume --share-file NEW…\``,
          { cause: err },
        );
      }
    }
    if (recorded) {
      await store.deleteMeta(DEVICE_SECRET_CHANGE_META).catch(() => {});
      await store.deleteMeta(DEVICE_PENDING_REKEY_META).catch(() => {});
    }
    await handOut?.abort();
    throw err;
  } finally {
    wipe(old);
    wipe(secret);
    await store.close().catch(() => {});
  }
}

export interface DeviceRekeyResumeResult extends HandOutResult {
  alreadyActivated: boolean;
  previous: ShareSetInfo;
}

/**
 * `keywarden rekey --resume` of a device rekey: with a quorum of the NEW shares, activate the new
 * share set if the token takes the new PIN (C_SetPIN ran). If it does not, nothing changed on the
 * token and the current shares still open it: `rekey --abort`, then rekey again.
 */
export async function resumeDeviceRekey(
  loc: StoreLocation,
  options: { quorum?: QuorumSource; env?: Readonly<Record<string, string | undefined>> } & CeremonyHooks = {},
): Promise<DeviceRekeyResumeResult> {
  const cwd = options.cwd ?? process.cwd();
  const store = SqliteKeyStore.open(loc.dbPath, { create: false });
  try {
    const pending = await readPendingRekey(store);
    if (!pending) throw new CeremonyError(`rekey --resume: no rekey of the device secret is pending in ${loc.display}`);
    const current = await readDeviceSecretShares(store);
    if (current?.shareSetId === pending.shareSet.shareSetId) {
      await activateDeviceRekey(store, loc.dbPath, pending);
      return { alreadyActivated: true, previous: pending.previous, ...handOutResultOf(pendingAsCeremony(pending)) };
    }
    const uri = await recordedUriAt(path.join(loc.dir, ROOT_URI_FILE), 'rekey --resume');
    const hooks = rootSecretHooks(uri);
    const secret = await quorumSecretOf(pending.record, options.quorum, {
      operation: 'rekey --resume',
      title: 'New shares',
      which: 'new',
    });
    try {
      if (!(await hooks.check(uri, secret, { store, ...(options.env ? { env: options.env } : {}) }))) {
        throw new CeremonyError(
          'rekey --resume: the device still takes the current secret (the rekey stopped before changing it): the current shares keep working; run `keywarden rekey --abort`, then rekey again',
        );
      }
    } finally {
      wipe(secret);
    }
    const problems = isCallback(descriptionOf(pendingAsCeremony(pending)))
      ? []
      : await checkHandOutFiles(pendingAsCeremony(pending), cwd);
    await activateDeviceRekey(store, loc.dbPath, pending);
    if (problems.length > 0) {
      options.onNotice?.(
        `rekey --resume: the token has the new PIN, so the new share set is active; but ${problems.join('; ')}: a quorum of the new shares must remain`,
      );
    }
    return { alreadyActivated: false, previous: pending.previous, ...handOutResultOf(pendingAsCeremony(pending)) };
  } finally {
    await store.close().catch(() => {});
  }
}

/**
 * `keywarden rekey --abort` of a device rekey: drop the pending record and the share files it
 * wrote, while the token still takes the current PIN. Once the rekey had begun changing the PIN,
 * that needs a quorum of the new shares (to ask the token); if the token has the new PIN, nothing
 * is removed: the rekey can only be finished (`rekey --resume`).
 */
export async function abortDeviceRekey(
  loc: StoreLocation,
  options: { quorum?: QuorumSource; env?: Readonly<Record<string, string | undefined>> } & CeremonyHooks = {},
): Promise<{ pending: ShareSetInfo; notes: string[] }> {
  const cwd = options.cwd ?? process.cwd();
  const store = SqliteKeyStore.open(loc.dbPath, { create: false });
  try {
    const pending = await readPendingRekey(store);
    if (!pending) throw new CeremonyError(`rekey --abort: no rekey of the device secret is pending in ${loc.display}`);
    if (await store.getMeta(DEVICE_SECRET_CHANGE_META)) {
      if (typeof options.quorum !== 'function') {
        throw new CeremonyError(
          "rekey --abort: the rekey had begun changing the device's secret to the new one, so the new shares may be the only way in: give a quorum of the new shares (--share-file); nothing was changed",
        );
      }
      const uri = await recordedUriAt(path.join(loc.dir, ROOT_URI_FILE), 'rekey --abort');
      const secret = await quorumSecretOf(pending.record, options.quorum, {
        operation: 'rekey --abort',
        title: 'New shares',
        which: 'new',
      });
      try {
        if (await rootSecretHooks(uri).check(uri, secret, { store, ...(options.env ? { env: options.env } : {}) })) {
          throw new CeremonyError(
            'rekey --abort: the device already takes the new secret, so the new shares are the way in: finish with `keywarden rekey --resume --share-file NEW…`; nothing was removed',
          );
        }
      } finally {
        wipe(secret);
      }
    }
    const notes = await removeHandOutFiles(pendingAsCeremony(pending), cwd);
    await store.deleteMeta(DEVICE_SECRET_CHANGE_META);
    await store.deleteMeta(DEVICE_PENDING_REKEY_META);
    fsyncPath(loc.dbPath);
    return { pending: pending.shareSet, notes };
  } finally {
    await store.close().catch(() => {});
  }
}
