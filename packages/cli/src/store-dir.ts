/**
 * A key-store directory as the commands use it: thin wrappers that give @keywarden/ceremony's
 * folder functions a command's working directory, environment and stderr (warnings prefixed
 * `keywarden: warning:`), and turn an option that does not apply into a usage error (exit 2). The
 * layout, the unseal sources, opening a local Keywarden or connecting to the folder's agent are
 * the library's.
 */
import {
  type DeviceInitOptions,
  type DeviceInitResult,
  folderRootUri,
  readFolderStoreConfig,
  type InitOptions as FolderInitOptions,
  initDeviceStoreDir as initDeviceFolder,
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
import {
  InvalidInputError,
  type Keywarden,
  KeywardenError,
  rootUriScheme,
  type SoftwareRoot,
  UnknownRootSchemeError,
  type UnsealMethod,
} from '@keywarden/core';
import { isTerminal, readHidden } from './_prompt.js';
import type { KeyService, SocketLocation } from '@keywarden/agent';
import { UsageError } from './errors.js';
import type { CliIO } from './io.js';

export {
  AGENT_SOCKET_ENV,
  AGENT_SOCKET_FILE,
  DEFAULT_DIR,
  DIR_ENV,
  exists,
  folderRootScheme,
  folderRootUri,
  folderStoreKind,
  KEYSTORE_FILE,
  type KeyServiceOptions,
  MissingRoot,
  type OpenFolderOptions as OpenOptions,
  openFolderRoot,
  openStoreFile,
  removeStoreFiles,
  requireStore,
  ROOT_URI_FILE,
  SOFTWARE_ROOT_URI,
  STORE_CONFIG_FILE,
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

/**
 * Where D's key store is, for `keywarden status`: text ("SQLite, DIR/keystore.db" or "PostgreSQL,
 * schema S") and JSON fields. Never the connection string (it is not in the folder).
 */
export async function folderStoreOf(
  loc: StoreLocation,
): Promise<{ text: string; json: { storeKind: 'sqlite' | 'postgres'; pgSchema?: string } }> {
  const config = await readFolderStoreConfig(loc);
  if (config?.kind === 'postgres') {
    return {
      text: `PostgreSQL, schema ${config.schema}`,
      json: { storeKind: 'postgres', pgSchema: config.schema },
    };
  }
  return { text: `SQLite, ${loc.display}/keystore.db`, json: { storeKind: 'sqlite' } };
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

// ── Device roots (pkcs11:, tpm:) ─────────────────────────────────────────────────────────────

/**
 * The packages that register a device scheme with core's root registry. They are optional peer
 * dependencies of this package (native code: pkcs11js, libtss2), loaded only when a folder's root
 * or an `init --root` names their scheme, so `npm i keywarden` builds nothing native.
 */
const DEVICE_BACKENDS: Readonly<Record<string, string>> = {
  pkcs11: '@keywarden/pkcs11',
  tpm: '@keywarden/tpm',
};

/** Register the backend for `uri`'s scheme (a dynamic import); nothing for "software:". */
export async function loadRootBackend(uri: string): Promise<string> {
  const scheme = rootUriScheme(uri);
  if (scheme === 'software') return scheme;
  const pkg = DEVICE_BACKENDS[scheme];
  if (!pkg) {
    throw new UnknownRootSchemeError(`root: unknown root scheme "${scheme}:" (the CLI knows software:, pkcs11:, tpm:)`);
  }
  try {
    // @keywarden/pkcs11 pins the module itself (RTLD_NODELETE) before its pool's workers load it.
    if (scheme === 'pkcs11') await import('@keywarden/pkcs11/register');
    else await import('@keywarden/tpm/register');
  } catch (err) {
    const code = (err as NodeJS.ErrnoException | undefined)?.code;
    if (code === 'ERR_MODULE_NOT_FOUND' || code === 'MODULE_NOT_FOUND') {
      throw new UnknownRootSchemeError(
        `root: ${scheme}: roots need ${pkg}, which is not installed (npm i ${pkg} next to keywarden)`,
        { cause: err },
      );
    }
    throw err;
  }
  return scheme;
}

/** Register the backend of D's root (when D records a device root). */
export async function loadFolderRootBackend(loc: StoreLocation): Promise<string> {
  return loadRootBackend(await folderRootUri(loc));
}

/**
 * Where a device root's PIN / auth value comes from when its URI names no source: a hidden prompt
 * on a terminal; elsewhere none (the root stays sealed and the key operation says so).
 */
export function rootSecretPrompt(io: Pick<CliIO, 'stdin' | 'stderr' | 'signal'>, what = 'PIN / auth value') {
  return async (): Promise<Uint8Array | undefined> => {
    if (!isTerminal(io.stdin)) return undefined;
    const text = await readHidden(io.stdin, io.stderr, `Root ${what} (input hidden): `, { signal: io.signal });
    if (text === undefined || text === '') return undefined;
    return new TextEncoder().encode(text);
  };
}

/** Whether a device root URI names where its PIN / auth value comes from. */
export function uriNamesSecret(uri: string): boolean {
  return /[?&;](pin-source|pin-value|auth-env|auth-file)=/i.test(uri);
}

/**
 * The PIN / auth value a device-root init is given: none when the URI names its source (the backend
 * reads it), else a hidden prompt on a terminal; a PKCS#11 root cannot be made without its PIN.
 * The backend for the URI's scheme is loaded first. The caller wipes what is returned.
 */
export async function deviceInitSecret(
  io: Pick<CliIO, 'stdin' | 'stderr' | 'signal'>,
  uri: string,
): Promise<Uint8Array | undefined> {
  const scheme = await loadRootBackend(uri);
  if (uriNamesSecret(uri)) return undefined;
  const secret = await rootSecretPrompt(io, scheme === 'tpm' ? 'auth value' : 'user PIN')();
  if (!secret && scheme === 'pkcs11') {
    throw new InvalidInputError(
      'init: the PKCS#11 root needs the user PIN: add pin-source=file:/PATH or pin-source=env:NAME to the URI, or run on a terminal to be asked',
    );
  }
  return secret;
}

/** Init with a device root on the folder's own store (deviceInitSecret, then the ceremony's init). */
export async function initDeviceStoreDir(
  io: Pick<CliIO, 'stdin' | 'stderr' | 'signal' | 'env'>,
  loc: StoreLocation,
  uri: string,
  hooks: Pick<DeviceInitOptions, 'cwd' | 'onStep' | 'onNotice'> = {},
): Promise<DeviceInitResult> {
  const secret = await deviceInitSecret(io, uri);
  try {
    return await initDeviceFolder(loc, { ...hooks, uri, env: io.env, ...(secret ? { secret } : {}) });
  } finally {
    secret?.fill(0);
  }
}

/**
 * The principal the CLI's own key operations are recorded as, in the store's audit log, when it
 * opens a store itself with the root unsealed (development mode, a device root opened directly).
 * Through the agent, the agent records them as the connection's principal.
 */
export const CLI_AUDIT_PRINCIPAL = 'cli';

/** Open D's store and root. The returned Keywarden owns both: close it when done. */
export async function openKeywarden(
  loc: StoreLocation,
  io: Pick<CliIO, 'stderr'> & Partial<Pick<CliIO, 'stdin' | 'env' | 'signal'>>,
  options: {
    unseal?: UnsealSource;
    allowMissingRoot?: boolean;
    /** A device root's PIN / auth value (e.g. from a quorum of its shares) instead of the prompt. */
    rootSecret?: () => Promise<Uint8Array | undefined>;
  } = {},
): Promise<Keywarden> {
  await loadFolderRootBackend(loc).catch((err: unknown) => {
    // No store: let the library say so (and how to make one).
    if ((err as NodeJS.ErrnoException)?.code !== 'ENOENT') throw err;
  });
  return openFolderKeywarden(
    loc,
    {
      ...options,
      auditAs: CLI_AUDIT_PRINCIPAL,
      ...(io.env ? { env: io.env } : {}),
      ...(options.rootSecret
        ? { rootSecret: options.rootSecret }
        : io.stdin
          ? { rootSecret: rootSecretPrompt({ stdin: io.stdin, stderr: io.stderr, signal: io.signal }) }
          : {}),
    },
    warningsTo(io),
  );
}

/** Open, run `fn`, and always close (which wipes the KEK cache and seals the root). */
export async function withKeywarden<T>(
  loc: StoreLocation,
  io: Pick<CliIO, 'stderr'>,
  options: {
    unseal?: UnsealSource;
    allowMissingRoot?: boolean;
    rootSecret?: () => Promise<Uint8Array | undefined>;
  },
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
    await loadFolderRootBackend(loc);
    const stdin = (io as Partial<CliIO>).stdin;
    return await openFolderKeyService(
      loc,
      {
        auditAs: CLI_AUDIT_PRINCIPAL,
        ...options,
        ...(stdin ? { rootSecret: rootSecretPrompt({ stdin, stderr: io.stderr, signal: (io as CliIO).signal }) } : {}),
      },
      { cwd: io.cwd, env: io.env, ...warningsTo(io) },
    );
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
