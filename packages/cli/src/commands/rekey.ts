/**
 * `keywarden rekey`: a new share set for a split-knowledge store, from a quorum of the current one
 * (@keywarden/ceremony's rekeyStoreDir; docs/split-knowledge.md §7).
 */
import type { Command } from 'commander';
import {
  abortDeviceRekey,
  abortRekey,
  devicePendingRekeyOf,
  folderDeviceSecretShares,
  type ResumeResult,
  rekeyDeviceSecret,
  rekeyStoreDir,
  resumeDeviceRekey,
  resumeRekey,
  SHARES_OUT_DIR,
  type StoreLocation,
} from '@keywarden/ceremony';
import { CeremonyError } from '@keywarden/core';
import {
  checkShareParameters,
  custodianKeysOf,
  describeHandOut,
  destinationOf,
  hooksOf,
  quorumOf,
} from '../ceremony-io.js';
import { UsageError } from '../errors.js';
import type { CliIO } from '../io.js';
import { print } from '../output.js';
import { folderRootUri, loadRootBackend } from '../store-dir.js';
import { collect, locationOf, positiveInt } from './_common.js';

interface RekeyOptions {
  shares?: number;
  threshold?: number;
  shareFile?: string[];
  custodian?: string[];
  shareDir?: string;
  verifyQuorum?: boolean;
  resume?: boolean;
  abort?: boolean;
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
    .option(
      '--verify-quorum',
      'hand the new shares out but activate them only after a test quorum of them (`rekey --resume` with new shares)',
    )
    .option(
      '--resume',
      'finish a rekey cut short (crash, kill): checks every new share is on disk, then activates; needs a quorum of current or new shares',
    )
    .option('--abort', 'drop a pending rekey and the share files it wrote; the current shares keep working')
    .addHelpText(
      'after',
      `
Needs a quorum of the CURRENT shares — from --share-file, else typed at a hidden prompt (a
terminal), else piped one a line — even when an agent is running unsealed: a running process is not
a quorum (separation of duties). The quorum is checked against the sealed root in the key store;
then the root is resealed under a new unseal key from the CSPRNG, split into the new share set, and
the new shares are handed out as by \`keywarden init\` (encrypted to --custodian keys, or plaintext).

The root key does not change: KEKs and data stay as they are, and a running agent stays unsealed.
Crash safety: the new share set is first recorded in the key store as PENDING, beside the current
one; every new share is then written and fsynced (or printed); only then is the new set activated,
in one store write. Until that instant the current shares keep working, whatever happens to this
process. After a crash, \`keywarden status\` shows the pending rekey:
  keywarden rekey --resume --share-file s1.txt …   activate it, if every new share file is whole
                                                   (a quorum of the current OR of the new shares)
  keywarden rekey --abort                          drop it and the files it wrote
With --verify-quorum the rekey stays pending after the hand-out: custodians open their new shares,
and \`rekey --resume\` with a quorum of NEW shares (a test quorum) activates it. Shares printed on
stdout can only be resumed that way.
Once the new set is active the old shares no longer open the store; an agent that seals or
restarts needs the new shares.
Old shares still open BACKUPS of the key store taken before the rekey: destroy them.

Example:
  keywarden rekey --shares 3 --threshold 2 --share-file s1.txt --share-file s4.txt --share-file s5.txt \\
    --custodian alice.pub --custodian frank.pub --custodian gina.pub`,
    )
    .action(async (opts: RekeyOptions, cmd: Command) => {
      const loc = locationOf(cmd, io);
      if (await folderDeviceSecretShares(loc).catch(() => undefined)) {
        await rekeyDevice(io, loc, opts);
        return;
      }
      if (opts.resume || opts.abort) {
        if (
          (opts.resume && opts.abort) ||
          newShareSetOptionsGiven(opts) ||
          (opts.abort && (opts.shareFile?.length ?? 0) > 0)
        ) {
          throw new UsageError(
            '--resume takes only --share-file (current or new shares); --abort takes nothing else; the ceremony keeps the parameters it was started with',
          );
        }
        if (opts.abort) {
          const { pending, notes } = await abortRekey(loc, hooksOf(io));
          const lines = [
            `Aborted the pending rekey${pending ? ` to share set ${pending.shareSet.shareSetId}` : ''}; the current shares keep working.`,
            ...notes,
          ];
          await print(io.stderr, `${lines.join('\n')}\n`);
          return;
        }
        await printResumed(
          io,
          loc.display,
          await resumeRekey(loc, { ...hooksOf(io), quorum: quorumOf(io, opts.shareFile) }),
        );
        return;
      }
      const custodians = custodianKeysOf(io, opts.custodian);
      const r = await rekeyStoreDir(loc, {
        ...hooksOf(io),
        ...(opts.shares !== undefined ? { shares: opts.shares } : {}),
        ...(opts.threshold !== undefined ? { threshold: opts.threshold } : {}),
        checkParameters: checkShareParameters,
        ...(custodians ? { custodians } : {}),
        destination: destinationOf(io, loc, opts.custodian, opts.shareDir),
        quorum: quorumOf(io, opts.shareFile),
        ...(opts.verifyQuorum ? { verifyQuorum: true } : {}),
      });
      if (!r.activated) {
        const lines = [
          `Staged a rekey of the key store in ${loc.display} (root ${r.rootId}, unchanged); it is PENDING.`,
          `The current share set ${r.previous.shareSetId} (${r.previous.threshold} of ${r.previous.shares}) keeps working until the new one is activated.`,
          ...describeHandOut(r, io),
          `Test quorum: ${r.shareSet.threshold} custodians open their new share and run \`keywarden rekey --resume --share-file FILE …\`;`,
          'that activates the new share set. `keywarden rekey --abort` drops it instead.',
        ];
        await print(io.stderr, `${lines.join('\n')}\n`);
        return;
      }
      const lines = [
        `Rekeyed the key store in ${loc.display} (root ${r.rootId}, unchanged).`,
        `The previous share set ${r.previous.shareSetId} (${r.previous.threshold} of ${r.previous.shares}) no longer opens it; custodians destroy their old shares.`,
        ...describeHandOut(r, io),
        'A running agent stays unsealed (the root key did not change); after it seals or restarts it needs the new shares.',
      ];
      await print(io.stderr, `${lines.join('\n')}\n`);
    });
}

/** Whether options of a new share set were given (a resumed or aborted ceremony keeps the ones it started with). */
function newShareSetOptionsGiven(opts: RekeyOptions): boolean {
  return (
    opts.shares !== undefined ||
    opts.threshold !== undefined ||
    (opts.custodian?.length ?? 0) > 0 ||
    opts.shareDir !== undefined ||
    opts.verifyQuorum === true
  );
}

/** `rekey` of a folder whose device secret (PKCS#11 user PIN) is split (docs/split-knowledge.md §10.2). */
async function rekeyDevice(io: CliIO, loc: StoreLocation, opts: RekeyOptions): Promise<void> {
  const scheme = await loadRootBackend(await folderRootUri(loc));
  const what = scheme === 'tpm' ? 'auth value is set on the TPM root' : 'user PIN is set on the token';
  const device = scheme === 'tpm' ? 'TPM root' : 'token';
  const files = opts.shareFile ?? [];
  if (opts.resume || opts.abort) {
    if ((opts.resume && opts.abort) || newShareSetOptionsGiven(opts)) {
      throw new UsageError(
        '--resume and --abort of a device rekey take only --share-file (NEW shares); the ceremony keeps the parameters it was started with',
      );
    }
    if (!(await devicePendingRekeyOf(loc))) {
      throw new CeremonyError(`rekey: no rekey of the device secret is pending in ${loc.display}`);
    }
    if (opts.abort) {
      const { pending, notes } = await abortDeviceRekey(loc, {
        ...hooksOf(io),
        env: io.env,
        ...(files.length > 0 ? { quorum: quorumOf(io, files) } : {}),
      });
      const lines = [
        `Aborted the pending rekey to share set ${pending.shareSetId}; the ${device} keeps its secret and the current shares keep working.`,
        ...notes,
      ];
      await print(io.stderr, `${lines.join('\n')}\n`);
      return;
    }
    const r = await resumeDeviceRekey(loc, { ...hooksOf(io), env: io.env, quorum: quorumOf(io, files) });
    const lines = [
      r.alreadyActivated
        ? `The rekey of ${loc.display} to share set ${r.shareSet.shareSetId} had already been activated before it stopped; it is finished now.`
        : `Activated the new share set ${r.shareSet.shareSetId} of ${loc.display} (${r.shareSet.threshold} of ${r.shareSet.shares}); the ${device} has the new secret.`,
      `The previous share set ${r.previous.shareSetId} no longer opens the ${device}; custodians destroy their old shares.`,
      ...describeHandOut(r, io),
    ];
    await print(io.stderr, `${lines.join('\n')}\n`);
    return;
  }
  if (opts.verifyQuorum) {
    throw new UsageError(
      '--verify-quorum is not offered for a device rekey: the token changes its PIN in the same run',
    );
  }
  const custodians = custodianKeysOf(io, opts.custodian);
  if (opts.shares !== undefined || opts.threshold !== undefined) {
    const current = await folderDeviceSecretShares(loc);
    const n = opts.shares ?? current?.shares ?? 0;
    checkShareParameters(n, opts.threshold ?? Math.min(current?.threshold ?? 2, n));
  }
  const r = await rekeyDeviceSecret(loc, {
    ...hooksOf(io),
    env: io.env,
    ...(opts.shares !== undefined ? { shares: opts.shares } : {}),
    ...(opts.threshold !== undefined ? { threshold: opts.threshold } : {}),
    ...(custodians ? { custodians } : {}),
    destination: destinationOf(io, loc, opts.custodian, opts.shareDir),
    quorum: quorumOf(io, files),
  });
  const lines = [
    `Rekeyed the device secret of ${loc.display}: a new random ${what} and split into ${r.shareSet.shares} shares, any ${r.shareSet.threshold} of which unseal.`,
    `The previous share set ${r.previous.shareSetId} (${r.previous.threshold} of ${r.previous.shares}) no longer opens the ${device}; custodians destroy their old shares.`,
    ...describeHandOut(r, io),
    'A running agent stays logged in; restart it (then unseal with the new shares) so that it holds the new share set.',
  ];
  await print(io.stderr, `${lines.join('\n')}\n`);
}

async function printResumed(io: CliIO, where: string, r: ResumeResult): Promise<void> {
  if (r.kind !== 'rekey')
    throw new CeremonyError('rekey --resume: the pending ceremony is an init; use `keywarden init --resume`');
  const lines = [
    r.alreadyActivated
      ? `The rekey of ${where} to share set ${r.shareSet.shareSetId} had already been activated before it stopped; it is finished now.`
      : `Activated the new share set ${r.shareSet.shareSetId} of ${where} (${r.shareSet.threshold} of ${r.shareSet.shares}; root ${r.rootId}, unchanged)${r.quorumOf === 'new' ? ', after a test quorum of the new shares' : ''}.`,
  ];
  if (r.previous) {
    lines.push(
      `The previous share set ${r.previous.shareSetId} no longer opens it; custodians destroy their old shares.`,
    );
  }
  lines.push(...describeHandOut(r, io));
  await print(io.stderr, `${lines.join('\n')}\n`);
}
