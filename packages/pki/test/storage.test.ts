import { X509Certificate } from 'node:crypto';
import { KeyDestroyedError, Keywarden, SoftwareRoot, rewrapUnderNewRoot } from '@keywarden/core';
import { afterEach, describe, expect, it } from 'vitest';
import { CertificateAuthority, KeyPairs, createCsr } from '../src/index.js';
import { setup } from './_setup.js';

const cleanups: Array<() => Promise<void>> = [];
afterEach(async () => {
  for (const c of cleanups.splice(0)) await c();
});

describe('key pairs live under the KEK, so the key hierarchy carries them', () => {
  it('root rotation: after rewrapUnderNewRoot the CA signs with the same key through a Keywarden on the new root', async () => {
    const env = await setup();
    cleanups.push(env.close);
    const ca = await CertificateAuthority.create(env.kw, env.pairs, 'rot-ca', {
      subject: { commonName: 'Rotation CA' },
      algorithm: 'ECDSA-P256',
      validityDays: 30,
    });
    const caCert = new X509Certificate(await ca.certificate());

    const next = await SoftwareRoot.createForRotation({
      unsealKey: Uint8Array.from(env.unsealKey),
      unseal: env.root.document.unseal,
    });
    await rewrapUnderNewRoot(env.store, env.root, next.root);
    const kw2 = new Keywarden({ store: env.store, root: next.root });
    cleanups.push(async () => {
      await kw2.close();
      await next.root.close();
    });
    const pairs2 = new KeyPairs({ keywarden: kw2 });
    const ca2 = await CertificateAuthority.open(kw2, pairs2, 'rot-ca');
    await pairs2.create('rot-leaf', { algorithm: 'RSA-2048' });
    const csr = await createCsr(await pairs2.signer('rot-leaf'), { subject: { commonName: 'leaf.test' } });
    const leaf = new X509Certificate(await ca2.issue({ csr, profile: 'client', validityDays: 1 }));
    expect(leaf.checkIssued(caCert)).toBe(true);
    expect(leaf.verify(caCert.publicKey)).toBe(true);
  });

  it('crypto-shredding: destroying the KEK version destroys every private key under it (the signer cannot open it)', async () => {
    const env = await setup();
    cleanups.push(env.close);
    await env.kw.createKey('shred-kek');
    const pairs = new KeyPairs({ keywarden: env.kw, kek: 'shred-kek' });
    await pairs.create('shred', { algorithm: 'ECDSA-P384' });
    await pairs.signer('shred');
    await env.kw.rotateKey('shred-kek');
    await env.kw.disableVersion('shred-kek', 1);
    await env.kw.destroyVersion('shred-kek', 1, { force: true });
    const err = await pairs.signer('shred').catch((e: unknown) => e);
    expect(KeyDestroyedError.isInstance(err)).toBe(true);
    expect((err as Error).message).toMatch(/v1 was destroyed/);
    // Key pairs made after the KEK rotation sit under v2 and still work.
    await pairs.create('shred-2', { algorithm: 'ECDSA-P384' });
    await pairs.signer('shred-2');
  });
});
