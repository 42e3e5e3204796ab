/**
 * A key-store directory:
 *
 *   D/             mode 0700
 *   D/keystore.db  SqliteKeyStore: key metadata, root-wrapped KEKs, the sealed root document
 *   D/unseal.key   development mode only: the unseal key in text form, mode 0600
 *
 * D is `--dir`, else $KEYWARDEN_DIR, else ./.keywarden (relative to the working directory).
 *
 * Opening a store and unsealing it are separate steps: commands that only read metadata
 * (`key list`, `key show`) never touch an unseal secret. Where the secret comes from is an
 * `UnsealSource`; today a key in text form (environment variable or file), later a quorum of
 * Shamir shares (`keywarden unseal`) — that slots in as another variant of UnsealSource and
 * another branch in `unsealRoot`, chosen from the sealed root document's `unseal.method`.
 */
import { randomFillSync } from 'node:crypto';
import { mkdir, open, readFile, rm, stat, chmod } from 'node:fs/promises';
import * as path from 'node:path';
import {
  decodeUnsealKey,
  encodeUnsealKey,
  KeywardenError,
  Keywarden,
  SoftwareRoot,
  UNSEAL_KEY_BYTES,
  wipe,
  type KeyStore,
} from '@keywarden/core';
import { SqliteKeyStore } from '@keywarden/store-sqlite';
import { CliError, displayPath, UsageError } from './errors.js';
import type { CliIO } from './io.js';

export const DEFAULT_DIR = '.keywarden';
export const KEYSTORE_FILE = 'keystore.db';
export const UNSEAL_KEY_FILE = 'unseal.key';
export const DIR_ENV = 'KEYWARDEN_DIR';
export const UNSEAL_KEY_ENV = 'KEYWARDEN_UNSEAL_KEY';

export interface StoreLocation {
  /** Absolute path of D. */
  dir: string;
  /** Absolute path of D/keystore.db. */
  dbPath: string;
  /** Absolute path of D/unseal.key. */
  defaultUnsealKeyPath: string;
  /** How to show D in messages. */
  display: string;
}

export function resolveStoreLocation(io: Pick<CliIO, 'cwd' | 'env'>, dirOption?: string): StoreLocation {
  const raw = dirOption ?? nonEmpty(io.env[DIR_ENV]) ?? DEFAULT_DIR;
  const dir = path.resolve(io.cwd, raw);
  return {
    dir,
    dbPath: path.join(dir, KEYSTORE_FILE),
    defaultUnsealKeyPath: path.join(dir, UNSEAL_KEY_FILE),
    display: displayPath(dir, io.cwd),
  };
}

// ── Unseal sources ────────────────────────────────────────────────────────────────────────────

/** Where the unseal secret comes from. Shamir shares will be one more variant. */
export type UnsealSource =
  | { kind: 'env'; variable: string; value: string }
  | { kind: 'file'; path: string; display: string; explicit: boolean };

/** KEYWARDEN_UNSEAL_KEY if set, else --unseal-key-file, else D/unseal.key. */
export function resolveUnsealSource(
  io: Pick<CliIO, 'cwd' | 'env'>,
  loc: StoreLocation,
  unsealKeyFile?: string,
): UnsealSource {
  const fromEnv = nonEmpty(io.env[UNSEAL_KEY_ENV]);
  if (fromEnv !== undefined) return { kind: 'env', variable: UNSEAL_KEY_ENV, value: fromEnv };
  if (unsealKeyFile !== undefined) {
    const p = path.resolve(io.cwd, unsealKeyFile);
    return { kind: 'file', path: p, display: displayPath(p, io.cwd), explicit: true };
  }
  return {
    kind: 'file',
    path: loc.defaultUnsealKeyPath,
    display: displayPath(loc.defaultUnsealKeyPath, io.cwd),
    explicit: false,
  };
}

/** Read the 32-byte unseal key a source holds. The caller wipes it. Errors never echo the key. */
export async function readUnsealKey(source: UnsealSource, io: Pick<CliIO, 'stderr'>): Promise<Uint8Array> {
  if (source.kind === 'env') {
    try {
      return decodeUnsealKey(source.value);
    } catch (err) {
      throw new CliError(`${source.variable} does not hold a valid unseal key (${messageOf(err)})`, { cause: err });
    }
  }
  let text: string;
  try {
    const st = await stat(source.path);
    // Like ssh with a private key: say so when others can read the secret.
    if (process.platform !== 'win32' && (st.mode & 0o077) !== 0) {
      io.stderr.write(
        `keywarden: warning: unseal key file ${source.display} is accessible to group or others (mode ${(st.mode & 0o777).toString(8)}); run chmod 600 on it\n`,
      );
    }
    const bytes = await readFile(source.path);
    text = bytes.toString('utf8');
    wipe(bytes);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') {
      throw new CliError(
        source.explicit
          ? `no such unseal key file: ${source.display}`
          : `no unseal key: set ${UNSEAL_KEY_ENV}, pass --unseal-key-file, or keep the key in ${source.display}`,
      );
    }
    throw err;
  }
  try {
    return decodeUnsealKey(text);
  } catch (err) {
    throw new CliError(`${source.display} does not hold a valid unseal key (${messageOf(err)})`, { cause: err });
  }
}

/** Unseal a loaded root with the secret from `source`. */
export async function unsealRoot(root: SoftwareRoot, source: UnsealSource, io: Pick<CliIO, 'stderr'>): Promise<void> {
  const method = root.document.unseal.method;
  if (method !== 'key') {
    throw new CliError(
      `this key store is unsealed with ${method} shares, which this version of the CLI cannot use yet`,
    );
  }
  const key = await readUnsealKey(source, io);
  try {
    await root.unseal(key);
  } finally {
    wipe(key);
  }
}

// ── Opening ───────────────────────────────────────────────────────────────────────────────────

export interface OpenOptions {
  /** Unseal the root with this source; omit to leave it sealed (metadata-only commands). */
  unseal?: UnsealSource;
}

/** Open D's store and root. The returned Keywarden owns both: close it when done. */
export async function openKeywarden(
  loc: StoreLocation,
  io: Pick<CliIO, 'stderr'>,
  options: OpenOptions = {},
): Promise<Keywarden> {
  await requireStore(loc);
  const store: KeyStore = await SqliteKeyStore.open(loc.dbPath);
  let root: SoftwareRoot | undefined;
  try {
    root = await SoftwareRoot.load(store);
    if (options.unseal) await unsealRoot(root, options.unseal, io);
    return new Keywarden({ store, root });
  } catch (err) {
    await root?.close().catch(() => {});
    await store.close().catch(() => {});
    throw err;
  }
}

/** Open, run `fn`, and always close (which wipes the KEK cache and seals the root). */
export async function withKeywarden<T>(
  loc: StoreLocation,
  io: Pick<CliIO, 'stderr'>,
  options: OpenOptions,
  fn: (kw: Keywarden) => Promise<T>,
): Promise<T> {
  const kw = await openKeywarden(loc, io, options);
  try {
    return await fn(kw);
  } finally {
    await kw.close();
  }
}

async function requireStore(loc: StoreLocation): Promise<void> {
  try {
    const st = await stat(loc.dbPath);
    if (st.isFile()) return;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT' && (err as NodeJS.ErrnoException).code !== 'ENOTDIR')
      throw err;
  }
  throw new CliError(`no key store in ${loc.display} (run \`keywarden init\`)`);
}

// ── Initializing ──────────────────────────────────────────────────────────────────────────────

export interface InitOptions {
  /** Where to write the unseal key; default D/unseal.key. */
  unsealKeyFile?: string;
  /** Return the unseal key's text form instead of writing a file. */
  printUnsealKey?: boolean;
}

export interface InitResult {
  rootId: string;
  /** Absolute path of the unseal key file, when one was written. */
  unsealKeyPath?: string;
  /** Text form of the unseal key, only with printUnsealKey. */
  unsealKeyText?: string;
}

/**
 * Create D (0700), a new key store, and a software root sealed under a fresh 32-byte unseal key
 * from node:crypto. Refuses when D already has a key store or the unseal key file exists. On
 * failure nothing is left behind: neither a store without a key nor a key without a store.
 */
export async function initStoreDir(
  io: Pick<CliIO, 'cwd'>,
  loc: StoreLocation,
  options: InitOptions,
): Promise<InitResult> {
  if (options.printUnsealKey && options.unsealKeyFile !== undefined) {
    throw new UsageError('--print-unseal-key and --unseal-key-file cannot be used together');
  }
  if (await exists(loc.dbPath)) throw new CliError(`${loc.display} already has a key store`);
  const keyPath = options.printUnsealKey
    ? undefined
    : options.unsealKeyFile !== undefined
      ? path.resolve(io.cwd, options.unsealKeyFile)
      : loc.defaultUnsealKeyPath;
  if (keyPath !== undefined && (await exists(keyPath))) {
    throw new CliError(`unseal key file ${displayPath(keyPath, io.cwd)} already exists; refusing to overwrite it`);
  }

  const created = await mkdir(loc.dir, { recursive: true, mode: 0o700 });
  // mkdir's mode is filtered by the umask; make the directory private whatever the umask is.
  if (created !== undefined) await chmod(loc.dir, 0o700);

  const unsealKey = randomFillSync(new Uint8Array(UNSEAL_KEY_BYTES));
  let wroteKeyFile = false;
  let storeCreated = false;
  try {
    const text = encodeUnsealKey(unsealKey);
    if (keyPath !== undefined) {
      // Written before the store, so a failure never leaves a store whose key was lost.
      await writeSecretFile(keyPath, `${text}\n`);
      wroteKeyFile = true;
    }
    storeCreated = true;
    const store = await SqliteKeyStore.open(loc.dbPath);
    let rootId: string;
    try {
      const root = await SoftwareRoot.initialize(store, { unsealKey });
      rootId = root.describe().id;
      await root.close();
    } finally {
      await store.close();
    }
    await chmod(loc.dbPath, 0o600);
    return {
      rootId,
      ...(keyPath !== undefined ? { unsealKeyPath: keyPath } : {}),
      ...(options.printUnsealKey ? { unsealKeyText: text } : {}),
    };
  } catch (err) {
    if (storeCreated) await removeStoreFiles(loc);
    if (wroteKeyFile && keyPath !== undefined) await rm(keyPath, { force: true }).catch(() => {});
    throw err;
  } finally {
    wipe(unsealKey);
  }
}

/** Create a file that must not exist yet, readable only by its owner. */
async function writeSecretFile(file: string, content: string): Promise<void> {
  const fh = await open(file, 'wx', 0o600);
  try {
    await fh.chmod(0o600);
    await fh.writeFile(content, 'utf8');
    await fh.sync();
  } finally {
    await fh.close();
  }
}

async function removeStoreFiles(loc: StoreLocation): Promise<void> {
  for (const suffix of ['', '-wal', '-shm', '-journal']) {
    await rm(loc.dbPath + suffix, { force: true }).catch(() => {});
  }
}

async function exists(p: string): Promise<boolean> {
  try {
    await stat(p);
    return true;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return false;
    throw err;
  }
}

function nonEmpty(v: string | undefined): string | undefined {
  return v === undefined || v === '' ? undefined : v;
}

function messageOf(err: unknown): string {
  return KeywardenError.isInstance(err) ? err.message : 'unreadable';
}
