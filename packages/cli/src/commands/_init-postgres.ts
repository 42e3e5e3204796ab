/**
 * `keywarden init --store postgres [--pg-schema S]`: the folder's key store made in a PostgreSQL
 * schema (@keywarden/ceremony's initPostgresStoreDir / initPostgresSplitStoreDir). The folder keeps
 * DIR/store.json (the kind and the schema, nothing secret) and every later command on the folder
 * opens that schema; the connection comes from $KEYWARDEN_PG_URL and $KEYWARDEN_PG_PASSWORD_FILE
 * only, as for `keywarden agent --store postgres`.
 */
import {
  abortPostgresInit,
  DEFAULT_PG_SCHEMA,
  displayPath,
  initPostgresDeviceStoreDir,
  initPostgresSplitStoreDir,
  initPostgresStoreDir,
  type StoreLocation,
} from '@keywarden/ceremony';
import { DEFAULT_SHARES, DEFAULT_THRESHOLD } from '@keywarden/split-knowledge';
import { checkShareParameters, custodianKeysOf, describeHandOut, destinationOf, hooksOf } from '../ceremony-io.js';
import { UsageError } from '../errors.js';
import type { CliIO } from '../io.js';
import { print } from '../output.js';
import { deviceInitSecret } from '../store-dir.js';
import { reportDevelopmentInit } from './_init-report.js';

export interface PostgresInitCommandOptions {
  pgSchema?: string;
  printUnsealKey?: boolean;
  unsealKeyFile?: string;
  split: boolean;
  shares?: number;
  threshold?: number;
  custodian?: string[];
  shareDir?: string;
}

/** The init itself; returns the lines for stderr and, in development mode with --print-unseal-key, the key for stdout. */
export async function initOnPostgres(io: CliIO, loc: StoreLocation, opts: PostgresInitCommandOptions): Promise<void> {
  const schema = opts.pgSchema ?? DEFAULT_PG_SCHEMA;
  const where = `PostgreSQL schema ${schema}`;
  if (opts.split) {
    const shares = opts.shares ?? DEFAULT_SHARES;
    const threshold = opts.threshold ?? DEFAULT_THRESHOLD;
    checkShareParameters(shares, threshold);
    const custodians = custodianKeysOf(io, opts.custodian);
    const r = await initPostgresSplitStoreDir(loc, {
      ...hooksOf(io),
      schema,
      shares,
      threshold,
      ...(custodians ? { custodians } : {}),
      destination: destinationOf(io, loc, opts.custodian, opts.shareDir),
    });
    const lines = [
      `Initialized a split-knowledge key store in ${where} for ${loc.display} (root ${r.rootId}).`,
      ...describeHandOut(r, io),
      'The unseal key and the root key were never written anywhere in plaintext; no unseal key file exists.',
      `The key store starts sealed: run \`keywarden agent\`, then \`keywarden unseal\` with ${r.shareSet.threshold} shares.`,
    ];
    await print(io.stderr, `${lines.join('\n')}\n`);
    return;
  }
  if (opts.printUnsealKey && opts.unsealKeyFile !== undefined) {
    throw new UsageError('--print-unseal-key and --unseal-key-file cannot be used together');
  }
  const result = await initPostgresStoreDir(loc, {
    ...hooksOf(io),
    schema,
    ...(opts.unsealKeyFile !== undefined ? { unsealKeyFile: opts.unsealKeyFile } : {}),
    printUnsealKey: opts.printUnsealKey === true,
  });
  await reportDevelopmentInit(
    io,
    result,
    `Initialized a key store in ${where} for ${loc.display} (root ${result.rootId}).`,
  );
}

/**
 * `init --store postgres --root URI`: a device root (PKCS#11, TPM) with its record in the schema. The PIN or auth value comes from the URI's source, else
 * from the prompt, and is wiped after.
 */
export async function initDeviceOnPostgres(
  io: CliIO,
  loc: StoreLocation,
  opts: { uri: string; pgSchema?: string },
): Promise<void> {
  const schema = opts.pgSchema ?? DEFAULT_PG_SCHEMA;
  const secret = await deviceInitSecret(io, opts.uri);
  let r: Awaited<ReturnType<typeof initPostgresDeviceStoreDir>>;
  try {
    r = await initPostgresDeviceStoreDir(loc, {
      ...hooksOf(io),
      schema,
      uri: opts.uri,
      env: io.env,
      ...(secret ? { secret } : {}),
    });
  } finally {
    secret?.fill(0);
  }
  const lines = [
    `Initialized a key store in PostgreSQL schema ${schema} for ${loc.display} with a ${r.description.kind} root (root ${r.rootId}).`,
    `Root: ${r.description.label}; wraps with ${r.description.wrapAlgorithm}.`,
    `The root URI is recorded in ${displayPath(r.rootUriPath, io.cwd)}; every command opens the device through it.`,
  ];
  await print(io.stderr, `${lines.join('\n')}\n`);
}

/** `init --abort` of an init on PostgreSQL; `init --resume` cannot finish one (the next init undoes it). */
export async function resumeOrAbortOnPostgres(io: CliIO, loc: StoreLocation, abort: boolean): Promise<void> {
  if (!abort) {
    throw new UsageError(
      `the unfinished init in ${loc.display} is on PostgreSQL: it cannot be resumed; \`keywarden init --abort\` (or the next \`keywarden init\`) undoes it`,
    );
  }
  const notes = await abortPostgresInit(loc, hooksOf(io));
  await print(io.stderr, `${[`Removed the unfinished init in ${loc.display}.`, ...notes].join('\n')}\n`);
}
