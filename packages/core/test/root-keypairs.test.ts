/**
 * The checked root's key-pair capability (root.ts #checkedKeyPairs): test names repeat its
 * "Precondition:" / "Postcondition:" comments. The backend is a real SoftwareRoot with a
 * `keyPairs` made of node:crypto key pairs kept in a Map, and hooks broken one at a time the way a
 * faulty backend would break them.
 */
import { generateKeyPairSync, type KeyObject, randomBytes, sign as nodeSign, verify } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import {
  checkedRoot,
  InvalidInputError,
  type KeyPairRoot,
  KeyDestroyedError,
  MAX_ROOT_WRAPPED_BYTES,
  MemoryKeyStore,
  requireKeyPairs,
  RootContractError,
  type RootKeyPairAlgorithm,
  type RootOfTrust,
  SoftwareRoot,
  UnsupportedCapabilityError,
} from '../src/index.js';

function nodeKeyPairs(over: Partial<KeyPairRoot> = {}): KeyPairRoot & { calls: number } {
  const keys = new Map<string, KeyObject>();
  const k = {
    calls: 0,
    algorithms: ['ECDSA-P256'] as RootKeyPairAlgorithm[],
    async generate() {
      const { privateKey, publicKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
      const handle = new Uint8Array(randomBytes(16));
      keys.set(Buffer.from(handle).toString('hex'), privateKey);
      return { handle, publicKey: new Uint8Array(publicKey.export({ type: 'spki', format: 'der' })) };
    },
    async sign(handle: Uint8Array, data: Uint8Array) {
      k.calls++;
      const key = keys.get(Buffer.from(handle).toString('hex'));
      if (!key) throw new KeyDestroyedError('test: destroyed');
      return new Uint8Array(nodeSign('sha256', data, { key, dsaEncoding: 'ieee-p1363' }));
    },
    async destroy(handle: Uint8Array) {
      k.calls++;
      keys.delete(Buffer.from(handle).toString('hex'));
    },
    ...over,
  };
  return k;
}

async function rootWith(keyPairs: KeyPairRoot | undefined): Promise<RootOfTrust> {
  const store = new MemoryKeyStore();
  const inner = await SoftwareRoot.initialize(store, { unsealKey: new Uint8Array(randomBytes(32)) });
  return {
    describe: () => inner.describe(),
    wrapKey: (m, a) => inner.wrapKey(m, a),
    unwrapKey: (w, a) => inner.unwrapKey(w, a),
    close: () => inner.close(),
    ...(keyPairs ? { keyPairs } : {}),
  };
}

async function rejects(p: Promise<unknown>, check: (e: unknown) => boolean): Promise<void> {
  let err: unknown;
  try {
    await p;
  } catch (e) {
    err = e;
  }
  expect(err, 'expected a rejection').toBeDefined();
  expect(check(err), String(err)).toBe(true);
}

describe('checked root: key pairs', () => {
  it('a root without key pairs: requireKeyPairs is an UnsupportedCapabilityError naming the kind', async () => {
    const root = checkedRoot(await rootWith(undefined));
    expect(root.keyPairs).toBeUndefined();
    expect(() => requireKeyPairs(root)).toThrow(UnsupportedCapabilityError);
    expect(() => requireKeyPairs(root)).toThrow(/software root cannot hold key pairs/);
  });

  it('a checked root signs through the backend, and the signature verifies against the SPKI', async () => {
    const k = requireKeyPairs(checkedRoot(await rootWith(nodeKeyPairs())));
    const pair = await k.generate('ECDSA-P256', 'kw-kp/test/v1');
    const data = new Uint8Array(randomBytes(64));
    const sig = await k.sign(pair.handle, data);
    expect(
      verify(
        'sha256',
        data,
        { key: Buffer.from(pair.publicKey), format: 'der', type: 'spki', dsaEncoding: 'ieee-p1363' },
        sig,
      ),
    ).toBe(true);
    await k.destroy(pair.handle);
    await rejects(k.sign(pair.handle, data), (e) => KeyDestroyedError.isInstance(e));
  });

  it('Precondition: the root declares only algorithms this version knows', async () => {
    const backend = await rootWith(nodeKeyPairs({ algorithms: ['ECDSA-P256', 'DSA-1024' as RootKeyPairAlgorithm] }));
    expect(() => checkedRoot(backend)).toThrow(RootContractError);
  });

  it('Precondition: the algorithm is one the root declares', async () => {
    const k = requireKeyPairs(checkedRoot(await rootWith(nodeKeyPairs())));
    await rejects(k.generate('RSA-2048', 'kw-kp/x/v1'), (e) => UnsupportedCapabilityError.isInstance(e));
  });

  it('Precondition: the label is 1..128 printable ASCII characters', async () => {
    const k = requireKeyPairs(checkedRoot(await rootWith(nodeKeyPairs())));
    for (const label of ['', 'x'.repeat(129), 'tab\there', 'é']) {
      await rejects(k.generate('ECDSA-P256', label), (e) => InvalidInputError.isInstance(e));
    }
    await k.generate('ECDSA-P256', 'x'.repeat(128));
  });

  it('Postcondition: a key pair handle is 1..MAX_ROOT_WRAPPED_BYTES bytes and its public key a DER SEQUENCE of at most MAX_ROOT_WRAPPED_BYTES', async () => {
    const bad: Array<{ handle: Uint8Array; publicKey: Uint8Array }> = [
      { handle: new Uint8Array(0), publicKey: Uint8Array.of(0x30, 0) },
      { handle: new Uint8Array(MAX_ROOT_WRAPPED_BYTES + 1), publicKey: Uint8Array.of(0x30, 0) },
      { handle: new Uint8Array(8), publicKey: Uint8Array.of(0x04, 0) },
      { handle: new Uint8Array(8), publicKey: new Uint8Array(MAX_ROOT_WRAPPED_BYTES + 1).fill(0x30) },
    ];
    for (const pair of bad) {
      const k = requireKeyPairs(checkedRoot(await rootWith(nodeKeyPairs({ generate: async () => pair }))));
      await rejects(k.generate('ECDSA-P256', 'kw-kp/x/v1'), (e) => RootContractError.isInstance(e));
    }
  });

  it('Precondition: the handle is 1..MAX_ROOT_WRAPPED_BYTES bytes and the data a Uint8Array', async () => {
    const backend = nodeKeyPairs();
    const k = requireKeyPairs(checkedRoot(await rootWith(backend)));
    await rejects(k.sign(new Uint8Array(0), new Uint8Array(1)), (e) => InvalidInputError.isInstance(e));
    await rejects(k.sign(new Uint8Array(MAX_ROOT_WRAPPED_BYTES + 1), new Uint8Array(1)), (e) =>
      InvalidInputError.isInstance(e),
    );
    await rejects(k.sign(new Uint8Array(8), 'text' as unknown as Uint8Array), (e) => InvalidInputError.isInstance(e));
    await rejects(k.destroy(new Uint8Array(0)), (e) => InvalidInputError.isInstance(e));
    expect(backend.calls, 'refused before the backend saw them').toBe(0);
  });

  it('Postcondition: a signature is 1..MAX_SIGNATURE_BYTES bytes', async () => {
    for (const out of [new Uint8Array(0), new Uint8Array(513)]) {
      const k = requireKeyPairs(checkedRoot(await rootWith(nodeKeyPairs({ sign: async () => out }))));
      const pair = await k.generate('ECDSA-P256', 'kw-kp/x/v1');
      await rejects(k.sign(pair.handle, new Uint8Array(1)), (e) => RootContractError.isInstance(e));
    }
  });
});
