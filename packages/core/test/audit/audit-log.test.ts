import { createHmac } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { hkdfSha256 } from '../../src/aead.js';
import { AuditError } from '../../src/errors.js';
import {
  AUDIT_KEY_META_NAME,
  AuditKey,
  AuditLog,
  type AuditRecord,
  contextDigest,
  type AuditSink,
  loadAuditKey,
  readStoreAuditHead,
  readStoreAuditLines,
  rewrapAuditKey,
  verifyAuditLog,
} from '../../src/audit/index.js';
import { sealRecordLine } from '../../src/audit/record.js';
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

describe('audit key', () => {
  it('is made once, stored only wrapped by the root, and loads back to the same key', async () => {
    const { store, root } = await storeAndRoot();
    const a = await loadAuditKey(store, root);
    const b = await loadAuditKey(store, root);
    expect(b.kid).toBe(a.kid);
    const stored = Buffer.from((await store.getMeta(AUDIT_KEY_META_NAME)) as Uint8Array).toString('utf8');
    expect(JSON.parse(stored)).toMatchObject({ v: 1, rootId: expect.stringMatching(/^root_/) });
  });

  it('moves to a new root with rewrapAuditKey, and the log still verifies under it', async () => {
    const { store, root } = await storeAndRoot();
    const log = new AuditLog({ store, root });
    await log.record(event(1));
    await log.close();
    const other = await storeAndRoot();
    await expect(loadAuditKey(store, other.root)).rejects.toThrow();
    expect(await rewrapAuditKey(store, root, other.root)).toBe(true);
    const key = await loadAuditKey(store, other.root);
    expect(verifyAuditLog(key, await readStoreAuditLines(store, key)).ok).toBe(true);
    expect(await rewrapAuditKey(other.store, other.root, root)).toBe(false);
  });

  it('cannot be loaded while the root is sealed', async () => {
    const { store, root } = await storeAndRoot();
    await loadAuditKey(store, root);
    await root.seal();
    await expect(loadAuditKey(store, root)).rejects.toThrow();
  });

  it('record MACs are standard HMAC-SHA256 under the HKDF-derived MAC key (RFC 2104, RFC 5869)', () => {
    const material = new Uint8Array(32).map((_, i) => i + 1);
    const key = new AuditKey(material);
    const macKey = hkdfSha256(
      material,
      new TextEncoder().encode('keywarden/audit/v1'),
      new TextEncoder().encode('record-mac'),
      32,
    );
    const expected = createHmac('sha256', macKey).update('keywarden-audit-record-v1\nabc').digest('base64url');
    expect(key.recordMac('abc')).toBe(expected);
    const idKey = hkdfSha256(
      material,
      new TextEncoder().encode('keywarden/audit/v1'),
      new TextEncoder().encode('identifier'),
      32,
    );
    const d = createHmac('sha256', idKey)
      .update('keywarden-audit-id-v1\nalice')
      .digest()
      .subarray(0, 16)
      .toString('base64url');
    expect(key.digest('alice')).toBe(`h:${d}`);
  });
});

describe('record encoding', () => {
  it('the JSONL line of a record with every field verifies, and parses back to the same record', async () => {
    const { store, root } = await storeAndRoot();
    const key = await loadAuditKey(store, root);
    const full = sealRecordLine(
      key,
      {
        op: 'decrypt',
        principal: 'p@x',
        keyId: 'kek_a',
        version: 3,
        outcome: 'error',
        code: 'KW_DECRYPT',
        context: { b: '2', a: 'é"\\' },
        ids: { key: 'orders/main', request: 'r-1' },
        detail: { name: 'orders/main', policyVersion: 2, flag: true },
        at: Date.parse('2026-11-29T10:00:00Z'),
      },
      7,
      'prevmac',
    );
    expect(JSON.parse(full.line)).toEqual(full.record);
    // The context digest (remembered per context) is the keyed digest of its canonical JSON, key order aside.
    expect(full.record.ctx).toBe(contextDigest(key, { a: 'é"\\', b: '2' }));
    expect(
      sealRecordLine(key, { op: 'x', principal: 'p', outcome: 'ok', context: { a: 'é"\\', b: '2' } }, 1, '').record.ctx,
    ).toBe(full.record.ctx);
    expect(verifyAuditLog(key, [full.line], { after: { seq: 6, mac: 'prevmac' } })).toMatchObject({ ok: true });
    const bare = sealRecordLine(key, { op: 'seal', principal: 'agent', outcome: 'ok' }, 1, '');
    expect(verifyAuditLog(key, [bare.line]).ok).toBe(true);
    expect(Object.keys(bare.record).sort()).toEqual([
      'kid',
      'mac',
      'op',
      'outcome',
      'prev',
      'principal',
      'seq',
      'time',
      'v',
    ]);
  });
});

describe('AuditLog', () => {
  it('appends chained records to the store, a JSONL file and a callback, which all verify', async () => {
    const { store, root } = await storeAndRoot();
    const { dir, cleanup } = tempDir();
    cleanups.push(cleanup);
    const file = join(dir, 'audit.jsonl');
    const shipped: AuditRecord[] = [];
    const log = new AuditLog({ store, root, file, callback: (r) => void shipped.push(...r) });
    await Promise.all([0, 1, 2, 3, 4].map((i) => log.record(event(i))));
    await log.record(event(5));
    await log.close();
    const key = await loadAuditKey(store, root);
    const lines = readFileSync(file, 'utf8').trim().split('\n');
    expect(lines).toHaveLength(6);
    expect(verifyAuditLog(key, lines)).toMatchObject({ ok: true, verified: 6 });
    expect(verifyAuditLog(key, await readStoreAuditLines(store, key))).toMatchObject({ ok: true, verified: 6 });
    expect(verifyAuditLog(key, shipped)).toMatchObject({ ok: true, verified: 6 });
    expect(shipped.map((r) => r.seq)).toEqual([1, 2, 3, 4, 5, 6]);
    // The context is a keyed digest, never the value.
    // A whole token: a random MAC or digest (base64url) may hold the letters o-1 (one run in a few hundred).
    expect(lines.join('\n').split(/[^\w-]+/)).not.toContain('o-1');
    expect(shipped[1]?.ctx).toMatch(/^h:/);
  });

  it('continues the chain of an existing log after a reopen', async () => {
    const { store, root } = await storeAndRoot();
    const first = new AuditLog({ store, root });
    await first.record(event(1));
    await first.close();
    const second = new AuditLog({ store, root });
    await second.record(event(2));
    await second.close();
    const key = await loadAuditKey(store, root);
    const lines = await readStoreAuditLines(store, key);
    expect(verifyAuditLog(key, lines, { anchor: await readStoreAuditHead(store, key) })).toMatchObject({
      ok: true,
      verified: 2,
    });
  });

  it('durability "each": record() resolves only once the record is written', async () => {
    const { store, root } = await storeAndRoot();
    const seen: number[] = [];
    const log = new AuditLog({ store, root, toStore: false, callback: (r) => void seen.push(...r.map((x) => x.seq)) });
    await log.record(event(1));
    expect(seen).toEqual([1]);
    await log.close();
  });

  it('interval mode: records are written in batches, and nothing is lost on a clean close', async () => {
    const { store, root } = await storeAndRoot();
    const batches: number[] = [];
    const log = new AuditLog({
      store,
      root,
      toStore: false,
      durability: { intervalMs: 60_000 },
      callback: (r) => void batches.push(r.length),
    });
    for (let i = 0; i < 500; i++) expect(log.record(event(i))).toBeUndefined();
    expect(batches).toEqual([]);
    await log.close();
    expect(batches).toEqual([500]);
  });

  it('fails closed: a record that cannot be written fails its operation and refuses every later one', async () => {
    const { store, root } = await storeAndRoot();
    let broken = false;
    const sink: AuditSink = {
      async write() {
        if (broken) throw new Error('disk full');
      },
    };
    const log = new AuditLog({ store, root, toStore: false, sinks: [sink] });
    await log.record(event(1));
    broken = true;
    await expect(log.record(event(2))).rejects.toBeInstanceOf(AuditError);
    broken = false;
    expect(() => log.record(event(3))).toThrow(AuditError);
    expect(() => log.assertWritable()).toThrow(/could not be written/);
  });

  it('fail open (documented opt-out): the failure is reported, the operation goes on, and the gap is visible', async () => {
    const { store, root } = await storeAndRoot();
    let broken = false;
    const written: AuditRecord[] = [];
    const errors: unknown[] = [];
    const sink: AuditSink = {
      async write(batch) {
        if (broken) throw new Error('disk full');
        written.push(...batch.records);
      },
    };
    const log = new AuditLog({
      store,
      root,
      toStore: false,
      sinks: [sink],
      failClosed: false,
      onError: (e) => errors.push(e),
    });
    await log.record(event(1));
    broken = true;
    await log.record(event(2));
    broken = false;
    await log.record(event(3));
    expect(errors).toHaveLength(1);
    const key = await log.key();
    const result = verifyAuditLog(key, written);
    expect(result.ok).toBe(false);
    expect(result.firstBad).toMatchObject({ seq: 3, line: 2 });
    await log.close();
  });

  it('while the root is sealed records wait (their operations fail), and are written once it is unsealed', async () => {
    const { store, root, unsealKey } = await storeAndRoot();
    await root.seal();
    const seen: AuditRecord[] = [];
    const log = new AuditLog({ store, root, toStore: false, callback: (r) => void seen.push(...r) });
    const err = await Promise.resolve(log.record(event(1))).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(AuditError);
    // The typed cause is named in the one line (a busy or missing device is not a sealed root).
    const cause = (err as AuditError).cause as Error;
    expect((err as AuditError).message).toBe(`audit: the audit key could not be loaded: ${cause.message}`);
    expect((err as AuditError).message).not.toMatch(/[\r\n]/);
    await root.unseal(unsealKey);
    await log.record(event(2));
    expect(seen.map((r) => r.seq)).toEqual([1, 2]);
    await log.close();
  });

  it('refuses options without a sink or a key source', async () => {
    const { store, root } = await storeAndRoot();
    expect(() => new AuditLog({ store, root, toStore: false })).toThrow(/at least one sink/);
    expect(() => new AuditLog({ file: '/tmp/x' })).toThrow(/audit key/);
    expect(() => new AuditLog({ store, root, durability: { intervalMs: 0 } })).toThrow(/durability/);
  });
});

describe('AuditLog under a tight loop', () => {
  it('interval mode writes full batches without waiting for its timer (a loop of awaits never lets it run)', async () => {
    const { store, root } = await storeAndRoot();
    let written = 0;
    const log = new AuditLog({
      store,
      root,
      toStore: false,
      durability: { intervalMs: 60_000 },
      maxBuffered: 3000,
      callback: (r) => {
        written += r.length;
      },
    });
    await log.key();
    // Only microtasks between records: no timer can fire in here.
    for (let i = 0; i < 20_000; i++) {
      log.record(event(i));
      await Promise.resolve();
    }
    expect(written).toBeGreaterThan(15_000);
    await log.close();
    expect(written).toBe(20_000);
  });
});

describe('AuditLog takes the context when the event is handed over', () => {
  it('a caller that reuses and changes its context object after the call changes no record', async () => {
    const { store, root } = await storeAndRoot();
    const seen: AuditRecord[] = [];
    const log = new AuditLog({
      store,
      root,
      toStore: false,
      durability: { intervalMs: 60_000 },
      callback: (r) => void seen.push(...r),
    });
    const context: Record<string, string> = { order: 'o-1' };
    log.record({ op: 'encrypt', principal: 'p', outcome: 'ok', context });
    context.order = 'o-2';
    log.record({ op: 'encrypt', principal: 'p', outcome: 'ok', context });
    await log.close();
    const key = await loadAuditKey(store, root);
    expect(seen.map((r) => r.ctx)).toEqual([
      contextDigest(key, { order: 'o-1' }),
      contextDigest(key, { order: 'o-2' }),
    ]);
  });
});
