/**
 * `keywarden demo`: a narrated tour of the key lifecycle in a temporary key store.
 */
import type { Command } from 'commander';
import { InvalidArgumentError } from 'commander';
import { type DemoRoot, runDemo } from '../demo.js';
import type { CliIO } from '../io.js';

export function registerDemo(program: Command, io: CliIO): void {
  program
    .command('demo')
    .description('walk through the key lifecycle in a temporary key store, explaining what each step protects against')
    .option(
      '--root <device>',
      'run on a device root: pkcs11 (the SoftHSM token harness/softhsm.sh exports) or tpm (the swtpm harness/swtpm.sh exports)',
      (value: string): DemoRoot => {
        if (value === 'pkcs11' || value === 'tpm') return value;
        throw new InvalidArgumentError('must be pkcs11 or tpm');
      },
    )
    .addHelpText(
      'after',
      `
Creates a key store in a temporary directory (your --dir and environment are not used), then:
init a software root, create per-tenant KEKs, envelope-encrypt and decrypt a record, show that a
wrong context, a flipped bit and another tenant's key are refused, generate a data key, stream a
few MiB, rotate a KEK, and close and reopen the store sealed. The directory is removed at the end.
No key material or unseal key is printed.
With --root pkcs11|tpm the root key is made in the device the harness started (eval "$(bash
harness/softhsm.sh start)" or eval "$(bash harness/swtpm.sh start)"), and the last step destroys it.`,
    )
    .action(async (opts: { root?: DemoRoot }) => {
      await runDemo(io, opts.root ? { root: opts.root } : {});
    });
}
