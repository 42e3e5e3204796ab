/**
 * SqliteKeyStore.swapMeta: a compare-and-swap on one meta record, in one IMMEDIATE transaction, so
 * that of two connections (two processes) swapping from the same value exactly one wins — what
 * keeps two concurrent rekeys of one store from both winning (split-knowledge, issue 10).
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { KeywardenError } from '@keywarden/core';
import { afterAll, describe, expect, it } from 'vitest';
import { SqliteKeyStore } from '../src/index.js';

const dir = mkdtempSync(path.join(tmpdir(), 'kw-swap-meta-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const code = (p: Promise<unknown>) =>
  p.then(
    () => 'ok',
    (e: unknown) => (KeywardenError.isInstance(e) ? e.code : String(e)),
  );

describe('SqliteKeyStore.swapMeta', () => {
  it('two connections swap from the same value: exactly one wins, the other gets KW_CONFLICT and changes nothing', async () => {
    const file = path.join(dir, 'a.db');
    const a = SqliteKeyStore.open(file);
    const b = SqliteKeyStore.open(file, { create: false });
    try {
      const v0 = Uint8Array.of(0);
      await a.swapMeta('root', null, v0);
      const results = await Promise.all([
        code(a.swapMeta('root', v0, Uint8Array.of(1))),
        code(b.swapMeta('root', v0, Uint8Array.of(2))),
      ]);
      expect([...results].sort()).toEqual(['KW_CONFLICT', 'ok']);
      const winner = results[0] === 'ok' ? 1 : 2;
      expect(await b.getMeta('root')).toEqual(Uint8Array.of(winner));
      expect(await code(b.swapMeta('root', null, v0))).toBe('KW_CONFLICT');
      await b.swapMeta('root', Uint8Array.of(winner), null);
      expect(await a.getMeta('root')).toBeUndefined();
      expect(await code(a.swapMeta('root', v0, null))).toBe('KW_CONFLICT');
    } finally {
      await a.close();
      await b.close();
    }
  });

  it('a read-only store refuses it', async () => {
    const file = path.join(dir, 'b.db');
    await SqliteKeyStore.open(file).close();
    const ro = SqliteKeyStore.open(file, { readonly: true });
    try {
      expect(await code(ro.swapMeta('m', null, Uint8Array.of(1)))).not.toBe('ok');
    } finally {
      await ro.close();
    }
  });
});
