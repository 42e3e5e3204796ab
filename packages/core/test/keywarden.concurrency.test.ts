/**
 * The KEK cache under concurrency (issue 16, item 1). Contract: "never wipe a buffer a caller may
 * still hold": a KEK version evicted (LRU), cleared (`clearCache()`) or sealed (`seal()`) while a
 * call holds it stays intact until that call is done with it; a load in flight when the cache is
 * cleared or sealed does not put its key back afterwards; and no data key is ever wrapped under
 * all-zero KEK material.
 *
 * Each run: far more keys than the cache holds (maxEntries 16, 420 keys), every call concurrent
 * from a cold cache, with clearCache() and seal() + unseal racing the calls. Every data key that
 * came back is then decrypted, by a second instance and by the racing one; the only error allowed is
 * "sealed" for the calls that ran into the seal.
 */
import { randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import {
  type DataKey,
  KeystoreSealedError,
  Keywarden,
  MemoryKeyStore,
  type RandomSource,
  SoftwareRoot,
  parseWrappedKey,
  unwrapDataKey,
} from '../src/index.js';

const KEYS = 420;
const MAX_ENTRIES = 16;
/** Calls started per turn of the event loop (two per key). */
const WAVE = 30;

/** A random source that answers only after the event loop has turned (an HSM's C_GenerateRandom). */
const slowRandom: RandomSource = {
  async randomBytes(length: number) {
    await turn();
    return new Uint8Array(randomBytes(length));
  },
};

/**
 * The next turn of the event loop, shared: everything that awaits it in one turn resumes in the same
 * microtask checkpoint, so loads, calls and the racer interleave there as they would under load.
 */
let nextTurn: Promise<void> | undefined;
function turn(): Promise<void> {
  nextTurn ??= new Promise((resolve) =>
    setImmediate(() => {
      nextTurn = undefined;
      resolve();
    }),
  );
  return nextTurn;
}

async function keyring() {
  const store = new MemoryKeyStore();
  const unsealKey = new Uint8Array(randomBytes(32));
  const root = await SoftwareRoot.initialize(store, { unsealKey });
  const maker = new Keywarden({ store, root });
  const names = Array.from({ length: KEYS }, (_, i) => `tenant-${String(i).padStart(3, '0')}`);
  for (const name of names) await maker.createKey(name);
  return { store, root, unsealKey, names };
}

interface Made {
  name: string;
  context: Record<string, string>;
  dk: DataKey;
}

/** Every settled result is either a data key or a KeystoreSealedError; anything else fails the test. */
function sortOut<T>(settled: PromiseSettledResult<T>[]): { ok: T[]; sealed: number } {
  const ok: T[] = [];
  let sealed = 0;
  for (const r of settled) {
    if (r.status === 'fulfilled') ok.push(r.value);
    else if (KeystoreSealedError.isInstance(r.reason)) sealed++;
    else throw r.reason;
  }
  return { ok, sealed };
}

async function race(options: { random?: RandomSource; seal: boolean }) {
  const { store, root, unsealKey, names } = await keyring();
  // The real store and root, answering a turn of the event loop later (as SQLite or an HSM
  // would), so that the loads spread over several turns and the racer runs in between them.
  const getVersion = store.getVersion.bind(store);
  store.getVersion = async (keyId, version) => {
    await turn();
    return getVersion(keyId, version);
  };
  const unwrapKey = root.unwrapKey.bind(root);
  root.unwrapKey = async (wrapped, aad) => {
    await turn();
    return unwrapKey(wrapped, aad);
  };
  const kw = new Keywarden({
    store,
    root,
    cache: { maxEntries: MAX_ENTRIES },
    ...(options.random ? { random: options.random } : {}),
  });
  // Two calls per key with different contexts, from a cold cache, started in waves over several
  // turns of the event loop so that the racer's clearCache() and seal() land among them.
  const started: Promise<Made>[] = [];
  const launching = (async () => {
    for (let w = 0; w < names.length; w += WAVE) {
      for (const name of names.slice(w, w + WAVE)) {
        for (const i of [0, 1]) {
          const context = { tenant: name, call: String(i) };
          const call = kw.generateDataKey(name, context).then((dk) => ({ name, context, dk }));
          call.catch(() => {}); // handled below by allSettled; this only marks it handled now
          started.push(call);
        }
      }
      await turn();
    }
  })();
  const racer = (async () => {
    for (let i = 0; i < 3; i++) {
      await turn();
      kw.clearCache();
    }
    if (options.seal) {
      await kw.seal();
      await turn();
      await turn();
      await root.unseal(unsealKey);
    }
    for (let i = 0; i < 6; i++) {
      await turn();
      kw.clearCache();
    }
  })();
  await Promise.all([launching, racer]);
  const settled = await Promise.allSettled(started);
  const { ok: made, sealed } = sortOut(settled);
  // Not vacuous: many calls produced a key, and the seal (when there is one) hit calls in flight.
  expect(made.length).toBeGreaterThan(KEYS / 2);
  expect(made.length + sealed).toBe(2 * KEYS);
  if (options.seal) expect(sealed).toBeGreaterThan(0);

  // 1. No wrapped key opens under 32 zero bytes (anyone could read those).
  const zeros = new Uint8Array(32);
  let openedUnderZeros = 0;
  for (const m of made) {
    try {
      unwrapDataKey(zeros, parseWrappedKey(m.dk.wrapped), m.context);
      openedUnderZeros++;
    } catch {
      // expected: authentication fails
    }
  }
  expect(openedUnderZeros).toBe(0);

  // 2. A second instance (its own cache, no racing) decrypts every data key to the same DEK.
  const reader = new Keywarden({ store, root });
  let mismatches = 0;
  let failures = 0;
  for (const m of made) {
    try {
      const dek = await reader.decryptDataKey(m.dk.wrapped, m.context, { key: m.name });
      if (Buffer.compare(dek, m.dk.plaintext) !== 0) mismatches++;
    } catch {
      failures++;
    }
  }
  expect({ failures, mismatches }).toEqual({ failures: 0, mismatches: 0 });

  // 3. The racing instance decrypts them all too, concurrently, while its cache is cleared again.
  const decrypts = made.map(async (m) => ({
    m,
    dek: await kw.decryptDataKey(m.dk.wrapped, m.context, { key: m.name }),
  }));
  const clearing = (async () => {
    for (let i = 0; i < 6; i++) {
      await turn();
      kw.clearCache();
    }
  })();
  const [opened] = await Promise.all([Promise.allSettled(decrypts), clearing]);
  const { ok, sealed: sealedOnDecrypt } = sortOut(opened);
  expect(sealedOnDecrypt).toBe(0);
  expect(ok.filter(({ m, dek }) => Buffer.compare(dek, m.dk.plaintext) !== 0)).toEqual([]);
  await kw.close();
  await reader.close();
}

describe('Keywarden KEK cache under concurrency (maxEntries 16, 420 keys, cold cache)', () => {
  it('never wipes a KEK a call still holds: eviction and clearCache() racing; every data key decrypts', async () => {
    await race({ seal: false });
  });

  it('never wipes a KEK a call still holds: eviction, clearCache() and seal()+unseal racing; every data key decrypts', async () => {
    await race({ seal: true });
  });

  it('never wipes a KEK a call still holds with a slow async random source; every data key decrypts', async () => {
    await race({ random: slowRandom, seal: true });
  });
});
