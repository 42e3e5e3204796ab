/**
 * Using a key-store folder's keys: where the unseal secret comes from, and a local Keywarden or a
 * connection to the folder's running agent — what every key-using `keywarden` command does, for an
 * application.
 *
 * Opening a store and unsealing it are separate steps: metadata-only callers never touch an unseal
 * secret. Where the secret comes from is an `UnsealSource`, chosen from the sealed root document's
 * `unseal.method`:
 *  - "key" (development mode): a key in text form, from $KEYWARDEN_UNSEAL_KEY or a file; the caller
 *    unseals a root of its own and does the key operations in its process;
 *  - "shamir" (split knowledge): the unseal key exists only while a quorum of shares is being
 *    combined, inside a long-running agent; the caller does not unseal anything itself but sends
 *    its key operations to the agent over its socket (@keywarden/agent's AgentClient).
 * Either way the caller gets a `KeyService`, and envelope encryption itself always runs in the
 * caller's own process (core's functions take any DataKeyProvider).
 *
 * Nothing here prompts or prints: a permission warning goes to `onWarning`; failures are core's
 * typed errors, and no message ever holds an unseal key.
 */
import { readFile, stat } from 'node:fs/promises';
import * as path from 'node:path';
import {
  AgentClient,
  AgentServer,
  type AgentServerOptions,
  isAgentUnavailable,
  type KeyService,
  type SecretShareSet,
  type SocketLocation,
} from '@keywarden/agent';
import {
  decodeUnsealKey,
  InvalidInputError,
  type KeyStore,
  KeyStoreError,
  KeystoreSealedError,
  Keywarden,
  KeywardenError,
  openRoot,
  ROOT_MISSING_MESSAGE,
  RootMissingError,
  readRootState,
  SoftwareRoot,
  type UnsealMethod,
  UnsealError,
  wipe,
} from '@keywarden/core';
import {
  AGENT_SOCKET_ENV,
  AGENT_SOCKET_FILE,
  displayPath,
  folderRootScheme,
  folderRootUri,
  MissingRoot,
  openFolderRoot,
  openSealed,
  openFolderStore,
  requireStore,
  type StoreLocation,
  type Surroundings,
  UNSEAL_KEY_ENV,
} from './layout.js';
import { type DeviceSecretShares, folderDeviceSecretShares, readDeviceSecretShares } from './device-split.js';
import { deviceRootOf } from './staged-remains.js';

/** Where relative paths start, which environment applies, and where warnings go. */
export interface ServiceSurroundings extends Surroundings {
  /** A non-fatal warning (an unseal key file others can read), one line without a prefix. */
  onWarning?: (message: string) => void;
}

function surroundingsOf(at: Partial<ServiceSurroundings> | undefined): ServiceSurroundings {
  return {
    cwd: at?.cwd ?? process.cwd(),
    env: at?.env ?? process.env,
    ...(at?.onWarning ? { onWarning: at.onWarning } : {}),
  };
}

/** The folder's agent socket: `socket`, else $KEYWARDEN_AGENT_SOCKET, else D/agent.sock. */
export function resolveAgentSocket(at: Surroundings, loc: StoreLocation, socket?: string): SocketLocation {
  const raw = socket ?? nonEmpty(at.env[AGENT_SOCKET_ENV]);
  const p = raw === undefined ? path.join(loc.dir, AGENT_SOCKET_FILE) : path.resolve(at.cwd, raw);
  return { path: p, display: displayPath(p, at.cwd) };
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

export interface UnsealSourceOptions {
  /** How the store's root is unsealed (its sealed document's `unseal.method`); default "key". */
  method?: UnsealMethod['method'];
  /** An explicit unseal key file (development mode only). */
  unsealKeyFile?: string;
  /** The agent's socket (split knowledge); default $KEYWARDEN_AGENT_SOCKET, else D/agent.sock. */
  socket?: string;
}

/** The refusal of an explicit unseal key file for a split-knowledge store (an InvalidInputError). */
export const UNSEAL_KEY_FILE_NOT_APPLICABLE =
  '--unseal-key-file does not apply: this key store is sealed by split knowledge (unseal it with `keywarden unseal`)';

/**
 * Development mode: $KEYWARDEN_UNSEAL_KEY if set, else `unsealKeyFile`, else D/unseal.key.
 * Split knowledge (method "shamir"): the agent's socket; an explicit `unsealKeyFile` is then an
 * InvalidInputError (such a store has no unseal key to give), while an unseal key in the
 * environment is ignored (it may be set for other stores).
 */
export function resolveUnsealSource(
  at: Surroundings,
  loc: StoreLocation,
  options: UnsealSourceOptions = {},
): UnsealSource {
  if (options.method === 'shamir') {
    if (options.unsealKeyFile !== undefined) {
      throw new InvalidInputError(UNSEAL_KEY_FILE_NOT_APPLICABLE);
    }
    return { kind: 'agent', socket: resolveAgentSocket(at, loc, options.socket) };
  }
  const fromEnv = nonEmpty(at.env[UNSEAL_KEY_ENV]);
  if (fromEnv !== undefined) return { kind: 'env', variable: UNSEAL_KEY_ENV, value: fromEnv };
  if (options.unsealKeyFile !== undefined) {
    const p = path.resolve(at.cwd, options.unsealKeyFile);
    return { kind: 'file', path: p, display: displayPath(p, at.cwd), explicit: true };
  }
  return {
    kind: 'file',
    path: loc.defaultUnsealKeyPath,
    display: displayPath(loc.defaultUnsealKeyPath, at.cwd),
    explicit: false,
  };
}

/**
 * Read the 32-byte unseal key a source holds; the caller wipes it. A file that group or others can
 * read is reported to `onWarning` (like ssh with a private key). Errors never echo the key:
 * UnsealError when there is none, InvalidInputError when it is not a valid unseal key,
 * KeystoreSealedError for an agent source (split knowledge has no key to read).
 */
export async function readUnsealKey(
  source: UnsealSource,
  at: Pick<ServiceSurroundings, 'onWarning'> = {},
): Promise<Uint8Array> {
  if (source.kind === 'agent') throw splitKnowledgeError();
  if (source.kind === 'env') {
    try {
      return decodeUnsealKey(source.value);
    } catch (err) {
      throw new InvalidInputError(`${source.variable} does not hold a valid unseal key (${messageOf(err)})`, {
        cause: err,
      });
    }
  }
  let text: string;
  try {
    const st = await stat(source.path);
    if (process.platform !== 'win32' && (st.mode & 0o077) !== 0) {
      at.onWarning?.(
        `unseal key file ${source.display} is accessible to group or others (mode ${(st.mode & 0o777).toString(8)}); run chmod 600 on it`,
      );
    }
    const bytes = await readFile(source.path);
    text = bytes.toString('utf8');
    wipe(bytes);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') {
      throw new UnsealError(
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
    throw new InvalidInputError(`${source.display} does not hold a valid unseal key (${messageOf(err)})`, {
      cause: err,
    });
  }
}

/**
 * Unseal a loaded development-mode root with the key from `source`. A split-knowledge root is never
 * unsealed here: its key operations go through the agent (openKeyService).
 */
export async function unsealRoot(
  root: SoftwareRoot,
  source: UnsealSource,
  at: Pick<ServiceSurroundings, 'onWarning'> = {},
): Promise<void> {
  if (root.document.unseal.method !== 'key' || source.kind === 'agent') throw splitKnowledgeError();
  const key = await readUnsealKey(source, at);
  try {
    await root.unseal(key);
  } finally {
    wipe(key);
  }
}

// ── Opening ───────────────────────────────────────────────────────────────────────────────────

export interface OpenFolderOptions {
  /** Unseal the root with this source; omit to leave it sealed (metadata only). */
  unseal?: UnsealSource;
  /**
   * Metadata only: open a store whose root was destroyed (its tombstone says so) too, read-only,
   * with a MissingRoot in its place, so its keys can still be listed. A store with neither a root
   * nor a tombstone is damaged, not destroyed: RootMissingError, whatever this says.
   */
  allowMissingRoot?: boolean;
  /**
   * A device root (D/root.uri, `pkcs11:` / `tpm:`): asked for the PIN / auth value when the root
   * opened sealed (its URI names no source) and it must be unsealed; the result is wiped after use.
   * Return undefined to leave it sealed.
   */
  rootSecret?: () => Promise<Uint8Array | undefined>;
  /** Environment for the root URI's attributes that name variables; default process.env. */
  env?: Readonly<Record<string, string | undefined>>;
  /**
   * Record every key operation of the Keywarden opened here in the store's audit log
   * (docs/audit.md), as this principal. Only where this process holds the root unsealed (a
   * development-mode store or a device root opened directly); a Keywarden left sealed records
   * nothing, and through the agent the agent records.
   */
  auditAs?: string;
}

/** The Keywarden options that audit as `principal` into the store (none without one). */
function auditing(principal: string | undefined): { audit?: { toStore: true }; principal?: string } {
  return principal === undefined ? {} : { audit: { toStore: true }, principal };
}

/**
 * A device-root folder's store and root as a Keywarden: the URI's own PIN/auth source unseals it,
 * else `rootSecret` when `unseal` (and the root is sealable and sealed).
 */
async function openDeviceKeywarden(
  loc: StoreLocation,
  unseal: boolean,
  options: Pick<OpenFolderOptions, 'rootSecret' | 'env' | 'auditAs'>,
): Promise<Keywarden> {
  const { store, root } = await openFolderRoot(loc, 'write', options.env ? { env: options.env } : {});
  try {
    if (unseal && root.sealable?.isSealed() && options.rootSecret) {
      const secret = await options.rootSecret();
      if (secret) {
        try {
          await root.sealable.unseal(secret);
        } finally {
          wipe(secret);
        }
      }
    }
    const unsealed = unseal && !root.sealable?.isSealed();
    return new Keywarden({
      store,
      root,
      ownsStore: true,
      ownsRoot: true,
      ...auditing(unsealed ? options.auditAs : undefined),
    });
  } catch (err) {
    await root.close().catch(() => {});
    await store.close().catch(() => {});
    throw err;
  }
}

/** D's store and root as a Keywarden that owns both: close it when done. */
export async function openFolderKeywarden(
  loc: StoreLocation,
  options: OpenFolderOptions = {},
  at: Pick<ServiceSurroundings, 'onWarning'> = {},
): Promise<Keywarden> {
  await requireStore(loc);
  if ((await folderRootScheme(loc)) !== 'software') {
    return openDeviceKeywarden(loc, options.unseal !== undefined, options);
  }
  if (options.allowMissingRoot && !options.unseal) {
    await requireStore(loc);
    const store: KeyStore = await openFolderStore(loc, 'read');
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
    if (options.unseal) await unsealRoot(root, options.unseal, at);
    return new Keywarden({
      store,
      root,
      ownsStore: true,
      ownsRoot: true,
      ...auditing(options.unseal ? options.auditAs : undefined),
    });
  } catch (err) {
    await root.close().catch(() => {});
    await store.close().catch(() => {});
    throw err;
  }
}

export interface KeyServiceOptions {
  /** Development mode: an explicit unseal key file (else $KEYWARDEN_UNSEAL_KEY, else D/unseal.key). */
  unsealKeyFile?: string;
  /** Split knowledge: the agent's socket (else $KEYWARDEN_AGENT_SOCKET, else D/agent.sock). */
  socket?: string;
  /** How long to wait for the agent's connection and hello; @keywarden/agent's default otherwise. */
  connectTimeoutMs?: number;
  /** A device root whose URI names no PIN/auth source: asked for it (OpenFolderOptions.rootSecret). */
  rootSecret?: () => Promise<Uint8Array | undefined>;
  /** Audit the local Keywarden's operations as this principal (OpenFolderOptions.auditAs). */
  auditAs?: string;
}

/**
 * The KeyService for D's store: an unsealed Keywarden in development mode, or a connection to the
 * store's agent under split knowledge (KeystoreSealedError when no agent answers). Close it when
 * done.
 */
export async function openKeyService(
  loc: StoreLocation,
  options: KeyServiceOptions = {},
  surroundings?: Partial<ServiceSurroundings>,
): Promise<KeyService> {
  const at = surroundingsOf(surroundings);
  await requireStore(loc);
  if ((await folderRootScheme(loc)) !== 'software') {
    if (await folderDeviceSecretShares(loc)) {
      // The device's PIN / auth value exists only as shares: the folder's agent, unsealed by a
      // quorum, holds the device open; this process sends it its key operations.
      const socket = resolveAgentSocket(at, loc, options.socket);
      try {
        return await AgentClient.connect(
          socket,
          options.connectTimeoutMs !== undefined ? { connectTimeoutMs: options.connectTimeoutMs } : {},
        );
      } catch (err) {
        if (isAgentUnavailable(err)) throw splitKnowledgeError(socket, err);
        throw err;
      }
    }
    // A device root: this process opens the device itself (no agent), unsealed by the URI's
    // PIN/auth source or by the caller's rootSecret.
    return openDeviceKeywarden(loc, true, {
      env: at.env,
      ...(options.rootSecret ? { rootSecret: options.rootSecret } : {}),
      ...(options.auditAs !== undefined ? { auditAs: options.auditAs } : {}),
    });
  }
  const { store, root } = await openSealed(loc);
  let source: UnsealSource;
  try {
    source = resolveUnsealSource(at, loc, {
      method: root.document.unseal.method,
      ...(options.unsealKeyFile !== undefined ? { unsealKeyFile: options.unsealKeyFile } : {}),
      ...(options.socket !== undefined ? { socket: options.socket } : {}),
    });
    if (source.kind !== 'agent') {
      await unsealRoot(root, source, at);
      return new Keywarden({ store, root, ownsStore: true, ownsRoot: true, ...auditing(options.auditAs) });
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
    return await AgentClient.connect(
      source.socket,
      options.connectTimeoutMs !== undefined ? { connectTimeoutMs: options.connectTimeoutMs } : {},
    );
  } catch (err) {
    if (isAgentUnavailable(err)) throw splitKnowledgeError(source.socket, err);
    throw err;
  }
}

/** openKeyService, run `fn`, and always close. */
export async function withKeyService<T>(
  loc: StoreLocation,
  options: KeyServiceOptions,
  fn: (keys: KeyService) => Promise<T>,
  surroundings?: Partial<ServiceSurroundings>,
): Promise<T> {
  const keys = await openKeyService(loc, options, surroundings);
  try {
    return await fn(keys);
  } finally {
    await keys.close();
  }
}

// ── The folder's agent ────────────────────────────────────────────────────────────────────────

export interface FolderAgentOptions
  extends Omit<AgentServerOptions, 'socket' | 'store' | 'root' | 'ownsStore' | 'ownsRoot'> {
  /** Where to listen; default $KEYWARDEN_AGENT_SOCKET, else D/agent.sock. */
  socket?: string;
}

/**
 * Start an agent over D's split-knowledge store, sealed, listening on the folder's socket. The
 * agent owns the store (it is closed with the agent) and loads the root again after every seal, so
 * a rekey or root rotation done meanwhile is picked up. A development-mode store is refused at
 * start (InvalidInputError: its users unseal it themselves); one that stops being split-knowledge
 * later is reported to clients and the agent keeps its sealed root.
 */
export async function startFolderAgent(
  loc: StoreLocation,
  options: FolderAgentOptions = {},
  surroundings?: Partial<Surroundings>,
): Promise<AgentServer> {
  const at = surroundingsOf(surroundings);
  const { socket, ...rest } = options;
  await requireStore(loc);
  const scheme = await folderRootScheme(loc);
  if (scheme !== 'software') {
    const secretShares = await folderDeviceSecretShares(loc);
    if (!secretShares) {
      throw new InvalidInputError(
        `this key store's root is a ${scheme}: device root: commands open the device themselves, no agent is needed`,
      );
    }
    return startDeviceAgent(loc, at, options, secretShares);
  }
  // Never create or initialize a store (only an init does): an empty file is refused as it is.
  const store = await openFolderStore(loc, 'write');
  try {
    return await startStoreAgent(store, { ...rest, socket: resolveAgentSocket(at, loc, socket), ownsStore: true });
  } catch (err) {
    await store.close().catch(() => {});
    throw err;
  }
}

/** startStoreAgent's options: AgentServer's, less the store and the root (the agent loads it). */
export type StoreAgentOptions = Omit<AgentServerOptions, 'store' | 'root' | 'ownsRoot'>;

/**
 * Start an agent over an opened key store whose root is a split-knowledge software root (a
 * fleet's PostgreSQL store, docs/fleet.md; a folder's SQLite store through startFolderAgent):
 * sealed, its root read from the store, unsealed by a quorum of shares, and read again from the
 * store after every seal (a rekey or root rotation done meanwhile, by any instance, is picked up).
 * A development-mode root is refused at start (InvalidInputError); a store that stops being
 * split-knowledge later is reported to clients and the agent keeps its sealed root. The store is
 * closed with the agent only with `ownsStore`; on a failed start the caller closes it.
 */
export async function startStoreAgent(store: KeyStore, options: StoreAgentOptions): Promise<AgentServer> {
  let started = false;
  return AgentServer.start({
    ...options,
    store,
    root: async (s: KeyStore) => {
      let root: SoftwareRoot;
      try {
        root = await SoftwareRoot.load(s);
      } catch (err) {
        const device = started ? undefined : (await deviceRootOf(s).catch(() => undefined))?.kind;
        if (device === undefined) throw err;
        throw new InvalidInputError(
          `this key store's root is a ${device}: device root: commands open the device themselves, no agent is needed`,
          { cause: err },
        );
      }
      if (root.document.unseal.method !== 'shamir') {
        await root.close();
        throw started
          ? new KeyStoreError('agent: the key store is no longer split-knowledge; stop this agent')
          : new InvalidInputError(
              'this key store is in development mode (unseal key file or environment variable): commands use it directly, no agent is needed',
            );
      }
      started = true;
      return root;
    },
  });
}

/**
 * The agent of a device-root folder whose PIN / auth value was split: the device opened sealed
 * (D/root.uri names no PIN source), unsealed by a quorum of the secret's shares, reopened sealed
 * after each seal.
 */
async function startDeviceAgent(
  loc: StoreLocation,
  at: Surroundings,
  options: FolderAgentOptions,
  secretShares: DeviceSecretShares,
): Promise<AgentServer> {
  const { socket, ...rest } = options;
  const uri = await folderRootUri(loc);
  const store = await openFolderStore(loc, 'write');
  try {
    return await AgentServer.start({
      ...rest,
      socket: resolveAgentSocket(at, loc, socket),
      store,
      ownsStore: true,
      secretShares: shareSetOf(secretShares),
      // A rekey of the device secret while the agent runs: the store's record names the new set.
      readSecretShares: async () => {
        const now = await readDeviceSecretShares(store);
        return now && shareSetOf(now);
      },
      root: (s: KeyStore) => openRoot(uri, { store: s, env: at.env }),
    });
  } catch (err) {
    await store.close().catch(() => {});
    throw err;
  }
}

function shareSetOf(d: DeviceSecretShares): SecretShareSet {
  return {
    shareSetId: d.shareSetId,
    threshold: d.threshold,
    shares: d.shares,
    purpose: d.purpose,
    commitments: d.commitments,
  };
}

function splitKnowledgeError(socket?: SocketLocation, cause?: unknown): KeystoreSealedError {
  const where = socket ? ` (no agent answers on ${socket.display})` : '';
  return new KeystoreSealedError(
    `this key store is sealed by split knowledge${where}; start \`keywarden agent\` and unseal it with a quorum (\`keywarden unseal\`)`,
    cause === undefined ? undefined : { cause },
  );
}

function nonEmpty(v: string | undefined): string | undefined {
  return v === undefined || v === '' ? undefined : v;
}

function messageOf(err: unknown): string {
  return KeywardenError.isInstance(err) ? err.message : 'unreadable';
}
