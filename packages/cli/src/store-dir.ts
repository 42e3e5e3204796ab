/**
 * A key-store directory as the commands use it. The layout itself (D/keystore.db, D/unseal.key,
 * D/agent.sock, D/shares-out/; D is `--dir`, else $KEYWARDEN_DIR, else ./.keywarden), creating a
 * development-mode store and opening one sealed are @keywarden/ceremony's; what stays here is
 * where a command's unseal secret comes from and the choice between a local Keywarden and the agent.
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
import { readFile, stat } from 'node:fs/promises';
import * as path from 'node:path';
import {
  decodeUnsealKey,
  KeywardenError,
  Keywarden,
  readRootState,
  RootMissingError,
  ROOT_MISSING_MESSAGE,
  SoftwareRoot,
  type UnsealMethod,
  wipe,
  type KeyStore,
} from '@keywarden/core';
import {
  AGENT_SOCKET_ENV,
  AGENT_SOCKET_FILE,
  displayPath,
  initStoreDir as initStoreFolder,
  type InitOptions as FolderInitOptions,
  type InitResult,
  MissingRoot,
  openSealed,
  openStoreFile,
  requireStore,
  resolveStoreLocation as resolveFolder,
  type StoreLocation,
  UNSEAL_KEY_ENV,
} from '@keywarden/ceremony';
import { AgentClient, isAgentUnavailable, type KeyService, type SocketLocation } from '@keywarden/agent';
import { CliError, UsageError } from './errors.js';
import type { CliIO } from './io.js';

export {
  AGENT_SOCKET_ENV,
  AGENT_SOCKET_FILE,
  DEFAULT_DIR,
  DIR_ENV,
  exists,
  KEYSTORE_FILE,
  MissingRoot,
  openStoreFile,
  removeStoreFiles,
  requireStore,
  sealedRootDocument,
  SHARES_OUT_DIR,
  type StoreLocation,
  UNSEAL_KEY_ENV,
  UNSEAL_KEY_FILE,
} from '@keywarden/ceremony';

/** D for a command: `--dir`, else $KEYWARDEN_DIR, else ./.keywarden. */
export function resolveStoreLocation(io: Pick<CliIO, 'cwd' | 'env'>, dirOption?: string): StoreLocation {
  return resolveFolder({ cwd: io.cwd, env: io.env }, dirOption);
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
  const { store, root } = await openSealed(loc);
  try {
    if (options.unseal) await unsealRoot(root, options.unseal, io);
    return new Keywarden({ store, root, ownsStore: true, ownsRoot: true });
  } catch (err) {
    await root.close().catch(() => {});
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
  const { store, root } = await openSealed(loc);
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

function splitKnowledgeError(socket?: SocketLocation, cause?: unknown): CliError {
  const where = socket ? ` (no agent answers on ${socket.display})` : '';
  return new CliError(
    `this key store is sealed by split knowledge${where}; start \`keywarden agent\` and unseal it with a quorum (\`keywarden unseal\`)`,
    cause === undefined ? undefined : { cause },
  );
}

export type InitOptions = Omit<FolderInitOptions, 'cwd'>;
export type { InitResult };

/** Development-mode init (@keywarden/ceremony's initStoreDir), with the two options' clash a usage error. */
export async function initStoreDir(
  io: Pick<CliIO, 'cwd'>,
  loc: StoreLocation,
  options: InitOptions,
): Promise<InitResult> {
  if (options.printUnsealKey && options.unsealKeyFile !== undefined) {
    throw new UsageError('--print-unseal-key and --unseal-key-file cannot be used together');
  }
  return initStoreFolder(loc, { ...options, cwd: io.cwd });
}

function nonEmpty(v: string | undefined): string | undefined {
  return v === undefined || v === '' ? undefined : v;
}

function messageOf(err: unknown): string {
  return KeywardenError.isInstance(err) ? err.message : 'unreadable';
}
