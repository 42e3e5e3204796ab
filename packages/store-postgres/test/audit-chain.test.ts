/**
 * One audit chain across many instances (issue 13; docs/audit.md §4): real processes append to the
 * PostgreSQL store's audit log at once. Each append reads the chain's head, seals its batch on it and
 * writes the next segment and the new head in one transaction under an advisory lock on the head
 * (updateMeta), so the log verifies — with the same functions `keywarden audit verify` uses — as
 * one chain holding every record of every process: no fork, no gap, one audit key.
 */
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
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
import { afterAll, describe, expect, it } from 'vitest';
import { dropSchema, freshSchema, openStore, unavailable } from './_pg.js';

const WRITER = fileURLToPath(new URL('./_audit-writer.mjs', import.meta.url));
const schemas: string[] = [];
afterAll(async () => {
  for (const s of schemas) await dropSchema(s);
});

function writer(schema: string, principal: string, count: number, unsealHex: string): Promise<void> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [WRITER, schema, principal, String(count)], {
      stdio: ['pipe', 'pipe', 'pipe'],
      env: process.env,
    });
    let out = '';
    let err = '';
    child.stdout.on('data', (c: Buffer) => {
      out += c.toString();
    });
    child.stderr.on('data', (c: Buffer) => {
      err += c.toString();
    });
    const timer = setTimeout(() => child.kill('SIGKILL'), 90_000);
    child.on('exit', (code) => {
      clearTimeout(timer);
      if (code === 0 && out.trim() === 'done') resolve();
      else reject(new Error(`${principal} exited ${code}: ${err}`));
    });
    child.stdin.end(`${unsealHex}\n`);
  });
}

describe.skipIf(unavailable !== undefined)('audit chain on PostgreSQL', () => {
  it('four processes appending at once make one chain: no fork, no gap, every record verified', async () => {
    const schema = freshSchema();
    schemas.push(schema);
    const unsealKey = new Uint8Array(randomBytes(32));
    {
      const store = await openStore(schema);
      const root = await SoftwareRoot.initialize(store, { unsealKey: new Uint8Array(unsealKey) });
      const kw = new Keywarden({ store, root, ownsStore: true, ownsRoot: true });
      await kw.createKey('orders');
      await kw.close();
    }
    const writers = ['w1', 'w2', 'w3', 'w4'];
    const count = 30;
    const hex = Buffer.from(unsealKey).toString('hex');
    await Promise.all(writers.map((p) => writer(schema, p, count, hex)));

    const store = await openStore(schema);
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
      // Tampering is still named on PostgreSQL: a record edited inside a segment.
      const edited = [...lines];
      edited[41] = (edited[41] as string).replace('"principal":"', '"principal":"x');
      expect(verifyAuditLog(key, edited, head ? { anchor: head } : {})).toMatchObject({
        ok: false,
        verified: 41,
        firstBad: { line: 42, seq: 42 },
      });
    } finally {
      await root.close();
      await store.close();
    }
  }, 150_000);
});
