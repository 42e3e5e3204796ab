import { createHash, randomBytes } from 'node:crypto';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { destroyRoot, Keywarden, MemoryKeyStore, openRoot, rootSchemes } from '@keywarden/core';
import { Esys, lockDevice, TPM2_ALG } from '@keywarden/tss2';
import { beforeAll, describe, expect, it } from 'vitest';
import { parseTpmUri, TPM_ROOT_META_NAME, TPM_TOMBSTONE_META_NAME, TpmRoot } from '../src/index.js';
import { freshRoot, relaxDictionaryAttack, tcti } from './_tpm.js';

const enc = new TextEncoder();

beforeAll(() => relaxDictionaryAttack());

describe('Keywarden end to end through the TPM root', () => {
  it('createKey, encrypt and decrypt with a context, rotate, reopen the store and decrypt again', async () => {
    const store = new MemoryKeyStore();
    const secret = new Uint8Array(randomBytes(32));
    const root = await openRoot('tpm:alg=ecc', { store, create: true, secret, env: { KEYWARDEN_TPM_TCTI: tcti() } });
    expect(root.describe().kind).toBe('tpm');
    const kw = new Keywarden({ store, root });
    await kw.createKey('orders');
    const context = { tenant: 'acme' };
    const sealed = await kw.encrypt(enc.encode('4111 1111 1111 1111'), { key: 'orders', context });
    expect(new TextDecoder().decode(await kw.decrypt(sealed, { key: 'orders', context }))).toBe('4111 1111 1111 1111');
    await expect(kw.decrypt(sealed, { key: 'orders', context: { tenant: 'other' } })).rejects.toMatchObject({
      code: 'KW_DECRYPT',
    });
    await kw.rotateKey('orders');
    const sealed2 = await kw.encrypt(enc.encode('v2'), { key: 'orders', context });
    await kw.close();
    await root.close();

    // A new process: the root is re-derived from the owner hierarchy; sealed until its auth value.
    const again = await openRoot('tpm:', { store, env: { KEYWARDEN_TPM_TCTI: tcti() } });
    expect(again.sealable?.isSealed()).toBe(true);
    const kw2 = new Keywarden({ store, root: again });
    await expect(kw2.decrypt(sealed, { key: 'orders', context })).rejects.toMatchObject({ code: 'KW_KEYSTORE_SEALED' });
    await again.sealable?.unseal(secret);
    expect(new TextDecoder().decode(await kw2.decrypt(sealed, { key: 'orders', context }))).toBe('4111 1111 1111 1111');
    expect(new TextDecoder().decode(await kw2.decrypt(sealed2, { key: 'orders', context }))).toBe('v2');
    await kw2.close();
    await again.close();
  });

  it('the "tpm:" scheme is registered by importing the package; the store holds the non-secret record only', async () => {
    expect(rootSchemes()).toContain('tpm');
    const { root, store, secret } = await freshRoot();
    const record = Buffer.from((await store.getMeta(TPM_ROOT_META_NAME)) as Uint8Array).toString('utf8');
    expect(JSON.parse(record)).toMatchObject({ v: 1, kind: 'tpm', alg: 'ecc' });
    expect(record).not.toContain(Buffer.from(secret).toString('base64'));
    expect(record).not.toContain(Buffer.from(secret).toString('hex'));
    await root.close();
  });

  it('a KEK wrapped by one root is refused by another TPM root on the same TPM (its own K)', async () => {
    const a = await freshRoot();
    const b = await freshRoot();
    const w = await a.root.wrapKey(new Uint8Array(32).fill(7), enc.encode('aad'));
    await expect(b.root.unwrapKey(w, enc.encode('aad'))).rejects.toMatchObject({ code: 'KW_DECRYPT' });
    await a.root.close();
    await b.root.close();
  });

  it('a root without an auth value: not sealable, not destroyable, still wraps and unwraps', async () => {
    const store = new MemoryKeyStore();
    const root = await TpmRoot.create({ store, tcti: tcti() });
    expect(root.sealable).toBeUndefined();
    expect(root.destroyable).toBeUndefined();
    const m = new Uint8Array(randomBytes(32));
    expect(Array.from(await root.unwrapKey(await root.wrapKey(m, enc.encode('x')), enc.encode('x')))).toEqual(
      Array.from(m),
    );
    await root.close();
  });

  it('a store made on another TPM (a different primary name) is refused at open, naming why', async () => {
    const { root, store } = await freshRoot();
    await root.close();
    const record = JSON.parse(Buffer.from((await store.getMeta(TPM_ROOT_META_NAME)) as Uint8Array).toString('utf8'));
    record.primaryName = `000b${'00'.repeat(32)}`;
    await store.putMeta(TPM_ROOT_META_NAME, new Uint8Array(Buffer.from(JSON.stringify(record))));
    await expect(TpmRoot.load({ store, tcti: tcti() })).rejects.toMatchObject({
      code: 'KW_ROOT_DEVICE',
      message: expect.stringMatching(/^tpm: this TPM's storage key is not the one/),
    });
  });
});

describe("destroying a store's TPM root without opening it (registry record hooks)", () => {
  it('destroyRoot(store, { unsealKey }) finds the TPM record, checks the auth value on the TPM, destroys; the root no longer opens', async () => {
    const { root, store, secret } = await freshRoot();
    const kw = new Keywarden({ store, root });
    const { id } = await kw.createKey('doomed');
    await kw.close();
    await root.close();
    await expect(destroyRoot(store, { unsealKey: new Uint8Array(32).fill(1) })).rejects.toMatchObject({
      code: 'KW_UNSEAL',
    });
    expect(await store.getMeta(TPM_ROOT_META_NAME)).toBeDefined();
    const result = await destroyRoot(store, { unsealKey: secret });
    expect(result.destroyed).toBe(1);
    expect((await store.getVersion(id, 1))?.state).toBe('destroyed');
    expect(await store.getMeta(TPM_ROOT_META_NAME)).toBeUndefined();
    expect(await store.getMeta(TPM_TOMBSTONE_META_NAME)).toBeDefined();
    await expect(TpmRoot.load({ store, tcti: tcti() })).rejects.toMatchObject({ code: 'KW_ROOT_DESTROYED' });
    // Idempotent: finishing again changes nothing.
    expect((await destroyRoot(store, { unsealKey: secret })).alreadyDestroyed).toBe(1);
  });
});

describe('PCR binding', () => {
  it('a KEK bound to PCR 16 unwraps until PCR 16 is extended, then fails with TpmPcrPolicyError', async () => {
    const { root } = await freshRoot({ pcrs: [16] });
    expect(root.describe().label).toMatch(/PCRs 16/);
    const m = new Uint8Array(randomBytes(32));
    const w = await root.wrapKey(m, enc.encode('pcr'));
    expect(Array.from(await root.unwrapKey(w, enc.encode('pcr')))).toEqual(Array.from(m));
    await expect(root.unwrapKey(w, enc.encode('other'))).rejects.toMatchObject({ code: 'KW_DECRYPT' });
    const esys = await Esys.open({ tcti: tcti() });
    await esys.pcrExtend(16, [{ hash: TPM2_ALG.SHA256, digest: createHash('sha256').update('boot changed').digest() }]);
    await esys.close();
    const err = await root.unwrapKey(w, enc.encode('pcr')).then(
      () => undefined,
      (e: unknown) => e as Error & { code: string },
    );
    expect(err?.name).toBe('TpmPcrPolicyError');
    expect(err?.code).toBe('KW_ROOT_DEVICE');
    expect(err?.message).toMatch(/^tpm: the PCR values differ from those the key was sealed under/);
    // A key wrapped now binds the new value.
    const w2 = await root.wrapKey(m, enc.encode('pcr'));
    expect(Array.from(await root.unwrapKey(w2, enc.encode('pcr')))).toEqual(Array.from(m));
    expect(root.stats()?.liveHandles).toBe(0); // between operations: no primary, no session, no object
    await root.close();
  });
});

describe('tpm: URIs', () => {
  it('parses attributes and query parameters', () => {
    expect(parseTpmUri('tpm:')).toEqual({});
    expect(
      parseTpmUri('tpm:alg=rsa;handle=0x81000001;pcrs=sha256:16,7?tcti=swtpm:host=127.0.0.1,port=2321&timeout-ms=500'),
    ).toEqual({
      alg: 'rsa',
      handle: 0x81000001,
      pcrs: [7, 16],
      tcti: 'swtpm:host=127.0.0.1,port=2321',
      timeoutMs: 500,
    });
    expect(parseTpmUri('tpm:?tcti=device%3A%2Fdev%2Ftpmrm0&auth-env=TPM_AUTH')).toEqual({
      tcti: 'device:/dev/tpmrm0',
      authEnv: 'TPM_AUTH',
    });
    expect(parseTpmUri('tpm:?lock=%2Frun%2Fkw%2Ftpm.lock')).toEqual({ lockFile: '/run/kw/tpm.lock' });
    expect(parseTpmUri('tpm:?lock=none')).toEqual({ lockFile: false });
  });

  it('refuses what it does not know, without echoing the URI', () => {
    for (const bad of [
      'tpm:alg=dsa',
      'tpm:handle=0x80000001',
      'tpm:pcrs=24',
      'tpm:colour=blue',
      'tpm:?tcti=a&tcti-env=B',
      'tpm:?auth-env=A&auth-file=/x',
      'tpm:alg=ecc;alg=rsa',
      'tpm:?timeout-ms=0',
      'tpm:?lock=relative.lock',
      'pkcs11:token=x',
    ]) {
      expect(() => parseTpmUri(bad), bad).toThrow(expect.objectContaining({ code: 'KW_BAD_INPUT' }));
    }
  });

  it('openRoot reads the auth value from auth-env and the TCTI from tcti-env', async () => {
    const store = new MemoryKeyStore();
    const env = { MY_TCTI: tcti(), MY_AUTH: 'correct horse battery' };
    const root = await openRoot('tpm:?tcti-env=MY_TCTI&auth-env=MY_AUTH', { store, create: true, env });
    await root.close();
    const again = await openRoot('tpm:?tcti-env=MY_TCTI&auth-env=MY_AUTH', { store, env });
    expect(again.sealable?.isSealed()).toBe(false);
    await again.close();
    await expect(
      openRoot('tpm:?tcti-env=MY_TCTI&auth-env=MY_AUTH', { store, env: { ...env, MY_AUTH: 'wrong horse battery' } }),
    ).rejects.toMatchObject({ code: 'KW_UNSEAL' });
  });

  it('lock=PATH: the root takes that lock around its TPM operations (an operation waits while another holder has it)', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'keywarden-tpm-lock-'));
    try {
      const file = join(dir, 'tpm.lock');
      const store = new MemoryKeyStore();
      const uri = `tpm:?lock=${encodeURIComponent(file)}`;
      const root = await openRoot(uri, { store, create: true, env: { KEYWARDEN_TPM_TCTI: tcti() } });
      expect(existsSync(file)).toBe(true);
      const held = await lockDevice(file, 5_000);
      const order: string[] = [];
      const pending = (root.random as NonNullable<typeof root.random>)
        .randomBytes(16)
        .then(() => order.push('operation'));
      await new Promise((r) => setTimeout(r, 200));
      order.push('released');
      held.release();
      await pending;
      expect(order).toEqual(['released', 'operation']);
      await root.close();
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
