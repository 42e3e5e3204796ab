/**
 * Durability "each" (docs/audit.md §4): every operation returns only after its record is written,
 * concurrent operations share batches (group commit), and a caller doing one operation at a time
 * does not wait an event-loop turn for company that is not coming.
 */
import { describe, expect, it } from 'vitest';
import type { AuditRecord } from '../../src/audit/record.js';
import { Keywarden } from '../../src/keywarden.js';
import { storeAndRoot } from './_setup.js';

async function audited() {
  const { store, root } = await storeAndRoot();
  const batches: AuditRecord[][] = [];
  const kw = new Keywarden({
    store,
    root,
    principal: 'app',
    audit: { toStore: false, callback: (records) => void batches.push([...records]) },
  });
  await kw.createKey('orders');
  await kw.generateDataKey('orders'); // loads the audit key
  batches.length = 0;
  return { kw, batches };
}

describe('durability "each"', () => {
  it('one operation at a time: its record is written before it returns, within the same event-loop turn', async () => {
    const { kw, batches } = await audited();
    for (let i = 0; i < 5; i++) {
      let turned = false;
      setImmediate(() => {
        turned = true;
      });
      await kw.generateDataKey('orders', { n: String(i) });
      expect(turned, `operation ${i}`).toBe(false);
      expect(batches.flat()).toHaveLength(i + 1);
    }
    await kw.close();
  });

  it('concurrent operations still share batches, and each returns only once its record is written', async () => {
    const { kw, batches } = await audited();
    const seen: number[] = [];
    await Promise.all(
      Array.from({ length: 32 }, async (_, i) => {
        await kw.generateDataKey('orders', { n: String(i) });
        seen.push(batches.flat().length);
      }),
    );
    expect(batches.flat()).toHaveLength(32);
    expect(batches.length).toBeLessThanOrEqual(2);
    // No operation returned before its record (and so every record before it) was written.
    for (const n of seen) expect(n).toBeGreaterThanOrEqual(1);
    expect(Math.min(...seen)).toBe(batches[0]?.length);
    await kw.close();
  });
});
