/**
 * The opt-in data-key cache (data-key-cache.ts, issue 11). Contracts, each a describe block below:
 *  - single flight: N concurrent misses for one (key, context) make ONE data key; for one wrapped
 *    key, ONE unwrap;
 *  - bounds: a data key serves at most maxMessages messages, maxBytes bytes, for maxAgeMs;
 *  - keying: a different key, context (canonical encoding) or expected key never hits;
 *  - wiping: clear(), seal(), close() and a seal behind the cache's back wipe every cached key,
 *    and never a buffer a caller holds;
 *  - key changes: a lifecycle change made through the wrapped Keywarden drops that key's data keys.
 * Everything runs against a real Keywarden (MemoryKeyStore, SoftwareRoot); the counting provider
 * below only forwards to it and counts calls.
 */
import { randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { cachedSecretsForTests } from '../src/data-key-cache.js';
import {
  ClosedError,
  type DataKey,
  DataKeyCache,
  type DataKeyCacheOptions,
  DecryptionError,
  type EncryptionContext,
  type KeyExpectation,
  KeyCompromisedError,
  KeyDestroyedError,
  KeystoreSealedError,
  Keywarden,
  MemoryKeyStore,
  type RandomSource,
  SoftwareRoot,
  UnexpectedKeyError,
  decryptEnvelope,
  inspectEnvelope,
} from '../src/index.js';

/** A random source that answers only after the event loop has turned, so concurrent misses really
 * overlap (as with an HSM's C_GenerateRandom). */
const slowRandom: RandomSource = {
  async randomBytes(length: number) {
    await new Promise((r) => setImmediate(r));
    return new Uint8Array(randomBytes(length));
  },
};

async function setup(options: Partial<DataKeyCacheOptions> = {}) {
  const store = new MemoryKeyStore();
  const unsealKey = new Uint8Array(randomBytes(32));
  const root = await SoftwareRoot.initialize(store, { unsealKey });
  const kw = new Keywarden({ store, root, random: slowRandom });
  await kw.createKey('orders');
  await kw.createKey('billing');
  const calls = { generate: 0, decrypt: 0 };
  // Forwards to the real Keywarden and counts; seal/close/root are the Keywarden's own.
  const counting = {
    root: kw.root,
    generateDataKey(key: string, context?: EncryptionContext): Promise<DataKey> {
      calls.generate++;
      return kw.generateDataKey(key, context);
    },
    decryptDataKey(wrapped: Uint8Array, context: EncryptionContext | undefined, expected: KeyExpectation) {
      calls.decrypt++;
      return kw.decryptDataKey(wrapped, context, expected);
    },
    seal: () => kw.seal(),
    close: () => kw.close(),
    get closed() {
      return kw.closed;
    },
  };
  let clock = 1_000_000;
  const cache = new DataKeyCache(counting, { maxAgeMs: 60_000, now: () => clock, ...options });
  return { kw, root, unsealKey, cache, calls, tick: (ms: number) => (clock += ms) };
}

const ctx = { tenant: 'acme', purpose: 'orders' };
const hex = (b: Uint8Array) => Buffer.from(b).toString('hex');
const isZero = (b: Uint8Array) => b.every((x) => x === 0);

describe('single flight: N concurrent misses for one (key, context) make ONE data key', () => {
  it('1,000 concurrent callers of a cold cache get one data key from exactly one underlying generateDataKey', async () => {
    const { kw, cache, calls } = await setup();
    const keys = await Promise.all(Array.from({ length: 1000 }, () => cache.generateDataKey('orders', ctx)));
    expect(calls.generate).toBe(1);
    expect(cache.stats.dataKeysGenerated).toBe(1);
    expect(new Set(keys.map((k) => hex(k.wrapped))).size).toBe(1);
    expect(new Set(keys.map((k) => hex(k.plaintext))).size).toBe(1);
    // Every caller has a buffer of its own: wiping one wipes no other.
    expect(new Set(keys.map((k) => k.plaintext.buffer)).size).toBe(1000);
    keys[0]?.plaintext.fill(0);
    expect(isZero(keys[1]?.plaintext as Uint8Array)).toBe(false);
    // The key is a real data key of the Keywarden's.
    const unwrapped = await kw.decryptDataKey(keys[1]?.wrapped as Uint8Array, ctx, { key: 'orders' });
    expect(hex(unwrapped)).toBe(hex(keys[1]?.plaintext as Uint8Array));
  });

  it('1,000 concurrent envelope encryptions make one data key, and a plain Keywarden decrypts every envelope', async () => {
    const { kw, cache, calls } = await setup();
    const plaintexts = Array.from({ length: 1000 }, (_, i) => new TextEncoder().encode(`order ${i}`));
    const envelopes = await Promise.all(plaintexts.map((p) => cache.encrypt(p, { key: 'orders', context: ctx })));
    expect(calls.generate).toBe(1);
    // Same data key, but each message its own id, body key and ciphertext.
    expect(new Set(envelopes.map((e) => hex(e))).size).toBe(1000);
    for (const [i, e] of envelopes.entries()) {
      expect(await decryptEnvelope(kw, e, { key: 'orders', context: ctx })).toEqual(plaintexts[i]);
    }
  });

  it('a failed generation fails every caller that joined it, and is not cached', async () => {
    const { cache, calls } = await setup();
    const results = await Promise.allSettled(
      Array.from({ length: 50 }, () => cache.generateDataKey('no-such-key', ctx)),
    );
    expect(calls.generate).toBe(1);
    expect(results.every((r) => r.status === 'rejected')).toBe(true);
    await expect(cache.generateDataKey('no-such-key', ctx)).rejects.toThrow();
    expect(calls.generate).toBe(2);
  });

  it('1,000 concurrent decryptions of one wrapped key do exactly one underlying unwrap', async () => {
    const { kw, cache, calls } = await setup();
    const dk = await kw.generateDataKey('orders', ctx);
    const deks = await Promise.all(
      Array.from({ length: 1000 }, () => cache.decryptDataKey(dk.wrapped, ctx, { key: 'orders' })),
    );
    expect(calls.decrypt).toBe(1);
    expect(deks.every((d) => hex(d) === hex(dk.plaintext))).toBe(true);
    expect(new Set(deks.map((d) => d.buffer)).size).toBe(1000);
  });
});

describe('bounds: a cached data key serves at most maxMessages messages, maxBytes bytes, for maxAgeMs', () => {
  it('maxMessages: 7 messages with maxMessages 3 use 3 data keys (3 + 3 + 1)', async () => {
    const { cache, calls } = await setup({ maxMessages: 3 });
    const wrapped: string[] = [];
    for (let i = 0; i < 7; i++) wrapped.push(hex((await cache.generateDataKey('orders', ctx)).wrapped));
    expect(calls.generate).toBe(3);
    expect(wrapped.slice(0, 3).every((w) => w === wrapped[0])).toBe(true);
    expect(wrapped.slice(3, 6).every((w) => w === wrapped[3])).toBe(true);
    expect(new Set(wrapped).size).toBe(3);
  });

  it('maxMessages under concurrency: 1,000 concurrent callers with maxMessages 100 make exactly 10 data keys', async () => {
    const { cache, calls } = await setup({ maxMessages: 100 });
    const keys = await Promise.all(Array.from({ length: 1000 }, () => cache.generateDataKey('orders', ctx)));
    expect(calls.generate).toBe(10);
    const uses = new Map<string, number>();
    for (const k of keys) uses.set(hex(k.wrapped), (uses.get(hex(k.wrapped)) ?? 0) + 1);
    expect([...uses.values()]).toEqual(Array(10).fill(100));
  });

  it('maxAgeMs: a data key older than maxAgeMs is not used again, and is wiped', async () => {
    const { cache, calls, tick } = await setup({ maxAgeMs: 1000 });
    const a = await cache.generateDataKey('orders', ctx);
    tick(999);
    expect(hex((await cache.generateDataKey('orders', ctx)).wrapped)).toBe(hex(a.wrapped));
    const [held] = cache[cachedSecretsForTests]();
    tick(1);
    const b = await cache.generateDataKey('orders', ctx);
    expect(hex(b.wrapped)).not.toBe(hex(a.wrapped));
    expect(calls.generate).toBe(2);
    expect(isZero(held as Uint8Array)).toBe(true);
    expect(isZero(a.plaintext)).toBe(false); // the caller's copy is the caller's
  });

  it('maxAgeMs bounds the decrypt side too', async () => {
    const { kw, cache, calls, tick } = await setup({ maxAgeMs: 1000 });
    const dk = await kw.generateDataKey('orders', ctx);
    await cache.decryptDataKey(dk.wrapped, ctx, { key: 'orders' });
    tick(999);
    await cache.decryptDataKey(dk.wrapped, ctx, { key: 'orders' });
    expect(calls.decrypt).toBe(1);
    tick(1);
    await cache.decryptDataKey(dk.wrapped, ctx, { key: 'orders' });
    expect(calls.decrypt).toBe(2);
  });

  it('maxBytes: messages are charged by length; a message that would pass the bound gets the next data key', async () => {
    const { cache, calls } = await setup({ maxBytes: 100 });
    const e1 = await cache.encrypt(new Uint8Array(60), { key: 'orders', context: ctx });
    const e2 = await cache.encrypt(new Uint8Array(40), { key: 'orders', context: ctx });
    expect(calls.generate).toBe(1); // 60 + 40 = 100: within the bound
    const e3 = await cache.encrypt(new Uint8Array(1), { key: 'orders', context: ctx });
    expect(calls.generate).toBe(2);
    const wrappedOf = (e: Uint8Array) => hex(e.subarray(8, 8 + ((e[6] as number) << 8) + (e[7] as number)));
    expect(wrappedOf(e1)).toBe(wrappedOf(e2));
    expect(wrappedOf(e3)).not.toBe(wrappedOf(e1));
  });

  it('maxBytes: one message larger than maxBytes, or of unknown length, gets a data key of its own, never cached', async () => {
    const { cache, calls } = await setup({ maxBytes: 100 });
    const big1 = await cache.generateDataKey('orders', ctx, { plaintextBytes: 101 });
    const big2 = await cache.generateDataKey('orders', ctx, { plaintextBytes: 101 });
    const unknown1 = await cache.generateDataKey('orders', ctx);
    const unknown2 = await cache.generateDataKey('orders', ctx);
    expect(calls.generate).toBe(4);
    expect(new Set([big1, big2, unknown1, unknown2].map((k) => hex(k.wrapped))).size).toBe(4);
    expect(cache.stats.encryptBypasses).toBe(4);
    expect(cache[cachedSecretsForTests]()).toHaveLength(0);
  });

  it('maxEntries: the least recently used (key, context) is evicted and wiped', async () => {
    const { cache, calls } = await setup({ maxEntries: 2 });
    await cache.generateDataKey('orders', { n: '1' });
    const [first] = cache[cachedSecretsForTests]();
    await cache.generateDataKey('orders', { n: '2' });
    await cache.generateDataKey('orders', { n: '3' });
    expect(cache[cachedSecretsForTests]()).toHaveLength(2);
    expect(isZero(first as Uint8Array)).toBe(true);
    await cache.generateDataKey('orders', { n: '1' });
    expect(calls.generate).toBe(4);
  });

  it('options are checked: maxAgeMs is required, every bound positive', async () => {
    const { kw } = await setup();
    expect(() => new DataKeyCache(kw, {} as DataKeyCacheOptions)).toThrow(/maxAgeMs/);
    expect(() => new DataKeyCache(kw, { maxAgeMs: 0 })).toThrow(/maxAgeMs/);
    expect(() => new DataKeyCache(kw, { maxAgeMs: 1000, maxMessages: 0 })).toThrow(/maxMessages/);
    expect(() => new DataKeyCache(kw, { maxAgeMs: 1000, maxBytes: 0 })).toThrow(/maxBytes/);
    expect(() => new DataKeyCache(kw, { maxAgeMs: 1000, maxEntries: 1.5 })).toThrow(/maxEntries/);
  });
});

describe('keying: a different key, context or expected key never hits', () => {
  it('a different context gets a different data key; the same context in another key order is the same context', async () => {
    const { cache, calls } = await setup();
    const a = await cache.generateDataKey('orders', { tenant: 'acme', purpose: 'orders' });
    const b = await cache.generateDataKey('orders', { tenant: 'acme', purpose: 'refunds' });
    const c = await cache.generateDataKey('orders', { tenant: 'acme' });
    const d = await cache.generateDataKey('orders');
    expect(new Set([a, b, c, d].map((k) => hex(k.wrapped))).size).toBe(4);
    expect(calls.generate).toBe(4);
    // Canonical encoding (context.ts): key order does not make a different context.
    const e = await cache.generateDataKey('orders', { purpose: 'orders', tenant: 'acme' });
    expect(hex(e.wrapped)).toBe(hex(a.wrapped));
    expect(calls.generate).toBe(4);
  });

  it('a different key gets a different data key', async () => {
    const { cache } = await setup();
    const a = await cache.generateDataKey('orders', ctx);
    const b = await cache.generateDataKey('billing', ctx);
    expect(a.keyId).not.toBe(b.keyId);
  });

  it('key and context cannot be confused in the slot (a key name that looks like a context)', async () => {
    const { kw, cache } = await setup();
    await kw.createKey('a');
    await kw.createKey('a:AAA');
    const x = await cache.generateDataKey('a', {});
    const y = await cache.generateDataKey('a:AAA', undefined);
    expect(x.keyId).not.toBe(y.keyId);
  });

  it('a cached unwrap is not served under another context, another expected key, or for altered bytes', async () => {
    const { kw, cache, calls } = await setup();
    const dk = await kw.generateDataKey('orders', ctx);
    await cache.decryptDataKey(dk.wrapped, ctx, { key: 'orders' });
    expect(calls.decrypt).toBe(1);
    await expect(
      cache.decryptDataKey(dk.wrapped, { ...ctx, purpose: 'refunds' }, { key: 'orders' }),
    ).rejects.toBeInstanceOf(DecryptionError);
    await expect(cache.decryptDataKey(dk.wrapped, ctx, { key: 'billing' })).rejects.toBeInstanceOf(UnexpectedKeyError);
    const altered = new Uint8Array(dk.wrapped);
    altered[altered.length - 1] = (altered[altered.length - 1] as number) ^ 1;
    await expect(cache.decryptDataKey(altered, ctx, { key: 'orders' })).rejects.toBeInstanceOf(DecryptionError);
    // Another (valid) expectation is another slot: it goes to the provider too.
    await cache.decryptDataKey(dk.wrapped, ctx, { anyKeyInStore: true });
    expect(calls.decrypt).toBe(5);
    // None of the failures was cached.
    await expect(cache.decryptDataKey(dk.wrapped, ctx, { key: 'billing' })).rejects.toBeInstanceOf(UnexpectedKeyError);
    expect(calls.decrypt).toBe(6);
  });

  it('decryption requires an expected key, as the Keywarden does', async () => {
    const { kw, cache } = await setup();
    const dk = await kw.generateDataKey('orders', ctx);
    await expect(cache.decryptDataKey(dk.wrapped, ctx, {} as KeyExpectation)).rejects.toThrow(
      /data key cache: say which key/,
    );
  });
});

describe("wiping: clear, seal, close and a seal behind the cache wipe every cached key, never a caller's buffer", () => {
  async function warm() {
    const s = await setup();
    const dk = await s.cache.generateDataKey('orders', ctx);
    const other = await s.kw.generateDataKey('billing', ctx);
    const dek = await s.cache.decryptDataKey(other.wrapped, ctx, { key: 'billing' });
    const held = s.cache[cachedSecretsForTests]();
    expect(held).toHaveLength(2);
    expect(held.some(isZero)).toBe(false);
    return { ...s, dk, dek, other, held };
  }

  it('clear() wipes the cached keys; the copies callers hold stay intact; the next call makes a new key', async () => {
    const { cache, dk, dek, other, held, calls } = await warm();
    const before = hex(dk.plaintext);
    cache.clear();
    expect(held.every(isZero)).toBe(true);
    expect(hex(dk.plaintext)).toBe(before);
    expect(hex(dek)).toBe(hex(other.plaintext));
    const next = await cache.generateDataKey('orders', ctx);
    expect(hex(next.wrapped)).not.toBe(hex(dk.wrapped));
    expect(calls.generate).toBe(2);
  });

  it("seal() wipes the cache and seals the Keywarden; the callers' copies stay intact", async () => {
    const { cache, kw, dk, held } = await warm();
    const before = hex(dk.plaintext);
    await cache.seal();
    expect(held.every(isZero)).toBe(true);
    expect(hex(dk.plaintext)).toBe(before);
    expect(kw.root.sealable?.isSealed()).toBe(true);
    await expect(cache.generateDataKey('orders', ctx)).rejects.toBeInstanceOf(KeystoreSealedError);
  });

  it('a seal of the Keywarden itself (behind the cache) is noticed by the next call, which wipes and refuses', async () => {
    const { cache, kw, held } = await warm();
    await kw.seal();
    await expect(cache.generateDataKey('orders', ctx)).rejects.toBeInstanceOf(KeystoreSealedError);
    expect(held.every(isZero)).toBe(true);
    expect(cache[cachedSecretsForTests]()).toHaveLength(0);
  });

  it('a close of the Keywarden itself (behind the cache) is noticed by the next call, which wipes and refuses', async () => {
    const { cache, kw, held, dk } = await warm();
    const before = hex(dk.plaintext);
    await kw.close();
    await expect(cache.generateDataKey('orders', ctx)).rejects.toBeInstanceOf(ClosedError);
    expect(held.every(isZero)).toBe(true);
    expect(cache[cachedSecretsForTests]()).toHaveLength(0);
    expect(hex(dk.plaintext)).toBe(before);
  });

  it('a cache around a Keywarden passed directly (no wrapper) notices its close too', async () => {
    const store = new MemoryKeyStore();
    const root = await SoftwareRoot.initialize(store, { unsealKey: new Uint8Array(randomBytes(32)) });
    const kw = new Keywarden({ store, root });
    await kw.createKey('orders');
    const cache = new DataKeyCache(kw, { maxAgeMs: 60_000 });
    await cache.generateDataKey('orders', ctx);
    await kw.close();
    await expect(cache.generateDataKey('orders', ctx)).rejects.toBeInstanceOf(ClosedError);
    expect(cache[cachedSecretsForTests]()).toHaveLength(0);
  });

  it('after seal and unseal, nothing cached before the seal is served', async () => {
    const { cache, root, unsealKey, dk, calls } = await warm();
    await cache.seal();
    await root.unseal(unsealKey);
    const next = await cache.generateDataKey('orders', ctx);
    expect(hex(next.wrapped)).not.toBe(hex(dk.wrapped));
    expect(calls.generate).toBe(2);
  });

  it('close() wipes the cache, closes the Keywarden and refuses further calls', async () => {
    const { cache, held, dk } = await warm();
    const before = hex(dk.plaintext);
    await cache.close();
    expect(held.every(isZero)).toBe(true);
    expect(hex(dk.plaintext)).toBe(before);
    await expect(cache.generateDataKey('orders', ctx)).rejects.toBeInstanceOf(ClosedError);
    await expect(cache.close()).resolves.toBeUndefined();
  });

  it('a generation in flight across clear() is discarded: its callers get a key made after the wipe', async () => {
    const { cache, calls } = await setup();
    const pending = cache.generateDataKey('orders', ctx);
    cache.clear(); // the flight started before the wipe
    const first = await pending;
    // The straddling generation was wiped unused; the caller looked again and a new one was made.
    expect(calls.generate).toBe(2);
    const second = await cache.generateDataKey('orders', ctx);
    expect(hex(second.wrapped)).toBe(hex(first.wrapped));
    expect(calls.generate).toBe(2);
  });

  it('a generation in flight across seal() fails its callers as sealed, and caches nothing', async () => {
    const { cache } = await setup();
    const pending = Promise.allSettled(Array.from({ length: 20 }, () => cache.generateDataKey('orders', ctx)));
    await cache.seal();
    const results = await pending;
    for (const r of results) {
      expect(r.status).toBe('rejected');
      expect(KeystoreSealedError.isInstance((r as PromiseRejectedResult).reason)).toBe(true);
    }
    expect(cache[cachedSecretsForTests]()).toHaveLength(0);
  });
});

describe('a lifecycle change made through the Keywarden drops the data keys of that key at once', () => {
  async function direct() {
    const store = new MemoryKeyStore();
    const root = await SoftwareRoot.initialize(store, { unsealKey: new Uint8Array(randomBytes(32)) });
    const kw = new Keywarden({ store, root });
    await kw.createKey('orders');
    await kw.createKey('billing');
    // An hour: without the key change, everything below would still be served from the cache.
    const cache = new DataKeyCache(kw, { maxAgeMs: 3_600_000 });
    const plain = new TextEncoder().encode('order 1');
    const orders = await cache.encrypt(plain, { key: 'orders', context: ctx });
    const billing = await cache.encrypt(plain, { key: 'billing', context: ctx });
    // Warm the decrypt side: later decryptions of these envelopes are cache hits.
    await cache.decrypt(orders, { key: 'orders', context: ctx });
    await cache.decrypt(billing, { key: 'billing', context: ctx });
    expect(cache.stats.dataKeysUnwrapped).toBe(2);
    await cache.decrypt(orders, { key: 'orders', context: ctx });
    expect(cache.stats.dataKeysUnwrapped).toBe(2); // served from the cache
    return { kw, cache, plain, orders, billing };
  }

  it('disable: the disabled version stops decrypting through the cache, its cached keys are wiped, and encryption takes a new data key', async () => {
    const { kw, cache, orders } = await direct();
    const held = cache[cachedSecretsForTests]();
    expect(held).toHaveLength(4);
    await kw.rotateKey('orders');
    await kw.disableVersion('orders', 1);
    await expect(cache.decrypt(orders, { key: 'orders', context: ctx })).rejects.toThrow(/v1 is disabled/);
    // The two data keys of "orders" (encrypt and decrypt side) are wiped; "billing"'s are kept.
    expect(held.filter(isZero)).toHaveLength(2);
    expect(cache[cachedSecretsForTests]()).toHaveLength(2);
    const fresh = await cache.encrypt(new Uint8Array(3), { key: 'orders', context: ctx });
    expect(inspectEnvelope(fresh).keyVersion).toBe(2);
    // Enabled again: it decrypts again (through the provider, not a stale entry).
    await kw.enableVersion('orders', 1);
    expect(await cache.decrypt(orders, { key: 'orders', context: ctx })).toEqual(new TextEncoder().encode('order 1'));
  });

  it('compromise and destroy: the version is refused through the cache with its own error', async () => {
    const { kw, cache, orders } = await direct();
    await kw.compromiseVersion('orders', 1);
    await expect(cache.decrypt(orders, { key: 'orders', context: ctx })).rejects.toSatisfy(
      KeyCompromisedError.isInstance,
    );
    await kw.destroyVersion('orders', 1, { force: true });
    await expect(cache.decrypt(orders, { key: 'orders', context: ctx })).rejects.toSatisfy(
      KeyDestroyedError.isInstance,
    );
  });

  it("another key's change leaves this key's entries cached; clearCache() on the Keywarden drops them all", async () => {
    const { kw, cache, orders, billing } = await direct();
    await kw.rotateKey('billing');
    const unwraps = cache.stats.dataKeysUnwrapped;
    await cache.decrypt(orders, { key: 'orders', context: ctx });
    expect(cache.stats.dataKeysUnwrapped).toBe(unwraps); // still cached
    await cache.decrypt(billing, { key: 'billing', context: ctx });
    expect(cache.stats.dataKeysUnwrapped).toBe(unwraps + 1); // billing's entry was dropped by its rotation
    kw.clearCache();
    expect(cache[cachedSecretsForTests]()).toHaveLength(0);
  });

  it('works the same through an audited Keywarden (the guarded view of guard.ts)', async () => {
    const store = new MemoryKeyStore();
    const root = await SoftwareRoot.initialize(store, { unsealKey: new Uint8Array(randomBytes(32)) });
    const kw = new Keywarden({ store, root, audit: {} });
    await kw.createKey('orders');
    const cache = new DataKeyCache(kw, { maxAgeMs: 3_600_000 });
    const env = await cache.encrypt(new Uint8Array(5), { key: 'orders', context: ctx });
    await cache.decrypt(env, { key: 'orders', context: ctx });
    await kw.rotateKey('orders');
    await kw.disableVersion('orders', 1);
    await expect(cache.decrypt(env, { key: 'orders', context: ctx })).rejects.toThrow(/v1 is disabled/);
    await cache.close();
  });

  it('an unwrap in flight across the change does not put its key into the cache', async () => {
    const { kw, cache, orders } = await direct();
    cache.clear();
    const pending = cache.decrypt(orders, { key: 'orders', context: ctx });
    await kw.rotateKey('orders'); // a change of the key while the unwrap may be in flight
    await pending;
    await kw.disableVersion('orders', 1);
    await expect(cache.decrypt(orders, { key: 'orders', context: ctx })).rejects.toThrow(/v1 is disabled/);
  });
});
