/**
 * `keywarden init`: a new key store and software root, in development mode.
 */
import type { Command } from 'commander';
import { displayPath } from '../errors.js';
import type { CliIO } from '../io.js';
import { print } from '../output.js';
import { initStoreDir, UNSEAL_KEY_ENV } from '../store-dir.js';
import { globalsOf, locationOf } from './_common.js';

export const DEVELOPMENT_MODE_WARNING = [
  'DEVELOPMENT MODE: the root key is sealed under an unseal key kept in a file or an environment',
  'variable. That protects nothing against someone who can read both the unseal key and the key',
  'store (a backup, a copied disk, a shared volume). Keep the unseal key apart from the store; in',
  'production use split knowledge (Shamir shares, coming) or an HSM/TPM root of trust.',
].join('\n');

export function registerInit(program: Command, io: CliIO): void {
  program
    .command('init')
    .description('create a key store and a software root of trust (development mode)')
    .option(
      '--print-unseal-key',
      `print the unseal key to stdout once and write no file (for a secret manager → ${UNSEAL_KEY_ENV})`,
    )
    .addHelpText(
      'after',
      `
Creates DIR (mode 0700) with DIR/keystore.db, and writes a new 32-byte unseal key in text form to
DIR/unseal.key, or to --unseal-key-file PATH (mode 0600). Refuses when DIR already has a key store
or the unseal key file already exists.

${DEVELOPMENT_MODE_WARNING}

Examples:
  keywarden init
  keywarden init --dir /srv/app/.keywarden --unseal-key-file /run/secrets/keywarden.key
  export ${UNSEAL_KEY_ENV}="$(keywarden init --print-unseal-key)"`,
    )
    .action(async (opts: { printUnsealKey?: boolean }, cmd: Command) => {
      const loc = locationOf(cmd, io);
      const globals = globalsOf(cmd);
      const result = await initStoreDir(io, loc, {
        ...(globals.unsealKeyFile !== undefined ? { unsealKeyFile: globals.unsealKeyFile } : {}),
        printUnsealKey: opts.printUnsealKey === true,
      });
      const lines = [`Initialized a key store in ${loc.display} (root ${result.rootId}).`];
      if (result.unsealKeyPath !== undefined) {
        lines.push(`Unseal key written to ${displayPath(result.unsealKeyPath, io.cwd)} (mode 0600).`);
      } else {
        lines.push(
          `Unseal key printed to standard output. It is shown this once and stored nowhere: put it in your secret manager and provide it as ${UNSEAL_KEY_ENV}.`,
        );
      }
      if (io.env[UNSEAL_KEY_ENV]) {
        lines.push(`Note: ${UNSEAL_KEY_ENV} is set in this environment and takes precedence over any unseal key file.`);
      }
      await print(io.stderr, `${lines.join('\n')}\n\n${DEVELOPMENT_MODE_WARNING}\n`);
      if (result.unsealKeyText !== undefined) await print(io.stdout, `${result.unsealKeyText}\n`);
    });
}
