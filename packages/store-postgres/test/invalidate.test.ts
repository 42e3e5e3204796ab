/**
 * invalidateCachesOnChange in one process with two store connections (as two instances would
 * have): a version disabled through instance A stops serving through instance B's Keywarden and
 * its DataKeyCache, whose caches would otherwise keep it for an hour.
 */
import { randomBytes } from 'node:crypto';
import { DataKeyCache, Keywarden, SoftwareRoot } from '@keywarden/core';
import { afterEach, describe, expect, it } from 'vitest';
import { invalidateCachesOnChange, type PostgresKeyStore } from '../src/index.js';
import { dropSchema, freshSchema, openStore, unavailable } from './_pg.js';

async function until(check: () => Promise<boolean>, ms = 15_000): Promise<boolean> {
  const deadline = Date.now() + ms;
  while (Date.now() < deadline) {
    if (await check()) return true;
    await new Promise((r) => setTimeout(r, 20));
  }
  return false;
}

describe.skipIf(unavailable !== undefined)('invalidateCachesOnChange', () => {
  const closers: Array<() => Promise<void>> = [];
  let schema: string;
  afterEach(async () => {
    for (const close of closers.splice(0).reverse()) await close();
    await dropSchema(schema);
  });

  it("a version disabled through one instance stops serving through another instance's Keywarden and DataKeyCache", async () => {
    schema = freshSchema();
    const unsealKey = new Uint8Array(randomBytes(32));
    const storeA: PostgresKeyStore = await openStore(schema);
    closers.push(() => storeA.close());
    const rootA = await SoftwareRoot.initialize(storeA, { unsealKey });
    const kwA = new Keywarden({ store: storeA, root: rootA });
    closers.push(() => kwA.close());

    const storeB = await openStore(schema);
    closers.push(() => storeB.close());
    const rootB = await SoftwareRoot.load(storeB);
    await rootB.unseal(unsealKey);
    unsealKey.fill(0);
    const kwB = new Keywarden({ store: storeB, root: rootB, cache: { ttlMs: 3_600_000 } });
    closers.push(() => kwB.close());
    const cacheB = new DataKeyCache(kwB, { maxAgeMs: 3_600_000 });
    closers.push(() => cacheB.close());

    await kwA.createKey('orders');
    const envelope = await kwA.encrypt(new TextEncoder().encode('order 7'), { key: 'orders' });
    await kwA.rotateKey('orders');
    // Warm B's caches: the KEK version in kwB, the data key in cacheB.
    await cacheB.decrypt(envelope, { key: 'orders' });
    await kwB.decrypt(envelope, { key: 'orders' });

    const stop = await invalidateCachesOnChange(storeB, [cacheB, kwB]);
    closers.push(stop);
    await kwA.disableVersion('orders', 1);

    const refused = (p: Promise<unknown>) =>
      p.then(
        () => false,
        (err: { code?: string }) => err.code === 'KW_KEY_STATE',
      );
    expect(await until(() => refused(kwB.decrypt(envelope, { key: 'orders' })))).toBe(true);
    expect(await until(() => refused(cacheB.decrypt(envelope, { key: 'orders' })))).toBe(true);
  });
});
