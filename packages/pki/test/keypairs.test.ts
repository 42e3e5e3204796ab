import { createPublicKey, verify } from 'node:crypto';
import {
  DecryptionError,
  InvalidInputError,
  KeyDestroyedError,
  KeyExistsError,
  KeyNotFoundError,
  KeyStateError,
} from '@keywarden/core';
import { type KeyPairAlgorithm, KeyPairs, algorithmOfPublicKey } from '../src/index.js';
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { setup } from './_setup.js';

let env: Awaited<ReturnType<typeof setup>>;
beforeAll(async () => {
  env = await setup();
});
afterAll(async () => {
  await env.close();
});

const meta = async (name: string) =>
  JSON.parse(new TextDecoder().decode((await env.kw.store.getMeta(`pki/keypair/${name}`)) ?? new Uint8Array()));

describe('KeyPairs', () => {
  it('create → version 1 primary; the signer signs what node:crypto verifies with the stored public key', async () => {
    const info = await env.pairs.create('kp-basic', { algorithm: 'ECDSA-P256' });
    expect(info.primaryVersion).toBe(1);
    expect(info.kek).toBe('pki');
    expect(algorithmOfPublicKey(info.versions[0]?.publicKey ?? new Uint8Array())).toBe('ECDSA-P256');
    const signer = await env.pairs.signer('kp-basic');
    const data = new TextEncoder().encode('hello');
    const sig = await signer.sign(data);
    const key = createPublicKey({ key: Buffer.from(signer.publicKey), format: 'der', type: 'spki' });
    expect(verify('sha256', data, key, sig)).toBe(true);
    expect(verify('sha256', new TextEncoder().encode('hellp'), key, sig)).toBe(false);
    await expect(env.pairs.create('kp-basic', { algorithm: 'RSA-2048' })).rejects.toThrow(KeyExistsError);
    expect(await env.pairs.list()).toContain('kp-basic');
  });

  it('the private key is stored only as an envelope under the KEK, bound to the key pair name and version', async () => {
    await env.pairs.create('kp-a', { algorithm: 'Ed25519' });
    await env.pairs.create('kp-b', { algorithm: 'Ed25519' });
    const a = await meta('kp-a');
    const b = await meta('kp-b');
    // The stored private key opens only as a Keywarden envelope of the "pki" KEK under its own context.
    const pkcs8 = await env.kw.decrypt(new Uint8Array(Buffer.from(a.versions[0].privateKey, 'base64')), {
      key: 'pki',
      context: { pki_key_pair: 'kp-a', pki_version: '1' },
    });
    expect(pkcs8[0]).toBe(0x30);
    pkcs8.fill(0);
    // Moving A's envelope into B's record: B's signer refuses (the context names kp-a).
    b.versions[0].privateKey = a.versions[0].privateKey;
    await env.kw.store.putMeta('pki/keypair/kp-b', new TextEncoder().encode(JSON.stringify(b)));
    await expect(env.pairs.signer('kp-b')).rejects.toThrow(DecryptionError);
  });

  it('rotate, disable, enable, destroy follow the KEK rules', async () => {
    await env.pairs.create('kp-life', { algorithm: 'ECDSA-P384' });
    const v1 = await env.pairs.signer('kp-life');
    const rotated = await env.pairs.rotate('kp-life');
    expect(rotated.primaryVersion).toBe(2);
    expect(rotated.versions.map((v) => [v.version, v.state])).toEqual([
      [1, 'enabled'],
      [2, 'enabled'],
    ]);
    const v2 = await env.pairs.signer('kp-life');
    expect(Buffer.from(v2.publicKey).equals(Buffer.from(v1.publicKey))).toBe(false);
    expect(Buffer.from((await env.pairs.signer('kp-life', 1)).publicKey).equals(Buffer.from(v1.publicKey))).toBe(true);

    await expect(env.pairs.disable('kp-life', 2)).rejects.toThrow(KeyStateError);
    await expect(env.pairs.destroy('kp-life', 2)).rejects.toThrow(/primary/);
    await env.pairs.disable('kp-life', 1);
    await expect(env.pairs.signer('kp-life', 1)).rejects.toThrow(KeyStateError);
    await env.pairs.enable('kp-life', 1);
    await env.pairs.signer('kp-life', 1);
    await env.pairs.destroy('kp-life', 1);
    expect((await meta('kp-life')).versions[0].privateKey).toBe('');
    await expect(env.pairs.signer('kp-life', 1)).rejects.toThrow(KeyDestroyedError);
    await expect(env.pairs.enable('kp-life', 1)).rejects.toThrow(KeyDestroyedError);
    // The public key outlives the private key (certificates still name it).
    expect((await env.pairs.get('kp-life')).versions[0]?.publicKey).toEqual(v1.publicKey);
    await expect(env.pairs.signer('kp-life', 3)).rejects.toThrow(KeyNotFoundError);
  });

  it('list() names every key pair whose record exists, even when the index names one whose record never landed', async () => {
    await env.pairs.create('kp-listed', { algorithm: 'ECDSA-P256' });
    const index = JSON.parse(new TextDecoder().decode(await env.kw.store.getMeta('pki/keypair/index')));
    // What a crash between the two writes of create() leaves: the name indexed, no record.
    await env.kw.store.putMeta(
      'pki/keypair/index',
      new TextEncoder().encode(JSON.stringify([...index, 'kp-crashed'].sort())),
    );
    const listed = await env.pairs.list();
    expect(listed).toContain('kp-listed');
    expect(listed).not.toContain('kp-crashed');
    await env.pairs.create('kp-crashed', { algorithm: 'ECDSA-P256' });
    expect(await env.pairs.list()).toContain('kp-crashed');
  });

  it('bad input is a typed error', async () => {
    await expect(env.pairs.create('bad name', { algorithm: 'ECDSA-P256' })).rejects.toThrow(InvalidInputError);
    await expect(env.pairs.create('index', { algorithm: 'ECDSA-P256' })).rejects.toThrow(InvalidInputError);
    await expect(env.pairs.create('kp-x', { algorithm: 'DSA-1024' as never })).rejects.toThrow(
      /unknown key pair algorithm/,
    );
    await expect(env.pairs.get('missing')).rejects.toThrow(KeyNotFoundError);
    await expect(
      new KeyPairs({ keywarden: env.kw, kek: 'no-such-kek' }).create('kp-y', { algorithm: 'ECDSA-P256' }),
    ).rejects.toThrow(KeyNotFoundError);
  });

  it('property: every signature of every algorithm verifies with node:crypto over the signed bytes only', async () => {
    const make = async (name: string, algorithm: KeyPairAlgorithm) => {
      await env.pairs.create(name, { algorithm });
      return env.pairs.signer(name);
    };
    const signers = {
      'ECDSA-P256': await make('pp-p256', 'ECDSA-P256'),
      'ECDSA-P384': await make('pp-p384', 'ECDSA-P384'),
      'RSA-2048': await make('pp-rsa', 'RSA-2048'),
      Ed25519: await make('pp-ed', 'Ed25519'),
    };
    const hashOf = { 'ECDSA-P256': 'sha256', 'ECDSA-P384': 'sha384', 'RSA-2048': 'sha256', Ed25519: null } as const;
    await fc.assert(
      fc.asyncProperty(
        fc.constantFrom(...(Object.keys(signers) as Array<keyof typeof signers>)),
        fc.uint8Array({ maxLength: 512 }),
        fc.nat(),
        async (alg, data, flip) => {
          const signer = signers[alg];
          const sig = await signer.sign(data);
          const key = createPublicKey({ key: Buffer.from(signer.publicKey), format: 'der', type: 'spki' });
          expect(verify(hashOf[alg], data, key, sig)).toBe(true);
          const other = Uint8Array.from([...data, 0]);
          other[flip % other.length] = (other[flip % other.length] ?? 0) ^ 0x01;
          expect(verify(hashOf[alg], other, key, sig)).toBe(false);
        },
      ),
      { numRuns: 60 },
    );
  });
});
