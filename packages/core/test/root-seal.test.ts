/**
 * Sealing is immediate (issue 7 §2), against the real SoftwareRoot: after a seal no cached KEK
 * serves another call, whether the seal went through Keywarden or straight to the root, and a KEK
 * load in flight when the seal ran does not put its key back into the cache.
 */
import { randomBytes } from 'node:crypto';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { describe, expect, it } from 'vitest';
import {
  KeystoreSealedError,
  Keywarden,
  type KeyVersionRecord,
  MemoryKeyStore,
  type RootOfTrust,
  SoftwareRoot,
} from '../src/index.js';

/** A real MemoryKeyStore that counts getVersion (a KEK load) and can hold it at a gate. */
class GatedStore extends MemoryKeyStore {
  loads = 0;
  gate: Promise<void> | undefined;
  reached: (() => void) | undefined;
  override async getVersion(keyId: string, version: number): Promise<KeyVersionRecord | undefined> {
    this.loads++;
    this.reached?.();
    if (this.gate) await this.gate;
    return super.getVersion(keyId, version);
  }
}

async function setUp() {
  const store = new GatedStore();
  const key = new Uint8Array(randomBytes(32));
  const root = await SoftwareRoot.initialize(store, { unsealKey: key });
  const kw = new Keywarden({ store, root });
  await kw.createKey('k');
  const dk = await kw.generateDataKey('k'); // loads and caches the KEK
  return { store, key, root, kw, dk };
}

function gate(store: GatedStore): { open: () => void; reached: Promise<void> } {
  let open!: () => void;
  store.gate = new Promise<void>((r) => {
    open = r;
  });
  const reached = new Promise<void>((r) => {
    store.reached = r;
  });
  return {
    open: () => {
      store.gate = undefined;
      store.reached = undefined;
      open();
    },
    reached,
  };
}

describe('sealing is immediate', () => {
  it('root.seal() called on the root itself (not kw.seal()): the next generateDataKey and decryptDataKey are KeystoreSealedError, not served from the KEK cache', async () => {
    const { store, root, kw, dk } = await setUp();
    const loads = store.loads;
    await root.seal();
    await expect(kw.generateDataKey('k')).rejects.toSatisfy(KeystoreSealedError.isInstance);
    await expect(kw.decryptDataKey(dk.wrapped, undefined, { key: 'k' })).rejects.toSatisfy(
      KeystoreSealedError.isInstance,
    );
    expect(store.loads).toBe(loads); // refused before any store read
  });

  it('root.sealable.seal() through the capability: the same', async () => {
    const { root, kw } = await setUp();
    await (root as RootOfTrust).sealable!.seal();
    await expect(kw.generateDataKey('k')).rejects.toSatisfy(KeystoreSealedError.isInstance);
  });

  it('after root.seal() and unseal, the KEK is loaded again from the store (the cache was wiped, not kept)', async () => {
    const { store, key, root, kw } = await setUp();
    await root.seal();
    await root.unseal(key);
    const loads = store.loads;
    await kw.generateDataKey('k');
    expect(store.loads).toBe(loads + 1);
  });

  it('a KEK load in flight when root.seal() ran fails sealed and caches nothing', async () => {
    const { store, root, kw } = await setUp();
    kw.clearCache();
    const g = gate(store);
    const pending = kw.generateDataKey('k');
    await g.reached;
    await root.seal();
    g.open();
    await expect(pending).rejects.toSatisfy(KeystoreSealedError.isInstance);
  });

  it('a KEK load in flight when root.seal() ran does not re-cache, even when the root is unsealed again before it finishes', async () => {
    const { store, key, root, kw } = await setUp();
    kw.clearCache();
    const g = gate(store);
    const pending = kw.generateDataKey('k');
    await g.reached;
    await root.seal();
    await root.unseal(key);
    g.open();
    await pending; // served to its caller (the root is unsealed again)
    const loads = store.loads;
    await kw.generateDataKey('k');
    expect(store.loads, 'the straddling load must not have re-cached its KEK').toBe(loads + 1);
  });

  it('kw.seal(): the same guarantees through Keywarden', async () => {
    const { store, key, root, kw } = await setUp();
    kw.clearCache();
    const g = gate(store);
    const pending = kw.generateDataKey('k');
    await g.reached;
    await kw.seal();
    await root.unseal(key);
    g.open();
    await pending;
    const loads = store.loads;
    await kw.generateDataKey('k');
    expect(store.loads).toBe(loads + 1);
  });

  it('a root without onSeal is polled: sealing it directly still stops cached KEKs', async () => {
    const { store, key, root } = await setUp();
    // The same SoftwareRoot behind an object that exposes no onSeal (as a backend might).
    const plain: RootOfTrust = {
      describe: () => root.describe(),
      wrapKey: (m, a) => root.wrapKey(m, a),
      unwrapKey: (w, a) => root.unwrapKey(w, a),
      close: () => root.close(),
      sealable: {
        isSealed: () => root.isSealed(),
        seal: () => root.seal(),
        unseal: (s) => root.unseal(s),
        unsealSecret: () => root.unsealSecret(),
      },
    };
    const kw = new Keywarden({ store, root: plain });
    await kw.generateDataKey('k');
    await root.seal();
    await expect(kw.generateDataKey('k')).rejects.toSatisfy(KeystoreSealedError.isInstance);
    await root.unseal(key);
    const loads = store.loads;
    await kw.generateDataKey('k');
    expect(store.loads).toBe(loads + 1);
  });

  it('a closed Keywarden stops listening to the root (no listener left behind)', async () => {
    const { root, kw } = await setUp();
    await kw.close();
    await root.seal(); // must not throw or touch the closed instance
    expect(root.isSealed()).toBe(true);
  });

  it('a Keywarden dropped without close() is not kept alive by the root it listens to', async () => {
    setFlagsFromString('--expose-gc');
    const gc = runInNewContext('gc') as () => void;
    const store = new MemoryKeyStore();
    const root = await SoftwareRoot.initialize(store, { unsealKey: new Uint8Array(randomBytes(32)) });
    const refs: Array<WeakRef<Keywarden>> = [];
    for (let i = 0; i < 20; i++) refs.push(new WeakRef(new Keywarden({ store, root })));
    // No deref() before the collection: deref keeps its target alive until the job ends.
    for (let i = 0; i < 5; i++) {
      await new Promise((r) => setImmediate(r));
      gc();
    }
    expect(refs.filter((r) => r.deref()).length).toBe(0);
    await root.seal(); // the root's listeners are gone or harmless
  });
});
