/**
 * The guard reads the KEK id and version a wrapped key names for its audit record without the
 * strict parse when the header up to the version is the one it read last (guard.ts
 * noteWrappedKey): the records must still name exactly the KEK version each call used, and a
 * wrapped key the strict parse refuses must be refused and recorded as before.
 */
import { describe, expect, it } from 'vitest';
import { type AuditRecord, Keywarden, parseWrappedKey } from '../../src/index.js';
import { storeAndRoot } from './_setup.js';

describe('data-key records name the KEK version of each wrapped key', () => {
  it('alternating keys and versions, then headers that only look alike', async () => {
    const { store, root } = await storeAndRoot();
    const records: AuditRecord[] = [];
    const kw = new Keywarden({ store, root, principal: 'app', audit: { callback: (r) => void records.push(...r) } });
    const a = await kw.createKey('orders/a');
    const b = await kw.createKey('orders/b');
    const a1 = await kw.generateDataKey('orders/a');
    await kw.rotateKey('orders/a');
    const a2 = await kw.generateDataKey('orders/a');
    const b1 = await kw.generateDataKey('orders/b');
    records.length = 0;
    const order = [a1, a1, a2, a1, b1, b1, a2, a2];
    for (const dk of order) await kw.decryptDataKey(dk.wrapped, undefined, { anyKeyInStore: true });
    expect(records.map((r) => [r.op, r.outcome, r.key, r.version])).toEqual(
      order.map((dk) => ['decrypt-data-key', 'ok', dk.keyId, dk.version]),
    );
    expect(order.map((dk) => dk.keyId)).toContain(a.id);
    expect(order.map((dk) => dk.keyId)).toContain(b.id);

    // The same header with version 0, and one byte shorter: refused by the strict parse, recorded
    // without a key (as a wrapped key that never parsed).
    const at = parseWrappedKey(a2.wrapped).header.length - 4;
    const zero = a2.wrapped.slice();
    zero.fill(0, at, at + 4);
    const short = a2.wrapped.slice(0, -1);
    // The same length and header with another id byte: parsed, under a key that does not exist.
    const other = a2.wrapped.slice();
    other[6] = (other[6] as number) ^ 1;
    records.length = 0;
    for (const w of [zero, short]) {
      await expect(kw.decryptDataKey(w, undefined, { anyKeyInStore: true })).rejects.toMatchObject({
        code: 'KW_FORMAT',
      });
    }
    await expect(kw.decryptDataKey(other, undefined, { anyKeyInStore: true })).rejects.toThrow();
    await kw.decryptDataKey(a2.wrapped, undefined, { anyKeyInStore: true });
    await kw.close();
    expect(records.map((r) => [r.outcome, r.key, r.version])).toEqual([
      ['error', undefined, undefined],
      ['error', undefined, undefined],
      ['error', parseWrappedKey(other).keyId, a2.version],
      ['ok', a2.keyId, a2.version],
    ]);
    expect(parseWrappedKey(other).keyId).not.toBe(a2.keyId);
  });
});
