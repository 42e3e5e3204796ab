/**
 * The split-knowledge ceremonies on a key-store directory (docs/split-knowledge.md §3, §7):
 * `init --shares N --threshold M` and `rekey`, and how their shares are handed out.
 *
 * Hand-out, one of:
 *  - encrypted to custodians (`--custodian PEM`, one per share, in order): DIR/share-<i>-of-<N>.kwshare,
 *    DIR = --share-dir or D/shares-out (0700), files 0600 — the operator never sees a share;
 *  - plaintext files (`--share-dir DIR`, no custodians): DIR/share-<i>-of-<N>.txt, 0600;
 *  - plaintext on stdout, each share once, labelled (no custodians, no --share-dir).
 *
 * All or nothing: every parameter, custodian key and output file is checked (the files are even
 * created, empty, O_EXCL) before the key store changes; if handing out fails after it changed,
 * the change is undone — init removes the new store, rekey puts the previous sealed root document
 * back (it is not secret: it is the root sealed under the old unseal key), so the current shares
 * keep working. A store whose shares were never handed out is never left behind.
 *
 * The unseal key and the root key exist only inside @keywarden/split-knowledge, in memory, and
 * are never written anywhere in plaintext, not even to a temporary file.
 */
import { type FileHandle, chmod, mkdir, open, rm, rmdir } from 'node:fs/promises';
import * as path from 'node:path';
import { KeywardenError, ROOT_META_NAME, SoftwareRoot, ShareError } from '@keywarden/core';
import {
  checkSplitParameters,
  custodianPublicKey,
  type ShareSetInfo,
  initSplitRoot,
  rekey,
  UnsealSession,
} from '@keywarden/split-knowledge';
import { SqliteKeyStore } from '@keywarden/store-sqlite';
import { isTerminal, readHidden, readShareFile, readSharesFromStream, readSmallSecretFile } from './_prompt.js';
import { CliError, displayPath, systemErrorText, UsageError } from './errors.js';
import type { CliIO } from './io.js';
import { print } from './output.js';
import { exists, removeStoreFiles, requireStore, SHARES_OUT_DIR, type StoreLocation } from './store-dir.js';

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
  custodians: Custodian[] | undefined;
  shareSet: ShareSetInfo;
}

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

class HandOut {
  readonly mode: HandOutResult['mode'];
  readonly dir: string | undefined;
  readonly files: string[];
  readonly #handles: FileHandle[] = [];
  /** Only what this hand-out created is ever deleted (never an earlier ceremony's shares). */
  readonly #created: string[] = [];
  readonly #createdDir: boolean;
  #written = false;

  private constructor(mode: HandOutResult['mode'], dir: string | undefined, files: string[], createdDir: boolean) {
    this.mode = mode;
    this.dir = dir;
    this.files = files;
    this.#createdDir = createdDir;
  }

  /**
   * Decide where the N shares go and create their (empty) files now, O_EXCL and 0600, so that
   * nothing about the output can fail in a way that would be caught only after the store changed.
   */
  static async prepare(
    io: CliIO,
    loc: StoreLocation,
    shares: number,
    custodians: Custodian[] | undefined,
    shareDir: string | undefined,
  ): Promise<HandOut> {
    if (!custodians && shareDir === undefined) return new HandOut('stdout', undefined, [], false);
    const dir = shareDir !== undefined ? path.resolve(io.cwd, shareDir) : path.join(loc.dir, SHARES_OUT_DIR);
    const ext = custodians ? 'kwshare' : 'txt';
    const files = Array.from({ length: shares }, (_, i) => path.join(dir, `share-${i + 1}-of-${shares}.${ext}`));
    let createdDir = false;
    try {
      createdDir = (await mkdir(dir, { recursive: true, mode: 0o700 })) !== undefined;
      if (createdDir) await chmod(dir, 0o700);
    } catch (err) {
      throw new CliError(`cannot create ${displayPath(dir, io.cwd)}: ${systemErrorText(err)}`, { cause: err });
    }
    const h = new HandOut(custodians ? 'encrypted-files' : 'plaintext-files', dir, files, createdDir);
    try {
      for (const f of files) {
        try {
          const fh = await open(f, 'wx', 0o600);
          h.#created.push(f);
          h.#handles.push(fh);
          await fh.chmod(0o600);
        } catch (err) {
          const code = (err as NodeJS.ErrnoException).code;
          throw new CliError(
            code === 'EEXIST'
              ? `${displayPath(f, io.cwd)} already exists (shares of an earlier ceremony?): move them away or choose another --share-dir`
              : `cannot create ${displayPath(f, io.cwd)}: ${systemErrorText(err)}`,
            { cause: err },
          );
        }
      }
    } catch (err) {
      await h.abort();
      throw err;
    }
    return h;
  }

  /** Write the shares (armored encrypted shares, or share texts) and close the files; or print them. */
  async write(io: CliIO, handOut: readonly string[], set: ShareSetInfo): Promise<void> {
    if (this.mode === 'stdout') {
      await print(io.stderr, `${PLAINTEXT_SHARES_WARNING}\n\n`);
      for (const [i, share] of handOut.entries()) {
        await print(
          io.stdout,
          `share ${i + 1} of ${set.shares} (share set ${set.shareSetId}, any ${set.threshold} unseal) — hand to custodian ${i + 1}, then clear your screen and scrollback:\n${share}\n\n`,
        );
      }
      this.#written = true;
      return;
    }
    for (const [i, fh] of this.#handles.entries()) {
      const text = handOut[i];
      if (text === undefined) throw new CliError('ceremony: fewer shares than files');
      await fh.writeFile(text.endsWith('\n') ? text : `${text}\n`, 'utf8');
      await fh.sync();
    }
    await this.#closeHandles();
    this.#written = true;
  }

  /** Undo: close and delete the files created, and the directory if this created it. Never throws. */
  async abort(): Promise<void> {
    await this.#closeHandles().catch(() => {});
    while (this.#created.length > 0) await rm(this.#created.pop() as string, { force: true }).catch(() => {});
    if (this.#createdDir && this.dir) await rmdir(this.dir).catch(() => {});
    this.#written = false;
  }

  get written(): boolean {
    return this.#written;
  }

  async #closeHandles(): Promise<void> {
    while (this.#handles.length > 0) await (this.#handles.pop() as FileHandle).close();
  }
}

// ── Init ───────────────────────────────────────────────────────────────────────────────────────

export interface SplitInitOptions extends ShareOutputOptions {
  shares: number;
  threshold: number;
}

export interface SplitInitResult extends HandOutResult {
  rootId: string;
}

/**
 * Create D (0700) and a key store whose root is sealed under an unseal key split M-of-N, and hand
 * the shares out. Refuses when D already has a key store. On failure nothing is left behind.
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
  const created = await mkdir(loc.dir, { recursive: true, mode: 0o700 });
  if (created !== undefined) await chmod(loc.dir, 0o700);

  const handOut = await HandOut.prepare(io, loc, options.shares, custodians, options.shareDir);
  let storeCreated = false;
  try {
    storeCreated = true;
    const store = await SqliteKeyStore.open(loc.dbPath);
    let rootId: string;
    let shareSet: ShareSetInfo;
    let shares: string[];
    try {
      const split = await initSplitRoot(store, {
        shares: options.shares,
        threshold: options.threshold,
        ...(custodians ? { custodians: custodians.map((c) => c.pem) } : {}),
      });
      rootId = split.root.describe().id;
      shareSet = split.shareSet;
      shares = split.handOut;
      // The process that ran init does not keep the root: the store starts sealed.
      await split.root.close();
    } finally {
      await store.close();
    }
    await chmod(loc.dbPath, 0o600);
    await handOut.write(io, shares, shareSet);
    shares.length = 0;
    return { rootId, mode: handOut.mode, files: handOut.files, dir: handOut.dir, custodians, shareSet };
  } catch (err) {
    await handOut.abort();
    if (storeCreated) await removeStoreFiles(loc);
    throw err;
  }
}

// ── Rekey ──────────────────────────────────────────────────────────────────────────────────────

export interface RekeyOptions extends ShareOutputOptions {
  /** New N; default the current one. */
  shares?: number;
  /** New M; default the current one. */
  threshold?: number;
  /** Files holding current plaintext shares; else the hidden prompt (TTY) or stdin, one a line. */
  shareFiles?: readonly string[];
}

export interface RekeyResult extends HandOutResult {
  rootId: string;
  previous: ShareSetInfo;
}

/**
 * Replace the share set of D's split-knowledge store: a quorum of CURRENT shares is required even
 * when an agent is unsealed (separation of duties: a running process is not a quorum). The root
 * key does not change, so KEKs, data and an unsealed agent are unaffected; the old shares stop
 * opening the store once the new sealed root is written.
 */
export async function rekeyStoreDir(io: CliIO, loc: StoreLocation, options: RekeyOptions): Promise<RekeyResult> {
  await requireStore(loc);
  const store = await SqliteKeyStore.open(loc.dbPath);
  let root: SoftwareRoot | undefined;
  try {
    root = await SoftwareRoot.load(store);
    const u = root.document.unseal;
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
    const handOut = await HandOut.prepare(io, loc, shares, custodians, options.shareDir);
    let before: Uint8Array | undefined;
    let rekeyed = false;
    try {
      const current = await collectCurrentShares(io, previous, options.shareFiles ?? [], REKEY);
      before = await store.getMeta(ROOT_META_NAME);
      const out = await rekey(store, root, current, {
        shares,
        threshold,
        ...(custodians ? { custodians: custodians.map((c) => c.pem) } : {}),
      });
      current.length = 0;
      rekeyed = true;
      await handOut.write(io, out.handOut, out.shareSet);
      out.handOut.length = 0;
      return {
        rootId: root.document.rootId,
        previous,
        mode: handOut.mode,
        files: handOut.files,
        dir: handOut.dir,
        custodians,
        shareSet: out.shareSet,
      };
    } catch (err) {
      await handOut.abort();
      if (rekeyed && before) {
        // The new shares did not all get out: put the previous sealed root back.
        await store.putMeta(ROOT_META_NAME, before);
        throw new CliError(
          `rekey: the new shares could not be handed out (${messageOf(err)}); the rekey was undone and the current shares still work`,
          { cause: err },
        );
      }
      throw err;
    }
  } finally {
    await root?.close().catch(() => {});
    await store.close().catch(() => {});
  }
}

/** Who asks for a quorum, in the prompts and messages of collectCurrentShares. */
export interface QuorumRequest {
  /** The command as it starts a message: "rekey", "root rotate". */
  operation: string;
  /** The heading before the prompts: "Rekey", "Root rotation". */
  title: string;
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
        `${request.operation} needs ${current.threshold} current shares: pass --share-file, pipe them one a line, or run it in a terminal`,
      );
    }
    return lines;
  }
  const session = new UnsealSession({ expected: current });
  const texts: string[] = [];
  try {
    await print(
      io.stderr,
      `${request.title} of share set ${current.shareSetId}: ${current.threshold} custodians type their current share (nothing is echoed).\n`,
    );
    while (texts.length < current.threshold) {
      const text = await readHidden(
        io.stdin,
        io.stderr,
        `Current share (${texts.length + 1} of ${current.threshold}, input hidden): `,
        { signal: io.signal },
      );
      if (text === undefined) {
        throw new CliError(
          `${request.operation}: ${texts.length} of ${current.threshold} current shares given; nothing was changed`,
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
      const c = r.custodians[i] as Custodian;
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
