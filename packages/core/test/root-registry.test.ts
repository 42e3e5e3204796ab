/** root-registry.ts: roots named by URI, opened through one registry that backends add to. */
import { randomBytes } from 'node:crypto';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import {
  destroyRoot,
  encodeUnsealKey,
  InvalidInputError,
  Keywarden,
  MemoryKeyStore,
  type OpenRootOptions,
  openRoot,
  parsePkcs11Uri,
  RootDestroyedError,
  RootMissingError,
  registerRootBackend,
  rewrapUnderNewRoot,
  rootSchemes,
  SoftwareRoot,
  UnknownRootSchemeError,
  UnsealError,
  unregisterRootBackend,
  WeakKeyMaterialError,
} from '../src/index.js';

function key(): Uint8Array {
  return new Uint8Array(randomBytes(32));
}

async function initialized(): Promise<{ store: MemoryKeyStore; unsealKey: Uint8Array }> {
  const store = new MemoryKeyStore();
  const unsealKey = key();
  await (await SoftwareRoot.initialize(store, { unsealKey })).close();
  return { store, unsealKey };
}

afterEach(() => {
  unregisterRootBackend('pkcs11');
  unregisterRootBackend('acme');
});

describe('openRoot("software:…")', () => {
  it('opens the store’s software root sealed without a secret, unsealed with one', async () => {
    const { store, unsealKey } = await initialized();
    const sealed = await openRoot('software:', { store });
    expect(sealed.describe().kind).toBe('software');
    expect(sealed.sealable?.isSealed()).toBe(true);
    const open = await openRoot('software:', { store, secret: unsealKey });
    expect(open.sealable?.isSealed()).toBe(false);
    expect(open.describe().id).toBe(sealed.describe().id);
  });

  it('create: makes a new root (and refuses a weak unseal key, writing nothing)', async () => {
    const store = new MemoryKeyStore();
    await expect(openRoot('software:', { store, create: true, secret: new Uint8Array(32) })).rejects.toSatisfy(
      WeakKeyMaterialError.isInstance,
    );
    expect(await store.getMeta('root')).toBeUndefined();
    const root = await openRoot('software:', { store, create: true, secret: key() });
    const kw = new Keywarden({ store, root });
    await kw.createKey('k');
    expect((await kw.listKeys()).length).toBe(1);
  });

  it('unseal-key-env= and unseal-key-file= name a development-mode key; a wrong one is an UnsealError', async () => {
    const { store, unsealKey } = await initialized();
    const env = { KW_TEST_KEY: encodeUnsealKey(unsealKey), KW_OTHER: encodeUnsealKey(key()) };
    const a = await openRoot('software:?unseal-key-env=KW_TEST_KEY', { store, env });
    expect(a.sealable?.isSealed()).toBe(false);
    await expect(openRoot('software:?unseal-key-env=KW_OTHER', { store, env })).rejects.toSatisfy(
      UnsealError.isInstance,
    );
    const dir = mkdtempSync(path.join(tmpdir(), 'kw-registry-'));
    const file = path.join(dir, 'unseal.key');
    writeFileSync(file, `${encodeUnsealKey(unsealKey)}\n`, { mode: 0o600 });
    const b = await openRoot(`software:?unseal-key-file=${encodeURIComponent(file)}`, { store });
    expect(b.sealable?.isSealed()).toBe(false);
  });

  it('refuses a path, an unknown attribute, and two keys at once', async () => {
    const { store, unsealKey } = await initialized();
    for (const uri of ['software:x', 'software:?mode=dev', 'software:?unseal-key-env=A&unseal-key-file=B']) {
      await expect(openRoot(uri, { store })).rejects.toSatisfy(InvalidInputError.isInstance);
    }
    await expect(openRoot('software:?unseal-key-env=A', { store, secret: unsealKey })).rejects.toSatisfy(
      InvalidInputError.isInstance,
    );
  });

  it('a destroyed root is RootDestroyedError, a store with no root RootMissingError', async () => {
    const { store, unsealKey } = await initialized();
    await destroyRoot(store, { unsealKey });
    await expect(openRoot('software:', { store })).rejects.toSatisfy(RootDestroyedError.isInstance);
    await expect(openRoot('software:', { store: new MemoryKeyStore() })).rejects.toSatisfy(RootMissingError.isInstance);
  });
});

describe('the registry', () => {
  it('an unknown scheme is an UnknownRootSchemeError naming the scheme (and never the rest of the URI)', async () => {
    const store = new MemoryKeyStore();
    let err: unknown;
    try {
      await openRoot('vault:token=s3cr3t-token', { store });
    } catch (e) {
      err = e;
    }
    expect(UnknownRootSchemeError.isInstance(err)).toBe(true);
    expect((err as Error).message).toMatch(/^root: unknown root scheme "vault:"/);
    expect((err as Error).message).not.toContain('s3cr3t');
  });

  it('pkcs11: and tpm: are reserved: before their package registers them, the error names the package', async () => {
    const store = new MemoryKeyStore();
    await expect(openRoot('pkcs11:token=keywarden;object=root?pin-value=1234', { store })).rejects.toThrow(
      /^root: no backend registered for "pkcs11:" roots; install and import @keywarden\/pkcs11/,
    );
    await expect(openRoot('tpm:handle=0x81000001', { store })).rejects.toThrow(/@keywarden\/tpm/);
    await expect(openRoot('PKCS11:token=x', { store })).rejects.toSatisfy(UnknownRootSchemeError.isInstance);
  });

  it('a PKCS#11 backend only registers an opener: it receives the URI, parsed by core’s RFC 7512 parser', async () => {
    const store = new MemoryKeyStore();
    const { unsealKey } = await initialized();
    const seen: Array<{ token?: string; object?: string; modulePath?: string }> = [];
    registerRootBackend('pkcs11', async (uri: string, options: OpenRootOptions) => {
      const u = parsePkcs11Uri(uri);
      seen.push({ token: u.token, object: u.object, modulePath: u.modulePath });
      // Stands in for the token: any real root satisfies the opener's contract.
      const s = new MemoryKeyStore();
      return SoftwareRoot.initialize(s, { unsealKey: options.secret ?? unsealKey });
    });
    expect(rootSchemes()).toContain('pkcs11');
    const root = await openRoot('pkcs11:token=keywarden;object=kw-root?module-path=/usr/lib/softhsm/libsofthsm2.so', {
      store,
    });
    expect(seen).toEqual([{ token: 'keywarden', object: 'kw-root', modulePath: '/usr/lib/softhsm/libsofthsm2.so' }]);
    expect(root.describe().kind).toBe('software');
  });

  it('registering a scheme twice is refused unless replace; an invalid scheme is refused; software: cannot be removed', async () => {
    const opener = async () => SoftwareRoot.load(new MemoryKeyStore());
    registerRootBackend('acme', opener);
    expect(() => registerRootBackend('acme', opener)).toThrow(/already registered/);
    registerRootBackend('acme', opener, { replace: true });
    expect(() => registerRootBackend('Bad Scheme', opener)).toThrow(InvalidInputError);
    expect(() => registerRootBackend('x', {} as never)).toThrow(/needs an open function/);
    unregisterRootBackend('software');
    expect(rootSchemes()).toContain('software');
  });

  it('a string without a scheme is not a root URI', async () => {
    await expect(openRoot('just-a-path', { store: new MemoryKeyStore() })).rejects.toSatisfy(
      InvalidInputError.isInstance,
    );
    await expect(openRoot(':x', { store: new MemoryKeyStore() })).rejects.toSatisfy(InvalidInputError.isInstance);
  });
});

describe('destroyRoot names no backend', () => {
  it('without a root, the backend whose record the store holds destroys it; with one, the root’s own destroy capability', async () => {
    const a = await initialized();
    const kwA = new Keywarden({
      store: a.store,
      root: await openRoot('software:', { store: a.store, secret: a.unsealKey }),
    });
    await kwA.createKey('k');
    expect((await destroyRoot(a.store, { unsealKey: a.unsealKey })).destroyed).toBe(1);

    const b = await initialized();
    const root = await openRoot('software:', { store: b.store, secret: b.unsealKey });
    const kwB = new Keywarden({ store: b.store, root });
    await kwB.createKey('k');
    expect((await destroyRoot(b.store, { root, unsealKey: b.unsealKey })).destroyed).toBe(1);
    expect(root.sealable?.isSealed()).toBe(true);
    await expect(SoftwareRoot.load(b.store)).rejects.toSatisfy(RootDestroyedError.isInstance);
  });

  it('a root asked to destroy a store whose root is another one refuses and changes nothing', async () => {
    const a = await initialized();
    const b = await initialized();
    const rootA = await openRoot('software:', { store: a.store, secret: a.unsealKey });
    await expect(destroyRoot(b.store, { root: rootA, unsealKey: a.unsealKey })).rejects.toThrow(/not this root/);
    expect(await b.store.getMeta('root')).toBeDefined();
  });
});

describe("the root's record belongs to the root", () => {
  it('rewrapUnderNewRoot writes the new root’s own record (storeRecord) when the caller passes none', async () => {
    const { store, unsealKey } = await initialized();
    const old = await openRoot('software:', { store, secret: unsealKey });
    const kw = new Keywarden({ store, root: old });
    await kw.createKey('k');
    const dk = await kw.generateDataKey('k');
    const { root: next } = await SoftwareRoot.createForRotation({ unsealKey, unseal: { method: 'key' } });
    expect((await rewrapUnderNewRoot(store, old, next)).rewrapped).toBe(1);
    const loaded = await openRoot('software:', { store, secret: unsealKey });
    expect(loaded.describe().id).toBe(next.describe().id);
    const kw2 = new Keywarden({ store, root: loaded });
    expect(Array.from(await kw2.decryptDataKey(dk.wrapped, undefined, { key: 'k' }))).toEqual(Array.from(dk.plaintext));
  });

  it('a new root that keeps no record and no record given: refused, nothing changes', async () => {
    const { store, unsealKey } = await initialized();
    const old = await openRoot('software:', { store, secret: unsealKey });
    const { root: next } = await SoftwareRoot.createForRotation({ unsealKey, unseal: { method: 'key' } });
    const noRecord = {
      describe: () => next.describe(),
      wrapKey: next.wrapKey.bind(next),
      unwrapKey: next.unwrapKey.bind(next),
      close: next.close.bind(next),
    };
    const before = await store.getMeta('root');
    await expect(rewrapUnderNewRoot(store, old, noRecord)).rejects.toThrow(/keeps no record in the store/);
    expect(Array.from((await store.getMeta('root'))!)).toEqual(Array.from(before!));
  });
});
