/**
 * `keywarden init`: a new key store and software root — in development mode (an unseal key in a
 * file or the environment), or with split knowledge (`--shares N --threshold M`: the unseal key
 * exists only as M-of-N Shamir shares, handed out once; docs/split-knowledge.md §3).
 */
import type { Command } from 'commander';
import { DEFAULT_SHARES, DEFAULT_THRESHOLD } from '@keywarden/split-knowledge';
import { displayPath, UsageError } from '../errors.js';
import type { CliIO } from '../io.js';
import { print } from '../output.js';
import {
  abortDeviceInit,
  abortSplitInit,
  devicePendingInitOf,
  initDeviceSplitStoreDir,
  pendingCeremonyOf,
  postgresPendingInitOf,
  initSplitStoreDir,
  resumeDeviceInit,
  resumeSplitInit,
  type StoreLocation,
} from '@keywarden/ceremony';
import { InvalidInputError } from '@keywarden/core';
import {
  checkShareParameters,
  custodianKeysOf,
  describeHandOut,
  destinationOf,
  hooksOf,
  quorumOf,
} from '../ceremony-io.js';
import {
  folderRootUri,
  initDeviceStoreDir,
  initStoreDir,
  loadRootBackend,
  rootSecretPrompt,
  SHARES_OUT_DIR,
  UNSEAL_KEY_ENV,
  uriNamesSecret,
} from '../store-dir.js';
import { collect, globalsOf, locationOf, positiveInt } from './_common.js';
import { initDeviceOnPostgres, initOnPostgres, resumeOrAbortOnPostgres } from './_init-postgres.js';
import { DEVELOPMENT_MODE_WARNING, reportDevelopmentInit } from './_init-report.js';
import { PG_SCHEMA_HELP, pgSchema, type StoreKind, storeKind } from './_store-options.js';

interface InitOptions {
  printUnsealKey?: boolean;
  shares?: number;
  threshold?: number;
  custodian?: string[];
  shareDir?: string;
  verifyQuorum?: boolean;
  resume?: boolean;
  abort?: boolean;
  shareFile?: string[];
  root?: string;
  pcrs?: string;
  pinShares?: number;
  pinThreshold?: number;
  authShares?: number;
  authThreshold?: number;
  store?: StoreKind;
  pgSchema?: string;
}

export function registerInit(program: Command, io: CliIO): void {
  program
    .command('init')
    .description(
      'create a key store and a software root: development mode, or split knowledge with --shares/--threshold',
    )
    .option(
      '--print-unseal-key',
      `development mode: print the unseal key to stdout once and write no file (for a secret manager → ${UNSEAL_KEY_ENV})`,
    )
    .option(
      '--shares <n>',
      `split knowledge: split the unseal key into N shares (default ${DEFAULT_SHARES})`,
      positiveInt,
    )
    .option('--threshold <m>', `split knowledge: any M shares unseal (2..N, default ${DEFAULT_THRESHOLD})`, positiveInt)
    .option(
      '--custodian <pem>',
      "split knowledge: custodian i's public key (X25519, or RSA ≥ 2048, PEM); repeat once per share, in order",
      collect,
    )
    .option(
      '--share-dir <dir>',
      `split knowledge: write the shares to DIR, one a file (default with --custodian: DIR/${SHARES_OUT_DIR})`,
    )
    .option(
      '--verify-quorum',
      'split knowledge: keep the new store pending until a test quorum of its shares confirms it (`init --resume`)',
    )
    .option(
      '--resume',
      'split knowledge: finish an init cut short (crash, kill) whose shares were all written; or confirm a --verify-quorum init',
    )
    .option('--abort', 'split knowledge: remove an unfinished init (its staged store and the share files it wrote)')
    .option(
      '--share-file <file>',
      'with --resume: a file holding one of the NEW plaintext shares (test quorum); with --abort of a device init: its shares, to destroy the root object it made',
      collect,
    )
    .option(
      '--store <folder|postgres>',
      'where the key store is: a SQLite file in the folder (default), or a schema in PostgreSQL reached through $KEYWARDEN_PG_URL and $KEYWARDEN_PG_PASSWORD_FILE (docs/fleet.md); the folder records which in DIR/store.json',
      storeKind,
    )
    .option('--pg-schema <name>', PG_SCHEMA_HELP, pgSchema)
    .option(
      '--root <uri>',
      "a device root instead of the software root: 'pkcs11:token=…;object=…?module-path=…&pin-source=…' or 'tpm:…' (needs @keywarden/pkcs11 or @keywarden/tpm)",
    )
    .option('--pcrs <list>', 'with --root tpm:…: bind every KEK to these SHA-256 PCRs (e.g. 7 or 7,16)')
    .option(
      '--pin-shares <n>',
      "with --root pkcs11:…: split the token's user PIN into N shares (custodians as for --shares); the agent unseals with a quorum",
      positiveInt,
    )
    .option(
      '--pin-threshold <m>',
      `with --root pkcs11:…: any M PIN shares unseal (2..N, default ${DEFAULT_THRESHOLD})`,
      positiveInt,
    )
    .option(
      '--auth-shares <n>',
      'with --root tpm:…: draw a random auth value for the TPM root and split it into N shares (nobody ever sees it)',
      positiveInt,
    )
    .option(
      '--auth-threshold <m>',
      `with --root tpm:…: any M auth-value shares unseal (2..N, default ${DEFAULT_THRESHOLD})`,
      positiveInt,
    )
    .addHelpText(
      'after',
      `
Development mode (no --shares/--threshold/--custodian):
  Creates DIR (mode 0700) with DIR/keystore.db, and writes a new 32-byte unseal key in text form to
  DIR/unseal.key, or to --unseal-key-file PATH (mode 0600). Refuses when DIR already has a key store
  or the unseal key file already exists.

${DEVELOPMENT_MODE_WARNING}

Split knowledge (--shares N --threshold M, default 5 and 3):
  The unseal key comes from the CSPRNG, seals the root, and is split into N Shamir shares, any M of
  which unseal; it and the root key are never written anywhere in plaintext, and no unseal key file
  exists. Each share is handed out once:
  - with --custodian (exactly N public keys, in share order): share i is encrypted to custodian i
    and written to DIR/${SHARES_OUT_DIR}/share-<i>-of-<N>.kwshare (or --share-dir), mode 0600; the
    operator never sees a share. Custodians open theirs with \`keywarden share decrypt\`.
  - without: each share is printed once on stdout, labelled (or, with --share-dir, written one a
    file, mode 0600). The operator then sees every share: prefer custodian keys.
  The store starts sealed: run \`keywarden agent\`, then \`keywarden unseal\` with M shares.
  Crash safety: the store is built as DIR/keystore.db.staged and becomes DIR/keystore.db only after
  every share was written and fsynced (or printed), so a store whose shares were never handed out
  never looks initialized. After a crash, \`keywarden status\` shows the unfinished init:
  \`init --resume\` finishes it (every share file must be whole; shares printed on stdout need a
  test quorum, --share-file), \`init --abort\` removes it. With --verify-quorum the store stays
  pending until \`init --resume\` with a test quorum of M new shares.
  The ceremony: docs/split-knowledge.md.

Device root (--root URI): the root key is made in a PKCS#11 token or a TPM and never leaves it.
  The URI is recorded in DIR/root.uri (not secret; a URI with pin-value= is refused) and every later
  command opens the device through it. The user PIN / auth value comes from the URI
  (pin-source=file:/PATH or env:NAME for PKCS#11; auth-file=PATH or auth-env=NAME for a TPM), else
  from a hidden prompt on a terminal. See docs/pkcs11.md and docs/tpm.md. With --store postgres the
  root's record goes into the schema and the URI into DIR/root.uri (docs/fleet.md).
  Split knowledge over the device (--pin-shares N --pin-threshold M for pkcs11:, --auth-shares N
  --auth-threshold M for tpm:; --custodian and --share-dir hand the shares out as for --shares):
  for PKCS#11 a new random user PIN that nobody ever sees (the token's PIN, read once from the URI's
  pin-source or the prompt, is used to log in and set it with C_SetPIN once every share is written),
  or for a TPM a random 32-byte auth value, is split M-of-N; DIR/root.uri is recorded without its PIN
  source. Run \`keywarden agent\`, then \`keywarden unseal\` with M shares: the agent recombines the
  secret in memory, unseals the device with it and wipes it. Staged like a split init (\`init --resume\`,
  \`init --abort\`; an abort given --share-file with a quorum also destroys the root object it made,
  and sets the PIN given at init back if the init had changed it; after the PIN change, resume and
  abort need that quorum).

Examples:
  keywarden init
  keywarden init --root 'pkcs11:token=kw;object=kw-root?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=env:KW_PIN'
  keywarden init --root 'tpm:?auth-file=/run/secrets/kw-auth' --pcrs 7
  keywarden init --store postgres --pg-schema payments --root 'pkcs11:token=kw;object=kw-root?module-path=…&pin-source=env:KW_PIN'
  keywarden init --root 'pkcs11:token=kw;object=kw-root?module-path=…&pin-source=env:KW_PIN' \\
    --pin-shares 5 --pin-threshold 3 --custodian alice.pub … --custodian erin.pub
  keywarden init --root tpm: --auth-shares 3 --auth-threshold 2 --share-dir ./auth-shares
  export ${UNSEAL_KEY_ENV}="$(keywarden init --print-unseal-key)"
  keywarden init --shares 5 --threshold 3 --custodian alice.pub --custodian bob.pub \\
    --custodian carol.pub --custodian dan.pub --custodian erin.pub`,
    )
    .action(async (opts: InitOptions, cmd: Command) => {
      const loc = locationOf(cmd, io);
      const globals = globalsOf(cmd);
      const deviceSplit = deviceSplitOf(opts);
      if (opts.store !== 'postgres' && opts.pgSchema !== undefined) {
        throw new UsageError('--pg-schema goes with --store postgres');
      }
      if (opts.resume || opts.abort) {
        if (
          deviceSplit !== undefined ||
          (opts.resume && opts.abort) ||
          opts.shares !== undefined ||
          opts.threshold !== undefined ||
          (opts.custodian?.length ?? 0) > 0 ||
          opts.shareDir !== undefined ||
          opts.verifyQuorum ||
          (opts.abort &&
            (opts.shareFile?.length ?? 0) > 0 &&
            !(await devicePendingInitOf(loc)) &&
            (await pendingCeremonyOf(loc))?.kind === 'init')
        ) {
          throw new UsageError(
            '--resume takes only --share-file (new shares, the test quorum); --abort takes nothing else; the init keeps the parameters it was started with',
          );
        }
        await resumeOrAbort(io, cmd, opts);
        return;
      }
      if ((opts.shareFile?.length ?? 0) > 0) throw new UsageError('--share-file is for `init --resume`');
      if (opts.pcrs !== undefined && opts.root === undefined) throw new UsageError('--pcrs is for `init --root tpm:…`');
      if (deviceSplit !== undefined && opts.root === undefined) {
        throw new UsageError('--pin-shares/--pin-threshold and --auth-shares/--auth-threshold are for `init --root …`');
      }
      if (opts.store === 'postgres') {
        await initPostgres(io, cmd, opts);
        return;
      }
      if (opts.root !== undefined) {
        refuseSoftwareRootOptions(opts, globals.unsealKeyFile, deviceSplit !== undefined, true);
        if (deviceSplit !== undefined) await initDeviceSplit(io, cmd, opts, deviceSplit);
        else await initDevice(io, cmd, opts.root, opts.pcrs);
        return;
      }
      const split =
        opts.verifyQuorum === true ||
        opts.shares !== undefined ||
        opts.threshold !== undefined ||
        (opts.custodian?.length ?? 0) > 0 ||
        opts.shareDir !== undefined;
      if (split) {
        if (opts.printUnsealKey || globals.unsealKeyFile !== undefined) {
          throw new UsageError(
            '--print-unseal-key and --unseal-key-file are for development mode; a split-knowledge store has no unseal key to print or write',
          );
        }
        await initSplit(io, cmd, opts);
        return;
      }
      const result = await initStoreDir(io, loc, {
        ...hooksOf(io),
        ...(globals.unsealKeyFile !== undefined ? { unsealKeyFile: globals.unsealKeyFile } : {}),
        printUnsealKey: opts.printUnsealKey === true,
      });
      await reportDevelopmentInit(io, result, `Initialized a key store in ${loc.display} (root ${result.rootId}).`);
    });
}

/** `init --store postgres`: development mode, split knowledge or a device root, the store in a PostgreSQL schema. */
async function initPostgres(io: CliIO, cmd: Command, opts: InitOptions): Promise<void> {
  const globals = globalsOf(cmd);
  if (opts.root !== undefined) {
    if (deviceSplitOf(opts) !== undefined) {
      throw new UsageError(
        '--pin-shares/--auth-shares (a device secret split) are offered on a folder of its own, not with --store postgres',
      );
    }
    refuseSoftwareRootOptions(opts, globals.unsealKeyFile, false, false);
    const uri = opts.pcrs !== undefined ? withPcrs(opts.root, opts.pcrs) : opts.root;
    await initDeviceOnPostgres(io, locationOf(cmd, io), {
      uri,
      ...(opts.pgSchema !== undefined ? { pgSchema: opts.pgSchema } : {}),
    });
    return;
  }
  if (opts.verifyQuorum) {
    throw new UsageError(
      '--verify-quorum is not offered with --store postgres; check the shares with `keywarden share inspect`',
    );
  }
  const split =
    opts.shares !== undefined ||
    opts.threshold !== undefined ||
    (opts.custodian?.length ?? 0) > 0 ||
    opts.shareDir !== undefined;
  if (split && (opts.printUnsealKey || globals.unsealKeyFile !== undefined)) {
    throw new UsageError(
      '--print-unseal-key and --unseal-key-file are for development mode; a split-knowledge store has no unseal key to print or write',
    );
  }
  await initOnPostgres(io, locationOf(cmd, io), {
    split,
    ...(opts.pgSchema !== undefined ? { pgSchema: opts.pgSchema } : {}),
    ...(opts.printUnsealKey ? { printUnsealKey: true } : {}),
    ...(globals.unsealKeyFile !== undefined ? { unsealKeyFile: globals.unsealKeyFile } : {}),
    ...(opts.shares !== undefined ? { shares: opts.shares } : {}),
    ...(opts.threshold !== undefined ? { threshold: opts.threshold } : {}),
    ...(opts.custodian !== undefined ? { custodian: opts.custodian } : {}),
    ...(opts.shareDir !== undefined ? { shareDir: opts.shareDir } : {}),
  });
}

/**
 * --root makes a device root: refuse the software root's options with it (an unseal key, --shares,
 * --threshold, --verify-quorum; --custodian and --share-dir unless the device secret is split).
 * `splitOffered`: the message points at splitting the device secret (a folder's own store).
 */
function refuseSoftwareRootOptions(
  opts: InitOptions,
  unsealKeyFile: string | undefined,
  deviceSplit: boolean,
  splitOffered: boolean,
): void {
  if (
    opts.printUnsealKey ||
    unsealKeyFile !== undefined ||
    opts.verifyQuorum ||
    opts.shares !== undefined ||
    opts.threshold !== undefined ||
    (!deviceSplit && ((opts.custodian?.length ?? 0) > 0 || opts.shareDir !== undefined))
  ) {
    throw new UsageError(
      `--root makes a device root: unseal keys and --shares/--threshold are for the software root${splitOffered ? ' (split the device secret with --pin-shares or --auth-shares)' : ''}`,
    );
  }
}

/** `tpm:…` with `pcrs=LIST` added to its attributes (`--pcrs`). */
export function withPcrs(uri: string, pcrs: string): string {
  if (!/^tpm:/i.test(uri)) throw new UsageError('--pcrs is for a TPM root (--root tpm:…)');
  if (!/^(sha256:)?\d{1,2}(,\d{1,2})*$/i.test(pcrs))
    throw new UsageError('--pcrs is a list of PCR indices, e.g. 7 or 7,16');
  const rest = uri.slice(4);
  const q = rest.indexOf('?');
  const attrs = q === -1 ? rest : rest.slice(0, q);
  if (/(^|;)pcrs=/.test(attrs)) throw new UsageError('give the PCRs once: --pcrs or pcrs= in the URI');
  const query = q === -1 ? '' : rest.slice(q);
  return `tpm:${attrs}${attrs ? ';' : ''}pcrs=${pcrs}${query}`;
}

async function initDevice(io: CliIO, cmd: Command, rootUri: string, pcrs: string | undefined): Promise<void> {
  const loc = locationOf(cmd, io);
  const uri = pcrs !== undefined ? withPcrs(rootUri, pcrs) : rootUri;
  const r = await initDeviceStoreDir(io, loc, uri, hooksOf(io));
  const lines = [
    `Initialized a key store in ${loc.display} with a ${r.description.kind} root (root ${r.rootId}).`,
    `Root: ${r.description.label}; wraps with ${r.description.wrapAlgorithm}.`,
    `The root URI is recorded in ${displayPath(r.rootUriPath, io.cwd)}; every command opens the device through it.`,
  ];
  await print(io.stderr, `${lines.join('\n')}\n`);
}

/** --pin-shares/--pin-threshold or --auth-shares/--auth-threshold, when given (never both kinds). */
function deviceSplitOf(opts: InitOptions): { kind: 'pin' | 'auth'; shares?: number; threshold?: number } | undefined {
  const pin = opts.pinShares !== undefined || opts.pinThreshold !== undefined;
  const auth = opts.authShares !== undefined || opts.authThreshold !== undefined;
  if (pin && auth)
    throw new UsageError(
      'give --pin-shares/--pin-threshold (PKCS#11) or --auth-shares/--auth-threshold (TPM), not both',
    );
  if (pin) return { kind: 'pin', shares: opts.pinShares, threshold: opts.pinThreshold };
  if (auth) return { kind: 'auth', shares: opts.authShares, threshold: opts.authThreshold };
  return undefined;
}

async function initDeviceSplit(
  io: CliIO,
  cmd: Command,
  opts: InitOptions,
  split: { kind: 'pin' | 'auth'; shares?: number; threshold?: number },
): Promise<void> {
  const loc = locationOf(cmd, io);
  const rootUri = opts.root as string;
  const uri = opts.pcrs !== undefined ? withPcrs(rootUri, opts.pcrs) : rootUri;
  const scheme = await loadRootBackend(uri);
  if (split.kind === 'pin' && scheme !== 'pkcs11') {
    throw new UsageError(
      '--pin-shares/--pin-threshold split a PKCS#11 user PIN (--root pkcs11:…); a TPM root takes --auth-shares/--auth-threshold',
    );
  }
  if (split.kind === 'auth' && scheme !== 'tpm') {
    throw new UsageError(
      '--auth-shares/--auth-threshold split a TPM auth value (--root tpm:…); a PKCS#11 root takes --pin-shares/--pin-threshold',
    );
  }
  const shares = split.shares ?? DEFAULT_SHARES;
  const threshold = split.threshold ?? Math.min(DEFAULT_THRESHOLD, shares);
  checkShareParameters(shares, threshold);
  const custodians = custodianKeysOf(io, opts.custodian);
  let secret: Uint8Array | undefined;
  if (scheme === 'pkcs11' && !uriNamesSecret(uri)) {
    secret = await rootSecretPrompt(io, 'user PIN (to split)')();
    if (!secret) {
      throw new InvalidInputError(
        'init: splitting the user PIN needs the PIN once: add pin-source=file:/PATH or pin-source=env:NAME to the URI, or run on a terminal to be asked',
      );
    }
  }
  let r: Awaited<ReturnType<typeof initDeviceSplitStoreDir>>;
  try {
    r = await initDeviceSplitStoreDir(loc, {
      ...hooksOf(io),
      uri,
      env: io.env,
      ...(secret ? { secret } : {}),
      shares,
      threshold,
      ...(custodians ? { custodians } : {}),
      destination: destinationOf(io, loc, opts.custodian, opts.shareDir),
    });
  } finally {
    secret?.fill(0);
  }
  const what =
    scheme === 'tpm'
      ? 'a random auth value for the TPM root'
      : 'a new random user PIN, set on the token in place of the one given (which no longer opens it),';
  const lines = [
    `Initialized a key store in ${loc.display} with a ${r.description.kind} root (root ${r.rootId}).`,
    `Root: ${r.description.label}; wraps with ${r.description.wrapAlgorithm}.`,
    `Split knowledge: ${what} was split into ${r.shareSet.shares} shares, any ${r.shareSet.threshold} of which unseal.`,
    ...describeHandOut(r, io),
    `The root URI is recorded without a PIN source in ${displayPath(r.rootUriPath, io.cwd)}.`,
    `The key store starts sealed: run \`keywarden agent\`, then \`keywarden unseal\` with ${r.shareSet.threshold} shares.`,
  ];
  await print(io.stderr, `${lines.join('\n')}\n`);
}

async function initSplit(io: CliIO, cmd: Command, opts: InitOptions): Promise<void> {
  const loc = locationOf(cmd, io);
  const shares = opts.shares ?? DEFAULT_SHARES;
  const threshold = opts.threshold ?? DEFAULT_THRESHOLD;
  checkShareParameters(shares, threshold);
  const custodians = custodianKeysOf(io, opts.custodian);
  const r = await initSplitStoreDir(loc, {
    ...hooksOf(io),
    shares,
    threshold,
    ...(custodians ? { custodians } : {}),
    destination: destinationOf(io, loc, opts.custodian, opts.shareDir),
    ...(opts.verifyQuorum ? { verifyQuorum: true } : {}),
  });
  if (!r.activated) {
    const pendingLines = [
      `Staged a split-knowledge key store in ${loc.display} (root ${r.rootId}); it is PENDING and not usable yet.`,
      ...describeHandOut(r, io),
      `Test quorum: ${r.shareSet.threshold} custodians open their share and run \`keywarden init --resume --share-file FILE …\`;`,
      'that puts the key store in place. `keywarden init --abort` removes it instead.',
    ];
    await print(io.stderr, `${pendingLines.join('\n')}\n`);
    return;
  }
  const lines = [
    `Initialized a split-knowledge key store in ${loc.display} (root ${r.rootId}).`,
    ...describeHandOut(r, io),
    'The unseal key and the root key were never written anywhere in plaintext; no unseal key file exists.',
    `The key store starts sealed: run \`keywarden agent\`, then \`keywarden unseal\` with ${r.shareSet.threshold} shares.`,
  ];
  await print(io.stderr, `${lines.join('\n')}\n`);
}

async function resumeOrAbort(io: CliIO, cmd: Command, opts: InitOptions): Promise<void> {
  const loc = locationOf(cmd, io);
  if (await postgresPendingInitOf(loc)) {
    await resumeOrAbortOnPostgres(io, loc, opts.abort === true);
    return;
  }
  if (await devicePendingInitOf(loc)) {
    await resumeOrAbortDevice(io, loc, opts);
    return;
  }
  if (opts.abort) {
    const notes = await abortSplitInit(loc, hooksOf(io));
    await print(io.stderr, `${[`Removed the unfinished init in ${loc.display}.`, ...notes].join('\n')}\n`);
    return;
  }
  const r = await resumeSplitInit(loc, {
    ...hooksOf(io),
    quorum: quorumOf(io, opts.shareFile),
    testQuorum: (opts.shareFile?.length ?? 0) > 0,
  });
  const lines = [
    r.alreadyActivated
      ? `The init of ${loc.display} had already been completed before it stopped; it is finished now.`
      : `Initialized a split-knowledge key store in ${loc.display} (root ${r.rootId})${r.quorumOf ? ', after a test quorum of its shares' : ''}.`,
    ...describeHandOut(r, io),
    `The key store starts sealed: run \`keywarden agent\`, then \`keywarden unseal\` with ${r.shareSet.threshold} shares.`,
  ];
  await print(io.stderr, `${lines.join('\n')}\n`);
}

/** `init --resume` / `init --abort` of a device init whose PIN / auth value was being split. */
async function resumeOrAbortDevice(io: CliIO, loc: StoreLocation, opts: InitOptions): Promise<void> {
  await loadRootBackend(await folderRootUri(loc));
  const files = opts.shareFile ?? [];
  if (opts.abort) {
    const notes = await abortDeviceInit(loc, {
      ...hooksOf(io),
      env: io.env,
      oldSecret: rootSecretPrompt(io, 'user PIN given at init (to set back)'),
      ...(files.length > 0 ? { quorum: quorumOf(io, files) } : {}),
    });
    await print(io.stderr, `${[`Removed the unfinished init in ${loc.display}.`, ...notes].join('\n')}\n`);
    return;
  }
  const r = await resumeDeviceInit(loc, {
    ...hooksOf(io),
    env: io.env,
    oldSecret: rootSecretPrompt(io, 'user PIN given at init'),
    quorum: quorumOf(io, files),
    testQuorum: files.length > 0,
  });
  const lines = [
    r.alreadyActivated
      ? `The init of ${loc.display} had already been completed before it stopped; it is finished now.`
      : `Initialized a key store in ${loc.display} with a device root${r.quorumOf ? ', after a test quorum of its shares' : ''}.`,
    ...describeHandOut(r, io),
    `The key store starts sealed: run \`keywarden agent\`, then \`keywarden unseal\` with ${r.shareSet.threshold} shares.`,
  ];
  await print(io.stderr, `${lines.join('\n')}\n`);
}
