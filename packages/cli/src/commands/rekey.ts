/**
 * `keywarden rekey`: a new share set for a split-knowledge store, from a quorum of the current one
 * (split-store.ts; docs/split-knowledge.md §7).
 */
import type { Command } from 'commander';
import type { CliIO } from '../io.js';
import { print } from '../output.js';
import { describeHandOut, rekeyStoreDir } from '../split-store.js';
import { SHARES_OUT_DIR } from '../store-dir.js';
import { collect, locationOf, positiveInt } from './_common.js';

interface RekeyOptions {
  shares?: number;
  threshold?: number;
  shareFile?: string[];
  custodian?: string[];
  shareDir?: string;
}

export function registerRekey(program: Command, io: CliIO): void {
  program
    .command('rekey')
    .description(
      'replace the share set (N and M may change) with a quorum of the current shares; old shares stop working',
    )
    .option('--shares <n>', 'new number of shares N (default: the current N)', positiveInt)
    .option('--threshold <m>', 'new threshold M, 2..N (default: the current M)', positiveInt)
    .option('--share-file <file>', 'a file holding one CURRENT plaintext share; repeat for a quorum', collect)
    .option('--custodian <pem>', "new custodian i's public key (PEM); repeat once per new share, in order", collect)
    .option(
      '--share-dir <dir>',
      `write the new shares to DIR, one a file (default with --custodian: DIR/${SHARES_OUT_DIR})`,
    )
    .addHelpText(
      'after',
      `
Needs a quorum of the CURRENT shares — from --share-file, else typed at a hidden prompt (a
terminal), else piped one a line — even when an agent is running unsealed: a running process is not
a quorum (separation of duties). The quorum is checked against the sealed root in the key store;
then the root is resealed under a new unseal key from the CSPRNG, split into the new share set, and
the new shares are handed out as by \`keywarden init\` (encrypted to --custodian keys, or plaintext).

The root key does not change: KEKs and data stay as they are, and a running agent stays unsealed.
Once the store is rewritten the old shares no longer open it; an agent that seals or restarts needs
the new shares. If the new shares cannot all be handed out, the rekey is undone.
Old shares still open BACKUPS of the key store taken before the rekey: destroy them.

Example:
  keywarden rekey --shares 3 --threshold 2 --share-file s1.txt --share-file s4.txt --share-file s5.txt \\
    --custodian alice.pub --custodian frank.pub --custodian gina.pub`,
    )
    .action(async (opts: RekeyOptions, cmd: Command) => {
      const loc = locationOf(cmd, io);
      const r = await rekeyStoreDir(io, loc, {
        ...(opts.shares !== undefined ? { shares: opts.shares } : {}),
        ...(opts.threshold !== undefined ? { threshold: opts.threshold } : {}),
        ...(opts.shareFile?.length ? { shareFiles: opts.shareFile } : {}),
        ...(opts.custodian?.length ? { custodianFiles: opts.custodian } : {}),
        ...(opts.shareDir !== undefined ? { shareDir: opts.shareDir } : {}),
      });
      const lines = [
        `Rekeyed the key store in ${loc.display} (root ${r.rootId}, unchanged).`,
        `The previous share set ${r.previous.shareSetId} (${r.previous.threshold} of ${r.previous.shares}) no longer opens it; custodians destroy their old shares.`,
        ...describeHandOut(r, io),
        'A running agent stays unsealed (the root key did not change); after it seals or restarts it needs the new shares.',
      ];
      await print(io.stderr, `${lines.join('\n')}\n`);
    });
}
