/**
 * A key-store folder whose store is a schema in PostgreSQL (`keywarden init --store postgres`;
 * docs/fleet.md, "Pointing Keywarden at an existing PostgreSQL").
 *
 * The folder keeps D/store.json — the store's kind and schema, nothing secret — and every command
 * that opens the folder's store opens that schema (layout.ts's openFolderStore), reached through
 * KEYWARDEN_PG_URL and KEYWARDEN_PG_PASSWORD_FILE as `keywarden agent --store postgres` is. The
 * development-mode unseal key file, the agent socket and the share hand-out stay in the folder.
 *
 * Init, crash-safe (the folder's staged-init pattern, docs/split-knowledge.md §7.1, with the
 * config file in the place of the staged SQLite file):
 *
 *   1. refuse a folder with a store, and a schema that holds one (root, tombstone, pending
 *      ceremony or keys): KeyStoreError, nothing changed;
 *   2. the root is made in memory; D/store.json.staged names the schema and the new root's id
 *      (fsynced)                                                       step `pg-init:staged`
 *   3. the root goes into the schema (one compare-and-swap on an absent root record; under split
 *      knowledge the pending ceremony record first, itself a compare-and-swap)  `pg-init:root-written`
 *   4. development mode: the unseal key file; split knowledge: every share handed out
 *   5. D/store.json written (temporary file, fsync, rename, fsync of D): the folder has a store
 *                                                                     `pg-init:activated`
 *   6. D/store.json.staged removed; split knowledge: the pending record dropped  `pg-init:done`
 *
 * A process killed before step 5 leaves D/store.json.staged: the folder has no store, and the next
 * init (or `init --abort`) undoes what the staged config names — the root whose id it recorded,
 * and only that root, from a schema that holds no key — with the unseal key file or the share files
 * it wrote. So a schema is never left holding a root that nobody can use or that an init did not
 * finish, and never loses a store another init made.
 */
import { createHash, randomFillSync } from 'node:crypto';
import { rename, rm } from 'node:fs/promises';
import * as path from 'node:path';
import {
  CeremonyError,
  ConflictError,
  decodeSealedRoot,
  encodeSealedRoot,
  encodeUnsealKey,
  InvalidInputError,
  type KeyStore,
  KeyStoreError,
  KeywardenError,
  MemoryKeyStore,
  openRoot,
  type RootDescription,
  ROOT_META_NAME,
  ROOT_TOMBSTONE_META_NAME,
  SoftwareRoot,
  UNSEAL_KEY_BYTES,
  UnsupportedCapabilityError,
  wipe,
} from '@keywarden/core';
import { PENDING_CEREMONY_META, readPendingCeremony, stageInit } from '@keywarden/split-knowledge';
import { fsyncPath } from './_files.js';
import { unsealsRoot } from './staged-remains.js';
import {
  checkDeviceRootUri,
  DEFAULT_PG_SCHEMA,
  type DeviceInitOptions,
  type DeviceInitResult,
  displayPath,
  exists,
  openPostgresStore,
  PG_SCHEMA_NAME,
  type InitResult,
  makeInitFolder,
  readFolderStoreConfig,
  refuseExistingStore,
  ROOT_URI_FILE,
  SHARES_OUT_DIR,
  STORE_CONFIG_FILE,
  type StoreLocation,
  writeSecretFile,
} from './layout.js';
import {
  type CeremonyHooks,
  checkShareParameters,
  clearAbandonedInit,
  custodiansFor,
  HandOut,
  type SplitInitOptions,
  type SplitInitResult,
  removeHandOutFiles,
} from './split.js';

/** Where an init on PostgreSQL records what it is making until the folder has its store. */
export function stagedStoreConfigPath(loc: StoreLocation): string {
  return path.join(loc.dir, `${STORE_CONFIG_FILE}.staged`);
}

export interface PostgresInitOptions extends CeremonyHooks {
  /** The schema to create the store in; default "keywarden". Created when missing. */
  schema?: string;
}

export interface PostgresDevInitOptions extends PostgresInitOptions {
  /** Where to write the unseal key (relative to `cwd`); default D/unseal.key. */
  unsealKeyFile?: string;
  /** Return the unseal key's text form instead of writing a file. */
  printUnsealKey?: boolean;
}

/**
 * Development mode on PostgreSQL: a new store in `schema` with a software root sealed under a
 * fresh unseal key (written to the key file, or returned with printUnsealKey), and D/store.json
 * naming it. Refuses when D has a store or the key file exists, and when the schema already holds
 * a store (KeyStoreError). On failure, or after a kill (undone by the next init), nothing is left.
 */
export async function initPostgresStoreDir(
  loc: StoreLocation,
  options: PostgresDevInitOptions = {},
): Promise<InitResult & { schema: string }> {
  const cwd = options.cwd ?? process.cwd();
  const schema = schemaOf(options.schema);
  if (options.printUnsealKey && options.unsealKeyFile !== undefined) {
    throw new InvalidInputError('init: printUnsealKey and unsealKeyFile cannot be used together');
  }
  await refuseExistingStore(loc);
  await clearAbandonedPostgresInit(loc, options);
  // An init on D's own file that was killed: its remains are undone (a split one pending is refused).
  await clearAbandonedInit(loc, options);
  const keyPath = options.printUnsealKey
    ? undefined
    : path.resolve(cwd, options.unsealKeyFile ?? loc.defaultUnsealKeyPath);
  if (keyPath !== undefined && (await exists(keyPath))) {
    throw new KeyStoreError(`unseal key file ${displayPath(keyPath, cwd)} already exists; refusing to overwrite it`);
  }
  await makeInitFolder(loc);
  const store = await openPostgresStore(loc, schema, true);
  const unsealKey = randomFillSync(new Uint8Array(UNSEAL_KEY_BYTES));
  let root: SoftwareRoot | undefined;
  let written: Uint8Array | undefined;
  let wroteKeyFile = false;
  try {
    await refuseSchemaWithStore(store, schema);
    const created = await SoftwareRoot.createForRotation({ unsealKey, unseal: { method: 'key' } });
    root = created.root;
    const rootId = created.document.rootId;
    await writeStagedConfig(loc, schema, rootId, keyPath);
    options.onStep?.('pg-init:staged');
    written = encodeSealedRoot(created.document);
    await claimRoot(store, schema, written);
    options.onStep?.('pg-init:root-written');
    const text = encodeUnsealKey(unsealKey);
    if (keyPath !== undefined) {
      await writeSecretFile(keyPath, `${text}\n`);
      wroteKeyFile = true;
      options.onStep?.('pg-init:key-written');
    }
    await activate(loc, schema, options);
    return {
      rootId,
      schema,
      ...(keyPath !== undefined ? { unsealKeyPath: keyPath } : {}),
      ...(options.printUnsealKey ? { unsealKeyText: text } : {}),
    };
  } catch (err) {
    if (!(await exists(path.join(loc.dir, STORE_CONFIG_FILE)))) {
      if (written) await store.swapMeta?.(ROOT_META_NAME, written, null).catch(() => {});
      if (wroteKeyFile && keyPath !== undefined) await rm(keyPath, { force: true }).catch(() => {});
      await rm(stagedStoreConfigPath(loc), { force: true }).catch(() => {});
    }
    throw err;
  } finally {
    wipe(unsealKey);
    await root?.close().catch(() => {});
    await store.close().catch(() => {});
  }
}

/**
 * Split knowledge on PostgreSQL: as initSplitStoreDir (the unseal key split M-of-N, the shares
 * handed out before the store is in place), with the store in `schema` and D/store.json naming it.
 * A test quorum before activation (verifyQuorum) is a folder-file init's: refused here.
 */
export async function initPostgresSplitStoreDir(
  loc: StoreLocation,
  options: SplitInitOptions & { schema?: string },
): Promise<SplitInitResult & { schema: string }> {
  const cwd = options.cwd ?? process.cwd();
  const schema = schemaOf(options.schema);
  if (options.verifyQuorum) {
    throw new InvalidInputError(
      'init: a test quorum before activation (verifyQuorum) is not offered on PostgreSQL; check the shares with `keywarden share inspect`',
    );
  }
  checkShareParameters(options.shares, options.threshold);
  const custodians = await custodiansFor(options.custodians, options.shares);
  await refuseExistingStore(loc);
  await clearAbandonedPostgresInit(loc, options);
  // An init on D's own file that was killed: its remains are undone (a split one pending is refused).
  await clearAbandonedInit(loc, options);
  await makeInitFolder(loc);
  const destination = options.destination ?? { kind: 'files', dir: path.join(loc.dir, SHARES_OUT_DIR) };
  const handOut = await HandOut.plan(destination, options.shares, custodians, cwd);
  const store = await openPostgresStore(loc, schema, true);
  let recorded = false;
  let staged: Awaited<ReturnType<typeof stageInit>> | undefined;
  try {
    await refuseSchemaWithStore(store, schema);
    staged = await stageInit({
      shares: options.shares,
      threshold: options.threshold,
      ...(custodians ? { custodians: custodians.map((c) => c.pem) } : {}),
    });
    await writeStagedConfig(loc, schema, staged.document.rootId);
    options.onStep?.('pg-init:staged');
    try {
      // The pending record (a compare-and-swap: of two inits on one schema one records), then the root.
      await staged.record(store, { ...handOut.describe(false) });
    } catch (err) {
      throw ConflictError.isInstance(err) || KeyStoreError.isInstance(err) ? schemaHoldsStore(schema, err) : err;
    }
    recorded = true;
    options.onStep?.('pg-init:root-written');
    await handOut.write(staged.handOut, staged.shareSet, 'init', options);
    staged.handOut.length = 0;
    options.onStep?.('init:shares-written');
    const result = { rootId: staged.document.rootId, ...handOut.result(staged.shareSet) };
    await activate(loc, schema, options, store);
    return { ...result, activated: true, schema };
  } catch (err) {
    if (!(await exists(path.join(loc.dir, STORE_CONFIG_FILE)))) {
      await handOut.abort();
      if (recorded && staged) await undoRoot(store, staged.document.rootId).catch(() => {});
      await rm(stagedStoreConfigPath(loc), { force: true }).catch(() => {});
    }
    throw err;
  } finally {
    await staged?.close();
    await store.close().catch(() => {});
  }
}

export interface PostgresDeviceInitOptions extends PostgresInitOptions, DeviceInitOptions {}

/**
 * A device root (PKCS#11, TPM) on PostgreSQL: the root made in the device the URI names, its record
 * in `schema`, D/root.uri holding the URI and D/store.json naming the schema. The steps, crash-safe
 * as the other inits on PostgreSQL (this file's header):
 *
 *   1. refuse a folder with a store, and a schema that holds one; an abandoned init is undone;
 *   2. the root is made in the device, against a scratch store in memory (the backend's create
 *      writes its record there, and only there)                    step `pg-init:device-root-made`
 *   3. D/store.json.staged names the schema, the root and its record (name and SHA-256)
 *                                                                            `pg-init:staged`
 *   4. the record goes into the schema (compare-and-swap on an absent record, then no other kind
 *      of root may be there: of two inits on one schema, at most one wins)  `pg-init:root-written`
 *   5. D/root.uri (temporary file, fsync, rename)                            `pg-init:uri-written`
 *   6. D/store.json in place, the staged config removed       `pg-init:activated`, `pg-init:done`
 *
 * Undone by the next init (or `init --abort`) before step 6: the record whose bytes the staged
 * config names is removed from the schema, and D/root.uri with it. The device keeps the object it
 * made in step 2 (as after a failed init on a folder's own SQLite file): abort's notes name it.
 */
export async function initPostgresDeviceStoreDir(
  loc: StoreLocation,
  options: PostgresDeviceInitOptions,
): Promise<DeviceInitResult & { schema: string }> {
  const scheme = checkDeviceRootUri(options.uri);
  const schema = schemaOf(options.schema);
  await refuseExistingStore(loc);
  await clearAbandonedPostgresInit(loc, options);
  // An init on D's own file that was killed: its remains are undone (a split one pending is refused).
  await clearAbandonedInit(loc, options);
  await makeInitFolder(loc);
  const store = await openPostgresStore(loc, schema, true);
  const uriPath = path.join(loc.dir, ROOT_URI_FILE);
  let record: { name: string; value: Uint8Array } | undefined;
  let claimed = false;
  try {
    await refuseSchemaWithStore(store, schema);
    const scratch = new RecordingStore();
    let description: RootDescription;
    const root = await openRoot(options.uri, {
      store: scratch,
      create: true,
      ...(options.secret ? { secret: options.secret } : {}),
      ...(options.env ? { env: options.env } : {}),
    });
    try {
      description = root.describe();
      record = root.storeRecord?.();
    } finally {
      await root.close();
    }
    // The backend's whole record is the one it names: nothing else it wrote would be carried over.
    const written = [...scratch.written];
    const held = record ? await scratch.getMeta(record.name) : undefined;
    if (!record || written.length !== 1 || written[0] !== record.name || !held || !sameBytes(held, record.value)) {
      throw new UnsupportedCapabilityError(
        `init: a ${scheme}: root does not describe its record in the key store; make it on a folder's own store`,
      );
    }
    options.onStep?.('pg-init:device-root-made');
    await writeStagedConfig(loc, schema, description.id, undefined, {
      rootMeta: record.name,
      rootDigest: digestOf(record.value),
      rootScheme: scheme,
    });
    options.onStep?.('pg-init:staged');
    await claimRecord(store, schema, record);
    claimed = true;
    options.onStep?.('pg-init:root-written');
    // The URI before D/store.json: a folder with a store and no root.uri would be a software root's.
    const tmp = `${uriPath}.tmp`;
    await rm(tmp, { force: true });
    await writeSecretFile(tmp, `${options.uri}\n`);
    await rename(tmp, uriPath);
    options.onStep?.('pg-init:uri-written');
    await activate(loc, schema, options);
    return { rootId: description.id, description, rootUriPath: uriPath, schema };
  } catch (err) {
    if (!(await exists(path.join(loc.dir, STORE_CONFIG_FILE)))) {
      if (claimed && record) await store.swapMeta?.(record.name, record.value, null).catch(() => {});
      await rm(uriPath, { force: true }).catch(() => {});
      await rm(`${uriPath}.tmp`, { force: true }).catch(() => {});
      await rm(stagedStoreConfigPath(loc), { force: true }).catch(() => {});
    }
    throw err;
  } finally {
    await store.close().catch(() => {});
  }
}

/** A scratch store that remembers which metadata records were written to it. */
class RecordingStore extends MemoryKeyStore {
  readonly written = new Set<string>();
  override async putMeta(name: string, value: Uint8Array): Promise<void> {
    this.written.add(name);
    return super.putMeta(name, value);
  }
  override async swapMeta(name: string, expected: Uint8Array | null, value: Uint8Array | null): Promise<void> {
    this.written.add(name);
    return super.swapMeta(name, expected, value);
  }
  override async deleteMeta(name: string): Promise<void> {
    this.written.add(name);
    return super.deleteMeta(name);
  }
  override async updateMeta(
    name: string,
    change: (current: Uint8Array | undefined) => ReadonlyArray<{ name: string; value: Uint8Array }>,
  ): Promise<void> {
    return super.updateMeta(name, (current) => {
      const writes = change(current);
      for (const w of writes) this.written.add(w.name);
      return writes;
    });
  }
}

function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && Buffer.from(a.buffer, a.byteOffset, a.length).equals(b);
}

/** SHA-256 of a root record, base64url: how a staged config names the record it wrote (not secret). */
function digestOf(bytes: Uint8Array): string {
  return createHash('sha256').update(bytes).digest('base64url');
}

/** Whether D has an init on PostgreSQL that did not finish (its staged config), and its schema. */
export async function postgresPendingInitOf(loc: StoreLocation): Promise<{ schema: string } | undefined> {
  const c = await readFolderStoreConfig(loc, stagedStoreConfigPath(loc)).catch(() => undefined);
  return c?.kind === 'postgres' ? { schema: c.schema } : undefined;
}

/**
 * Undo an init on PostgreSQL that did not finish (`keywarden init --abort`, and the next init):
 * the root its staged config names is removed from the schema — only that root, and only from a
 * schema that holds no key —, with the unseal key file that opens it or the share files the
 * ceremony wrote; then the staged config. Returns what was done, one line each.
 */
export async function abortPostgresInit(loc: StoreLocation, options: CeremonyHooks = {}): Promise<string[]> {
  const cwd = options.cwd ?? process.cwd();
  const stagedPath = stagedStoreConfigPath(loc);
  const config = await readFolderStoreConfig(loc, stagedPath);
  if (config?.kind !== 'postgres') throw new CeremonyError(`init --abort: no init is pending in ${loc.display}`);
  if (await exists(path.join(loc.dir, STORE_CONFIG_FILE))) {
    // Activated: the staged config is a leftover of the clean-up, and the store is the folder's.
    await rm(stagedPath, { force: true });
    return [];
  }
  const notes: string[] = [];
  let store: KeyStore | undefined;
  try {
    store = await openPostgresStore(loc, config.schema, false);
  } catch (err) {
    // No store in the schema: the init stopped before it made anything there.
    if (!KeywardenError.isInstance(err, 'KW_STORE')) throw err;
  }
  try {
    const rootId = typeof config.rootId === 'string' ? config.rootId : undefined;
    if (typeof config.rootMeta === 'string') {
      // A device root: its record, when it is the one this init wrote (same bytes), leaves the schema.
      const name = config.rootMeta;
      const device = await (store ? store.getMeta(name) : undefined);
      if (store && device && digestOf(device) === config.rootDigest) {
        if ((await store.listKeys()).length > 0) {
          throw new CeremonyError(
            `init: the unfinished store's root ${rootId} was left in place: keys were created under it meanwhile`,
          );
        }
        await store.swapMeta?.(name, device, null);
        notes.push(`removed the unfinished store's root ${rootId} from schema ${config.schema}`);
      }
      notes.push(
        `the ${String(config.rootScheme ?? 'device')} device may keep the root object that init made (root ${rootId}): it is unused; remove it with the device's own tools to reuse its label`,
      );
      // Not a root.uri that names the root of a store made in D since (its own SQLite file).
      if (!(await exists(loc.dbPath))) await rm(path.join(loc.dir, ROOT_URI_FILE), { force: true });
    }
    const bytes = store && typeof config.rootMeta !== 'string' ? await store.getMeta(ROOT_META_NAME) : undefined;
    if (store && bytes && rootId !== undefined && decodeSealedRoot(bytes).rootId === rootId) {
      const pending = await readPendingCeremony(store);
      if (pending && pending.document.rootId === rootId) notes.push(...(await removeHandOutFiles(pending, cwd)));
      const keyFile = typeof config.unsealKeyFile === 'string' ? config.unsealKeyFile : undefined;
      if (!pending && keyFile !== undefined && (await unsealsRoot(store, keyFile))) {
        await rm(keyFile, { force: true });
        notes.push(`removed ${displayPath(keyFile, cwd)}`);
      }
      await undoRoot(store, rootId);
      notes.push(`removed the unfinished store's root ${rootId} from schema ${config.schema}`);
    }
  } finally {
    await store?.close().catch(() => {});
  }
  await rm(stagedPath, { force: true });
  fsyncPath(loc.dir);
  return notes;
}

/** A staged config left by an init that was killed: undone (see abortPostgresInit), with a notice. */
async function clearAbandonedPostgresInit(loc: StoreLocation, hooks: CeremonyHooks): Promise<void> {
  if (!(await exists(stagedStoreConfigPath(loc)))) return;
  const notes = await abortPostgresInit(loc, hooks);
  hooks.onNotice?.(
    ['Undid an earlier init on PostgreSQL that stopped before the folder had its store.', ...notes].join('\n'),
  );
}

// ── Steps ──────────────────────────────────────────────────────────────────────────────────────

function schemaOf(schema: string | undefined): string {
  const s = schema ?? DEFAULT_PG_SCHEMA;
  if (typeof s !== 'string' || !PG_SCHEMA_NAME.test(s)) {
    throw new InvalidInputError(
      'init: the PostgreSQL schema must be a lower-case SQL identifier (a-z, 0-9, _; at most 63)',
    );
  }
  return s;
}

function schemaHoldsStore(schema: string, cause?: unknown): KeyStoreError {
  return new KeyStoreError(
    `init: schema ${schema} already holds a Keywarden key store; nothing was changed (choose another schema with --pg-schema)`,
    cause === undefined ? undefined : { cause },
  );
}

/**
 * The records of a root, or of a destroyed root, of every kind the CLI makes: the software root's
 * and a PKCS#11 root's ("root"), a TPM root's, and their tombstones (@keywarden/core, /pkcs11,
 * /tpm), named here whether or not the device's package is loaded in this process.
 */
const ROOT_RECORD_NAMES = [
  ROOT_META_NAME,
  ROOT_TOMBSTONE_META_NAME,
  'pkcs11-root-tombstone',
  'tpm-root',
  'tpm-root-tombstone',
] as const;

/** A schema with a root of any kind, a destroyed root's tombstone, a pending ceremony or a key holds a store. */
async function refuseSchemaWithStore(store: KeyStore, schema: string): Promise<void> {
  for (const name of [...ROOT_RECORD_NAMES, PENDING_CEREMONY_META]) {
    if (await store.getMeta(name)) throw schemaHoldsStore(schema);
  }
  if ((await store.listKeys()).length > 0) throw schemaHoldsStore(schema);
}

/**
 * A device root's record written where there is none (compare-and-swap); then, since another kind
 * of root keeps its record under another name, no other root record may be there: if one is (an
 * init of another kind raced this one), this record is taken back and the schema is refused. Of
 * two racing inits at most one keeps its record, and neither overwrites the other's.
 */
async function claimRecord(
  store: KeyStore,
  schema: string,
  record: { name: string; value: Uint8Array },
): Promise<void> {
  if (typeof store.swapMeta !== 'function') throw new KeyStoreError('init: this store cannot compare-and-swap');
  try {
    await store.swapMeta(record.name, null, record.value);
  } catch (err) {
    throw ConflictError.isInstance(err) ? schemaHoldsStore(schema, err) : err;
  }
  for (const name of [...ROOT_RECORD_NAMES, PENDING_CEREMONY_META]) {
    if (name !== record.name && (await store.getMeta(name))) {
      await store.swapMeta(record.name, record.value, null).catch(() => {});
      throw schemaHoldsStore(schema);
    }
  }
}

/** The root record written only where there is none (compare-and-swap): of two inits, one wins. */
async function claimRoot(store: KeyStore, schema: string, sealed: Uint8Array): Promise<void> {
  if (typeof store.swapMeta !== 'function') throw new KeyStoreError('init: this store cannot compare-and-swap');
  try {
    await store.swapMeta(ROOT_META_NAME, null, sealed);
  } catch (err) {
    throw ConflictError.isInstance(err) ? schemaHoldsStore(schema, err) : err;
  }
}

async function writeStagedConfig(
  loc: StoreLocation,
  schema: string,
  rootId: string,
  unsealKeyFile?: string,
  device?: { rootMeta: string; rootDigest: string; rootScheme: string },
): Promise<void> {
  const staged = stagedStoreConfigPath(loc);
  await rm(staged, { force: true });
  const config = {
    format: 1,
    kind: 'postgres',
    schema,
    rootId,
    ...(unsealKeyFile ? { unsealKeyFile } : {}),
    ...(device ?? {}),
  };
  await writeSecretFile(staged, `${JSON.stringify(config)}\n`);
  fsyncPath(loc.dir);
}

/** Steps 5 and 6: D/store.json in place, then the staged config and the pending record dropped. */
async function activate(loc: StoreLocation, schema: string, hooks: CeremonyHooks, store?: KeyStore): Promise<void> {
  const final = path.join(loc.dir, STORE_CONFIG_FILE);
  const tmp = `${final}.tmp`;
  await rm(tmp, { force: true });
  await writeSecretFile(tmp, `${JSON.stringify({ format: 1, kind: 'postgres', schema })}\n`);
  await refuseExistingStore(loc);
  await rename(tmp, final);
  fsyncPath(loc.dir);
  hooks.onStep?.('pg-init:activated');
  await rm(stagedStoreConfigPath(loc), { force: true });
  if (store) {
    const { finishActivatedCeremony } = await import('@keywarden/split-knowledge');
    await finishActivatedCeremony(store);
  }
  hooks.onStep?.('pg-init:done');
}

/** Remove the root `rootId` (and its pending record) from a schema that holds no key. */
async function undoRoot(store: KeyStore, rootId: string): Promise<void> {
  if ((await store.listKeys()).length > 0) {
    throw new CeremonyError(
      `init: the unfinished store's root ${rootId} was left in place: keys were created under it meanwhile`,
    );
  }
  const bytes = await store.getMeta(ROOT_META_NAME);
  if (bytes && decodeSealedRoot(bytes).rootId === rootId) {
    if (typeof store.swapMeta === 'function') await store.swapMeta(ROOT_META_NAME, bytes, null);
    else await store.deleteMeta(ROOT_META_NAME);
  }
  const pending = await readPendingCeremony(store);
  if (pending && pending.document.rootId === rootId) await store.deleteMeta(PENDING_CEREMONY_META);
}
