/**
 * `keywarden demo`: a narrated tour of the key lifecycle in a temporary key store.
 */
import type { Command } from 'commander';
import { runDemo } from '../demo.js';
import type { CliIO } from '../io.js';

export function registerDemo(program: Command, io: CliIO): void {
  program
    .command('demo')
    .description('walk through the key lifecycle in a temporary key store, explaining what each step protects against')
    .addHelpText(
      'after',
      `
Creates a key store in a temporary directory (your --dir and environment are not used), then:
init a software root, create per-tenant KEKs, envelope-encrypt and decrypt a record, show that a
wrong context, a flipped bit and another tenant's key are refused, generate a data key, stream a
few MiB, rotate a KEK, and close and reopen the store sealed. The directory is removed at the end.
No key material or unseal key is printed.`,
    )
    .action(async () => {
      await runDemo(io);
    });
}
