/**
 * The options that choose a key store in PostgreSQL, shared by `keywarden agent --store postgres`
 * and `keywarden init --store postgres`. The connection and its password are never options: they
 * come from $KEYWARDEN_PG_URL and $KEYWARDEN_PG_PASSWORD_FILE (else libpq's PG* variables) only,
 * and are never logged (docs/fleet.md).
 */
import { InvalidArgumentError } from 'commander';
import { DEFAULT_PG_SCHEMA } from '@keywarden/ceremony';

export type StoreKind = 'folder' | 'postgres';

/** `--store folder|postgres`. */
export function storeKind(value: string): StoreKind {
  if (value !== 'folder' && value !== 'postgres') throw new InvalidArgumentError('must be folder or postgres');
  return value;
}

/** `--pg-schema NAME`: a lower-case SQL identifier, as the store takes it. */
export function pgSchema(value: string): string {
  if (!/^[a-z_][a-z0-9_]{0,62}$/.test(value)) {
    throw new InvalidArgumentError('must be a PostgreSQL schema name: a-z, 0-9 and _, not starting with a digit');
  }
  return value;
}

export const PG_SCHEMA_HELP = `with --store postgres: the schema holding the store (default ${DEFAULT_PG_SCHEMA})`;
