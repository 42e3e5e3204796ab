/**
 * The terminal side of the ceremonies (@keywarden/ceremony runs them; this file only supplies what
 * they ask for and says what happened): custodian keys read from files, quorums from share files,
 * the hidden prompt or stdin, shares printed on stdout, the test step hook, and the agent told to
 * seal after a root rotation or destruction.
 *
 * Hand-out, one of:
 *  - encrypted to custodians (`--custodian PEM`, one per share, in order): DIR/share-<i>-of-<N>.kwshare,
 *    DIR = --share-dir or D/shares-out (0700), files 0600 — the operator never sees a share;
 *  - plaintext files (`--share-dir DIR`, no custodians): DIR/share-<i>-of-<N>.txt, 0600;
 *  - plaintext on stdout, each share once, labelled (no custodians, no --share-dir): the library's
 *    callback destination, recorded as "printed on a terminal".
 *
 * Tests only: with KEYWARDEN_TEST_STEP_HOOK set, each step boundary the library reports (`onStep`)
 * is announced on stderr (`announce`), ends the process with SIGKILL (`kill:<step>`) or waits for a
 * file to exist (`wait:<step>@<file>`); unset,
 * there is no hook.
 */
import { existsSync, writeSync } from 'node:fs';
import * as path from 'node:path';
import {
  type CeremonyHooks,
  type CustodianKey,
  type CustodianKeys,
  checkShareParameters as checkParameters,
  type HandOutResult,
  type QuorumRequest,
  type QuorumSource,
  type ShareDestination,
  SHARES_OUT_DIR,
  type StoreLocation,
} from '@keywarden/ceremony';
import { InvalidInputError, KeywardenError, ShareError } from '@keywarden/core';
import { type ShareSetInfo, UnsealSession } from '@keywarden/split-knowledge';
import { AgentClient, isAgentUnavailable } from '@keywarden/agent';
import { isTerminal, readHidden, readShareFile, readSharesFromStream, readSmallSecretFile } from './_prompt.js';
import { displayPath, UsageError } from './errors.js';
import type { CliIO } from './io.js';
import { print } from './output.js';
import { readUnsealKey, resolveAgentSocket, resolveUnsealSource, type SocketLocation } from './store-dir.js';

/** Test-only: announce or SIGKILL at step boundaries (see the file comment). Inert when unset. */
export const TEST_STEP_HOOK_ENV = 'KEYWARDEN_TEST_STEP_HOOK';

/** The library's hooks for a command: the test step hook, notices on stderr, the working directory. */
export function hooksOf(io: CliIO): Required<Pick<CeremonyHooks, 'cwd' | 'onNotice'>> & CeremonyHooks {
  const hook = io.env[TEST_STEP_HOOK_ENV];
  const parts = hook ? hook.split(',') : [];
  return {
    cwd: io.cwd,
    onNotice: (message: string) => {
      io.stderr.write(`${message}\n`);
    },
    ...(parts.length > 0
      ? {
          onStep: (name: string) => {
            if (parts.includes('announce')) writeSync(2, `keywarden-test-step: ${name}\n`);
            if (parts.includes(`kill:${name}`)) process.kill(process.pid, 'SIGKILL');
            // `wait:<step>@<file>`: hold at the step until FILE exists (at most 30 s), so a test can
            // line up two processes at the same step (concurrent rekeys).
            for (const p of parts) {
              const at = p.indexOf('@');
              if (!p.startsWith('wait:') || at === -1 || p.slice(5, at) !== name) continue;
              const until = Date.now() + 30_000;
              const cell = new Int32Array(new SharedArrayBuffer(4));
              while (!existsSync(p.slice(at + 1)) && Date.now() < until) Atomics.wait(cell, 0, 0, 10);
            }
          },
        }
      : {}),
  };
}

/** N and M checked by the library's rules; a refusal is a usage error (exit 2). */
export function checkShareParameters(shares: number, threshold: number): void {
  try {
    checkParameters(shares, threshold);
  } catch (err) {
    if (KeywardenError.isInstance(err)) throw new UsageError(err.message, { cause: err });
    throw err;
  }
}

/**
 * The custodians' public keys from `--custodian` files, read once N is known: exactly one per share
 * (else a usage error), each file read as a small public file (no permission warning).
 */
export function custodianKeysOf(io: CliIO, files: readonly string[] | undefined): CustodianKeys | undefined {
  if (!files || files.length === 0) return undefined;
  return async (shares: number): Promise<CustodianKey[]> => {
    if (files.length !== shares) {
      throw new UsageError(
        `${files.length} --custodian keys for ${shares} shares; give exactly one public key per share, in share order`,
      );
    }
    const out: CustodianKey[] = [];
    for (const file of files) {
      const p = path.resolve(io.cwd, file);
      const display = displayPath(p, io.cwd);
      out.push({ pem: await readSmallSecretFile(p, display, io.stderr, 'custodian key', false), display });
    }
    return out;
  };
}

export const PLAINTEXT_SHARES_WARNING = [
  'The shares are printed below in plaintext, so whoever runs this sees every one of them.',
  "Encrypting each share to its custodian's public key (--custodian PEM, one per share) is",
  'preferable: then nobody but the custodian ever sees a share.',
].join('\n');

/**
 * Where the shares go: files in --share-dir (or D/shares-out with custodians), else printed on
 * stdout, each share once, after a warning on stderr.
 */
export function destinationOf(
  io: CliIO,
  loc: StoreLocation,
  custodianFiles: readonly string[] | undefined,
  shareDir: string | undefined,
): ShareDestination {
  if ((custodianFiles?.length ?? 0) > 0 || shareDir !== undefined) {
    return {
      kind: 'files',
      dir: shareDir !== undefined ? path.resolve(io.cwd, shareDir) : path.join(loc.dir, SHARES_OUT_DIR),
    };
  }
  return {
    kind: 'callback',
    describedAs: 'printed on a terminal',
    deliver: async ({ index, text, shareSet }) => {
      if (index === 1) await print(io.stderr, `${PLAINTEXT_SHARES_WARNING}\n\n`);
      await print(
        io.stdout,
        `share ${index} of ${shareSet.shares} (share set ${shareSet.shareSetId}, any ${shareSet.threshold} unseal) — hand to custodian ${index}, then clear your screen and scrollback:\n${text}\n\n`,
      );
    },
  };
}

/** A quorum for the library: from --share-file files, else the hidden prompt, else stdin. */
export function quorumOf(io: CliIO, files: readonly string[] | undefined): QuorumSource {
  return (request) => collectShares(io, request.shareSet, files ?? [], request);
}

/** Who asks for a quorum, in the prompts and messages of collectShares. */
type QuorumPrompt = Pick<QuorumRequest, 'operation' | 'title'> & { which?: QuorumRequest['which'] };

/**
 * A quorum of shares: from files; else from the hidden prompt, where each share is checked as it
 * is typed (a mistyped one is reported and asked again); else from stdin, one a line.
 */
export async function collectShares(
  io: CliIO,
  current: ShareSetInfo,
  files: readonly string[],
  request: QuorumPrompt,
): Promise<string[]> {
  if (files.length > 0) {
    const out: string[] = [];
    for (const f of files) out.push(await readShareFile(f, io.cwd, io.stderr));
    return out;
  }
  if (!isTerminal(io.stdin)) {
    const lines = await readSharesFromStream(io.stdin);
    if (lines.length === 0) {
      throw new InvalidInputError(
        `${request.operation} needs ${current.threshold} ${request.which ?? 'current'} shares${request.which === 'new' ? ` (share set ${current.shareSetId})` : ''}: pass --share-file, pipe them one a line, or run it in a terminal`,
      );
    }
    return lines;
  }
  const session = new UnsealSession({ expected: current });
  const texts: string[] = [];
  try {
    await print(
      io.stderr,
      `${request.title} of share set ${current.shareSetId}: ${current.threshold} custodians type their ${request.which ?? 'current'} share (nothing is echoed).\n`,
    );
    while (texts.length < current.threshold) {
      const text = await readHidden(
        io.stdin,
        io.stderr,
        `${request.which === 'new' ? 'New' : 'Current'} share (${texts.length + 1} of ${current.threshold}, input hidden): `,
        { signal: io.signal },
      );
      if (text === undefined) {
        throw new InvalidInputError(
          `${request.operation}: ${texts.length} of ${current.threshold} ${request.which ?? 'current'} shares given; nothing was changed`,
        );
      }
      if (text.trim() === '') continue;
      try {
        session.submit(text);
        texts.push(text);
      } catch (err) {
        if (!ShareError.isInstance(err)) throw err;
        await print(io.stderr, `keywarden: ${err.message}\n`);
      }
    }
    return texts;
  } finally {
    session.reset();
  }
}

/** Describe the hand-out for the operator (stderr): where each share went, and what comes next. */
export function describeHandOut(r: HandOutResult, io: Pick<CliIO, 'cwd'>): string[] {
  const lines: string[] = [];
  const set = r.shareSet;
  lines.push(`Share set ${set.shareSetId}: ${set.shares} shares, any ${set.threshold} of them unseal the root.`);
  if (r.mode === 'encrypted-files' && r.custodians) {
    lines.push(`Encrypted shares written to ${displayPath(r.dir as string, io.cwd)} (mode 0600):`);
    for (const [i, f] of r.files.entries()) {
      const c = r.custodians[i];
      if (!c) continue;
      lines.push(`  ${path.basename(f)}  for custodian ${c.index}: ${c.display} (${c.fingerprint})`);
    }
    lines.push(
      'Give each file to its custodian once, then delete it from this host. Each custodian checks the',
      'Recipient fingerprint and opens theirs on their own machine:',
      `  keywarden share decrypt -i ${path.basename(r.files[0] as string)} --private-key custodian.key`,
    );
  } else if (r.mode === 'plaintext-files') {
    lines.push(`Plaintext shares written to ${displayPath(r.dir as string, io.cwd)} (mode 0600), one a file:`);
    for (const f of r.files) lines.push(`  ${path.basename(f)}`);
    lines.push('Give each file to its custodian once, then delete it from this host.');
  }
  return lines;
}

// ── Root rotation and destruction ──────────────────────────────────────────────────────────────

export interface RootCommandOptions {
  /** Files holding current plaintext shares (split knowledge). */
  shareFiles?: readonly string[];
  /** --unseal-key-file (development mode). */
  unsealKeyFile?: string;
  /** --socket: the agent to seal afterwards (split knowledge). */
  socket?: string;
}

/**
 * The consent a root rotation or destruction asks for: a quorum (split knowledge; an explicit
 * --unseal-key-file is then a usage error) or the unseal key (development mode; --share-file is
 * then a usage error).
 */
export function rootConsentOf(io: CliIO, loc: StoreLocation, options: RootCommandOptions, command: string) {
  return {
    quorum: async (request: QuorumRequest): Promise<string[]> => {
      // Refuses an explicit --unseal-key-file: a split-knowledge store has no unseal key to give.
      resolveUnsealSource(io, loc, options.unsealKeyFile, { method: 'shamir' });
      return collectShares(io, request.shareSet, options.shareFiles ?? [], request);
    },
    unsealKey: async (): Promise<Uint8Array> => {
      if (options.shareFiles?.length) {
        throw new UsageError(
          `--share-file does not apply: this key store is in development mode (${command} uses its unseal key, from $KEYWARDEN_UNSEAL_KEY or the unseal key file)`,
        );
      }
      return readUnsealKey(resolveUnsealSource(io, loc, options.unsealKeyFile, { method: 'key' }), io);
    },
  };
}

/** What became of a running agent after the operation. */
export type AgentOutcome =
  | { state: 'sealed'; socket: SocketLocation }
  | { state: 'none'; socket: SocketLocation }
  | { state: 'unreachable'; socket: SocketLocation; reason: string }
  /** Development mode: there is never an agent. */
  | { state: 'not-applicable' };

/**
 * Tell the agent on the store's socket, if one runs, to seal: it still holds the old root (and
 * cached KEKs) unsealed. On seal it reloads the root from the store — the new one after a
 * rotation, none after a destruction.
 */
export async function sealAgent(
  io: CliIO,
  loc: StoreLocation,
  socketOption: string | undefined,
): Promise<AgentOutcome> {
  const socket = resolveAgentSocket(io, loc, socketOption);
  let client: AgentClient;
  try {
    client = await AgentClient.connect(socket, { connectTimeoutMs: 2000, requestTimeoutMs: 10_000 });
  } catch (err) {
    if (isAgentUnavailable(err)) return { state: 'none', socket };
    return { state: 'unreachable', socket, reason: reasonOf(err) };
  }
  try {
    await client.seal();
    return { state: 'sealed', socket };
  } catch (err) {
    return { state: 'unreachable', socket, reason: reasonOf(err) };
  } finally {
    await client.close();
  }
}

function reasonOf(err: unknown): string {
  return err instanceof Error ? err.message : 'unknown error';
}

/** For the command: the one-line refusal without the confirmation flag. */
export function destroyNeedsConfirmation(): UsageError {
  return new UsageError(
    'root destroy makes every key in this store, and all data encrypted under them, unrecoverable for good; pass --yes-destroy-every-key to confirm',
  );
}
