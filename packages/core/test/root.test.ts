/**
 * The checked root (root.ts): what every backend must honour, enforced once. Test names repeat the
 * "Precondition:" / "Postcondition:" comments of root.ts. The backends here are a real
 * SoftwareRoot with one hook made to break the contract the way a faulty backend would.
 */
import { randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import {
  checkedRoot,
  InvalidInputError,
  KEK_IN_ROOT_MAGIC,
  Keywarden,
  MAX_ROOT_WRAPPED_BYTES,
  MemoryKeyStore,
  requireDestroyable,
  requireKekInRoot,
  requireRandom,
  RootContractError,
  type RootOfTrust,
  SoftwareRoot,
  UnsupportedCapabilityError,
} from '../src/index.js';

const aad = new TextEncoder().encode('root.test');

async function softwareRoot(): Promise<{ store: MemoryKeyStore; root: SoftwareRoot; key: Uint8Array }> {
  const store = new MemoryKeyStore();
  const key = new Uint8Array(randomBytes(32));
  return { store, root: await SoftwareRoot.initialize(store, { unsealKey: key }), key };
}

/** `inner` with some hooks replaced; counts calls that reach the backend's unwrapKey. */
function faulty(inner: RootOfTrust, over: Partial<RootOfTrust>): RootOfTrust & { unwrapCalls: number } {
  const b = {
    unwrapCalls: 0,
    describe: () => inner.describe(),
    wrapKey: (m: Uint8Array, a: Uint8Array) => inner.wrapKey(m, a),
    unwrapKey: (w: Uint8Array, a: Uint8Array) => {
      b.unwrapCalls++;
      return inner.unwrapKey(w, a);
    },
    close: () => inner.close(),
    ...over,
  };
  return b as RootOfTrust & { unwrapCalls: number };
}

async function rejects(p: Promise<unknown>, check: (e: unknown) => boolean, text?: RegExp): Promise<void> {
  let err: unknown;
  try {
    await p;
  } catch (e) {
    err = e;
  }
  expect(err, 'expected a rejection').toBeDefined();
  expect(check(err), String(err)).toBe(true);
  if (text) expect((err as Error).message).toMatch(text);
}

describe('checked root: preconditions', () => {
  it('Precondition: the backend implements the required hooks (wrapKey, unwrapKey, describe, close)', () => {
    expect(() => checkedRoot({ describe: () => ({}) } as unknown as RootOfTrust)).toThrow(InvalidInputError);
    expect(() => checkedRoot(null as unknown as RootOfTrust)).toThrow(InvalidInputError);
  });

  it('Precondition: the material is MIN_ROOT_MATERIAL_BYTES..MAX_ROOT_MATERIAL_BYTES bytes', async () => {
    const { root } = await softwareRoot();
    let wraps = 0;
    const c = checkedRoot(
      faulty(root, {
        wrapKey: async (m, a) => {
          wraps++;
          return root.wrapKey(m, a);
        },
      }),
    );
    await rejects(c.wrapKey(new Uint8Array(15).fill(1), aad), InvalidInputError.isInstance, /16\.\.64 bytes/);
    await rejects(c.wrapKey(new Uint8Array(65).fill(1), aad), InvalidInputError.isInstance);
    await rejects(c.wrapKey('x' as unknown as Uint8Array, aad), InvalidInputError.isInstance);
    expect(wraps).toBe(0);
    expect((await c.wrapKey(new Uint8Array(randomBytes(16)), aad)).length).toBeGreaterThan(0);
  });

  it('Precondition: the wrapped blob is 1..MAX_ROOT_WRAPPED_BYTES bytes (refused before the backend sees it)', async () => {
    const { root } = await softwareRoot();
    const b = faulty(root, {});
    const c = checkedRoot(b);
    await rejects(
      c.unwrapKey(new Uint8Array(MAX_ROOT_WRAPPED_BYTES + 1), aad),
      (e) => (e as { code?: string }).code === 'KW_FORMAT',
    );
    await rejects(c.unwrapKey(new Uint8Array(0), aad), (e) => (e as { code?: string }).code === 'KW_FORMAT');
    expect(b.unwrapCalls).toBe(0);
  });

  it('Precondition: the unsealing secret is a Uint8Array of the length the root describes', async () => {
    const { root, key } = await softwareRoot();
    const c = checkedRoot(root);
    await root.seal();
    await rejects(c.sealable!.unseal(key.subarray(0, 31)), InvalidInputError.isInstance, /unseal-key must be 32 bytes/);
    expect(root.isSealed()).toBe(true);
    await c.sealable!.unseal(key);
    expect(root.isSealed()).toBe(false);
  });
});

describe('checked root: postconditions', () => {
  it('Postcondition: describe() gives a kind (lower-case token), an id (1..128 printable ASCII), a label and a wrap algorithm', async () => {
    const { root } = await softwareRoot();
    for (const bad of [{ kind: 'Software Root' }, { id: '' }, { id: 'has space' }, { label: 3 }]) {
      const b = faulty(root, { describe: () => ({ ...root.describe(), ...bad }) as never });
      expect(() => checkedRoot(b)).toThrow(RootContractError);
    }
  });

  it('the kind is an open string: a backend of a new kind works with Keywarden, and its missing capabilities are typed errors naming it', async () => {
    const { store, root } = await softwareRoot();
    const acme = faulty(root, { describe: () => ({ ...root.describe(), kind: 'acme-hsm' }) });
    const kw = new Keywarden({ store, root: acme });
    await kw.createKey('k');
    const dk = await kw.generateDataKey('k');
    expect(Array.from(await kw.decryptDataKey(dk.wrapped, undefined, { key: 'k' }))).toEqual(Array.from(dk.plaintext));
    expect(() => requireRandom(acme)).toThrow(UnsupportedCapabilityError);
    expect(() => requireDestroyable(acme)).toThrow(/root: acme-hsm root cannot be destroyed/);
    expect(() => requireKekInRoot(acme)).toThrow(/root: acme-hsm root cannot hold KEKs/);
  });

  it('Postcondition: the wrapped blob is 1..MAX_ROOT_WRAPPED_BYTES bytes', async () => {
    const { store, root } = await softwareRoot();
    const huge = faulty(root, { wrapKey: async () => new Uint8Array(MAX_ROOT_WRAPPED_BYTES + 1).fill(7) });
    await rejects(
      checkedRoot(huge).wrapKey(new Uint8Array(randomBytes(32)), aad),
      RootContractError.isInstance,
      /wrapKey returned a blob outside/,
    );
    const empty = faulty(root, { wrapKey: async () => new Uint8Array(0) });
    await rejects(checkedRoot(empty).wrapKey(new Uint8Array(randomBytes(32)), aad), RootContractError.isInstance);
    // Keywarden goes through the checked root: nothing oversize reaches the store.
    const kw = new Keywarden({ store, root: huge });
    await rejects(kw.createKey('k'), RootContractError.isInstance);
    expect(await store.listKeys()).toEqual([]);
  });

  it('Postcondition: a wrap never begins like a KEK-in-root record', async () => {
    const { root } = await softwareRoot();
    const b = faulty(root, { wrapKey: async () => Uint8Array.from([...KEK_IN_ROOT_MAGIC, 1, 2, 3]) });
    await rejects(checkedRoot(b).wrapKey(new Uint8Array(randomBytes(32)), aad), RootContractError.isInstance);
  });

  it('Postcondition: the unwrapped material is MIN_ROOT_MATERIAL_BYTES..MAX_ROOT_MATERIAL_BYTES bytes (and a refused result is wiped)', async () => {
    const { root } = await softwareRoot();
    const short = new Uint8Array(8).fill(9);
    const b = faulty(root, { unwrapKey: async () => short });
    const w = await root.wrapKey(new Uint8Array(randomBytes(32)), aad);
    await rejects(
      checkedRoot(b).unwrapKey(w, aad),
      RootContractError.isInstance,
      /unwrapKey returned key material outside/,
    );
    expect(Array.from(short)).toEqual(new Array(8).fill(0));
  });

  it("Postcondition: the root's id did not change", async () => {
    const { root } = await softwareRoot();
    let id = root.describe().id;
    const b = faulty(root, {
      describe: () => ({ ...root.describe(), id }),
    });
    const c = checkedRoot(b);
    const w = await c.wrapKey(new Uint8Array(randomBytes(32)), aad);
    id = 'root_changed';
    await rejects(c.unwrapKey(w, aad), RootContractError.isInstance, /id changed/);
    await rejects(c.wrapKey(new Uint8Array(randomBytes(32)), aad), RootContractError.isInstance);
    expect(() => c.describe()).toThrow(RootContractError);
  });

  it('Postcondition: the random source returns exactly the requested number of bytes', async () => {
    const { root } = await softwareRoot();
    const b = faulty(root, { random: { randomBytes: async (n: number) => new Uint8Array(n - 1) } });
    await rejects(checkedRoot(b).random!.randomBytes(32), RootContractError.isInstance);
  });

  it('Postcondition: after seal() the root reports itself sealed', async () => {
    const { root } = await softwareRoot();
    const b = faulty(root, {
      sealable: {
        isSealed: () => false,
        seal: async () => {},
        unseal: async () => {},
        unsealSecret: () => root.unsealSecret(),
      },
    });
    await rejects(checkedRoot(b).sealable!.seal(), RootContractError.isInstance, /still reports unsealed/);
  });

  it('checkedRoot is idempotent: a checked root is not wrapped twice', async () => {
    const { root } = await softwareRoot();
    const c = checkedRoot(root);
    expect(checkedRoot(c)).toBe(c);
  });
});
