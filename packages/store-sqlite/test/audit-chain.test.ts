/**
 * One audit chain from several processes (docs/audit.md §4): real processes append to the store's
 * audit log at once; SQLite's write lock (updateMeta, one IMMEDIATE transaction) gives out the
 * chain's head, so the log verifies as one chain with every record of every process, no fork and
 * no gap, under one audit key that the first records agreed on.
 */
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import {
  type AuditRecord,
  Keywarden,
  loadAuditKey,
  readStoreAuditHead,
  readStoreAuditLines,
  SoftwareRoot,
  verifyAuditLog,
} from '@keywarden/core';
import { afterEach, describe, expect, it } from 'vitest';
import { SqliteKeyStore } from '../src/index.js';

const WRITER = fileURLToPath(new URL('./fixtures/audit-writer.mjs', import.meta.url));
const dirs: string[] = [];
afterEach(() => {
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});

function writer(db: string, principal: string, count: number, unsealHex: string): Promise<void> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [WRITER, db, principal, String(count)], { stdio: ['pipe', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stdout.on('data', (c: Buffer) => {
      out += c.toString();
    });
    child.stderr.on('data', (c: Buffer) => {
      err += c.toString();
    });
    const timer = setTimeout(() => child.kill('SIGKILL'), 60_000);
    child.on('exit', (code) => {
      clearTimeout(timer);
      if (code === 0 && out.trim() === 'done') resolve();
      else reject(new Error(`${principal} exited ${code}: ${err}`));
    });
    child.stdin.end(`${unsealHex}\n`);
  });
}

describe('audit chain on SQLite', () => {
  it('four processes appending at once make one chain: no fork, no gap, every record verified', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'kw-audit-chain-'));
    dirs.push(dir);
    const db = join(dir, 'keystore.db');
    const unsealKey = new Uint8Array(randomBytes(32));
    const unsealHex = Buffer.from(unsealKey).toString('hex');
    {
      const store = SqliteKeyStore.open(db);
      const root = await SoftwareRoot.initialize(store, { unsealKey: new Uint8Array(unsealKey) });
      const kw = new Keywarden({ store, root });
      await kw.createKey('orders');
      await kw.close();
      await store.close();
    }
    const writers = ['w1', 'w2', 'w3', 'w4'];
    const count = 30;
    await Promise.all(writers.map((p) => writer(db, p, count, unsealHex)));

    const store = SqliteKeyStore.open(db, { create: false });
    const root = await SoftwareRoot.load(store);
    await root.unseal(unsealKey);
    try {
      const key = await loadAuditKey(store, root, { create: false });
      const lines = await readStoreAuditLines(store, key);
      const head = await readStoreAuditHead(store, key);
      expect(head?.seq).toBe(writers.length * count);
      expect(verifyAuditLog(key, lines, head ? { anchor: head } : {})).toMatchObject({
        ok: true,
        verified: writers.length * count,
      });
      const records = lines.map((l) => JSON.parse(l) as AuditRecord);
      expect(records.map((r) => r.seq)).toEqual(Array.from({ length: writers.length * count }, (_, i) => i + 1));
      for (const p of writers) expect(records.filter((r) => r.principal === p)).toHaveLength(count);
    } finally {
      await root.close();
      await store.close();
    }
  }, 120_000);
});
