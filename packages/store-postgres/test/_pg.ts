/** Shared by the suites: the harness's PostgreSQL, and a fresh schema per store. */
import { randomBytes } from 'node:crypto';
import pg from 'pg';
import { parse } from 'pg-connection-string';
import { PostgresKeyStore, type PostgresKeyStoreOptions } from '../src/index.js';

/** Why PostgreSQL is unavailable (outside CI only; in CI the global setup fails instead). */
export const unavailable = process.env.KEYWARDEN_PG_UNAVAILABLE;

export function freshSchema(): string {
  return `kw_test_${randomBytes(6).toString('hex')}`;
}

export async function openStore(
  schema = freshSchema(),
  options: PostgresKeyStoreOptions = {},
): Promise<PostgresKeyStore> {
  return PostgresKeyStore.open({ schema, ...options });
}

/** A plain pg client on the harness's database (for inspecting and dropping schemas). */
export async function adminClient(): Promise<pg.Client> {
  const { readFileSync } = await import('node:fs');
  // pg lets a connection string's (absent) password override `password`: pass the parts instead.
  const { password: _none, ...parts } = parse(process.env.KEYWARDEN_PG_URL as string);
  const client = new pg.Client({
    ...(parts as pg.ClientConfig),
    password: readFileSync(process.env.KEYWARDEN_PG_PASSWORD_FILE as string, 'utf8').trim(),
  });
  client.on('error', () => {});
  await client.connect();
  return client;
}

export async function dropSchema(schema: string): Promise<void> {
  const client = await adminClient();
  try {
    await client.query(`DROP SCHEMA IF EXISTS ${pg.escapeIdentifier(schema)} CASCADE`);
  } finally {
    await client.end();
  }
}
