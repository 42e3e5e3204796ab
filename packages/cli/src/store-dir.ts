/**
 * A key-store directory:
 *
 *   D/             mode 0700
 *   D/keystore.db  SqliteKeyStore: key metadata, root-wrapped KEKs, the sealed root document
 *   D/unseal.key   development mode only: the unseal key in text form, mode 0600
 *   D/agent.sock   split knowledge: the socket of a running `keywarden agent` (mode 0600)
 *   D/shares-out/  split knowledge: encrypted shares written by init/rekey, to hand out and delete
 *
 * D is `--dir`, else $KEYWARDEN_DIR, else ./.keywarden (relative to the working directory).
 *
 * Opening a store and unsealing it are separate steps: commands that only read metadata
 * (`key list`, `key show`) never touch an unseal secret. Where the secret comes from is an
 * `UnsealSource`, chosen from the sealed root document's `unseal.method`:
 *  - "key" (development mode): a key in text form, from an environment variable or a file; the
 *    command unseals a root of its own and does the key operations in-process;
 *  - "shamir" (split knowledge): the unseal key exists only while a quorum of shares is being
 *    combined, inside a long-running `keywarden agent`; the command does not unseal anything
 *    itself but sends its key operations to the agent over its socket (@keywarden/agent's AgentClient).
 * Either way the command gets a `KeyService`, and envelope encryption itself always runs in the
 * command's own process (core's functions take any DataKeyProvider).
 */
import { randomFillSync } from 'node:crypto';
import { mkdir, open, readFile, rm, stat, chmod } from 'node:fs/promises';
import * as path from 'node:path';
import {
  decodeUnsealKey,
  encodeUnsealKey,
  KeywardenError,
  Keywarden,
  readRootState,
  RootDestroyedError,
  RootMissingError,
  ROOT_DESTROYED_MESSAGE,
  ROOT_MISSING_MESSAGE,
  type RootDescription,
  type RootOfTrust,
  SoftwareRoot,
  UNSEAL_KEY_BYTES,
  type SealedRootDocument,
  type UnsealMethod,
  wipe,
  type KeyStore,
} from '@keywarden/core';
import { SqliteKeyStore } from '@keywarden/store-sqlite';
import { AgentClient, isAgentUnavailable, type KeyService, type SocketLocation } from '@keywarden/agent';
import { CliError, displayPath, UsageError } from './errors.js';
import type { CliIO } from './io.js';

export const DEFAULT_DIR = '.keywarden';
export const KEYSTORE_FILE = 'keystore.db';
export const UNSEAL_KEY_FILE = 'unseal.key';
export const AGENT_SOCKET_FILE = 'agent.sock';
export const SHARES_OUT_DIR = 'shares-out';
export const DIR_ENV = 'KEYWARDEN_DIR';
export const UNSEAL_KEY_ENV = 'KEYWARDEN_UNSEAL_KEY';
export const AGENT_SOCKET_ENV = 'KEYWARDEN_AGENT_SOCKET';

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

/** Where a `keywarden agent` listens, and how to show it (@keywarden/agent's type). */
export type { SocketLocation };

/** --socket, else $KEYWARDEN_AGENT_SOCKET, else D/agent.sock. */
export function resolveAgentSocket(
  io: Pick<CliIO, 'cwd' | 'env'>,
  loc: StoreLocation,
  socketOption?: string,
): SocketLocation {
  const raw = socketOption ?? nonEmpty(io.env[AGENT_SOCKET_ENV]);
  const p = raw === undefined ? path.join(loc.dir, AGENT_SOCKET_FILE) : path.resolve(io.cwd, raw);
  return { path: p, display: displayPath(p, io.cwd) };
}

// ── Unseal sources ────────────────────────────────────────────────────────────────────────────

/**
 * Where the unseal secret comes from: a development-mode key (environment or file), or, for a
 * split-knowledge store, the agent that a quorum unsealed (the key never reaches this process).
 */
export type UnsealSource =
  | { kind: 'env'; variable: string; value: string }
  | { kind: 'file'; path: string; display: string; explicit: boolean }
  | { kind: 'agent'; socket: SocketLocation };

/** How the store's root is unsealed (from its sealed document), and the agent socket option. */
export interface SplitKnowledgeOptions {
  method: UnsealMethod['method'];
  socket?: string;
}

/**
 * Development mode: KEYWARDEN_UNSEAL_KEY if set, else --unseal-key-file, else D/unseal.key.
 * Split knowledge (`split.method` "shamir"): the agent's socket; an explicit --unseal-key-file
 * is then a usage error (such a store has no unseal key to give), while an unseal key in the
 * environment is ignored (it may be set for other stores).
 */
export function resolveUnsealSource(
  io: Pick<CliIO, 'cwd' | 'env'>,
  loc: StoreLocation,
  unsealKeyFile?: string,
  split?: SplitKnowledgeOptions,
): UnsealSource {
  if (split?.method === 'shamir') {
    if (unsealKeyFile !== undefined) {
      throw new UsageError(
        '--unseal-key-file does not apply: this key store is sealed by split knowledge (unseal it with `keywarden unseal`)',
      );
    }
    return { kind: 'agent', socket: resolveAgentSocket(io, loc, split.socket) };
  }
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
  if (source.kind === 'agent') throw splitKnowledgeError();
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

/**
 * Unseal a loaded development-mode root with the key from `source`. A split-knowledge root is never
 * unsealed by a command: its key operations go through the agent (openKeyService).
 */
export async function unsealRoot(root: SoftwareRoot, source: UnsealSource, io: Pick<CliIO, 'stderr'>): Promise<void> {
  if (root.document.unseal.method !== 'key' || source.kind === 'agent') throw splitKnowledgeError();
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
  /**
   * Metadata-only commands: open a store whose root was destroyed (`keywarden root destroy`: the
   * store holds its tombstone) too, with a MissingRoot in its place, so its keys can still be
   * listed. The store is opened read-only. A store with neither a root nor a tombstone is damaged,
   * not destroyed: RootMissingError, whatever this says.
   */
  allowMissingRoot?: boolean;
}

/**
 * How a command opens D/keystore.db: never creating or initializing it (only `init` does), and
 * read-only for commands that only read (`key list`, `key show`, `status`), which therefore never
 * migrate it either. An empty or foreign file is a StoreCorruptError, a damaged one too.
 */
export function openStoreFile(loc: StoreLocation, mode: 'read' | 'write'): SqliteKeyStore {
  return SqliteKeyStore.open(loc.dbPath, mode === 'read' ? { readonly: true } : { create: false });
}

/**
 * Stands in for the root of a store whose root was destroyed (its tombstone says so), so that key
 * metadata can still be read. It has no key: wrapping and unwrapping are refused with a
 * KeyStoreError, never a no-op. `interrupted`: the destruction was started and not finished.
 */
export class MissingRoot implements RootOfTrust {
  constructor(readonly interrupted = false) {}

  describe(): RootDescription {
    return { kind: 'software', id: 'none', label: 'no root (destroyed)', wrapAlgorithm: 'none' };
  }
  async wrapKey(): Promise<Uint8Array> {
    throw new RootDestroyedError(NO_ROOT);
  }
  async unwrapKey(): Promise<Uint8Array> {
    throw new RootDestroyedError(NO_ROOT);
  }
  async close(): Promise<void> {}
}

const NO_ROOT = ROOT_DESTROYED_MESSAGE;

/** Open D's store and root. The returned Keywarden owns both: close it when done. */
export async function openKeywarden(
  loc: StoreLocation,
  io: Pick<CliIO, 'stderr'>,
  options: OpenOptions = {},
): Promise<Keywarden> {
  if (options.allowMissingRoot && !options.unseal) {
    await requireStore(loc);
    const store: KeyStore = openStoreFile(loc, 'read');
    try {
      // Destroyed only when the store says so (its tombstone); neither root nor tombstone is damage.
      const state = await readRootState(store);
      if (state.state === 'missing') throw new RootMissingError(ROOT_MISSING_MESSAGE);
      if (state.state === 'destroyed')
        return new Keywarden({ store, root: new MissingRoot(), ownsStore: true, ownsRoot: true });
      if (state.tombstone)
        return new Keywarden({ store, root: new MissingRoot(true), ownsStore: true, ownsRoot: true });
      return new Keywarden({ store, root: await SoftwareRoot.load(store), ownsStore: true, ownsRoot: true });
    } catch (err) {
      await store.close().catch(() => {});
      throw err;
    }
  }
  const { store, root } = await loadSealed(loc);
  try {
    if (options.unseal) await unsealRoot(root, options.unseal, io);
    return new Keywarden({ store, root, ownsStore: true, ownsRoot: true });
  } catch (err) {
    await root.close().catch(() => {});
    await store.close().catch(() => {});
    throw err;
  }
}

/** D's store and its root, sealed. The caller closes both. */
async function loadSealed(
  loc: StoreLocation,
  mode: 'read' | 'write' = 'write',
): Promise<{ store: KeyStore; root: SoftwareRoot }> {
  await requireStore(loc);
  const store: KeyStore = openStoreFile(loc, mode);
  try {
    return { store, root: await SoftwareRoot.load(store) };
  } catch (err) {
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

/**
 * What the key-using commands need (@keywarden/agent's type): data keys and KEK management. A
 * development-mode `Keywarden` is one; so is an `AgentClient` talking to the agent of a
 * split-knowledge store.
 */
export type { KeyService };

export interface KeyServiceOptions {
  /** --unseal-key-file (development mode). */
  unsealKeyFile?: string;
  /** --socket (split knowledge). */
  socket?: string;
}

/**
 * The KeyService for D's store: an unsealed Keywarden in development mode, or a connection to
 * the store's agent under split knowledge. Close it when done.
 */
export async function openKeyService(
  loc: StoreLocation,
  io: Pick<CliIO, 'stderr' | 'cwd' | 'env'>,
  options: KeyServiceOptions = {},
): Promise<KeyService> {
  const { store, root } = await loadSealed(loc);
  let source: UnsealSource;
  try {
    source = resolveUnsealSource(io, loc, options.unsealKeyFile, {
      method: root.document.unseal.method,
      ...(options.socket !== undefined ? { socket: options.socket } : {}),
    });
    if (source.kind !== 'agent') {
      await unsealRoot(root, source, io);
      return new Keywarden({ store, root, ownsStore: true, ownsRoot: true });
    }
  } catch (err) {
    await root.close().catch(() => {});
    await store.close().catch(() => {});
    throw err;
  }
  // Split knowledge: this process never holds the root; close it before talking to the agent.
  await root.close();
  await store.close();
  try {
    return await AgentClient.connect(source.socket);
  } catch (err) {
    if (isAgentUnavailable(err)) throw splitKnowledgeError(source.socket, err);
    throw err;
  }
}

/** openKeyService, run `fn`, and always close. */
export async function withKeyService<T>(
  loc: StoreLocation,
  io: Pick<CliIO, 'stderr' | 'cwd' | 'env'>,
  options: KeyServiceOptions,
  fn: (ks: KeyService) => Promise<T>,
): Promise<T> {
  const ks = await openKeyService(loc, io, options);
  try {
    return await fn(ks);
  } finally {
    await ks.close();
  }
}

/** D's sealed root document (not secret): root id, unseal method, share-set id, M and N. */
export async function sealedRootDocument(loc: StoreLocation): Promise<SealedRootDocument> {
  const { store, root } = await loadSealed(loc, 'read');
  try {
    return root.document;
  } finally {
    await root.close();
    await store.close();
  }
}

function splitKnowledgeError(socket?: SocketLocation, cause?: unknown): CliError {
  const where = socket ? ` (no agent answers on ${socket.display})` : '';
  return new CliError(
    `this key store is sealed by split knowledge${where}; start \`keywarden agent\` and unseal it with a quorum (\`keywarden unseal\`)`,
    cause === undefined ? undefined : { cause },
  );
}

export async function requireStore(loc: StoreLocation): Promise<void> {
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

export async function removeStoreFiles(loc: StoreLocation): Promise<void> {
  for (const suffix of ['', '-wal', '-shm', '-journal']) {
    await rm(loc.dbPath + suffix, { force: true }).catch(() => {});
  }
}

export async function exists(p: string): Promise<boolean> {
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
