/**
 * A key-store directory as the commands use it: thin wrappers that give @keywarden/ceremony's
 * folder functions a command's working directory, environment and stderr (warnings prefixed
 * `keywarden: warning:`), and turn an option that does not apply into a usage error (exit 2). The
 * layout, the unseal sources, opening a local Keywarden or connecting to the folder's agent are
 * the library's.
 */
import {
  type InitOptions as FolderInitOptions,
  type InitResult,
  initStoreDir as initStoreFolder,
  type KeyServiceOptions,
  openFolderKeywarden,
  openKeyService as openFolderKeyService,
  readUnsealKey as readFolderUnsealKey,
  resolveAgentSocket as resolveFolderSocket,
  resolveStoreLocation as resolveFolder,
  resolveUnsealSource as resolveFolderUnsealSource,
  type StoreLocation,
  UNSEAL_KEY_FILE_NOT_APPLICABLE,
  type UnsealSource,
  unsealRoot as unsealFolderRoot,
} from '@keywarden/ceremony';
import { type Keywarden, KeywardenError, type SoftwareRoot, type UnsealMethod } from '@keywarden/core';
import type { KeyService, SocketLocation } from '@keywarden/agent';
import { UsageError } from './errors.js';
import type { CliIO } from './io.js';

export {
  AGENT_SOCKET_ENV,
  AGENT_SOCKET_FILE,
  DEFAULT_DIR,
  DIR_ENV,
  exists,
  KEYSTORE_FILE,
  type KeyServiceOptions,
  MissingRoot,
  type OpenFolderOptions as OpenOptions,
  openStoreFile,
  removeStoreFiles,
  requireStore,
  sealedRootDocument,
  SHARES_OUT_DIR,
  type StoreLocation,
  UNSEAL_KEY_ENV,
  UNSEAL_KEY_FILE,
  type UnsealSource,
} from '@keywarden/ceremony';
export type { KeyService, SocketLocation };

/** D for a command: `--dir`, else $KEYWARDEN_DIR, else ./.keywarden. */
export function resolveStoreLocation(io: Pick<CliIO, 'cwd' | 'env'>, dirOption?: string): StoreLocation {
  return resolveFolder({ cwd: io.cwd, env: io.env }, dirOption);
}

/** --socket, else $KEYWARDEN_AGENT_SOCKET, else D/agent.sock. */
export function resolveAgentSocket(
  io: Pick<CliIO, 'cwd' | 'env'>,
  loc: StoreLocation,
  socketOption?: string,
): SocketLocation {
  return resolveFolderSocket({ cwd: io.cwd, env: io.env }, loc, socketOption);
}

/** How the store's root is unsealed (from its sealed document), and the agent socket option. */
export interface SplitKnowledgeOptions {
  method: UnsealMethod['method'];
  socket?: string;
}

/**
 * The library's resolveUnsealSource; an explicit --unseal-key-file on a split-knowledge store is a
 * usage error (exit 2).
 */
export function resolveUnsealSource(
  io: Pick<CliIO, 'cwd' | 'env'>,
  loc: StoreLocation,
  unsealKeyFile?: string,
  split?: SplitKnowledgeOptions,
): UnsealSource {
  if (split?.method === 'shamir' && unsealKeyFile !== undefined) {
    throw new UsageError(UNSEAL_KEY_FILE_NOT_APPLICABLE);
  }
  return resolveFolderUnsealSource({ cwd: io.cwd, env: io.env }, loc, {
    ...(split ? { method: split.method } : {}),
    ...(split?.socket !== undefined ? { socket: split.socket } : {}),
    ...(unsealKeyFile !== undefined ? { unsealKeyFile } : {}),
  });
}

/** Warnings of the library, as the CLI shows them. */
function warningsTo(io: Pick<CliIO, 'stderr'>): { onWarning: (message: string) => void } {
  return {
    onWarning: (message) => {
      io.stderr.write(`keywarden: warning: ${message}\n`);
    },
  };
}

/** Read the 32-byte unseal key a source holds. The caller wipes it. Errors never echo the key. */
export function readUnsealKey(source: UnsealSource, io: Pick<CliIO, 'stderr'>): Promise<Uint8Array> {
  return readFolderUnsealKey(source, warningsTo(io));
}

/** Unseal a loaded development-mode root with the key from `source`. */
export function unsealRoot(root: SoftwareRoot, source: UnsealSource, io: Pick<CliIO, 'stderr'>): Promise<void> {
  return unsealFolderRoot(root, source, warningsTo(io));
}

/** Open D's store and root. The returned Keywarden owns both: close it when done. */
export function openKeywarden(
  loc: StoreLocation,
  io: Pick<CliIO, 'stderr'>,
  options: { unseal?: UnsealSource; allowMissingRoot?: boolean } = {},
): Promise<Keywarden> {
  return openFolderKeywarden(loc, options, warningsTo(io));
}

/** Open, run `fn`, and always close (which wipes the KEK cache and seals the root). */
export async function withKeywarden<T>(
  loc: StoreLocation,
  io: Pick<CliIO, 'stderr'>,
  options: { unseal?: UnsealSource; allowMissingRoot?: boolean },
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
 * The KeyService for D's store: an unsealed Keywarden in development mode, or a connection to the
 * store's agent under split knowledge. --unseal-key-file on a split-knowledge store is a usage error.
 */
export async function openKeyService(
  loc: StoreLocation,
  io: Pick<CliIO, 'stderr' | 'cwd' | 'env'>,
  options: KeyServiceOptions = {},
): Promise<KeyService> {
  try {
    return await openFolderKeyService(loc, options, { cwd: io.cwd, env: io.env, ...warningsTo(io) });
  } catch (err) {
    if (KeywardenError.isInstance(err, 'KW_BAD_INPUT') && err.message === UNSEAL_KEY_FILE_NOT_APPLICABLE) {
      throw new UsageError(err.message, { cause: err });
    }
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
