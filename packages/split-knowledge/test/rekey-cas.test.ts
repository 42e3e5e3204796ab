/**
 * Two rekeys of one store staged at the same moment cannot both win (issue 10, "Concurrency"):
 * recording the pending ceremony and activating it are compare-and-swaps on the store's meta
 * records (KeyStore.swapMeta), so the one that comes second gets ConflictError (KW_CONFLICT), and
 * the winner's share set is the store's. Real concurrent processes: packages/cli/test/rekey-cas.test.ts.
 */
import {
  ConflictError,
  encodeSealedRoot,
  decodeSealedRoot,
  type KeyStore,
  MemoryKeyStore,
  ROOT_META_NAME,
  SoftwareRoot,
} from '@keywarden/core';
import { describe, expect, it } from 'vitest';
import { initSplitRoot, PENDING_CEREMONY_META, stageRekey, unsealWithShares } from '../src/index.js';
import { expectKwError } from './_helpers.js';

async function store3(): Promise<{ store: MemoryKeyStore; shares: string[] }> {
  const store = new MemoryKeyStore();
  const { root, handOut } = await initSplitRoot(store, { shares: 3, threshold: 2 });
  await root.close();
  return { store, shares: handOut };
}

async function opensWith(store: KeyStore, shares: string[]): Promise<boolean> {
  const root = await SoftwareRoot.load(store);
  try {
    await unsealWithShares(root, shares);
    return true;
  } catch {
    return false;
  } finally {
    await root.close();
  }
}

/** The store without its swapMeta: the fallback (check, then write) must decide the same way. */
function withoutSwap(store: MemoryKeyStore): KeyStore {
  return new Proxy(store, {
    get(target, prop) {
      if (prop === 'swapMeta') return undefined;
      const v = Reflect.get(target, prop, target);
      return typeof v === 'function' ? v.bind(target) : v;
    },
  });
}

describe.each([
  ['with swapMeta', (s: MemoryKeyStore): KeyStore => s],
  ['without swapMeta (check, then write)', withoutSwap],
])('concurrent rekeys, %s', (_name, view) => {
  it('both staged: the second to record gets ConflictError; the first activates and its shares open the store', async () => {
    const c = await store3();
    const store = view(c.store);
    const a = await stageRekey(store, c.shares.slice(0, 2));
    const b = await stageRekey(store, c.shares.slice(1, 3));
    await a.record(store, { mode: 'test' });
    await expectKwError(() => b.record(store, { mode: 'test' }), 'KW_CONFLICT', /another rekey .* was recorded since/);
    await a.activate(store);
    expect(await opensWith(store, a.handOut.slice(0, 2))).toBe(true);
    expect(await opensWith(store, b.handOut.slice(0, 2))).toBe(false);
    expect(await opensWith(store, c.shares.slice(0, 2))).toBe(false);
    await a.close();
    await b.close();
  });

  it('one finished before the other recorded: the other gets ConflictError and changes nothing', async () => {
    const c = await store3();
    const store = view(c.store);
    const a = await stageRekey(store, c.shares.slice(0, 2));
    const b = await stageRekey(store, c.shares.slice(0, 2));
    await a.record(store, { mode: 'test' });
    await a.activate(store);
    const after = await store.getMeta(ROOT_META_NAME);
    const err = await b.record(store, { mode: 'test' }).catch((e: unknown) => e);
    expect(ConflictError.isInstance(err)).toBe(true);
    expect(await store.getMeta(ROOT_META_NAME)).toEqual(after);
    expect(await store.getMeta(PENDING_CEREMONY_META)).toBeUndefined();
    expect(await opensWith(store, a.handOut.slice(1, 3))).toBe(true);
    await a.close();
    await b.close();
  });

  it('the sealed root changes while activate runs (a root rotation in another process): ConflictError, the root stays', async () => {
    const c = await store3();
    const a = await stageRekey(view(c.store), c.shares.slice(0, 2));
    await a.record(view(c.store), { mode: 'test' });
    const doc = decodeSealedRoot((await c.store.getMeta(ROOT_META_NAME))!);
    const other = encodeSealedRoot({ ...doc, nonce: a.document.nonce });
    // Another writer commits right after activate has read and checked the sealed root.
    let reads = 0;
    const racing = new Proxy(view(c.store), {
      get(target, prop) {
        const v = Reflect.get(target, prop, target);
        if (prop !== 'getMeta') return typeof v === 'function' ? v.bind(target) : v;
        return async (name: string) => {
          const out = await (v as KeyStore['getMeta']).call(target, name);
          if (name === ROOT_META_NAME && ++reads === 2) await c.store.putMeta(ROOT_META_NAME, other);
          return out;
        };
      },
    });
    await expectKwError(() => a.activate(racing), 'KW_CONFLICT', /changed since it was read/);
    expect(reads).toBeGreaterThanOrEqual(2);
    expect(await c.store.getMeta(ROOT_META_NAME)).toEqual(other);
    expect(await c.store.getMeta(PENDING_CEREMONY_META)).toBeDefined();
    await a.close();
  });
});

describe('MemoryKeyStore.swapMeta', () => {
  it('swaps only from the expected value (null: absent), deletes with null, and refuses otherwise', async () => {
    const s = new MemoryKeyStore();
    const v1 = Uint8Array.of(1);
    const v2 = Uint8Array.of(2);
    await s.swapMeta('m', null, v1);
    await expectKwError(() => s.swapMeta('m', null, v2), 'KW_CONFLICT', /meta record "m" changed/);
    await expectKwError(() => s.swapMeta('m', v2, v2), 'KW_CONFLICT', /changed/);
    expect(await s.getMeta('m')).toEqual(v1);
    await s.swapMeta('m', v1, v2);
    expect(await s.getMeta('m')).toEqual(v2);
    await s.swapMeta('m', v2, null);
    expect(await s.getMeta('m')).toBeUndefined();
  });
});
