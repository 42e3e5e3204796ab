/**
 * Issue 7 §3 for JavaScript callers: unknown or mistyped options are errors, never ignored; and
 * close() closes only what the instance owns.
 */
import { randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { ClosedError, InvalidInputError, Keywarden, MemoryKeyStore, SoftwareRoot } from '../src/index.js';

async function setUp(extra: Record<string, unknown> = {}) {
  const store = new MemoryKeyStore();
  const unsealKey = new Uint8Array(randomBytes(32));
  const root = await SoftwareRoot.initialize(store, { unsealKey });
  const kw = new Keywarden({ store, root, ...extra });
  return { store, root, kw, unsealKey };
}

function thrown(fn: () => unknown): Error {
  try {
    fn();
  } catch (e) {
    return e as Error;
  }
  throw new Error('expected a throw');
}

describe('options are checked at run time', () => {
  it("createKey('k', { environment: 'prod' }) is an InvalidInputError naming the option, and makes no key", async () => {
    const { kw } = await setUp();
    const call = kw.createKey('k', { environment: 'prod' } as never);
    await expect(call).rejects.toSatisfy(InvalidInputError.isInstance);
    await expect(kw.createKey('k', { environment: 'prod' } as never)).rejects.toThrow(
      /^keywarden: unknown option "environment" for createKey \(a scope field: pass \{ scope: \{ environment: … \} \}\)/,
    );
    expect(await kw.listKeys()).toEqual([]);
    const info = await kw.createKey('k', { scope: { environment: 'prod' } });
    expect(info.scope).toEqual({ environment: 'prod' });
  });

  it('importKey, a mistyped kekMode, and a non-object options are refused', async () => {
    const { kw } = await setUp();
    const m = new Uint8Array(randomBytes(32));
    await expect(kw.importKey('k', m, { scpoe: {} } as never)).rejects.toThrow(/unknown option "scpoe" for importKey/);
    await expect(kw.createKey('k', { kekMode: 'hsm' } as never)).rejects.toThrow(
      /"kekMode" must be "memory" or "root"/,
    );
    await expect(kw.importKey('k', m, { kekMode: 'root' })).rejects.toThrow(/memory-mode KEKs only/);
    await expect(kw.createKey('k', 'prod' as never)).rejects.toThrow(/options of createKey must be an object/);
    expect(await kw.listKeys()).toEqual([]);
  });

  it('the constructor refuses unknown options, unknown cache options and mistyped ones', async () => {
    const store = new MemoryKeyStore();
    const root = await SoftwareRoot.initialize(store, { unsealKey: new Uint8Array(randomBytes(32)) });
    expect(thrown(() => new Keywarden({ store, root, cahce: {} } as never)).message).toMatch(
      /unknown option "cahce" for new Keywarden/,
    );
    expect(thrown(() => new Keywarden({ store, root, cache: { maxEntrys: 5 } } as never)).message).toMatch(
      /unknown option "maxEntrys" for new Keywarden cache/,
    );
    expect(thrown(() => new Keywarden({ store, root, ownsStore: 'yes' } as never)).message).toMatch(
      /"ownsStore" must be/,
    );
    expect(thrown(() => new Keywarden({ store, root, random: {} } as never)).message).toMatch(
      /"random" must be a RandomSource/,
    );
    expect(thrown(() => new Keywarden({ store, root, now: new Date() } as never)).message).toMatch(
      /"now" must be a function/,
    );
  });

  it('encrypt, decrypt and the stream factories refuse an unknown option (a misspelt context is not silently dropped)', async () => {
    const { kw } = await setUp();
    await kw.createKey('k');
    const pt = new TextEncoder().encode('x');
    await expect(kw.encrypt(pt, { key: 'k', contxt: { a: 'b' } } as never)).rejects.toThrow(
      /unknown option "contxt" for encrypt/,
    );
    const env = await kw.encrypt(pt, { key: 'k', context: { a: 'b' }, signed: false });
    await expect(kw.decrypt(env, { key: 'k', contex: { a: 'b' } } as never)).rejects.toThrow(
      /unknown option "contex" for decrypt/,
    );
    expect(
      new TextDecoder().decode(await kw.decrypt(env, { key: 'k', context: { a: 'b' }, requireSigned: false })),
    ).toBe('x');
    expect(() => kw.createEncryptStream({ key: 'k', frame: 1024 } as never)).toThrow(/unknown option "frame"/);
    expect(() => kw.createDecryptStream({ key: 'k', maxFrame: 1024 } as never)).toThrow(/unknown option "maxFrame"/);
    const dk = await kw.generateDataKey('k');
    await expect(kw.decryptDataKey(dk.wrapped, undefined, { key: 'k', anyKey: true } as never)).rejects.toThrow(
      /unknown option "anyKey" for decryptDataKey/,
    );
    kw.createEncryptStream({ key: 'k', frameSize: 1024 }).destroy();
    kw.createDecryptStream({ anyKeyInStore: true, maxFrameSize: 4096 }).destroy();
  });
});

describe('close() closes only what the instance owns', () => {
  it('by default it leaves the store open and the root unsealed (the caller opened them), and refuses further use of itself', async () => {
    const { store, root, kw } = await setUp();
    await kw.createKey('k');
    await kw.close();
    await expect(kw.generateDataKey('k')).rejects.toSatisfy(ClosedError.isInstance);
    expect((await store.listKeys()).length).toBe(1);
    expect(root.isSealed()).toBe(false);
    const again = new Keywarden({ store, root });
    await again.generateDataKey('k');
  });

  it('ownsStore and ownsRoot: close() closes the store and the root (which seals it)', async () => {
    const { store, root, kw } = await setUp({ ownsStore: true, ownsRoot: true });
    await kw.createKey('k');
    await kw.close();
    await expect(store.listKeys()).rejects.toSatisfy(ClosedError.isInstance);
    expect(root.isSealed()).toBe(true);
  });

  it('ownsRoot alone: the root is closed, the store stays open', async () => {
    const { store, root, kw } = await setUp({ ownsRoot: true });
    await kw.close();
    expect(root.isSealed()).toBe(true);
    expect(await store.listKeys()).toEqual([]);
  });
});
