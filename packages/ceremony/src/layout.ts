import { chmod, mkdir, open, readFile, rm, stat } from 'node:fs/promises';
import * as path from 'node:path';
import {
  CeremonyPendingError,
  InvalidInputError,
  openRoot,
  rootUriScheme,
  type KeyStore,
  KeyStoreError,
  ROOT_DESTROYED_MESSAGE,
  type RootDescription,
  RootDestroyedError,
  type RootOfTrust,
  type SealedRootDocument,
  SoftwareRoot,
} from '@keywarden/core';
import { SqliteKeyStore } from '@keywarden/store-sqlite';

export const DEFAULT_DIR = '.keywarden';
export const KEYSTORE_FILE = 'keystore.db';
export const UNSEAL_KEY_FILE = 'unseal.key';
export const AGENT_SOCKET_FILE = 'agent.sock';
export const SHARES_OUT_DIR = 'shares-out';
export const ROOT_URI_FILE = 'root.uri';
export const STORE_CONFIG_FILE = 'store.json';
/** The schema of a folder's PostgreSQL store when init was given none (as `agent --store postgres`). */
export const DEFAULT_PG_SCHEMA = 'keywarden';
/** The root URI of a folder without D/root.uri. */
export const SOFTWARE_ROOT_URI = 'software:';
export const DIR_ENV = 'KEYWARDEN_DIR';
export const UNSEAL_KEY_ENV = 'KEYWARDEN_UNSEAL_KEY';
export const AGENT_SOCKET_ENV = 'KEYWARDEN_AGENT_SOCKET';

/** Where relative paths start and which environment applies (a process's own, or a caller's). */
export interface Surroundings {
  cwd: string;
  env: Readonly<Record<string, string | undefined>>;
}

export interface StoreLocation {
  /** Absolute path of D. */
  dir: string;
  /** Absolute path of D/keystore.db. */
  dbPath: string;
  /** Absolute path of D/unseal.key. */
  defaultUnsealKeyPath: string;
  /** How to show D in messages (relative to the working directory when under it). */
  display: string;
  /**
   * The environment a folder whose store is in PostgreSQL takes its connection from
   * (KEYWARDEN_PG_URL, KEYWARDEN_PG_PASSWORD_FILE, libpq's PG*); default process.env.
   */
  env?: Readonly<Record<string, string | undefined>>;
}

/** D: `dir`, else $KEYWARDEN_DIR, else ./.keywarden, resolved against `at.cwd`. */
export function resolveStoreLocation(at: Surroundings, dir?: string): StoreLocation {
  const raw = dir ?? nonEmpty(at.env[DIR_ENV]) ?? DEFAULT_DIR;
  const abs = path.resolve(at.cwd, raw);
  return {
    dir: abs,
    dbPath: path.join(abs, KEYSTORE_FILE),
    defaultUnsealKeyPath: path.join(abs, UNSEAL_KEY_FILE),
    display: displayPath(abs, at.cwd),
    env: at.env,
  };
}

/** Where an init builds its store before moving it into place. */
export function stagedStorePath(loc: StoreLocation): string {
  return `${loc.dbPath}.staged`;
}

/** Paths under the working directory are shown relative to it, as the user most likely typed them. */
export function displayPath(p: string, cwd: string): string {
  const rel = path.relative(cwd, p);
  return rel !== '' && !rel.startsWith('..') && !path.isAbsolute(rel) ? rel : p;
}

/**
 * Open D/keystore.db: never creating or initializing it (only an init does), and read-only for
 * callers that only read, which therefore never migrate it either. An empty or foreign file is a
 * StoreCorruptError, a damaged one too.
 */
export function openStoreFile(loc: StoreLocation, mode: 'read' | 'write'): SqliteKeyStore {
  return SqliteKeyStore.open(loc.dbPath, mode === 'read' ? { readonly: true } : { create: false });
}

/** D has a key store (a file at D/keystore.db, or D/store.json naming one elsewhere); else a KeyStoreError saying to initialize one. */
export async function requireStore(loc: StoreLocation): Promise<void> {
  if ((await readFolderStoreConfig(loc)) !== undefined) return;
  try {
    const st = await stat(loc.dbPath);
    if (st.isFile()) return;
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code !== 'ENOENT' && code !== 'ENOTDIR') throw err;
  }
  throw new KeyStoreError(`no key store in ${loc.display} (run \`keywarden init\`)`);
}

// ── Where the folder's store is ──────────────────────────────────────────────────────────────

/** Where a folder's key store is: its own SQLite file, or a schema in a PostgreSQL database. */
export type FolderStoreConfig = { kind: 'sqlite' } | { kind: 'postgres'; schema: string };

/** A PostgreSQL schema name as the store takes it (lower case, at most 63). */
export const PG_SCHEMA_NAME = /^[a-z_][a-z0-9_]{0,62}$/;

/**
 * D/store.json, parsed and checked; undefined when D has none (its store is D/keystore.db). The
 * file holds only the kind and the schema: anything else in it (a connection string, a password)
 * is refused as a damaged folder, so a secret is never read from or kept in it.
 */
export async function readFolderStoreConfig(
  loc: StoreLocation,
  file = path.join(loc.dir, STORE_CONFIG_FILE),
): Promise<(FolderStoreConfig & Record<string, unknown>) | undefined> {
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT' || code === 'ENOTDIR') return undefined;
    throw err;
  }
  const damaged = () =>
    new KeyStoreError(`${displayPath(file, path.dirname(loc.dir))} is not a key-store config (damaged folder?)`);
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch {
    throw damaged();
  }
  const c = parsed as Record<string, unknown> | null;
  if (c === null || typeof c !== 'object' || Array.isArray(c) || c.format !== 1) throw damaged();
  if (c.kind === 'postgres') {
    if (typeof c.schema !== 'string' || !PG_SCHEMA_NAME.test(c.schema)) throw damaged();
    // An init's staged config also names the root it is making and its unseal key file, or a device
    // root's record: its name in the store and the SHA-256 of its bytes (postgres-folder.ts).
    const staged = ['rootId', 'unsealKeyFile', 'rootMeta', 'rootDigest', 'rootScheme'];
    const extra = Object.keys(c).filter((k) => !['format', 'kind', 'schema', ...staged].includes(k));
    if (extra.length > 0) throw damaged();
    for (const k of staged) if (c[k] !== undefined && typeof c[k] !== 'string') throw damaged();
    return c as FolderStoreConfig & Record<string, unknown>;
  }
  throw damaged();
}

/** The kind of D's key store: "postgres" when D/store.json names one, else "sqlite". */
export async function folderStoreKind(loc: StoreLocation): Promise<FolderStoreConfig['kind']> {
  return (await readFolderStoreConfig(loc))?.kind ?? 'sqlite';
}

/**
 * Open D's key store, never creating or initializing it (only an init does): D/keystore.db
 * (openStoreFile: read-only for callers that only read), or the PostgreSQL schema D/store.json
 * names, reached through loc.env's KEYWARDEN_PG_URL and KEYWARDEN_PG_PASSWORD_FILE (else libpq's
 * PG* variables), as `keywarden agent --store postgres` does. A schema holding no store is a
 * KeyStoreError; nothing is created in it.
 */
export async function openFolderStore(loc: StoreLocation, mode: 'read' | 'write'): Promise<KeyStore> {
  const config = await readFolderStoreConfig(loc);
  if (config?.kind === 'postgres') return openPostgresStore(loc, config.schema, false);
  return openStoreFile(loc, mode);
}

/** The PostgreSQL store of a folder (loaded only when a folder names one: `pg` is not needed otherwise). */
export async function openPostgresStore(loc: StoreLocation, schema: string, create: boolean) {
  const { PostgresKeyStore } = await import('@keywarden/store-postgres');
  return PostgresKeyStore.open({
    schema,
    create,
    env: { ...(loc.env ?? process.env) },
  });
}

/** D's store and its software root, sealed. The caller closes both. A device-root folder is refused. */
export async function openSealed(
  loc: StoreLocation,
  mode: 'read' | 'write' = 'write',
): Promise<{ store: KeyStore; root: SoftwareRoot }> {
  await requireStore(loc);
  await requireSoftwareRoot(loc);
  const store: KeyStore = await openFolderStore(loc, mode);
  try {
    return { store, root: await SoftwareRoot.load(store) };
  } catch (err) {
    await store.close().catch(() => {});
    throw err;
  }
}

// ── The folder's root URI ─────────────────────────────────────────────────────────────────────

/**
 * The folder's root URI: D/root.uri's one line, else "software:" (the software root sealed in the
 * store). The URI is not secret, but it is never put in an error message either (it may name a
 * PIN file).
 */
export async function folderRootUri(loc: StoreLocation): Promise<string> {
  let text: string;
  try {
    text = await readFile(path.join(loc.dir, ROOT_URI_FILE), 'utf8');
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT' || code === 'ENOTDIR') return SOFTWARE_ROOT_URI;
    throw err;
  }
  const uri = text.replace(/\r?\n$/, '');
  if (uri.length === 0 || /[\r\n]/.test(uri)) {
    throw new KeyStoreError(`${loc.display}/${ROOT_URI_FILE} is not one root URI (damaged folder?)`);
  }
  rootUriScheme(uri); // InvalidInputError when it is not a URI
  return uri;
}

/** The scheme of the folder's root ("software", "pkcs11", "tpm"). */
export async function folderRootScheme(loc: StoreLocation): Promise<string> {
  return rootUriScheme(await folderRootUri(loc));
}

/** Refuse a software-root operation (shares, unseal keys, rekey, root rotate) on a device-root folder. */
export async function requireSoftwareRoot(loc: StoreLocation): Promise<void> {
  const scheme = await folderRootScheme(loc);
  if (scheme !== 'software') {
    throw new InvalidInputError(
      `this key store's root is a ${scheme}: device root; this applies only to a software root (unseal keys and shares)`,
    );
  }
}

/**
 * D's store and the root its URI names, opened through core's root registry (the backend for a
 * device scheme must be registered: import @keywarden/pkcs11 or @keywarden/tpm first). `secret`
 * unseals it (not modified; the caller wipes it); else the URI's own PIN/auth source does, or it
 * opens sealed. The caller closes both.
 */
export async function openFolderRoot(
  loc: StoreLocation,
  mode: 'read' | 'write',
  options: { secret?: Uint8Array; env?: Readonly<Record<string, string | undefined>> } = {},
): Promise<{ store: KeyStore; root: RootOfTrust; uri: string }> {
  await requireStore(loc);
  const uri = await folderRootUri(loc);
  const store: KeyStore = await openFolderStore(loc, mode);
  try {
    const root =
      rootUriScheme(uri) === 'software'
        ? await SoftwareRoot.load(store)
        : await openRoot(uri, {
            store,
            ...(options.secret ? { secret: options.secret } : {}),
            ...(options.env ? { env: options.env } : {}),
          });
    return { store, root, uri };
  } catch (err) {
    await store.close().catch(() => {});
    throw err;
  }
}

/** D's sealed root document (not secret): root id, unseal method, share-set id, M and N. */
export async function sealedRootDocument(loc: StoreLocation): Promise<SealedRootDocument> {
  const { store, root } = await openSealed(loc, 'read');
  try {
    return root.document;
  } finally {
    await root.close();
    await store.close();
  }
}

/**
 * Stands in for the root of a store whose root was destroyed (its tombstone says so), so that key
 * metadata can still be read. It has no key: wrapping and unwrapping are refused with a
 * RootDestroyedError, never a no-op. `interrupted`: the destruction was started and not finished.
 */
export class MissingRoot implements RootOfTrust {
  constructor(readonly interrupted = false) {}

  describe(): RootDescription {
    return { kind: 'software', id: 'none', label: 'no root (destroyed)', wrapAlgorithm: 'none' };
  }
  async wrapKey(): Promise<Uint8Array> {
    throw new RootDestroyedError(ROOT_DESTROYED_MESSAGE);
  }
  async unwrapKey(): Promise<Uint8Array> {
    throw new RootDestroyedError(ROOT_DESTROYED_MESSAGE);
  }
  async close(): Promise<void> {}
}

// ── Initializing (development mode) ──────────────────────────────────────────────────────────

export interface InitOptions {
  /** Where to write the unseal key (relative to `cwd`); default D/unseal.key. */
  unsealKeyFile?: string;
  /** Return the unseal key's text form instead of writing a file. */
  printUnsealKey?: boolean;
  /** Where a relative `unsealKeyFile` starts, and how paths are shown; default process.cwd(). */
  cwd?: string;
  /** Each step boundary, by name (crash tests); a notice for the operator (remains undone). */
  onStep?: (name: string) => void;
  onNotice?: (message: string) => void;
}

export interface InitResult {
  rootId: string;
  /** Absolute path of the unseal key file, when one was written. */
  unsealKeyPath?: string;
  /** Text form of the unseal key, only with printUnsealKey. */
  unsealKeyText?: string;
}

// ── Initializing with a device root ───────────────────────────────────────────────────────────

export interface DeviceInitOptions {
  /** The root URI: `pkcs11:token=…;object=…?module-path=…&pin-source=…`, `tpm:[pcrs=7]?auth-env=…`. */
  uri: string;
  /** The PIN / auth value when the URI names no source for it (a prompt); not modified. */
  secret?: Uint8Array;
  /** Environment for URI attributes that name variables. Default: process.env. */
  env?: Readonly<Record<string, string | undefined>>;
  /** How paths are shown; default process.cwd(). */
  cwd?: string;
  /** Each step boundary, by name (crash tests); a notice for the operator (remains undone). */
  onStep?: (name: string) => void;
  onNotice?: (message: string) => void;
}

export interface DeviceInitResult {
  rootId: string;
  /** The root's description (kind, label, wrap algorithm): nothing secret. */
  description: RootDescription;
  /** Absolute path of D/root.uri. */
  rootUriPath: string;
}

/**
 * A device root's URI as an init records it in D/root.uri; returns its scheme. Refuses "software:"
 * (made by a plain init), a URI that carries the PIN itself (`pin-value`: D/root.uri is not a
 * secret's place), and one of more than one line.
 */
export function checkDeviceRootUri(uri: string): string {
  const scheme = rootUriScheme(uri);
  if (scheme === 'software') {
    throw new InvalidInputError('init: a software root is made by a plain init (unseal key or shares), not by URI');
  }
  if (/[?&;]pin-value=/i.test(uri)) {
    throw new InvalidInputError(
      'init: the root URI carries the PIN (pin-value=); it is recorded in the folder, so name a pin-source=file:… or env:NAME instead',
    );
  }
  if (/[\r\n]/.test(uri)) throw new InvalidInputError('init: a root URI is one line');
  return scheme;
}

/**
 * Refuse an init in a folder that has a key store: D/keystore.db, or D/store.json naming one
 * elsewhere (KeyStoreError, nothing changed).
 */
export async function refuseExistingStore(loc: StoreLocation): Promise<void> {
  if ((await exists(loc.dbPath)) || (await exists(path.join(loc.dir, STORE_CONFIG_FILE)))) {
    throw new KeyStoreError(`${loc.display} already has a key store`);
  }
}

/**
 * Create an init's folder, private to its owner whatever the umask, and remove a root.uri that a
 * device init which failed before its store existed left there (it names no root). Called after
 * refuseExistingStore: the folder has no store, so no root.uri in it names a live root.
 */
export async function makeInitFolder(loc: StoreLocation): Promise<void> {
  const created = await mkdir(loc.dir, { recursive: true, mode: 0o700 });
  // mkdir's mode is filtered by the umask.
  if (created !== undefined) await chmod(loc.dir, 0o700);
  await rm(path.join(loc.dir, ROOT_URI_FILE), { force: true });
}

/**
 * Refuse an init on D's own SQLite file while an init on PostgreSQL in D has not finished (its
 * staged config, postgres-folder.ts's stagedStoreConfigPath): the root it may have written to its
 * schema is undone by `init --abort` (or by that init run again), which needs the schema; an init
 * of another kind would leave that root in the schema for ever.
 */
export async function refusePendingPostgresInit(loc: StoreLocation): Promise<void> {
  if (await exists(path.join(loc.dir, `${STORE_CONFIG_FILE}.staged`))) {
    throw new CeremonyPendingError(
      `an earlier \`keywarden init --store postgres\` in ${loc.display} did not finish: undo it with \`keywarden init --abort\` (or run that init again)`,
    );
  }
}

/** Create a file that must not exist yet, readable only by its owner, and fsync it. */
export async function writeSecretFile(file: string, content: string): Promise<void> {
  const fh = await open(file, 'wx', 0o600);
  try {
    await fh.chmod(0o600);
    await fh.writeFile(content, 'utf8');
    await fh.sync();
  } finally {
    await fh.close();
  }
}

/** Remove a SQLite store file and its companions (-wal, -shm, -journal). Never throws. */
export async function removeStoreFiles(dbPath: string): Promise<void> {
  for (const suffix of ['', '-wal', '-shm', '-journal']) await rm(dbPath + suffix, { force: true }).catch(() => {});
}

/** Whether a path exists (following symbolic links); errors other than ENOENT are thrown. */
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
