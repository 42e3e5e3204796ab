/**
 * Batches through the built-in file and callback sinks, of falling and rising sizes: every batch
 * reaches every sink as itself — records with ids and detail (made by parsing their line), a
 * record kept by a callback from an earlier batch — and the chain verifies. (Written for a sealer
 * that reused its buffers across batches, since reverted: docs/audit.md §8; it guards any such
 * reuse; the bytes of a batch sealed on the queued path stay in the sealer's buffer while the
 * built-in sinks write them, so these tests guard that too.)
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { type AuditEvent, AuditLog, type AuditRecord, loadAuditKey, verifyAuditLog } from '../../src/audit/index.js';
import { storeAndRoot, tempDir } from './_setup.js';

const cleanups: Array<() => void> = [];
afterEach(() => {
  for (const c of cleanups.splice(0)) c();
});

function event(i: number): AuditEvent {
  // Every third record has ids or detail (its record object is parsed from its line).
  const ev: AuditEvent = {
    op: i % 2 ? 'decrypt' : 'encrypt',
    principal: 'billing',
    keyId: 'kek_x',
    version: 1 + (i % 3),
    outcome: 'ok',
    context: { order: `o-${i}` },
  };
  if (i % 3 === 1) ev.ids = { request: `req-${i}` };
  if (i % 3 === 2) ev.detail = { n: i, tag: `t-${'x'.repeat(i)}` };
  return ev;
}

describe('audit batches sealed in a reused buffer', () => {
  for (const durability of [{ intervalMs: 60_000 }, 'each'] as const) {
    it(`every sink gets each batch as written (${typeof durability === 'string' ? durability : 'interval'})`, async () => {
      const { store, root } = await storeAndRoot();
      const t = tempDir();
      cleanups.push(t.cleanup);
      const file = join(t.dir, 'audit.jsonl');
      const batches: AuditRecord[][] = [];
      const seen: AuditRecord[] = [];
      const log = new AuditLog({
        store,
        root,
        toStore: false,
        file,
        callback: (records) => {
          // Kept as handed over; compared with the file after later batches were sealed.
          batches.push([...records]);
        },
        onRecord: (r) => seen.push(r),
        durability,
      });
      let i = 0;
      for (const size of [7, 2, 1, 9, 1, 3]) {
        const pending: Array<Promise<void> | undefined> = [];
        for (let k = 0; k < size; k++) pending.push(log.record(event(i++)));
        await log.flush();
        await Promise.all(pending);
      }
      await log.close();

      const lines = readFileSync(file, 'utf8')
        .split('\n')
        .filter((l) => l !== '');
      expect(lines).toHaveLength(i);
      const fromFile = lines.map((l) => JSON.parse(l) as AuditRecord);
      const fromCallback = batches.flat();
      expect(fromCallback).toEqual(fromFile);
      expect(fromCallback.map((r) => JSON.stringify(r))).toEqual(lines);
      expect(seen.map((r) => JSON.stringify(r))).toEqual(lines);
      // Each batch holds its own records, none left over from a larger batch before it.
      expect(batches.every((b) => b.length > 0)).toBe(true);
      expect(fromCallback.map((r) => r.seq)).toEqual(Array.from({ length: i }, (_, n) => n + 1));
      expect(fromFile.filter((r) => r.ids !== undefined)).toHaveLength(Math.floor((i + 1) / 3));

      const key = await loadAuditKey(store, root);
      const result = verifyAuditLog(key, lines, { anchor: { seq: i, mac: fromFile[i - 1]?.mac as string } });
      expect(result).toMatchObject({ ok: true, verified: i });
      key.destroy();
    });
  }

  it('a callback that takes its time: batches recorded and flushed meanwhile wait, and are sealed after it (interval)', async () => {
    const { store, root } = await storeAndRoot();
    const t = tempDir();
    cleanups.push(t.cleanup);
    const file = join(t.dir, 'audit.jsonl');
    const batches: AuditRecord[][] = [];
    const log = new AuditLog({
      store,
      root,
      toStore: false,
      file,
      callback: async (records) => {
        batches.push([...records]);
        // Other records are made and flushes requested while this batch is still being written.
        await new Promise((r) => setTimeout(r, 5));
      },
      durability: { intervalMs: 60_000 },
    });
    let i = 0;
    const flushes: Promise<void>[] = [];
    for (const size of [40, 3, 1, 25, 2]) {
      for (let k = 0; k < size; k++) log.record(event(i++));
      flushes.push(log.flush()); // not awaited: the next batch is recorded during this one's callback
      await new Promise((r) => setImmediate(r));
    }
    await Promise.all(flushes);
    await log.close();

    const lines = readFileSync(file, 'utf8')
      .split('\n')
      .filter((l) => l !== '');
    expect(lines).toHaveLength(i);
    expect(batches.flat().map((r) => JSON.stringify(r))).toEqual(lines);
    const key = await loadAuditKey(store, root);
    const last = JSON.parse(lines[i - 1] as string) as AuditRecord;
    expect(verifyAuditLog(key, lines, { anchor: { seq: i, mac: last.mac } })).toMatchObject({ ok: true, verified: i });
    key.destroy();
  });
});
