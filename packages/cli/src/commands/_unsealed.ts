/**
 * The folder's Keywarden with its root unsealed in this process (development mode, or
 * --unseal-key-file): what the audit, policy and principal commands need to read and write the
 * key store's own records. Under split knowledge the root is unsealed in the agent only, and these
 * commands say so (the library functions they call run wherever the root is unsealed).
 */
import type { Keywarden } from '@keywarden/core';
import type { Command } from 'commander';
import type { CliIO } from '../io.js';
import { resolveUnsealSource, withKeywarden } from '../store-dir.js';
import { globalsOf, locationOf } from './_common.js';

export function withUnsealed<T>(cmd: Command, io: CliIO, fn: (kw: Keywarden) => Promise<T>): Promise<T> {
  const loc = locationOf(cmd, io);
  return withKeywarden(loc, io, { unseal: resolveUnsealSource(io, loc, globalsOf(cmd).unsealKeyFile) }, fn);
}
