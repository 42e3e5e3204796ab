/**
 * What every command shares: the global options, the --context option, and the store location.
 */
import type { Command } from 'commander';
import { type EncryptionContext, KeywardenError, parseContextPairs } from '@keywarden/core';
import { UsageError } from '../errors.js';
import type { CliIO } from '../io.js';
import { resolveStoreLocation, resolveUnsealSource, type StoreLocation, type UnsealSource } from '../store-dir.js';

/** Options defined on the program, accepted before or after the command name. */
export interface GlobalOptions {
  dir?: string;
  unsealKeyFile?: string;
  debug?: boolean;
}

export function globalsOf(cmd: Command): GlobalOptions {
  return cmd.optsWithGlobals<GlobalOptions>();
}

export function locationOf(cmd: Command, io: CliIO): StoreLocation {
  return resolveStoreLocation(io, globalsOf(cmd).dir);
}

export function unsealSourceOf(cmd: Command, io: CliIO, loc: StoreLocation): UnsealSource {
  return resolveUnsealSource(io, loc, globalsOf(cmd).unsealKeyFile);
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
