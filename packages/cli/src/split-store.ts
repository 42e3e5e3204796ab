/**
 * The split-knowledge ceremonies on a key-store directory (docs/split-knowledge.md §3, §7):
 * `init --shares N --threshold M` and `rekey`, how their shares are handed out, and how a ceremony
 * cut short by a crash is resumed or aborted (§7.1).
 *
 * Hand-out, one of:
 *  - encrypted to custodians (`--custodian PEM`, one per share, in order): DIR/share-<i>-of-<N>.kwshare,
 *    DIR = --share-dir or D/shares-out (0700), files 0600 — the operator never sees a share;
 *  - plaintext files (`--share-dir DIR`, no custodians): DIR/share-<i>-of-<N>.txt, 0600;
 *  - plaintext on stdout, each share once, labelled (no custodians, no --share-dir).
 *
 * Crash safety (no crash at any instant leaves the store without a working share set in someone's
 * hands): the new share set is STAGED — recorded in the store as a pending ceremony beside the
 * current root (@keywarden/split-knowledge, staged-ceremony.ts) — then every share is written and
 * fsynced (each file, then the folder), and only then ACTIVATED, by one store write. Until then the
 * current shares keep working. A rekey's pending record sits in the store; an init's whole store
 * is built as D/keystore.db.staged and moved into place (rename + fsync of D) as its activation,
 * so a store whose shares were never written never looks initialized. `--resume` finishes a
 * ceremony whose shares were all written; `--abort` drops it. An ordinary failure (not a kill) is
 * undone at once.
 *
 * The unseal key and the root key exist only inside @keywarden/split-knowledge, in memory, and
 * are never written anywhere in plaintext, not even to a temporary file.
 *
 * Tests only: with KEYWARDEN_TEST_STEP_HOOK set, each step boundary is announced on stderr
 * (`announce`) or ends the process with SIGKILL (`kill:<step>`); unset, `step()` does nothing.
 */
import { closeSync, fsyncSync, openSync, writeSync } from 'node:fs';
import { type FileHandle, chmod, lstat, mkdir, open, readFile, rename, rm, rmdir } from 'node:fs/promises';
import * as path from 'node:path';
import { KeywardenError, ShareError, SoftwareRoot } from '@keywarden/core';
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
  UnsealSession,
  verifyPendingCeremony,
} from '@keywarden/split-knowledge';
import { SqliteKeyStore } from '@keywarden/store-sqlite';
import { openStagedStore, pendingCeremonyOf, readStagedPending, stagedStorePath } from '@keywarden/ceremony';
import { isTerminal, readHidden, readShareFile, readSharesFromStream, readSmallSecretFile } from './_prompt.js';
import { CliError, displayPath, systemErrorText, UsageError } from './errors.js';
import type { CliIO } from './io.js';
import { print } from './output.js';
import { exists, requireStore, SHARES_OUT_DIR, type StoreLocation } from './store-dir.js';

/** The unfinished ceremony of a store folder, and where an init stages its store: @keywarden/ceremony's. */
export { pendingCeremonyOf, stagedStorePath };

/** Test-only: announce or SIGKILL at step boundaries (see the file comment). Inert when unset. */
export const TEST_STEP_HOOK_ENV = 'KEYWARDEN_TEST_STEP_HOOK';

function step(io: Pick<CliIO, 'env'>, name: string): void {
  const hook = io.env[TEST_STEP_HOOK_ENV];
  if (!hook) return;
  const parts = hook.split(',');
  if (parts.includes('announce')) writeSync(2, `keywarden-test-step: ${name}\n`);
  if (parts.includes(`kill:${name}`)) process.kill(process.pid, 'SIGKILL');
}

export interface Custodian {
  /** 1-based: the share this custodian receives. */
  index: number;
  display: string;
  pem: string;
  fingerprint: string;
}

export interface ShareOutputOptions {
  /** Custodian public-key PEM files, one per share, in share order. */
  custodianFiles?: readonly string[];
  /** Where the share files go. */
  shareDir?: string;
}

export interface HandOutResult {
  mode: 'encrypted-files' | 'plaintext-files' | 'stdout';
  /** Absolute paths, in share order (file modes). */
  files: string[];
  dir: string | undefined;
  /** Who received which share (no key material: the key file's name and its fingerprint). */
  custodians: CustodianLabel[] | undefined;
  shareSet: ShareSetInfo;
}

export type CustodianLabel = Pick<Custodian, 'index' | 'display' | 'fingerprint'>;

// ── Parameters ─────────────────────────────────────────────────────────────────────────────────

/** N and M: checked by the library's rules, reported as one line. */
export function checkShareParameters(shares: number, threshold: number): void {
  try {
    checkSplitParameters(shares, threshold);
  } catch (err) {
    if (KeywardenError.isInstance(err)) throw new UsageError(err.message, { cause: err });
    throw err;
  }
}

/** Read and check each custodian's public key before anything else happens. */
export async function readCustodians(files: readonly string[], shares: number, io: CliIO): Promise<Custodian[]> {
  if (files.length !== shares) {
    throw new UsageError(
      `${files.length} --custodian keys for ${shares} shares; give exactly one public key per share, in share order`,
    );
  }
  const out: Custodian[] = [];
  for (const [i, file] of files.entries()) {
    const p = path.resolve(io.cwd, file);
    const display = displayPath(p, io.cwd);
    const pem = await readSmallSecretFile(p, display, io.stderr, 'custodian key', false);
    let fingerprint: string;
    try {
      fingerprint = custodianPublicKey(pem).fingerprint;
    } catch (err) {
      if (KeywardenError.isInstance(err)) throw new CliError(`${display}: ${err.message}`, { cause: err });
      throw err;
    }
    const twin = out.find((c) => c.fingerprint === fingerprint);
    if (twin) {
      throw new CliError(
        `custodians ${twin.index} (${twin.display}) and ${i + 1} (${display}) have the same public key; each share must go to a different custodian`,
      );
    }
    out.push({ index: i + 1, display, pem, fingerprint });
  }
  return out;
}

// ── Hand-out ───────────────────────────────────────────────────────────────────────────────────

export const PLAINTEXT_SHARES_WARNING = [
  'The shares are printed below in plaintext, so whoever runs this sees every one of them.',
  "Encrypting each share to its custodian's public key (--custodian PEM, one per share) is",
  'preferable: then nobody but the custodian ever sees a share.',
].join('\n');

/** The hand-out as recorded in the pending ceremony (no key material: paths and fingerprints). */
interface HandOutDescription {
  mode: HandOutResult['mode'];
  dir?: string;
  files: string[];
  custodians?: CustodianLabel[];
  requireNewQuorum?: boolean;
}

class HandOut {
  readonly mode: HandOutResult['mode'];
  readonly dir: string | undefined;
  readonly files: string[];
  readonly custodians: Custodian[] | undefined;
  /** Only what this hand-out created is ever deleted (never an earlier ceremony's shares). */
  readonly #created: string[] = [];
  #createdDir = false;

  private constructor(
    mode: HandOutResult['mode'],
    dir: string | undefined,
    files: string[],
    custodians: Custodian[] | undefined,
  ) {
    this.mode = mode;
    this.dir = dir;
    this.files = files;
    this.custodians = custodians;
  }

  /**
   * Decide where the N shares go and check that none of the files exists yet (they are created,
   * O_EXCL, only after the ceremony is recorded, so that an abort knows which files are its own).
   */
  static async plan(
    io: CliIO,
    loc: StoreLocation,
    shares: number,
    custodians: Custodian[] | undefined,
    shareDir: string | undefined,
  ): Promise<HandOut> {
    if (!custodians && shareDir === undefined) return new HandOut('stdout', undefined, [], undefined);
    const dir = shareDir !== undefined ? path.resolve(io.cwd, shareDir) : path.join(loc.dir, SHARES_OUT_DIR);
    const ext = custodians ? 'kwshare' : 'txt';
    const files = Array.from({ length: shares }, (_, i) => path.join(dir, `share-${i + 1}-of-${shares}.${ext}`));
    for (const f of files) {
      if (await lexists(f)) {
        throw new CliError(
          `${displayPath(f, io.cwd)} already exists (shares of an earlier ceremony?): move them away or choose another --share-dir`,
        );
      }
    }
    return new HandOut(custodians ? 'encrypted-files' : 'plaintext-files', dir, files, custodians);
  }

  describe(requireNewQuorum: boolean): HandOutDescription {
    return {
      mode: this.mode,
      ...(this.dir !== undefined ? { dir: this.dir } : {}),
      files: [...this.files],
      ...(this.custodians
        ? {
            custodians: this.custodians.map((c) => ({
              index: c.index,
              display: c.display,
              fingerprint: c.fingerprint,
            })),
          }
        : {}),
      ...(requireNewQuorum ? { requireNewQuorum: true } : {}),
    };
  }

  /**
   * Hand the shares out: print them, or write each file (O_EXCL, 0600), fsync it and close it,
   * then fsync the folder (and its parent when this created it), so that every share is on disk
   * before the ceremony is activated.
   */
  async write(io: CliIO, handOut: readonly string[], set: ShareSetInfo, ceremony: string): Promise<void> {
    if (this.mode === 'stdout') {
      await print(io.stderr, `${PLAINTEXT_SHARES_WARNING}\n\n`);
      for (const [i, share] of handOut.entries()) {
        await print(
          io.stdout,
          `share ${i + 1} of ${set.shares} (share set ${set.shareSetId}, any ${set.threshold} unseal) — hand to custodian ${i + 1}, then clear your screen and scrollback:\n${share}\n\n`,
        );
        step(io, `${ceremony}:share-${i + 1}`);
      }
      return;
    }
    const dir = this.dir as string;
    try {
      if ((await mkdir(dir, { recursive: true, mode: 0o700 })) !== undefined) {
        this.#createdDir = true;
        await chmod(dir, 0o700);
      }
    } catch (err) {
      throw new CliError(`cannot create ${displayPath(dir, io.cwd)}: ${systemErrorText(err)}`, { cause: err });
    }
    for (const [i, f] of this.files.entries()) {
      const text = handOut[i];
      if (text === undefined) throw new CliError('ceremony: fewer shares than files');
      let fh: FileHandle;
      try {
        fh = await open(f, 'wx', 0o600);
      } catch (err) {
        const code = (err as NodeJS.ErrnoException).code;
        throw new CliError(
          code === 'EEXIST'
            ? `${displayPath(f, io.cwd)} already exists (shares of an earlier ceremony?): move them away or choose another --share-dir`
            : `cannot create ${displayPath(f, io.cwd)}: ${systemErrorText(err)}`,
          { cause: err },
        );
      }
      this.#created.push(f);
      try {
        await fh.chmod(0o600);
        await fh.writeFile(text.endsWith('\n') ? text : `${text}\n`, 'utf8');
        await fh.sync();
      } catch (err) {
        throw new CliError(`cannot write ${displayPath(f, io.cwd)}: ${systemErrorText(err)}`, { cause: err });
      } finally {
        await fh.close();
      }
      step(io, `${ceremony}:share-${i + 1}`);
    }
    fsyncDir(dir);
    if (this.#createdDir) fsyncDir(path.dirname(dir));
  }

  /** Undo: delete the files created, and the directory if this created it. Never throws. */
  async abort(): Promise<void> {
    while (this.#created.length > 0) await rm(this.#created.pop() as string, { force: true }).catch(() => {});
    if (this.#createdDir && this.dir) await rmdir(this.dir).catch(() => {});
    this.#createdDir = false;
  }
}

/**
 * For a resume: is every share of the pending ceremony on disk, whole? Each file must hold exactly
 * the text whose digest was recorded. Each file and the folder are fsynced again (a crash may have
 * come between a write and its fsync). Returns what is wrong, one item a file; empty when complete.
 */
async function checkHandOutFiles(io: CliIO, pending: PendingCeremony): Promise<string[]> {
  const h = pending.handOut as unknown as HandOutDescription;
  const problems: string[] = [];
  for (const [i, f] of h.files.entries()) {
    let text: string;
    try {
      text = await readFile(f, 'utf8');
    } catch (err) {
      problems.push(`${displayPath(f, io.cwd)}: ${systemErrorText(err)}`);
      continue;
    }
    if (handOutDigest(text) !== pending.digests[i]) {
      problems.push(`${displayPath(f, io.cwd)} is incomplete or altered`);
      continue;
    }
    fsyncFile(f);
  }
  if (h.dir !== undefined && problems.length === 0) fsyncDir(h.dir);
  return problems;
}

/**
 * For an abort: delete the share files of the pending ceremony — only files that are empty (the
 * crash came before the write), hold the recorded text, or name its share set; anything else at
 * those paths is left alone and reported.
 */
async function removeHandOutFiles(io: CliIO, pending: PendingCeremony | undefined): Promise<string[]> {
  const notes: string[] = [];
  if (!pending) return notes;
  const h = pending.handOut as unknown as HandOutDescription;
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
      notes.push(`removed ${displayPath(f, io.cwd)}`);
    } else {
      notes.push(`left ${displayPath(f, io.cwd)} in place: it is not a share of this ceremony`);
    }
  }
  if (typeof h.dir === 'string' && path.basename(h.dir) === SHARES_OUT_DIR) await rmdir(h.dir).catch(() => {});
  return notes;
}

function handOutResultOf(pending: PendingCeremony): HandOutResult {
  const h = pending.handOut as unknown as HandOutDescription;
  return { mode: h.mode, files: h.files, dir: h.dir, custodians: h.custodians, shareSet: pending.shareSet };
}

// ── Init ───────────────────────────────────────────────────────────────────────────────────────

export interface SplitInitOptions extends ShareOutputOptions {
  shares: number;
  threshold: number;
  /** Leave the store pending until a test quorum of the new shares confirms it (`init --resume`). */
  verifyQuorum?: boolean;
}

export interface SplitInitResult extends HandOutResult {
  rootId: string;
  /** False with --verify-quorum: the store is moved into place by `init --resume` with a test quorum. */
  activated: boolean;
}

/**
 * Create D (0700) and a key store whose root is sealed under an unseal key split M-of-N, and hand
 * the shares out; the store is built as D/keystore.db.staged and becomes D/keystore.db only once
 * every share is durably handed out. Refuses when D already has a key store or an unfinished init.
 * On an ordinary failure nothing is left behind.
 */
export async function initSplitStoreDir(
  io: CliIO,
  loc: StoreLocation,
  options: SplitInitOptions,
): Promise<SplitInitResult> {
  checkShareParameters(options.shares, options.threshold);
  const custodians = options.custodianFiles?.length
    ? await readCustodians(options.custodianFiles, options.shares, io)
    : undefined;
  if (await exists(loc.dbPath)) throw new CliError(`${loc.display} already has a key store`);
  await clearAbandonedInit(io, loc);
  const created = await mkdir(loc.dir, { recursive: true, mode: 0o700 });
  if (created !== undefined) await chmod(loc.dir, 0o700);

  const handOut = await HandOut.plan(io, loc, options.shares, custodians, options.shareDir);
  const staged = await stageInit({
    shares: options.shares,
    threshold: options.threshold,
    ...(custodians ? { custodians: custodians.map((c) => c.pem) } : {}),
  });
  const stagedPath = stagedStorePath(loc);
  try {
    const store = await SqliteKeyStore.open(stagedPath);
    try {
      step(io, 'init:store-created');
      await staged.record(store, { ...handOut.describe(options.verifyQuorum === true) });
    } finally {
      await store.close();
    }
    await chmod(stagedPath, 0o600);
    fsyncFile(stagedPath);
    fsyncDir(loc.dir);
    step(io, 'init:recorded');
    await handOut.write(io, staged.handOut, staged.shareSet, 'init');
    staged.handOut.length = 0;
    step(io, 'init:shares-written');
    const result = {
      rootId: staged.document.rootId,
      mode: handOut.mode,
      files: handOut.files,
      dir: handOut.dir,
      custodians,
      shareSet: staged.shareSet,
    };
    if (options.verifyQuorum) return { ...result, activated: false };
    await moveStagedStoreIntoPlace(io, loc);
    return { ...result, activated: true };
  } catch (err) {
    if (!(await exists(stagedPath)) && (await exists(loc.dbPath))) {
      // The store was moved into place (activated): its shares are the ones on disk; keep them.
      throw new CliError(
        `init: the key store is in place, but the clean-up failed (${messageOf(err)}); run \`keywarden init --resume\``,
        { cause: err },
      );
    }
    await handOut.abort();
    await removeFiles(stagedPath);
    throw err;
  } finally {
    await staged.close();
  }
}

/** A staged store with no pending record is a crash before anything was handed out: remove it. */
async function clearAbandonedInit(io: CliIO, loc: StoreLocation): Promise<void> {
  const stagedPath = stagedStorePath(loc);
  if (!(await exists(stagedPath))) return;
  const pending = await readStagedPending(stagedPath);
  if (pending) {
    throw new CliError(
      `an earlier \`keywarden init\` in ${loc.display} did not finish (share set ${pending.shareSet.shareSetId}, started ${pending.createdAt}): ` +
        'finish it with `keywarden init --resume` or drop it with `keywarden init --abort`',
    );
  }
  await removeFiles(stagedPath);
  await print(io.stderr, `Removed the remains of an earlier init that stopped before any share was handed out.\n`);
}

/** The activation of an init: D/keystore.db.staged becomes D/keystore.db (rename, fsync of D). */
async function moveStagedStoreIntoPlace(io: CliIO, loc: StoreLocation): Promise<void> {
  const stagedPath = stagedStorePath(loc);
  if (await exists(`${stagedPath}-wal`)) {
    // A crash left a write-ahead log: open and close the store so SQLite folds it in.
    await (await SqliteKeyStore.open(stagedPath, { create: false })).close();
  }
  if (await exists(loc.dbPath)) throw new CliError(`${loc.display} already has a key store`);
  await rename(stagedPath, loc.dbPath);
  fsyncDir(loc.dir);
  step(io, 'init:activated');
  await rm(`${stagedPath}-shm`, { force: true });
  const store = await SqliteKeyStore.open(loc.dbPath, { create: false });
  try {
    await finishActivatedCeremony(store);
  } finally {
    await store.close();
  }
  step(io, 'init:done');
}

export interface ResumeOptions {
  /** Plaintext shares: of the current set, or of the new set (the test quorum). */
  shareFiles?: readonly string[];
}

export interface ResumeResult extends HandOutResult {
  kind: 'init' | 'rekey';
  rootId: string;
  /** The rekey or init had already been activated before the crash; only the clean-up was left. */
  alreadyActivated: boolean;
  quorumOf?: 'current' | 'new';
  previous?: ShareSetInfo;
}

/** `init --resume`: activate an init whose shares were all handed out. */
export async function resumeInitStoreDir(io: CliIO, loc: StoreLocation, options: ResumeOptions): Promise<ResumeResult> {
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
      throw new CliError(`init --resume: ${loc.display} already has a key store; no init is pending`);
    }
    throw new CliError(`init --resume: no init is pending in ${loc.display}`);
  }
  const store = await openStagedStore(stagedPath);
  let pending: PendingCeremony;
  let quorumOf: 'current' | 'new' | undefined;
  try {
    const p = await readPendingCeremony(store);
    if (!p) {
      await store.close();
      await removeFiles(stagedPath);
      throw new CliError(
        'init --resume: the earlier init stopped before any share was handed out, so there is nothing to resume (its remains were removed); run `keywarden init` again',
      );
    }
    pending = p;
    const h = pending.handOut as unknown as HandOutDescription;
    const files = options.shareFiles ?? [];
    if (files.length > 0 || h.requireNewQuorum || h.mode === 'stdout') {
      const shares = await collectCurrentShares(io, pending.shareSet, files, {
        operation: `init --resume${h.mode === 'stdout' ? ' (the shares were printed on a terminal, so a test quorum must show they were received; or `keywarden init --abort`)' : ''}`,
        title: 'Test quorum',
        which: 'new',
      });
      quorumOf = (await verifyPendingCeremony(store, shares)).quorumOf;
      shares.length = 0;
    }
  } finally {
    await store.close().catch(() => {});
  }
  const problems = pending.handOut.mode === 'stdout' ? [] : await checkHandOutFiles(io, pending);
  if (problems.length > 0) {
    throw new CliError(
      `init --resume: the shares were not all written (${problems.join('; ')}); nothing was activated: run \`keywarden init --abort\`, then init again`,
    );
  }
  await moveStagedStoreIntoPlace(io, loc);
  return {
    kind: 'init',
    rootId: pending.document.rootId,
    alreadyActivated: false,
    ...(quorumOf ? { quorumOf } : {}),
    ...handOutResultOf(pending),
  };
}

/** `init --abort`: remove an unfinished init — its staged store and the share files it wrote. */
export async function abortInitStoreDir(io: CliIO, loc: StoreLocation): Promise<string[]> {
  const stagedPath = stagedStorePath(loc);
  if (!(await exists(stagedPath))) throw new CliError(`init --abort: no init is pending in ${loc.display}`);
  let pending: PendingCeremony | undefined;
  try {
    pending = await readStagedPending(stagedPath);
  } catch {
    pending = undefined;
  }
  const notes = await removeHandOutFiles(io, pending);
  await removeFiles(stagedPath);
  fsyncDir(loc.dir);
  return notes;
}

// ── Rekey ──────────────────────────────────────────────────────────────────────────────────────

export interface RekeyOptions extends ShareOutputOptions {
  /** New N; default the current one. */
  shares?: number;
  /** New M; default the current one. */
  threshold?: number;
  /** Files holding current plaintext shares; else the hidden prompt (TTY) or stdin, one a line. */
  shareFiles?: readonly string[];
  /** Leave the rekey pending until a test quorum of the new shares activates it (`rekey --resume`). */
  verifyQuorum?: boolean;
}

export interface RekeyResult extends HandOutResult {
  rootId: string;
  previous: ShareSetInfo;
  /** False with --verify-quorum: the current shares keep working until `rekey --resume`. */
  activated: boolean;
}

/**
 * Replace the share set of D's split-knowledge store: a quorum of CURRENT shares is required even
 * when an agent is unsealed (separation of duties: a running process is not a quorum). The root
 * key does not change, so KEKs, data and an unsealed agent are unaffected. The new set is staged,
 * handed out durably, and only then activated; the old shares work until that instant.
 */
export async function rekeyStoreDir(io: CliIO, loc: StoreLocation, options: RekeyOptions): Promise<RekeyResult> {
  await requireStore(loc);
  const store = await SqliteKeyStore.open(loc.dbPath, { create: false });
  let staged: StagedCeremony | undefined;
  try {
    const st = await pendingCeremonyState(store);
    if (st.state === 'activated') await finishActivatedCeremony(store);
    if (st.state === 'pending') throw pendingCeremonyError(st.pending);
    const doc = await sealedDocument(store);
    const u = doc.unseal;
    if (u.method !== 'shamir') {
      throw new CliError(
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
    checkShareParameters(shares, threshold);
    const custodians = options.custodianFiles?.length
      ? await readCustodians(options.custodianFiles, shares, io)
      : undefined;
    const handOut = await HandOut.plan(io, loc, shares, custodians, options.shareDir);
    const current = await collectCurrentShares(io, previous, options.shareFiles ?? [], REKEY);
    staged = await stageRekey(store, current, {
      shares,
      threshold,
      ...(custodians ? { custodians: custodians.map((c) => c.pem) } : {}),
    });
    current.length = 0;
    step(io, 'rekey:staged');
    let recorded = false;
    let activating = false;
    try {
      await staged.record(store, { ...handOut.describe(options.verifyQuorum === true) });
      recorded = true;
      step(io, 'rekey:recorded');
      await handOut.write(io, staged.handOut, staged.shareSet, 'rekey');
      staged.handOut.length = 0;
      step(io, 'rekey:shares-written');
      if (!options.verifyQuorum) {
        activating = true;
        await staged.activate(store);
        step(io, 'rekey:activated');
      }
    } catch (err) {
      if (activating && (await newRootIsActive(store, staged))) {
        // The switch happened: the new shares are on disk and are the ones that work now.
        throw new CliError(
          `rekey: the new share set ${staged.shareSet.shareSetId} is active, but the clean-up failed (${messageOf(err)}); run \`keywarden rekey --resume\``,
          { cause: err },
        );
      }
      if (recorded && activating) {
        // Unknown state (the store may be unreadable): keep the shares and the pending record.
        throw new CliError(
          `rekey: activating the new share set failed (${messageOf(err)}); the shares were kept: run \`keywarden rekey --resume\` or \`keywarden rekey --abort\``,
          { cause: err },
        );
      }
      await handOut.abort();
      if (recorded) {
        await abortPendingCeremony(store).catch(() => {});
        throw new CliError(
          `rekey: the new shares could not be handed out (${messageOf(err)}); the rekey was undone and the current shares still work`,
          { cause: err },
        );
      }
      throw err;
    }
    return {
      rootId: doc.rootId,
      previous,
      mode: handOut.mode,
      files: handOut.files,
      dir: handOut.dir,
      custodians,
      shareSet: staged.shareSet,
      activated: !options.verifyQuorum,
    };
  } finally {
    await staged?.close().catch(() => {});
    await store.close().catch(() => {});
  }
}

/**
 * `rekey --resume`: activate a pending rekey whose shares were all handed out. Needs a quorum of
 * the current shares, or of the new ones (which is also the test quorum); shares printed on a
 * terminal, or a rekey started with --verify-quorum, need the new ones.
 */
export async function resumeRekeyStoreDir(
  io: CliIO,
  loc: StoreLocation,
  options: ResumeOptions,
): Promise<ResumeResult> {
  await requireStore(loc);
  const store = await SqliteKeyStore.open(loc.dbPath, { create: false });
  try {
    const st = await pendingCeremonyState(store);
    if (st.state === 'none') throw new CliError(`rekey --resume: no rekey is pending in ${loc.display}`);
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
    const h = pending.handOut as unknown as HandOutDescription;
    const needNew = h.requireNewQuorum === true || h.mode === 'stdout';
    const promptSet = needNew || !previous ? pending.shareSet : previous;
    const shares = await collectCurrentShares(io, promptSet, options.shareFiles ?? [], {
      operation: 'rekey --resume',
      title: needNew ? 'Test quorum' : 'Resuming the rekey',
      which: needNew ? 'new' : 'current',
    });
    const verified = await verifyPendingCeremony(store, shares);
    shares.length = 0;
    if (needNew && verified.quorumOf !== 'new') {
      throw new CliError(
        h.mode === 'stdout'
          ? `rekey --resume: the new shares were printed on a terminal, so this cannot tell whether they were received: give a quorum of the NEW shares (share set ${pending.shareSet.shareSetId}), or \`keywarden rekey --abort\``
          : `rekey --resume: this rekey waits for a test quorum of the NEW shares (share set ${pending.shareSet.shareSetId})`,
      );
    }
    if (h.mode !== 'stdout') {
      const problems = await checkHandOutFiles(io, pending);
      if (problems.length > 0) {
        throw new CliError(
          `rekey --resume: the new shares were not all written (${problems.join('; ')}); nothing was activated and the current shares still work: run \`keywarden rekey --abort\`, then rekey again`,
        );
      }
    }
    await activatePendingCeremony(store, verified);
    step(io, 'rekey:activated');
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

/** `rekey --abort`: drop a pending rekey and the share files it wrote; the current set is unaffected. */
export async function abortRekeyStoreDir(
  io: CliIO,
  loc: StoreLocation,
): Promise<{ pending: PendingCeremony | undefined; notes: string[] }> {
  await requireStore(loc);
  const store = await SqliteKeyStore.open(loc.dbPath, { create: false });
  try {
    const st = await pendingCeremonyState(store);
    if (st.state === 'none') throw new CliError(`rekey --abort: no rekey is pending in ${loc.display}`);
    if (st.state === 'activated') {
      await finishActivatedCeremony(store);
      throw new CliError(
        `rekey --abort: the rekey to share set ${st.pending.shareSet.shareSetId} had already been activated, so there is nothing to abort: its shares are the ones that work now`,
      );
    }
    // Files first, then the record: a kill in between leaves a pending rekey to abort again, never
    // share files of a dead share set that nothing points to.
    const notes = await removeHandOutFiles(io, st.pending);
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

function pendingCeremonyError(p: PendingCeremony): CliError {
  return new CliError(
    `rekey: a rekey to share set ${p.shareSet.shareSetId} is pending since ${p.createdAt} (the current shares still work): ` +
      'finish it with `keywarden rekey --resume` or drop it with `keywarden rekey --abort`',
  );
}

async function sealedDocument(store: SqliteKeyStore): Promise<SoftwareRoot['document']> {
  const root = await SoftwareRoot.load(store);
  try {
    return root.document;
  } finally {
    await root.close();
  }
}

async function newRootIsActive(store: SqliteKeyStore, staged: StagedCeremony): Promise<boolean> {
  try {
    const doc = await sealedDocument(store);
    return doc.nonce === staged.document.nonce && doc.wrappedRoot === staged.document.wrappedRoot;
  } catch {
    return false;
  }
}

/** Who asks for a quorum, in the prompts and messages of collectCurrentShares. */
export interface QuorumRequest {
  /** The command as it starts a message: "rekey", "root rotate". */
  operation: string;
  /** The heading before the prompts: "Rekey", "Root rotation". */
  title: string;
  /** Which shares are asked for: "current" (the default) or "new" (a test quorum). */
  which?: 'current' | 'new';
}

const REKEY: QuorumRequest = { operation: 'rekey', title: 'Rekey' };

/**
 * A quorum of the current shares: from files; else from the hidden prompt, where each share is
 * checked as it is typed (a mistyped one is reported and asked again); else from stdin, one a line.
 */
export async function collectCurrentShares(
  io: CliIO,
  current: ShareSetInfo,
  files: readonly string[],
  request: QuorumRequest,
): Promise<string[]> {
  if (files.length > 0) {
    const out: string[] = [];
    for (const f of files) out.push(await readShareFile(f, io.cwd, io.stderr));
    return out;
  }
  if (!isTerminal(io.stdin)) {
    const lines = await readSharesFromStream(io.stdin);
    if (lines.length === 0) {
      throw new CliError(
        `${request.operation} needs ${current.threshold} ${request.which ?? 'current'} shares${request.which === 'new' ? ` (share set ${current.shareSetId})` : ''}: pass --share-file, pipe them one a line, or run it in a terminal`,
      );
    }
    return lines;
  }
  const session = new UnsealSession({ expected: current });
  const texts: string[] = [];
  try {
    await print(
      io.stderr,
      `${request.title} of share set ${current.shareSetId}: ${current.threshold} custodians type their ${request.which ?? 'current'} share (nothing is echoed).\n`,
    );
    while (texts.length < current.threshold) {
      const text = await readHidden(
        io.stdin,
        io.stderr,
        `${request.which === 'new' ? 'New' : 'Current'} share (${texts.length + 1} of ${current.threshold}, input hidden): `,
        { signal: io.signal },
      );
      if (text === undefined) {
        throw new CliError(
          `${request.operation}: ${texts.length} of ${current.threshold} ${request.which ?? 'current'} shares given; nothing was changed`,
        );
      }
      if (text.trim() === '') continue;
      try {
        session.submit(text);
        texts.push(text);
      } catch (err) {
        if (!ShareError.isInstance(err)) throw err;
        await print(io.stderr, `keywarden: ${err.message}\n`);
      }
    }
    return texts;
  } finally {
    session.reset();
  }
}

// ── Helpers ────────────────────────────────────────────────────────────────────────────────────

function fsyncFile(p: string): void {
  const fd = openSync(p, 'r');
  try {
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}

/** fsync a directory, so the names created or renamed in it survive a power loss. */
function fsyncDir(dir: string): void {
  fsyncFile(dir);
}

async function lexists(p: string): Promise<boolean> {
  try {
    await lstat(p);
    return true;
  } catch {
    return false;
  }
}

async function removeFiles(dbPath: string): Promise<void> {
  for (const suffix of ['', '-wal', '-shm', '-journal']) await rm(dbPath + suffix, { force: true }).catch(() => {});
}

function messageOf(err: unknown): string {
  if (KeywardenError.isInstance(err) || err instanceof CliError) return err.message;
  return systemErrorText(err);
}

/** Describe the hand-out for the operator (stderr): where each share went, and what comes next. */
export function describeHandOut(r: HandOutResult, io: Pick<CliIO, 'cwd'>): string[] {
  const lines: string[] = [];
  const set = r.shareSet;
  lines.push(`Share set ${set.shareSetId}: ${set.shares} shares, any ${set.threshold} of them unseal the root.`);
  if (r.mode === 'encrypted-files' && r.custodians) {
    lines.push(`Encrypted shares written to ${displayPath(r.dir as string, io.cwd)} (mode 0600):`);
    for (const [i, f] of r.files.entries()) {
      const c = r.custodians[i] as CustodianLabel;
      lines.push(`  ${path.basename(f)}  for custodian ${c.index}: ${c.display} (${c.fingerprint})`);
    }
    lines.push(
      'Give each file to its custodian once, then delete it from this host. Each custodian checks the',
      'Recipient fingerprint and opens theirs on their own machine:',
      `  keywarden share decrypt -i ${path.basename(r.files[0] as string)} --private-key custodian.key`,
    );
  } else if (r.mode === 'plaintext-files') {
    lines.push(`Plaintext shares written to ${displayPath(r.dir as string, io.cwd)} (mode 0600), one a file:`);
    for (const f of r.files) lines.push(`  ${path.basename(f)}`);
    lines.push('Give each file to its custodian once, then delete it from this host.');
  }
  return lines;
}
