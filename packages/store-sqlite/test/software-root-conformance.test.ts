/**
 * The root conformance suite (@keywarden/testkit) on the software root whose store is a SQLite
 * file: its key pairs (sealed-key-pairs.ts in core) are records in this store, so the key-pair
 * part runs here against real SQLite too. inspectPrivateKey also searches the database file and
 * its WAL for the private key in clear.
 */
import { randomBytes } from 'node:crypto';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { SoftwareRoot } from '@keywarden/core';
import { describeRootConformance, inspectSoftwareKeyPair } from '@keywarden/testkit';
import { SqliteKeyStore } from '../src/index.js';

describeRootConformance('SoftwareRoot on a SqliteKeyStore file', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'kw-sqlite-root-'));
  const file = join(dir, 'keys.db');
  const store = SqliteKeyStore.open(file);
  const secret = new Uint8Array(randomBytes(32));
  const root = await SoftwareRoot.initialize(store, { unsealKey: Uint8Array.from(secret) });
  const rawBytes = () => Buffer.concat([file, `${file}-wal`].filter((f) => existsSync(f)).map((f) => readFileSync(f)));
  return {
    root,
    store,
    secret,
    reopen: () => SoftwareRoot.load(store),
    inspectPrivateKey: (h: Uint8Array) => inspectSoftwareKeyPair(root, store, secret, h, rawBytes),
    cleanup: async () => rmSync(dir, { recursive: true, force: true }),
  };
});
