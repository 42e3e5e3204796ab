/**
 * What `keywarden init` prints after a development-mode init, on a folder's SQLite store or on
 * PostgreSQL: where the unseal key went, and the development-mode warning.
 */
import { displayPath } from '../errors.js';
import type { CliIO } from '../io.js';
import { print } from '../output.js';
import { UNSEAL_KEY_ENV } from '../store-dir.js';

export const DEVELOPMENT_MODE_WARNING = [
  'DEVELOPMENT MODE: the root key is sealed under an unseal key kept in a file or an environment',
  'variable. That protects nothing against someone who can read both the unseal key and the key',
  'store (a backup, a copied disk, a shared volume). Keep the unseal key apart from the store; in',
  'production use split knowledge (keywarden init --shares 5 --threshold 3) or an HSM/TPM root of trust.',
].join('\n');

export interface DevelopmentInitResult {
  unsealKeyPath?: string;
  unsealKeyText?: string;
}

/** `first` (the line naming the store and its root), where the unseal key went, the warning; the key itself on stdout when printed. */
export async function reportDevelopmentInit(io: CliIO, result: DevelopmentInitResult, first: string): Promise<void> {
  const lines = [first];
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
}
