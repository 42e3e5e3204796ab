/**
 * Durability "each" writes a record within record() when nothing else is in flight or being
 * written and every sink is a built-in file or callback sink (audit-log.ts #flushNow). That path
 * must keep every guarantee of the queued one: fail closed (the operation and every later one
 * refused), fail open (reported, the gap visible), a callback's promise awaited, records made from
 * inside a callback written in a later batch, one chain across both paths, and the file durable.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { AuditError } from '../../src/errors.js';
import { AuditLog, type AuditRecord, contextDigest, loadAuditKey, verifyAuditLog } from '../../src/audit/index.js';
import { storeAndRoot, tempDir } from './_setup.js';

const cleanups: Array<() => void> = [];
afterEach(() => {
  for (const c of cleanups.splice(0)) c();
});

function event(i: number) {
  return {
    op: 'decrypt',
    principal: 'billing',
    keyId: 'kek_x',
    version: 1,
    outcome: 'ok' as const,
    context: { order: `o-${i}` },
  };
}

/** An operation's record as Keywarden's guard makes it: announced with begin(), recorded as begun. */
function op(log: AuditLog, i: number): Promise<void> | undefined {
  log.begin();
  return log.record(event(i), true);
}

describe('durability "each", written within record()', () => {
  it('file and callback: written before record() returns, one chain with the queued path, verifies', async () => {
    const { store, root } = await storeAndRoot();
    const t = tempDir();
    cleanups.push(t.cleanup);
    const file = join(t.dir, 'audit.jsonl');
    const shipped: AuditRecord[] = [];
    const log = new AuditLog({ store, root, toStore: false, file, callback: (r) => void shipped.push(...r) });
    // The first record loads the key (queued path); the others are written within record().
    await op(log, 0);
    for (let i = 1; i <= 5; i++) {
      const written = op(log, i);
      expect(written).toBeUndefined();
      expect(shipped.at(-1)?.seq).toBe(i + 1);
      expect(readFileSync(file, 'utf8').trim().split('\n')).toHaveLength(i + 1);
    }
    // A record not announced (an application's own) still takes the queued path, on the same chain.
    await log.record(event(6));
    await op(log, 7);
    await log.close();
    const lines = readFileSync(file, 'utf8').trim().split('\n');
    // close() wipes the key it loaded: verify under the stored audit key, loaded again.
    const key = await loadAuditKey(store, root);
    expect(verifyAuditLog(key, lines)).toMatchObject({ ok: true, verified: 8 });
    expect(shipped.map((r) => JSON.stringify(r))).toEqual(lines);
  });

  it('fails closed: a callback that throws fails the operation and refuses every later one', async () => {
    const { store, root } = await storeAndRoot();
    let broken = false;
    const log = new AuditLog({
      store,
      root,
      toStore: false,
      callback: () => {
        if (broken) throw new Error('logger down');
      },
    });
    await op(log, 1);
    broken = true;
    await expect(op(log, 2)).rejects.toBeInstanceOf(AuditError);
    broken = false;
    expect(() => op(log, 3)).toThrow(AuditError);
  });

  it("fails closed on a callback's rejected promise, and waits for it before the next batch", async () => {
    const { store, root } = await storeAndRoot();
    let release: (() => void) | undefined;
    let reject = false;
    const batches: number[][] = [];
    const log = new AuditLog({
      store,
      root,
      toStore: false,
      callback: async (r) => {
        batches.push(r.map((x) => x.seq));
        if (batches.length === 2) await new Promise<void>((resolve) => (release = resolve));
        if (reject) throw new Error('logger down');
      },
    });
    await op(log, 1);
    const second = op(log, 2);
    expect(second).toBeInstanceOf(Promise);
    let settled = false;
    void second?.then(() => (settled = true));
    // While the callback has not finished, the next record waits (queued behind it).
    const third = op(log, 3);
    await new Promise((r) => setTimeout(r, 20));
    expect(settled).toBe(false);
    expect(batches).toEqual([[1], [2]]);
    release?.();
    await second;
    await third;
    expect(batches).toEqual([[1], [2], [3]]);
    reject = true;
    await expect(op(log, 4)).rejects.toBeInstanceOf(AuditError);
    expect(() => log.assertWritable()).toThrow(/could not be written/);
  });

  it('fail open: the failure is reported, the operation goes on, and the gap is visible', async () => {
    const { store, root } = await storeAndRoot();
    let broken = false;
    const written: AuditRecord[] = [];
    const errors: unknown[] = [];
    const log = new AuditLog({
      store,
      root,
      toStore: false,
      failClosed: false,
      onError: (e) => errors.push(e),
      callback: (r) => {
        if (broken) throw new Error('logger down');
        written.push(...r);
      },
    });
    await op(log, 1);
    broken = true;
    expect(op(log, 2)).toBeUndefined();
    broken = false;
    expect(op(log, 3)).toBeUndefined();
    expect(errors).toHaveLength(1);
    expect(errors[0]).toBeInstanceOf(AuditError);
    const result = verifyAuditLog(await log.key(), written);
    expect(result.firstBad).toMatchObject({ seq: 3, line: 2 });
    await log.close();
  });

  it('a record made from inside a callback is written in a later batch, after the one being written', async () => {
    const { store, root } = await storeAndRoot();
    const batches: number[][] = [];
    let inner: Promise<void> | undefined;
    const log: AuditLog = new AuditLog({
      store,
      root,
      toStore: false,
      callback: (r) => {
        batches.push(r.map((x) => x.seq));
        if (batches.length === 2) inner = log.record(event(99));
      },
    });
    await op(log, 1);
    expect(op(log, 2)).toBeUndefined();
    expect(inner).toBeInstanceOf(Promise);
    await inner;
    expect(batches).toEqual([[1], [2], [3]]);
    await log.close();
  });
});

describe('the context cache', () => {
  it('a reused context object whose own key was deleted, with the same key inherited, is digested anew', async () => {
    const { store, root } = await storeAndRoot();
    const seen: AuditRecord[] = [];
    const log = new AuditLog({ store, root, toStore: false, callback: (r) => void seen.push(...r) });
    const ctx = Object.create({ order: 'o-1' }) as Record<string, string>;
    ctx.order = 'o-1';
    const ev = () => ({ op: 'decrypt', principal: 'billing', outcome: 'ok' as const, context: ctx });
    await log.record(ev());
    await log.record(ev());
    delete ctx.order;
    await log.record(ev());
    ctx.order = 'o-1';
    await log.record(ev());
    const key = await log.key();
    expect(seen.map((r) => r.ctx)).toEqual([
      contextDigest(key, { order: 'o-1' }),
      contextDigest(key, { order: 'o-1' }),
      undefined,
      contextDigest(key, { order: 'o-1' }),
    ]);
    await log.close();
  });
});
