/**
 * `keywarden share decrypt|inspect`: what a custodian does with the encrypted share they were
 * given (docs/split-knowledge.md §3 step 6, §4). Runs on the custodian's own machine and needs no
 * key store; where one is at hand (the host, or a copy), `decrypt` checks the share against the
 * commitment the store recorded for it, and `--commitment` checks it against the value the
 * witness recorded, before the share is written or printed.
 */
import { open } from 'node:fs/promises';
import * as path from 'node:path';
import type { Command } from 'commander';
import { InvalidInputError, KeywardenError, ShareError } from '@keywarden/core';
import {
  decryptShareForCustodian,
  isEncryptedPrivateKeyPem,
  parseShare,
  readEncryptedShareHeaders,
  shareCommitment,
} from '@keywarden/split-knowledge';
import { isTerminal, readHidden, readSmallSecretFile } from '../_prompt.js';
import { displayPath, systemErrorText } from '../errors.js';
import type { CliIO } from '../io.js';
import { formatJson, formatPairs, print } from '../output.js';
import { checkShareAgainstFolder } from '@keywarden/ceremony';
import type { StoreLocation } from '../store-dir.js';
import { locationOf } from './_common.js';

interface DecryptOptions {
  input: string;
  privateKey: string;
  passphraseFile?: string;
  output?: string;
  commitment?: string;
}

export function registerShare(program: Command, io: CliIO): void {
  const share = program
    .command('share')
    .description("a custodian's share: decrypt it with your private key, or inspect its (non-secret) headers")
    .addHelpText(
      'after',
      `
These run on the custodian's own machine and need no key store. Keep the encrypted share and the
private key apart; decrypt only when asked to unseal or rekey.`,
    );

  share
    .command('decrypt')
    .description('decrypt your encrypted share with your private key; prints the plaintext share')
    .requiredOption('-i, --input <file>', 'the encrypted share (-----BEGIN KEYWARDEN ENCRYPTED SHARE-----)')
    .requiredOption('--private-key <pem>', 'your private key (X25519 or RSA, PEM; may be encrypted)')
    .option('--passphrase-file <file>', "the private key's passphrase (else asked for, hidden, on a terminal)")
    .option('-o, --output <file>', 'write the share to FILE (created, mode 0600; never overwritten) instead of stdout')
    .option(
      '--commitment <value>',
      "the share's commitment as the witness recorded it (`keywarden status --json` on the host): checked before output",
    )
    .addHelpText(
      'after',
      `
A share encrypted to someone else's key is refused, naming both fingerprints; a modified file is
refused with "share: decryption failed (…)" and nothing else.
Where a key store is at hand (-d DIR, $KEYWARDEN_DIR or ./.keywarden), the share is checked against
the commitment the store recorded for it (current or pending share set) before it is output: a
share made by someone else with the custodian's public key and identical headers is refused
("… is not the share this key store handed out …"). Without a store, --commitment does the same
against the value the witness recorded at the ceremony. The plaintext share is the one output
of this command: give it only to \`keywarden unseal\` or \`keywarden rekey\` (for example with
--share-file FILE), then delete FILE.

Example:
  keywarden share decrypt -i share-2-of-5.kwshare --private-key custodian.key -o share-2.txt`,
    )
    .action(async (opts: DecryptOptions, cmd: Command) => {
      const loc = locationOf(cmd, io);
      const inputPath = path.resolve(io.cwd, opts.input);
      const keyPath = path.resolve(io.cwd, opts.privateKey);
      // An encrypted share may be readable by others (that is its point); the private key may not.
      const armored = await readSmallSecretFile(
        inputPath,
        displayPath(inputPath, io.cwd),
        io.stderr,
        'encrypted share',
        false,
      );
      const pem = await readSmallSecretFile(keyPath, displayPath(keyPath, io.cwd), io.stderr, 'private key');
      let passphrase: string | undefined;
      if (opts.passphraseFile !== undefined) {
        const p = path.resolve(io.cwd, opts.passphraseFile);
        passphrase = (await readSmallSecretFile(p, displayPath(p, io.cwd), io.stderr, 'passphrase file')).replace(
          /\r?\n$/,
          '',
        );
      } else if (isEncryptedPrivateKeyPem(pem) && isTerminal(io.stdin)) {
        passphrase = await readHidden(
          io.stdin,
          io.stderr,
          `Passphrase for ${displayPath(keyPath, io.cwd)} (input hidden): `,
          { signal: io.signal },
        );
      }
      let text: string;
      try {
        text = decryptShareForCustodian(armored, pem, passphrase === undefined ? {} : { passphrase });
      } catch (err) {
        if (KeywardenError.isInstance(err) && /the private key is encrypted; give its passphrase/.test(err.message)) {
          throw new InvalidInputError(`${err.message} (--passphrase-file FILE, or run this in a terminal)`, {
            cause: err,
          });
        }
        throw err;
      }
      const parsed = parseShare(text);
      let label = `share ${parsed.index} of ${parsed.shares} of share set ${parsed.shareSetId} (any ${parsed.threshold} unseal)`;
      try {
        label += await verifyShare(loc, parsed, opts.commitment);
      } finally {
        parsed.wipe();
      }
      if (opts.output === undefined) {
        await print(io.stdout, `${text}\n`);
        await print(
          io.stderr,
          `Decrypted ${label}. Keep it offline; give it only to \`keywarden unseal\` or \`keywarden rekey\`.\n`,
        );
        return;
      }
      const out = path.resolve(io.cwd, opts.output);
      const shown = displayPath(out, io.cwd);
      let fh: Awaited<ReturnType<typeof open>>;
      try {
        fh = await open(out, 'wx', 0o600);
      } catch (err) {
        throw new InvalidInputError(
          (err as NodeJS.ErrnoException).code === 'EEXIST'
            ? `${shown} already exists; refusing to overwrite it`
            : `cannot create ${shown}: ${systemErrorText(err)}`,
          { cause: err },
        );
      }
      try {
        await fh.chmod(0o600);
        await fh.writeFile(`${text}\n`, 'utf8');
        await fh.sync();
      } finally {
        await fh.close();
      }
      await print(
        io.stderr,
        `Decrypted ${label} to ${shown} (mode 0600). Delete it once it has been given to \`keywarden unseal\` or \`keywarden rekey\`.\n`,
      );
    });

  share
    .command('inspect')
    .description('show the non-secret headers of a share file: share set, index, threshold, recipient')
    .requiredOption('-i, --input <file>', 'an encrypted share, or a plaintext share')
    .option('--json', 'print JSON')
    .addHelpText(
      'after',
      `
For an encrypted share: the headers (unverified until it is decrypted; all of them are
authenticated then). Check that Recipient is your own key's fingerprint and Share-Set the id the
witness recorded. For a plaintext share: its labels (never its secret part).`,
    )
    .action(async (opts: { input: string; json?: boolean }) => {
      const p = path.resolve(io.cwd, opts.input);
      const text = await readSmallSecretFile(p, displayPath(p, io.cwd), io.stderr, 'share file', false);
      if (text.includes('-----BEGIN KEYWARDEN ENCRYPTED SHARE-----')) {
        const h = readEncryptedShareHeaders(text);
        if (opts.json) {
          await print(io.stdout, formatJson({ encrypted: true, ...h }));
          return;
        }
        await print(
          io.stdout,
          formatPairs([
            ['type', `encrypted share, version ${h.version}`],
            ['algorithm', h.algorithm],
            ['purpose', h.purpose],
            ['share set', h.shareSetId],
            ['index', `${h.index} of ${h.shares}`],
            ['threshold', String(h.threshold)],
            ['recipient', h.recipient],
          ]),
        );
        return;
      }
      if (!text.trimStart().startsWith('kwshare')) throw new ShareError('share: not a Keywarden share');
      const s = parseShare(text);
      const fields = {
        purpose: s.purpose,
        shareSetId: s.shareSetId,
        index: s.index,
        shares: s.shares,
        threshold: s.threshold,
      };
      s.wipe();
      if (opts.json) {
        await print(io.stdout, formatJson({ encrypted: false, ...fields }));
        return;
      }
      await print(
        io.stdout,
        formatPairs([
          ['type', 'plaintext share (keep it offline)'],
          ['purpose', fields.purpose],
          ['share set', fields.shareSetId],
          ['index', `${fields.index} of ${fields.shares}`],
          ['threshold', String(fields.threshold)],
        ]),
      );
    });
}

/**
 * Check a decrypted share before it is output: against --commitment, and against the key store at
 * `loc` when there is one (or the staged store of an init waiting for its test quorum). Returns
 * what was checked, for the message; throws a ShareError when the share is not the one handed out.
 */
async function verifyShare(
  loc: StoreLocation,
  share: ReturnType<typeof parseShare>,
  commitment: string | undefined,
): Promise<string> {
  const notes: string[] = [];
  if (commitment !== undefined) {
    if (shareCommitment(share) !== commitment.trim()) {
      throw new ShareError(
        `share: share ${share.index} of share set ${share.shareSetId} does not match the commitment given (--commitment): it is not the share the ceremony handed out; it was not output`,
      );
    }
    notes.push('matches the commitment given');
  }
  const r = await checkShareAgainstFolder(loc, share);
  if (r) {
    notes.push(
      r.set === 'unknown'
        ? `not checked against the key store in ${loc.display}, whose share set is ${r.storeShareSetId}`
        : r.committed
          ? `matches the commitment recorded in the key store in ${loc.display}${r.set === 'pending' ? ' (pending share set)' : ''}`
          : `belongs to the key store in ${loc.display} (which records no commitments: sealed before them)`,
    );
  }
  return notes.length > 0 ? `; ${notes.join('; ')}` : '';
}
