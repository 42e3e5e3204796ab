/**
 * The folder's Keywarden with its root unsealed in this process (development mode, or
 * --unseal-key-file): what the audit, policy and principal commands need to read and write the
 * key store's own records. Under split knowledge the root is unsealed in the agent only, and these
 * commands say so (the library functions they call run wherever the root is unsealed) — except the
 * commands that take a quorum themselves (withQuorumOrUnsealed).
 */
import { folderDeviceSecretShares } from '@keywarden/ceremony';
import { type Keywarden, KeystoreSealedError, type SoftwareRoot } from '@keywarden/core';
import { combineHardwareSecret, unsealWithShares } from '@keywarden/split-knowledge';
import type { Command } from 'commander';
import { collectShares } from '../ceremony-io.js';
import { UsageError } from '../errors.js';
import type { CliIO } from '../io.js';
import { resolveUnsealSource, withKeywarden } from '../store-dir.js';
import { globalsOf, locationOf } from './_common.js';

export function withUnsealed<T>(cmd: Command, io: CliIO, fn: (kw: Keywarden) => Promise<T>): Promise<T> {
  const loc = locationOf(cmd, io);
  return withKeywarden(loc, io, { unseal: resolveUnsealSource(io, loc, globalsOf(cmd).unsealKeyFile) }, fn);
}

/** The folder's share set when its software root is sealed by split knowledge (Shamir), else undefined. */
export function splitOf(kw: Keywarden): { shareSetId: string; threshold: number; shares: number } | undefined {
  const u = (
    kw.root as { document?: { unseal?: { method?: string; shareSetId?: string; threshold?: number; shares?: number } } }
  ).document?.unseal;
  if (u?.method !== 'shamir') return undefined;
  return { shareSetId: u.shareSetId as string, threshold: u.threshold as number, shares: u.shares as number };
}

export interface QuorumUse {
  /** The command as the share prompt names it ("audit", "cert issue"). */
  operation: string;
  /** The prompt's title ("Reading the audit log"). */
  title: string;
  /** `--share-file` values (else the shares are piped one a line, or typed at the hidden prompt). */
  shareFiles: readonly string[];
  /** Under split knowledge, run `fn` with the root left sealed (the command only reads public records). */
  sealedSuffices?: boolean;
}

/**
 * withUnsealed, and under split knowledge a quorum of the current shares (checked against the share
 * set before they are combined) unseals the root in this process for this one command; it is
 * sealed again when the folder is closed. `--share-file` on a folder without split knowledge is a
 * usage error.
 */
export async function withQuorumOrUnsealed<T>(
  cmd: Command,
  io: CliIO,
  use: QuorumUse,
  fn: (kw: Keywarden) => Promise<T>,
): Promise<T> {
  const loc = locationOf(cmd, io);
  const device = await folderDeviceSecretShares(loc).catch(() => undefined);
  if (device) {
    // A device root whose PIN / auth value is split: a quorum of its shares (checked against the
    // share set's commitments and the verifier) gives the secret, which unseals the device in this
    // process for this one command; it is logged out again when the folder is closed.
    if (use.sealedSuffices) return withKeywarden(loc, io, {}, fn);
    const rootSecret = async (): Promise<Uint8Array> => {
      const shares = await collectShares(
        io,
        { shareSetId: device.shareSetId, threshold: device.threshold, shares: device.shares, purpose: device.purpose },
        use.shareFiles,
        { operation: use.operation, title: use.title, which: 'current' },
      );
      try {
        return await combineHardwareSecret(shares, {
          shareSetId: device.shareSetId,
          threshold: device.threshold,
          shares: device.shares,
          purpose: device.purpose,
          commitments: device.commitments,
        });
      } finally {
        shares.length = 0;
      }
    };
    return withKeywarden(
      loc,
      io,
      { unseal: resolveUnsealSource(io, loc, globalsOf(cmd).unsealKeyFile), rootSecret },
      async (kw) => {
        if (kw.root.sealable?.isSealed()) {
          throw new KeystoreSealedError(`${use.operation}: the device root is still sealed after the quorum`);
        }
        return fn(kw);
      },
    );
  }
  const split = await withKeywarden(loc, io, {}, async (kw) => splitOf(kw));
  if (!split) {
    if (use.shareFiles.length > 0) throw new UsageError('--share-file is for a key store sealed by split knowledge');
    return withUnsealed(cmd, io, fn);
  }
  if (use.sealedSuffices) return withKeywarden(loc, io, {}, fn);
  return withKeywarden(loc, io, {}, async (kw) => {
    const shares = await collectShares(
      io,
      { shareSetId: split.shareSetId, threshold: split.threshold, shares: split.shares, purpose: 'unseal-key' },
      use.shareFiles,
      { operation: use.operation, title: use.title, which: 'current' },
    );
    try {
      await unsealWithShares(kw.root as SoftwareRoot, shares);
    } finally {
      shares.length = 0;
    }
    return fn(kw);
  });
}
