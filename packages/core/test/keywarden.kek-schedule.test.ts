/**
 * The KEK cache keeps each cached KEK version's XAES key schedule (an AES-256-ECB context, _xaes.ts)
 * beside its material (issue 11, hot path). Contract: the schedule lives exactly as long as the
 * material — destroyed wherever the material is wiped (eviction, clearCache, seal, close), and
 * never while a call still holds the entry — and wraps made with it are the same suite 0x02 wraps
 * any other instance unwraps. "Never while a call holds the entry" is exercised by
 * keywarden.concurrency.test.ts, whose calls hold entries across awaits while the cache is cleared
 * and sealed: a schedule destroyed under them would throw KeyMaterialError there.
 */
import { randomBytes } from 'node:crypto';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { XaesKeySchedule } from '../src/_xaes.js';
import { Keywarden, MemoryKeyStore, SoftwareRoot, parseWrappedKey, SUITE_DEK_XAES256GCM } from '../src/index.js';

async function setup(maxEntries = 1024) {
  const store = new MemoryKeyStore();
  const unsealKey = new Uint8Array(randomBytes(32));
  const root = await SoftwareRoot.initialize(store, { unsealKey });
  const kw = new Keywarden({ store, root, cache: { maxEntries } });
  return { store, root, unsealKey, kw };
}

const ctx = { tenant: 'acme' };

describe('KEK cache: XAES key schedules live and die with the cached KEK material', () => {
  afterEach(() => vi.restoreAllMocks());

  it('one schedule per cached KEK version, reused by every wrap and unwrap under it', async () => {
    const made = vi.spyOn(XaesKeySchedule.prototype, 'derive');
    const { kw } = await setup();
    await kw.createKey('a');
    const keys = [];
    for (let i = 0; i < 50; i++) keys.push(await kw.generateDataKey('a', ctx));
    for (const k of keys) {
      expect(parseWrappedKey(k.wrapped).suite).toBe(SUITE_DEK_XAES256GCM);
      expect(Buffer.from(await kw.decryptDataKey(k.wrapped, ctx, { key: 'a' }))).toEqual(Buffer.from(k.plaintext));
    }
    expect(made).toHaveBeenCalledTimes(100);
    const schedules = new Set(made.mock.contexts);
    expect(schedules.size).toBe(1);
  });

  it('wraps made with a cached schedule unwrap in another instance (cold cache), and the other way round', async () => {
    const { store, root, kw } = await setup();
    await kw.createKey('a');
    const other = new Keywarden({ store, root });
    const mine = await kw.generateDataKey('a', ctx);
    const theirs = await other.generateDataKey('a', ctx);
    expect(Buffer.from(await other.decryptDataKey(mine.wrapped, ctx, { key: 'a' }))).toEqual(
      Buffer.from(mine.plaintext),
    );
    expect(Buffer.from(await kw.decryptDataKey(theirs.wrapped, ctx, { key: 'a' }))).toEqual(
      Buffer.from(theirs.plaintext),
    );
  });

  it('clearCache(), seal() and close() destroy every schedule; eviction destroys the evicted one', async () => {
    const destroyed = vi.spyOn(XaesKeySchedule.prototype, 'destroy');
    const { kw } = await setup(2);
    for (const name of ['a', 'b', 'c']) {
      await kw.createKey(name);
      await kw.generateDataKey(name, ctx);
    }
    // maxEntries 2: 'a' was evicted when 'c' came in.
    expect(destroyed).toHaveBeenCalledTimes(1);
    kw.clearCache();
    expect(destroyed).toHaveBeenCalledTimes(3);
    for (const s of destroyed.mock.contexts as XaesKeySchedule[]) expect(s.destroyed).toBe(true);
    await kw.generateDataKey('a', ctx);
    await kw.seal();
    expect(destroyed).toHaveBeenCalledTimes(4);
  });
});
