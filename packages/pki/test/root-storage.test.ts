/**
 * KeyPairs with storage "root" on a root that cannot hold key pairs (the software root): a typed
 * error, before anything is written. The PKCS#11 root's key pairs are tested against SoftHSM2 in
 * packages/pkcs11/test/pki.test.ts.
 */
import { InvalidInputError, KeyNotFoundError, UnsupportedCapabilityError } from '@keywarden/core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { KeyPairs, type KeyPairStorage } from '../src/index.js';
import { setup } from './_setup.js';

let env: Awaited<ReturnType<typeof setup>>;
beforeAll(async () => {
  env = await setup();
});
afterAll(async () => {
  await env.close();
});

describe('key pairs held in the root', () => {
  it('storage "root" on the software root is an UnsupportedCapabilityError, and nothing is recorded', async () => {
    const pairs = new KeyPairs({ keywarden: env.kw, storage: 'root' });
    await expect(pairs.create('in-root', { algorithm: 'ECDSA-P256' })).rejects.toThrow(UnsupportedCapabilityError);
    await expect(
      new KeyPairs({ keywarden: env.kw }).create('in-root', { algorithm: 'ECDSA-P256', storage: 'root' }),
    ).rejects.toThrow(/software root cannot hold key pairs/);
    await expect(pairs.get('in-root')).rejects.toThrow(KeyNotFoundError);
    expect(await pairs.list()).not.toContain('in-root');
  });

  it('an unknown storage is an InvalidInputError; the default is "kek"', async () => {
    expect(() => new KeyPairs({ keywarden: env.kw, storage: 'disk' as KeyPairStorage })).toThrow(InvalidInputError);
    const info = await new KeyPairs({ keywarden: env.kw }).create('in-kek', { algorithm: 'ECDSA-P256' });
    expect(info.storage).toBe('kek');
  });
});
