/**
 * Several writers, one chain (docs/audit.md §4): audit logs of different Keywarden instances on one
 * key store — each as another process would be, with its own head — append concurrently; the
 * store's lock (updateMeta) gives out the head, so the chain neither forks nor has gaps, and the
 * first records made at once by several writers agree on one audit key.
 */
import { describe, expect, it } from 'vitest';
import { loadAuditKey } from '../../src/audit/audit-key.js';
import { type AuditRecord, verifyAuditLog } from '../../src/audit/record.js';
import { readStoreAuditHead, readStoreAuditLines } from '../../src/audit/sinks.js';
import { Keywarden } from '../../src/keywarden.js';
import { storeAndRoot } from './_setup.js';

describe('several audit logs on one store', () => {
  it('append to one chain: no fork, no gap, every record of every writer present and verified', async () => {
    const { store, root } = await storeAndRoot();
    await new Keywarden({ store, root }).createKey('orders');
    const writers = ['a', 'b', 'c'].map(
      (p, i) =>
        new Keywarden({
          store,
          root,
          principal: `writer-${p}`,
          audit: i === 2 ? { durability: { intervalMs: 1 } } : {},
        }),
    );
    // Interleaved batches of every size: concurrent calls in each writer, all writers at once.
    for (let round = 0; round < 5; round++) {
      await Promise.all(
        writers.flatMap((kw, w) => Array.from({ length: 1 + ((round + w) % 4) }, () => kw.generateDataKey('orders'))),
      );
    }
    await Promise.all(writers.map((kw) => kw.close()));
    const key = await loadAuditKey(store, root, { create: false });
    const lines = await readStoreAuditLines(store, key);
    const head = await readStoreAuditHead(store, key);
    const expected = [0, 1, 2].reduce((n, w) => n + [0, 1, 2, 3, 4].reduce((m, r) => m + 1 + ((r + w) % 4), 0), 0);
    expect(verifyAuditLog(key, lines, head ? { anchor: head } : {})).toMatchObject({ ok: true, verified: expected });
    const records = lines.map((l) => JSON.parse(l) as AuditRecord);
    expect(records.map((r) => r.seq)).toEqual(Array.from({ length: expected }, (_, i) => i + 1));
    expect(new Set(records.map((r) => r.principal))).toEqual(new Set(['writer-a', 'writer-b', 'writer-c']));
  });
});
