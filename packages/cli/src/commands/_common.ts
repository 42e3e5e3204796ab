/**
 * What every command shares: the global options, the --context option, and the store location.
 */
import { type Command, InvalidArgumentError } from 'commander';
import { type EncryptionContext, KeywardenError, parseContextPairs } from '@keywarden/core';
import { UsageError } from '../errors.js';
import type { CliIO } from '../io.js';
import {
  type KeyServiceOptions,
  resolveAgentSocket,
  resolveStoreLocation,
  type SocketLocation,
  type StoreLocation,
} from '../store-dir.js';

/** Options defined on the program, accepted before or after the command name. */
export interface GlobalOptions {
  dir?: string;
  unsealKeyFile?: string;
  socket?: string;
  debug?: boolean;
}

export function globalsOf(cmd: Command): GlobalOptions {
  return cmd.optsWithGlobals<GlobalOptions>();
}

export function locationOf(cmd: Command, io: CliIO): StoreLocation {
  return resolveStoreLocation(io, globalsOf(cmd).dir);
}

/** What openKeyService needs from the global options (development mode or split knowledge). */
export function keyServiceOptionsOf(cmd: Command): KeyServiceOptions {
  const g = globalsOf(cmd);
  return {
    ...(g.unsealKeyFile !== undefined ? { unsealKeyFile: g.unsealKeyFile } : {}),
    ...(g.socket !== undefined ? { socket: g.socket } : {}),
  };
}

export function socketOf(cmd: Command, io: CliIO, loc: StoreLocation): SocketLocation {
  return resolveAgentSocket(io, loc, globalsOf(cmd).socket);
}

/** A positive integer option value (commander parser). */
export function positiveInt(value: string): number {
  if (!/^[0-9]{1,4}$/.test(value) || Number(value) < 1) {
    throw new InvalidArgumentError('must be a positive integer');
  }
  return Number(value);
}

/** Where a new KEK lives (core's CreateKeyOptions.kekMode). */
export type KekMode = 'memory' | 'root';

export const KEK_MODE_HELP =
  'hsm: the KEK is made and kept in the root device (PKCS#11 token, TPM) and never enters this process; memory: wrapped by the root, unwrapped here and cached (default: hsm when the root can hold KEKs)';

/** `--kek-mode hsm|memory` (commander parser): "hsm" is core's kekMode "root". */
export function kekModeOf(value: string): KekMode {
  if (value === 'hsm' || value === 'root') return 'root';
  if (value === 'memory') return 'memory';
  throw new InvalidArgumentError('must be hsm or memory');
}

/** A repeatable option's collector (no default, so the help shows none). */
export function collect(value: string, previous: string[] | undefined): string[] {
  return [...(previous ?? []), value];
}

/** `-c, --context key=value`, repeatable: the encryption context bound into every wrap and frame. */
export function addContextOption(cmd: Command): Command {
  return cmd.option(
    '-c, --context <key=value>',
    'encryption context pair, repeat for several; the same pairs are needed to decrypt (not secret, not stored in the output)',
    // No default value: commander would print "(default: [])" in the help.
    (value: string, previous: string[] | undefined) => [...(previous ?? []), value],
  );
}

/** Parse the collected pairs; a malformed pair is a usage error. */
export function contextFrom(pairs: readonly string[] | undefined): EncryptionContext | undefined {
  if (!pairs || pairs.length === 0) return undefined;
  try {
    return parseContextPairs(pairs);
  } catch (err) {
    if (KeywardenError.isInstance(err)) throw new UsageError(err.message, { cause: err });
    throw err;
  }
}
