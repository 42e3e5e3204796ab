/**
 * The split-knowledge ceremonies on a key-store folder (docs/split-knowledge.md §3, §7): init with
 * shares, rekey, how their shares are handed out, and how a ceremony cut short by a crash is
 * resumed or aborted (§7.1). Nothing here prompts or prints: the shares of a quorum come from the
 * caller's `quorum` callback, shares handed out through the caller's `deliver` callback, notices
 * through `onNotice`; failures are core's typed errors.
 *
 * Hand-out, one of:
 *  - files (`{ kind: 'files', dir }`): DIR/share-<i>-of-<N>.kwshare encrypted to custodian i when
 *    custodians are given (the operator never sees a share), else DIR/share-<i>-of-<N>.txt in
 *    plaintext; DIR is created 0700 when missing, files 0600;
 *  - a callback (`{ kind: 'callback', deliver }`): each share (encrypted when custodians are given)
 *    is passed to `deliver`, one at a time; the ceremony goes on only once its promise resolves.
 *
 * Crash safety (no crash at any instant leaves the store without a working share set in someone's
 * hands): the new share set is STAGED — recorded in the store as a pending ceremony beside the
 * current root (@keywarden/split-knowledge, staged-ceremony.ts) — then every share is handed out
 * (each file written and fsynced, then the folder; or every `deliver` resolved), and only then
 * ACTIVATED, by one store write. Until then the current shares keep working. A rekey's pending
 * record sits in the store; an init's whole store is built as D/keystore.db.staged and moved into
 * place (rename + fsync of D) as its activation, so a store whose shares were never handed out
 * never looks initialized. Resume finishes a ceremony whose shares were all handed out; abort drops
 * it. An ordinary failure (not a kill) is undone at once.
 *
 * The unseal key and the root key exist only inside @keywarden/split-knowledge, in memory, and
 * are never written anywhere in plaintext, not even to a temporary file.
 *
 * `onStep(name)` is called synchronously at each step boundary (`init:recorded`, `rekey:share-2`,
 * …): the kill suites end the process there to prove each instant safe.
 */
import { chmod, type FileHandle, mkdir, open, readFile, rename, rm, rmdir } from 'node:fs/promises';
import * as path from 'node:path';
import {
  CeremonyError,
  CeremonyPendingError,
  ConflictError,
  InvalidInputError,
  type KeyStore,
  KeyStoreError,
  KeywardenError,
  type SealedRootDocument,
  SoftwareRoot,
} from '@keywarden/core';
import {
  abortPendingCeremony,
  activatePendingCeremony,
  checkSplitParameters,
  custodianPublicKey,
  finishActivatedCeremony,
  handOutDigest,
  type PendingCeremony,
  pendingCeremonyState,
  readPendingCeremony,
  type ShareSetInfo,
  type StagedCeremony,
  stageInit,
  stageRekey,
  verifyPendingCeremony,
} from '@keywarden/split-knowledge';
import { SqliteKeyStore } from '@keywarden/store-sqlite';
import { undoStagedRemains } from './staged-remains.js';
import { fsyncPath, lexists, messageOf, systemErrorText } from './_files.js';
import {
  displayPath,
  exists,
  openFolderStore,
  refuseExistingStore,
  refusePendingPostgresInit,
  removeStoreFiles,
  ROOT_URI_FILE,
  requireSoftwareRoot,
  requireStore,
  SHARES_OUT_DIR,
  type StoreLocation,
  stagedStorePath,
} from './layout.js';
import { abortDeviceInit, devicePendingInitOf } from './device-split.js';
import { openStagedStore, readStagedPending } from './pending.js';

// ── Options shared by the ceremonies ───────────────────────────────────────────────────────────

/** Who asks for a quorum, and of which share set: what a `quorum` callback is given. */
export interface QuorumRequest {
  /** The operation as it starts a message: "rekey", "root rotate", "init --resume". */
  operation: string;
  /** A heading for prompts: "Rekey", "Root rotation", "Test quorum". */
  title: string;
  /** Which shares are asked for: the current set's, or the new set's (a test quorum). */
  which: 'current' | 'new';
  /** The share set asked for (not secret): its id, M and N. */
  shareSet: ShareSetInfo;
}

/**
 * Supplies the plaintext shares of a quorum (at least `shareSet.threshold` of them). The ceremony
 * uses them and empties the array; it never keeps a share.
 */
export type QuorumSource = (request: QuorumRequest) => Promise<string[]>;

export interface CeremonyHooks {
  /** Called synchronously at each step boundary (tests end the process there). */
  onStep?: (step: string) => void;
  /** Something the operator should know that is not a failure (remains of an earlier init removed). */
  onNotice?: (message: string) => void;
  /** Where relative paths start, and how paths are shown in messages; default process.cwd(). */
  cwd?: string;
}

/** A custodian's public key: X25519 or RSA ≥ 2048, PEM; `display` names it in messages and records. */
export interface CustodianKey {
  pem: string;
  display: string;
}

/** Who received which share (no key material: the key's display name and its fingerprint). */
export interface CustodianLabel {
  /** 1-based: the share this custodian receives. */
  index: number;
  display: string;
  fingerprint: string;
}

/** @internal */
export interface Custodian extends CustodianLabel {
  pem: string;
}

/**
 * The custodians' public keys, one per share in share order: given, or loaded once N is known (a
 * rekey keeps the current N by default), so that files are read only after the earlier checks.
 */
export type CustodianKeys = readonly CustodianKey[] | ((shares: number) => Promise<readonly CustodianKey[]>);

/** @internal */
export async function custodiansFor(keys: CustodianKeys | undefined, shares: number): Promise<Custodian[] | undefined> {
  if (keys === undefined) return undefined;
  const list = typeof keys === 'function' ? await keys(shares) : keys;
  return list.length > 0 ? checkCustodians(list, shares) : undefined;
}

/** One share as given to a `deliver` callback. */
export interface DeliveredShare {
  /** 1-based. */
  index: number;
  /** The share text, or with custodians the armored share encrypted to custodian `index`. */
  text: string;
  shareSet: ShareSetInfo;
  custodian?: CustodianLabel;
}

/** Where the shares go. */
export type ShareDestination =
  | { kind: 'files'; dir: string }
  | {
      kind: 'callback';
      /** Hands one share out; resolves once it is durably with its custodian. */
      deliver: (share: DeliveredShare) => Promise<void>;
      /**
       * How the shares were handed out, in messages ("printed on a terminal"); default
       * "handed out through a callback". Recorded with the ceremony.
       */
      describedAs?: string;
    };

export interface HandOutResult {
  mode: 'encrypted-files' | 'plaintext-files' | 'callback';
  /** Absolute paths, in share order (file modes). */
  files: string[];
  dir: string | undefined;
  custodians: CustodianLabel[] | undefined;
  shareSet: ShareSetInfo;
}

// ── Parameters ─────────────────────────────────────────────────────────────────────────────────

/** Check N and M by the library's rules (InvalidInputError). */
export function checkShareParameters(shares: number, threshold: number): void {
  checkSplitParameters(shares, threshold);
}

/** Check each custodian's public key (one per share, all different) and take its fingerprint. */
export function checkCustodians(keys: readonly CustodianKey[], shares: number): Custodian[] {
  if (keys.length !== shares) {
    throw new InvalidInputError(
      `${keys.length} --custodian keys for ${shares} shares; give exactly one public key per share, in share order`,
    );
  }
  const out: Custodian[] = [];
  for (const [i, key] of keys.entries()) {
    let fingerprint: string;
    try {
      fingerprint = custodianPublicKey(key.pem).fingerprint;
    } catch (err) {
      if (KeywardenError.isInstance(err)) throw new InvalidInputError(`${key.display}: ${err.message}`, { cause: err });
      throw err;
    }
    const twin = out.find((c) => c.fingerprint === fingerprint);
    if (twin) {
      throw new InvalidInputError(
        `custodians ${twin.index} (${twin.display}) and ${i + 1} (${key.display}) have the same public key; each share must go to a different custodian`,
      );
    }
    out.push({ index: i + 1, display: key.display, pem: key.pem, fingerprint });
  }
  return out;
}

// ── Hand-out ───────────────────────────────────────────────────────────────────────────────────

const DEFAULT_CALLBACK_DESCRIPTION = 'handed out through a callback';

/** The hand-out as recorded in the pending ceremony (no key material: paths and fingerprints). */
/** @internal */
export interface HandOutDescription {
  /** 'stdout': a record written before the callback form (the CLI printed the shares). */
  mode: HandOutResult['mode'] | 'stdout';
  dir?: string;
  files: string[];
  custodians?: CustodianLabel[];
  requireNewQuorum?: boolean;
  describedAs?: string;
}

/** @internal */
export function descriptionOf(p: PendingCeremony): HandOutDescription {
  return p.handOut as unknown as HandOutDescription;
}

/** Shares handed to a callback (or printed, in an older record): nothing on disk to check. */
/** @internal */
export function isCallback(h: HandOutDescription): boolean {
  return h.mode === 'callback' || h.mode === 'stdout';
}

function describedAs(h: HandOutDescription): string {
  if (h.mode === 'stdout') return 'printed on a terminal';
  return typeof h.describedAs === 'string' ? h.describedAs : DEFAULT_CALLBACK_DESCRIPTION;
}

/** @internal Also the device-secret init's hand-out (device-split.ts). */
export class HandOut {
  readonly mode: HandOutResult['mode'];
  readonly dir: string | undefined;
  readonly files: string[];
  readonly custodians: Custodian[] | undefined;
  readonly #deliver: ((share: DeliveredShare) => Promise<void>) | undefined;
  readonly #describedAs: string | undefined;
  readonly #cwd: string;
  /** Only what this hand-out created is ever deleted (never an earlier ceremony's shares). */
  readonly #created: string[] = [];
  #createdDir = false;

  private constructor(
    parts: {
      mode: HandOutResult['mode'];
      dir?: string;
      files?: string[];
      deliver?: (share: DeliveredShare) => Promise<void>;
      describedAs?: string;
    },
    custodians: Custodian[] | undefined,
    cwd: string,
  ) {
    this.mode = parts.mode;
    this.dir = parts.dir;
    this.files = parts.files ?? [];
    this.custodians = custodians;
    this.#deliver = parts.deliver;
    this.#describedAs = parts.describedAs;
    this.#cwd = cwd;
  }

  /**
   * Decide where the N shares go and check that none of the files exists yet (they are created,
   * O_EXCL, only after the ceremony is recorded, so that an abort knows which files are its own).
   */
  static async plan(
    destination: ShareDestination,
    shares: number,
    custodians: Custodian[] | undefined,
    cwd: string,
  ): Promise<HandOut> {
    if (destination.kind === 'callback') {
      if (typeof destination.deliver !== 'function') {
        throw new InvalidInputError('ceremony: a callback destination needs a deliver function');
      }
      return new HandOut(
        {
          mode: 'callback',
          deliver: destination.deliver,
          describedAs: destination.describedAs ?? DEFAULT_CALLBACK_DESCRIPTION,
        },
        custodians,
        cwd,
      );
    }
    if (destination.kind !== 'files' || typeof destination.dir !== 'string') {
      throw new InvalidInputError(
        "ceremony: the shares' destination is { kind: 'files', dir } or { kind: 'callback', deliver }",
      );
    }
    const dir = path.resolve(cwd, destination.dir);
    const ext = custodians ? 'kwshare' : 'txt';
    const files = Array.from({ length: shares }, (_, i) => path.join(dir, `share-${i + 1}-of-${shares}.${ext}`));
    for (const f of files) {
      if (await lexists(f)) {
        throw new CeremonyError(
          `${displayPath(f, cwd)} already exists (shares of an earlier ceremony?): move them away or choose another --share-dir`,
        );
      }
    }
    return new HandOut({ mode: custodians ? 'encrypted-files' : 'plaintext-files', dir, files }, custodians, cwd);
  }

  describe(requireNewQuorum: boolean): HandOutDescription {
    return {
      mode: this.mode,
      ...(this.dir !== undefined ? { dir: this.dir } : {}),
      files: [...this.files],
      ...(this.custodians ? { custodians: this.custodians.map(labelOf) } : {}),
      ...(requireNewQuorum ? { requireNewQuorum: true } : {}),
      ...(this.#describedAs !== undefined ? { describedAs: this.#describedAs } : {}),
    };
  }

  result(shareSet: ShareSetInfo): HandOutResult {
    return {
      mode: this.mode,
      files: this.files,
      dir: this.dir,
      custodians: this.custodians?.map(labelOf),
      shareSet,
    };
  }

  /**
   * Hand the shares out: deliver each through the callback, or write each file (O_EXCL, 0600),
   * fsync it and close it, then fsync the folder (and its parent when this created it), so that
   * every share is durable before the ceremony is activated.
   */
  async write(handOut: readonly string[], set: ShareSetInfo, ceremony: string, hooks: CeremonyHooks): Promise<void> {
    if (this.mode === 'callback') {
      const deliver = this.#deliver as (share: DeliveredShare) => Promise<void>;
      for (const [i, text] of handOut.entries()) {
        const custodian = this.custodians?.[i];
        await deliver({ index: i + 1, text, shareSet: set, ...(custodian ? { custodian: labelOf(custodian) } : {}) });
        hooks.onStep?.(`${ceremony}:share-${i + 1}`);
      }
      return;
    }
    const cwd = this.#cwd;
    const dir = this.dir as string;
    try {
      if ((await mkdir(dir, { recursive: true, mode: 0o700 })) !== undefined) {
        this.#createdDir = true;
        await chmod(dir, 0o700);
      }
    } catch (err) {
      throw new CeremonyError(`cannot create ${displayPath(dir, cwd)}: ${systemErrorText(err)}`, { cause: err });
    }
    for (const [i, f] of this.files.entries()) {
      const text = handOut[i];
      if (text === undefined) throw new CeremonyError('ceremony: fewer shares than files');
      let fh: FileHandle;
      try {
        fh = await open(f, 'wx', 0o600);
      } catch (err) {
        const code = (err as NodeJS.ErrnoException).code;
        throw new CeremonyError(
          code === 'EEXIST'
            ? `${displayPath(f, cwd)} already exists (shares of an earlier ceremony?): move them away or choose another --share-dir`
            : `cannot create ${displayPath(f, cwd)}: ${systemErrorText(err)}`,
          { cause: err },
        );
      }
      this.#created.push(f);
      try {
        await fh.chmod(0o600);
        await fh.writeFile(text.endsWith('\n') ? text : `${text}\n`, 'utf8');
        await fh.sync();
      } catch (err) {
        throw new CeremonyError(`cannot write ${displayPath(f, cwd)}: ${systemErrorText(err)}`, { cause: err });
      } finally {
        await fh.close();
      }
      hooks.onStep?.(`${ceremony}:share-${i + 1}`);
    }
    fsyncPath(dir);
    if (this.#createdDir) fsyncPath(path.dirname(dir));
  }

  /** Undo: delete the files created, and the directory if this created it. Never throws. */
  async abort(): Promise<void> {
    while (this.#created.length > 0) await rm(this.#created.pop() as string, { force: true }).catch(() => {});
    if (this.#createdDir && this.dir) await rmdir(this.dir).catch(() => {});
    this.#createdDir = false;
  }
}

function labelOf(c: CustodianLabel): CustodianLabel {
  return { index: c.index, display: c.display, fingerprint: c.fingerprint };
}

/**
 * For a resume: is every share of the pending ceremony on disk, whole? Each file must hold exactly
 * the text whose digest was recorded. Each file and the folder are fsynced again (a crash may have
 * come between a write and its fsync). Returns what is wrong, one item a file; empty when complete.
 */
/** @internal */
export async function checkHandOutFiles(pending: PendingCeremony, cwd: string): Promise<string[]> {
  const h = descriptionOf(pending);
  const problems: string[] = [];
  for (const [i, f] of h.files.entries()) {
    let text: string;
    try {
      text = await readFile(f, 'utf8');
    } catch (err) {
      problems.push(`${displayPath(f, cwd)}: ${systemErrorText(err)}`);
      continue;
    }
    if (handOutDigest(text) !== pending.digests[i]) {
      problems.push(`${displayPath(f, cwd)} is incomplete or altered`);
      continue;
    }
    fsyncPath(f);
  }
  if (h.dir !== undefined && problems.length === 0) fsyncPath(h.dir);
  return problems;
}

/**
 * For an abort: delete the share files of the pending ceremony — only files that are empty (the
 * crash came before the write), hold the recorded text, or name its share set; anything else at
 * those paths is left alone and reported.
 */
/** @internal */
export async function removeHandOutFiles(pending: PendingCeremony | undefined, cwd: string): Promise<string[]> {
  const notes: string[] = [];
  if (!pending) return notes;
  const h = descriptionOf(pending);
  if (!Array.isArray(h.files)) return notes;
  for (const [i, f] of h.files.entries()) {
    if (typeof f !== 'string') continue;
    let text: string;
    try {
      text = await readFile(f, 'utf8');
    } catch {
      continue;
    }
    if (
      text.trim() === '' ||
      handOutDigest(text) === pending.digests[i] ||
      text.includes(pending.shareSet.shareSetId)
    ) {
      await rm(f, { force: true });
      notes.push(`removed ${displayPath(f, cwd)}`);
    } else {
      notes.push(`left ${displayPath(f, cwd)} in place: it is not a share of this ceremony`);
    }
  }
  if (typeof h.dir === 'string' && path.basename(h.dir) === SHARES_OUT_DIR) await rmdir(h.dir).catch(() => {});
  return notes;
}

/** @internal */
export function handOutResultOf(pending: PendingCeremony): HandOutResult {
  const h = descriptionOf(pending);
  return {
    mode: isCallback(h) ? 'callback' : h.mode === 'encrypted-files' ? 'encrypted-files' : 'plaintext-files',
    files: h.files,
    dir: h.dir,
    custodians: h.custodians,
    shareSet: pending.shareSet,
  };
}

/** Ask the caller for a quorum; a missing callback is an InvalidInputError naming the operation. */
/** @internal */
export async function askQuorum(quorum: QuorumSource | undefined, request: QuorumRequest): Promise<string[]> {
  if (typeof quorum !== 'function') {
    throw new InvalidInputError(
      `${request.operation}: needs ${request.shareSet.threshold} ${request.which} shares (share set ${request.shareSet.shareSetId}): pass a quorum callback`,
    );
  }
  const shares = await quorum(request);
  if (!Array.isArray(shares) || shares.some((s) => typeof s !== 'string')) {
    throw new InvalidInputError(`${request.operation}: the quorum callback must return an array of share texts`);
  }
  return shares;
}

// ── Init ───────────────────────────────────────────────────────────────────────────────────────

export interface SplitInitOptions extends CeremonyHooks {
  shares: number;
  threshold: number;
  /** One public key per share, in share order: each share is encrypted to its custodian. */
  custodians?: CustodianKeys;
  /** Where the shares go; default files in D/shares-out. */
  destination?: ShareDestination;
  /** Leave the store pending until a test quorum of the new shares confirms it (resumeSplitInit). */
  verifyQuorum?: boolean;
}

export interface SplitInitResult extends HandOutResult {
  rootId: string;
  /** False with verifyQuorum: the store is moved into place by resumeSplitInit with a test quorum. */
  activated: boolean;
}

/**
 * Create D (0700) and a key store whose root is sealed under an unseal key split M-of-N, and hand
 * the shares out; the store is built as D/keystore.db.staged and becomes D/keystore.db only once
 * every share is durably handed out. Refuses when D already has a key store (KeyStoreError) or an
 * unfinished init (CeremonyPendingError). On an ordinary failure nothing is left behind.
 */
export async function initSplitStoreDir(loc: StoreLocation, options: SplitInitOptions): Promise<SplitInitResult> {
  const cwd = options.cwd ?? process.cwd();
  checkShareParameters(options.shares, options.threshold);
  const custodians = await custodiansFor(options.custodians, options.shares);
  await refuseExistingStore(loc);
  await refusePendingPostgresInit(loc);
  await clearAbandonedInit(loc, options);
  const created = await mkdir(loc.dir, { recursive: true, mode: 0o700 });
  if (created !== undefined) await chmod(loc.dir, 0o700);
  // A root.uri left by a device init that failed before its store existed names no root.
  await rm(path.join(loc.dir, ROOT_URI_FILE), { force: true });

  const destination = options.destination ?? { kind: 'files', dir: path.join(loc.dir, SHARES_OUT_DIR) };
  const handOut = await HandOut.plan(destination, options.shares, custodians, cwd);
  const staged = await stageInit({
    shares: options.shares,
    threshold: options.threshold,
    ...(custodians ? { custodians: custodians.map((c) => c.pem) } : {}),
  });
  const stagedPath = stagedStorePath(loc);
  try {
    const store = await SqliteKeyStore.open(stagedPath);
    try {
      options.onStep?.('init:store-created');
      await staged.record(store, { ...handOut.describe(options.verifyQuorum === true) });
    } finally {
      await store.close();
    }
    await chmod(stagedPath, 0o600);
    fsyncPath(stagedPath);
    fsyncPath(loc.dir);
    options.onStep?.('init:recorded');
    await handOut.write(staged.handOut, staged.shareSet, 'init', options);
    staged.handOut.length = 0;
    options.onStep?.('init:shares-written');
    const result = { rootId: staged.document.rootId, ...handOut.result(staged.shareSet) };
    if (options.verifyQuorum) return { ...result, activated: false };
    await moveStagedStoreIntoPlace(loc, options);
    return { ...result, activated: true };
  } catch (err) {
    if (!(await exists(stagedPath)) && (await exists(loc.dbPath))) {
      // The store was moved into place (activated): its shares are the ones handed out; keep them.
      throw new CeremonyError(
        `init: the key store is in place, but the clean-up failed (${messageOf(err)}); run \`keywarden init --resume\``,
        { cause: err },
      );
    }
    await handOut.abort();
    await removeStoreFiles(stagedPath);
    throw err;
  } finally {
    await staged.close();
  }
}

/**
 * A staged store left by an earlier init: refused when it recorded a ceremony (resume or abort
 * it), undone when it recorded none (staged-remains.ts: a development-mode or device-root init's
 * store, with the key file or root.uri it wrote, or a kill before anything was handed out).
 * @internal Also the device-secret init's (device-split.ts).
 */
export async function clearAbandonedInit(
  loc: StoreLocation,
  hooks: CeremonyHooks,
  keyFile: string = loc.defaultUnsealKeyPath,
): Promise<void> {
  const stagedPath = stagedStorePath(loc);
  if (!(await exists(stagedPath))) return;
  const pending = await readStagedPending(stagedPath);
  if (pending) {
    throw new CeremonyPendingError(
      `an earlier \`keywarden init\` in ${loc.display} did not finish (share set ${pending.shareSet.shareSetId}, started ${pending.createdAt}): ` +
        'finish it with `keywarden init --resume` or drop it with `keywarden init --abort`',
    );
  }
  const notes = await undoStagedRemains(loc, hooks.cwd ?? process.cwd(), keyFile);
  hooks.onNotice?.(
    ['Removed the remains of an earlier init that stopped before the folder had its store.', ...notes].join('\n'),
  );
}

/**
 * The activation of an init: D/keystore.db.staged becomes D/keystore.db (rename, fsync of D).
 * @internal Also the device-secret init's (device-split.ts), which then drops its pending record.
 */
export async function renameStagedStore(loc: StoreLocation, hooks: CeremonyHooks): Promise<void> {
  const stagedPath = stagedStorePath(loc);
  if (await exists(`${stagedPath}-wal`)) {
    // A crash left a write-ahead log: open and close the store so SQLite folds it in.
    await (await SqliteKeyStore.open(stagedPath, { create: false })).close();
  }
  if (await exists(loc.dbPath)) throw new KeyStoreError(`${loc.display} already has a key store`);
  await rename(stagedPath, loc.dbPath);
  fsyncPath(loc.dir);
  hooks.onStep?.('init:activated');
  await rm(`${stagedPath}-shm`, { force: true });
}

/** renameStagedStore, then the ceremony's records are finished in the activated store. */
async function moveStagedStoreIntoPlace(loc: StoreLocation, hooks: CeremonyHooks): Promise<void> {
  await renameStagedStore(loc, hooks);
  const store = await SqliteKeyStore.open(loc.dbPath, { create: false });
  try {
    await finishActivatedCeremony(store);
  } finally {
    await store.close();
  }
  hooks.onStep?.('init:done');
}

export interface ResumeOptions extends CeremonyHooks {
  /** Supplies a quorum: of the current set, or of the new set (the test quorum). */
  quorum?: QuorumSource;
  /**
   * Init: ask for a test quorum of the new shares even when the ceremony does not require one
   * (it does with verifyQuorum, or when the shares went to a callback).
   */
  testQuorum?: boolean;
}

export interface ResumeResult extends HandOutResult {
  kind: 'init' | 'rekey';
  rootId: string;
  /** The rekey or init had already been activated before the crash; only the clean-up was left. */
  alreadyActivated: boolean;
  quorumOf?: 'current' | 'new';
  previous?: ShareSetInfo;
}

/** Activate an init whose shares were all handed out (`keywarden init --resume`). */
export async function resumeSplitInit(loc: StoreLocation, options: ResumeOptions = {}): Promise<ResumeResult> {
  const cwd = options.cwd ?? process.cwd();
  const stagedPath = stagedStorePath(loc);
  if (!(await exists(stagedPath))) {
    if (await exists(loc.dbPath)) {
      const store = await SqliteKeyStore.open(loc.dbPath, { create: false });
      try {
        const st = await pendingCeremonyState(store);
        if (st.state === 'activated' && st.pending.kind === 'init') {
          await finishActivatedCeremony(store);
          return {
            kind: 'init',
            rootId: st.pending.document.rootId,
            alreadyActivated: true,
            ...handOutResultOf(st.pending),
          };
        }
      } finally {
        await store.close();
      }
      throw new CeremonyError(`init --resume: ${loc.display} already has a key store; no init is pending`);
    }
    throw new CeremonyError(`init --resume: no init is pending in ${loc.display}`);
  }
  if (await devicePendingInitOf(loc)) {
    throw new CeremonyError(
      "init --resume: the pending init is a device root's (its PIN / auth value split): resume it with resumeDeviceInit",
    );
  }
  const store = await openStagedStore(stagedPath);
  let pending: PendingCeremony;
  let quorumOf: 'current' | 'new' | undefined;
  try {
    const p = await readPendingCeremony(store);
    if (!p) {
      await store.close();
      await undoStagedRemains(loc, cwd);
      throw new CeremonyError(
        'init --resume: the earlier init stopped before any share was handed out, so there is nothing to resume (its remains were removed); run `keywarden init` again',
      );
    }
    pending = p;
    const h = descriptionOf(pending);
    if (options.testQuorum || h.requireNewQuorum || isCallback(h)) {
      const shares = await askQuorum(options.quorum, {
        operation: `init --resume${isCallback(h) ? ` (the shares were ${describedAs(h)}, so a test quorum must show they were received; or \`keywarden init --abort\`)` : ''}`,
        title: 'Test quorum',
        which: 'new',
        shareSet: pending.shareSet,
      });
      try {
        quorumOf = (await verifyPendingCeremony(store, shares)).quorumOf;
      } finally {
        shares.length = 0;
      }
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
  await moveStagedStoreIntoPlace(loc, options);
  return {
    kind: 'init',
    rootId: pending.document.rootId,
    alreadyActivated: false,
    ...(quorumOf ? { quorumOf } : {}),
    ...handOutResultOf(pending),
  };
}

/**
 * Remove an unfinished init — its staged store and the share files it wrote (`keywarden init
 * --abort`). Returns what was done with each share file, one line each.
 */
export async function abortSplitInit(loc: StoreLocation, options: CeremonyHooks = {}): Promise<string[]> {
  const cwd = options.cwd ?? process.cwd();
  const stagedPath = stagedStorePath(loc);
  if (!(await exists(stagedPath))) throw new CeremonyError(`init --abort: no init is pending in ${loc.display}`);
  if (await devicePendingInitOf(loc).catch(() => undefined)) return abortDeviceInit(loc, options);
  let pending: PendingCeremony | undefined;
  try {
    pending = await readStagedPending(stagedPath);
  } catch {
    pending = undefined;
  }
  if (!pending) return undoStagedRemains(loc, cwd);
  const notes = await removeHandOutFiles(pending, cwd);
  await removeStoreFiles(stagedPath);
  fsyncPath(loc.dir);
  return notes;
}

// ── Rekey ──────────────────────────────────────────────────────────────────────────────────────

export interface RekeyOptions extends CeremonyHooks {
  /** New N; default the current one. */
  shares?: number;
  /** New M; default the current one (at most N). */
  threshold?: number;
  /** One public key per new share, in share order. */
  custodians?: CustodianKeys;
  /**
   * Called with the resolved N and M (the current ones by default) before the library's own check
   * (InvalidInputError); throw to refuse them in the caller's terms.
   */
  checkParameters?: (shares: number, threshold: number) => void;
  /** Where the new shares go; default files in D/shares-out. */
  destination?: ShareDestination;
  /** Supplies a quorum of the CURRENT shares (required). */
  quorum?: QuorumSource;
  /** Leave the rekey pending until a test quorum of the new shares activates it (resumeRekey). */
  verifyQuorum?: boolean;
}

export interface RekeyResult extends HandOutResult {
  rootId: string;
  previous: ShareSetInfo;
  /** False with verifyQuorum: the current shares keep working until resumeRekey. */
  activated: boolean;
}

/**
 * Replace the share set of D's split-knowledge store: a quorum of CURRENT shares is required even
 * when an agent is unsealed (separation of duties: a running process is not a quorum). The root
 * key does not change, so KEKs, data and an unsealed agent are unaffected. The new set is staged,
 * handed out durably, and only then activated; the old shares work until that instant.
 */
export async function rekeyStoreDir(loc: StoreLocation, options: RekeyOptions): Promise<RekeyResult> {
  const cwd = options.cwd ?? process.cwd();
  await requireStore(loc);
  await requireSoftwareRoot(loc);
  const store = await openFolderStore(loc, 'write');
  let staged: StagedCeremony | undefined;
  try {
    const st = await pendingCeremonyState(store);
    if (st.state === 'activated') await finishActivatedCeremony(store);
    if (st.state === 'pending') throw pendingRekeyError(st.pending);
    const doc = await sealedDocument(store);
    const u = doc.unseal;
    if (u.method !== 'shamir') {
      throw new CeremonyError(
        'rekey: this key store is in development mode; rekey replaces the shares of a split-knowledge store (`keywarden init --shares N --threshold M`)',
      );
    }
    const previous: ShareSetInfo = {
      shareSetId: u.shareSetId,
      threshold: u.threshold,
      shares: u.shares,
      purpose: 'unseal-key',
    };
    const shares = options.shares ?? u.shares;
    const threshold = options.threshold ?? Math.min(u.threshold, shares);
    options.checkParameters?.(shares, threshold);
    checkShareParameters(shares, threshold);
    const custodians = await custodiansFor(options.custodians, shares);
    const destination = options.destination ?? { kind: 'files', dir: path.join(loc.dir, SHARES_OUT_DIR) };
    const handOut = await HandOut.plan(destination, shares, custodians, cwd).catch(async (err: unknown) => {
      // The share files of a rekey that started meanwhile in another process: a conflict.
      throw (await concurrentCeremony(store, doc)) ?? err;
    });
    const current = await askQuorum(options.quorum, {
      operation: 'rekey',
      title: 'Rekey',
      which: 'current',
      shareSet: previous,
    });
    try {
      staged = await stageRekey(store, current, {
        shares,
        threshold,
        ...(custodians ? { custodians: custodians.map((c) => c.pem) } : {}),
      });
    } finally {
      current.length = 0;
    }
    options.onStep?.('rekey:staged');
    let recorded = false;
    let activating = false;
    try {
      await staged.record(store, { ...handOut.describe(options.verifyQuorum === true) });
      recorded = true;
      options.onStep?.('rekey:recorded');
      await handOut.write(staged.handOut, staged.shareSet, 'rekey', options);
      staged.handOut.length = 0;
      options.onStep?.('rekey:shares-written');
      if (!options.verifyQuorum) {
        activating = true;
        await staged.activate(store);
        options.onStep?.('rekey:activated');
      }
    } catch (err) {
      if (activating && ConflictError.isInstance(err) && !(await newRootIsActive(store, staged))) {
        // Another rekey or a root rotation committed first (compare-and-swap on the sealed root):
        // this one never switched anything; take its shares and its pending record back.
        await handOut.abort();
        await abortPendingCeremony(store).catch(() => {});
        throw new ConflictError(
          `rekey: another rekey or a root rotation of this key store committed first; this rekey was undone (its new shares were deleted) and nothing was lost — ${messageOf(err)}`,
          { cause: err },
        );
      }
      if (activating && (await newRootIsActive(store, staged))) {
        // The switch happened: the new shares were handed out and are the ones that work now.
        throw new CeremonyError(
          `rekey: the new share set ${staged.shareSet.shareSetId} is active, but the clean-up failed (${messageOf(err)}); run \`keywarden rekey --resume\``,
          { cause: err },
        );
      }
      if (recorded && activating) {
        // Unknown state (the store may be unreadable): keep the shares and the pending record.
        throw new CeremonyError(
          `rekey: activating the new share set failed (${messageOf(err)}); the shares were kept: run \`keywarden rekey --resume\` or \`keywarden rekey --abort\``,
          { cause: err },
        );
      }
      await handOut.abort();
      if (recorded) {
        await abortPendingCeremony(store).catch(() => {});
        throw new CeremonyError(
          `rekey: the new shares could not be handed out (${messageOf(err)}); the rekey was undone and the current shares still work`,
          { cause: err },
        );
      }
      throw err;
    }
    return {
      rootId: doc.rootId,
      previous,
      ...handOut.result(staged.shareSet),
      activated: !options.verifyQuorum,
    };
  } finally {
    await staged?.close().catch(() => {});
    await store.close().catch(() => {});
  }
}

/**
 * Activate a pending rekey whose shares were all handed out (`keywarden rekey --resume`). Needs a
 * quorum of the current shares, or of the new ones (which is also the test quorum); shares handed
 * to a callback, or a rekey started with verifyQuorum, need the new ones.
 */
export async function resumeRekey(loc: StoreLocation, options: ResumeOptions = {}): Promise<ResumeResult> {
  const cwd = options.cwd ?? process.cwd();
  await requireStore(loc);
  const store = await openFolderStore(loc, 'write');
  try {
    const st = await pendingCeremonyState(store);
    if (st.state === 'none') throw new CeremonyError(`rekey --resume: no rekey is pending in ${loc.display}`);
    const pending = st.pending;
    const previous = previousOf(pending);
    if (st.state === 'activated') {
      await finishActivatedCeremony(store);
      return {
        kind: pending.kind,
        rootId: pending.document.rootId,
        alreadyActivated: true,
        ...(previous ? { previous } : {}),
        ...handOutResultOf(pending),
      };
    }
    const h = descriptionOf(pending);
    const needNew = h.requireNewQuorum === true || isCallback(h);
    const promptSet = needNew || !previous ? pending.shareSet : previous;
    const shares = await askQuorum(options.quorum, {
      operation: 'rekey --resume',
      title: needNew ? 'Test quorum' : 'Resuming the rekey',
      which: needNew ? 'new' : 'current',
      shareSet: promptSet,
    });
    let verified: Awaited<ReturnType<typeof verifyPendingCeremony>>;
    try {
      verified = await verifyPendingCeremony(store, shares);
    } finally {
      shares.length = 0;
    }
    if (needNew && verified.quorumOf !== 'new') {
      throw new CeremonyError(
        isCallback(h)
          ? `rekey --resume: the new shares were ${describedAs(h)}, so this cannot tell whether they were received: give a quorum of the NEW shares (share set ${pending.shareSet.shareSetId}), or \`keywarden rekey --abort\``
          : `rekey --resume: this rekey waits for a test quorum of the NEW shares (share set ${pending.shareSet.shareSetId})`,
      );
    }
    if (!isCallback(h)) {
      const problems = await checkHandOutFiles(pending, cwd);
      if (problems.length > 0) {
        throw new CeremonyError(
          `rekey --resume: the new shares were not all written (${problems.join('; ')}); nothing was activated and the current shares still work: run \`keywarden rekey --abort\`, then rekey again`,
        );
      }
    }
    await activatePendingCeremony(store, verified);
    options.onStep?.('rekey:activated');
    return {
      kind: 'rekey',
      rootId: pending.document.rootId,
      alreadyActivated: false,
      quorumOf: verified.quorumOf,
      ...(previous ? { previous } : {}),
      ...handOutResultOf(pending),
    };
  } finally {
    await store.close().catch(() => {});
  }
}

/**
 * Drop a pending rekey and the share files it wrote; the current set is unaffected (`keywarden
 * rekey --abort`).
 */
export async function abortRekey(
  loc: StoreLocation,
  options: CeremonyHooks = {},
): Promise<{ pending: PendingCeremony | undefined; notes: string[] }> {
  const cwd = options.cwd ?? process.cwd();
  await requireStore(loc);
  const store = await openFolderStore(loc, 'write');
  try {
    const st = await pendingCeremonyState(store);
    if (st.state === 'none') throw new CeremonyError(`rekey --abort: no rekey is pending in ${loc.display}`);
    if (st.state === 'activated') {
      await finishActivatedCeremony(store);
      throw new CeremonyError(
        `rekey --abort: the rekey to share set ${st.pending.shareSet.shareSetId} had already been activated, so there is nothing to abort: its shares are the ones that work now`,
      );
    }
    // Files first, then the record: a kill in between leaves a pending rekey to abort again, never
    // share files of a dead share set that nothing points to.
    const notes = await removeHandOutFiles(st.pending, cwd);
    const pending = await abortPendingCeremony(store);
    return { pending, notes };
  } finally {
    await store.close().catch(() => {});
  }
}

function previousOf(p: PendingCeremony): ShareSetInfo | undefined {
  return p.previous
    ? {
        shareSetId: p.previous.shareSetId,
        threshold: p.previous.threshold,
        shares: p.previous.shares,
        purpose: 'unseal-key',
      }
    : undefined;
}

function pendingRekeyError(p: PendingCeremony): CeremonyPendingError {
  return new CeremonyPendingError(
    `rekey: a rekey to share set ${p.shareSet.shareSetId} is pending since ${p.createdAt} (the current shares still work): ` +
      'finish it with `keywarden rekey --resume` or drop it with `keywarden rekey --abort`',
  );
}

async function sealedDocument(store: KeyStore): Promise<SealedRootDocument> {
  const root = await SoftwareRoot.load(store);
  try {
    return root.document;
  } finally {
    await root.close();
  }
}

/** A ceremony recorded, or a root change made, since `doc` was read: the ConflictError to report. */
async function concurrentCeremony(store: KeyStore, doc: SealedRootDocument): Promise<ConflictError | undefined> {
  try {
    const st = await pendingCeremonyState(store);
    const now = await sealedDocument(store);
    if (st.state === 'none' && now.nonce === doc.nonce && now.wrappedRoot === doc.wrappedRoot) return undefined;
  } catch {
    // Unreadable now: report the original failure.
    return undefined;
  }
  return new ConflictError(
    'rekey: another rekey of this key store started or finished meanwhile (its shares are being handed out); nothing was changed',
  );
}

async function newRootIsActive(store: KeyStore, staged: StagedCeremony): Promise<boolean> {
  try {
    const doc = await sealedDocument(store);
    return doc.nonce === staged.document.nonce && doc.wrappedRoot === staged.document.wrappedRoot;
  } catch {
    return false;
  }
}
