import { randomBytes } from 'node:crypto';
import { AccessDeniedError, Keywarden, MemoryKeyStore, Policy, SoftwareRoot } from '@keywarden/core';
import { describe, expect, it } from 'vitest';
import { KeyPairs } from '../src/index.js';

describe('who may sign is who may decrypt under the KEK (the key manager policy decides)', () => {
  it('a principal allowed to decrypt under "pki" gets a signer; one that is not is refused with AccessDeniedError', async () => {
    const store = new MemoryKeyStore();
    const root = await SoftwareRoot.initialize(store, { unsealKey: new Uint8Array(randomBytes(32)) });
    const policy = Policy.parse(
      [
        'keywarden-policy 1',
        'principal admin',
        'principal ca-service',
        'principal web',
        'allow admin administer,encrypt on *',
        'allow ca-service decrypt on pki',
        'allow web encrypt,decrypt on app-*',
      ].join('\n'),
    );
    const kw = new Keywarden({ store, root, policy, principal: 'admin' });
    try {
      await kw.createKey('pki');
      await new KeyPairs({ keywarden: kw }).create('ca-key', { algorithm: 'ECDSA-P256' });
      const signer = await new KeyPairs({ keywarden: kw.as('ca-service') }).signer('ca-key');
      expect(signer.publicKey.length).toBeGreaterThan(0);
      const denied = await new KeyPairs({ keywarden: kw.as('web') }).signer('ca-key').catch((e: unknown) => e);
      expect(AccessDeniedError.isInstance(denied)).toBe(true);
      // Creating a key pair is an encrypt under the KEK: refused to a principal without it.
      const refused = await new KeyPairs({ keywarden: kw.as('ca-service') })
        .create('other', { algorithm: 'ECDSA-P256' })
        .catch((e: unknown) => e);
      expect(AccessDeniedError.isInstance(refused)).toBe(true);
    } finally {
      await kw.close();
      await root.close();
      await store.close();
    }
  });
});
