/**
 * Key pairs in the TPM root (keypairs.ts) beyond the conformance suite: every transient handle is
 * flushed, tpm2-tools sees the persistent signing key with the documented attributes and signs
 * with it under the documented auth value (openssl verifies against Keywarden's SPKI), and
 * @keywarden/pki's requests and CA certificates signed in the TPM pass openssl.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { checkedRoot, Keywarden, MemoryKeyStore, requireKeyPairs } from '@keywarden/core';
import { CertificateAuthority, createCsr, KeyPairs, toPem } from '@keywarden/pki';
import { Esys, TPM2_HR } from '@keywarden/tss2';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { TpmRoot } from '../src/index.js';
import { freshRoot, relaxDictionaryAttack, tcti } from './_tpm.js';

const dir = mkdtempSync(join(tmpdir(), 'keywarden-tpm-keypairs-'));
const f = (name: string) => join(dir, name);
beforeAll(() => relaxDictionaryAttack());
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** tpm2-tools, only while no Keywarden root is connected (swtpm serves one connection). */
function tools(cmd: string, ...args: string[]): string {
  return execFileSync(cmd, args, {
    cwd: dir,
    env: { ...process.env, TPM2TOOLS_TCTI: tcti(), TSS2_LOG: 'all+none' },
    timeout: 30_000,
    stdio: ['ignore', 'pipe', 'pipe'],
    encoding: 'utf8',
  });
}

function openssl(...args: string[]): { status: number; output: string } {
  const r = spawnSync('openssl', args, { encoding: 'utf8', timeout: 30_000 });
  return { status: r.status ?? -1, output: `${r.stdout}${r.stderr}` };
}

const persistentOf = (handle: Uint8Array): number => Buffer.from(handle).readUInt32BE(2);

async function tpmState(): Promise<{ transient: number[]; persistent: number[] }> {
  const esys = await Esys.open({ tcti: tcti() });
  try {
    return { transient: await esys.transientHandles(), persistent: await esys.handles(TPM2_HR.PERSISTENT) };
  } finally {
    await esys.close();
  }
}

describe('TPM root key pairs', () => {
  it('generate, sign and destroy leave no transient object in the TPM; destroy evicts the persistent one; another root can neither sign with nor destroy it', async () => {
    const { root, store, secret } = await freshRoot();
    const k = requireKeyPairs(checkedRoot(root));
    const kept = await k.generate('ECDSA-P256', 'kw-kp/kept/v1');
    const gone = await k.generate('ECDSA-P384', 'kw-kp/gone/v1');
    await k.sign(kept.handle, new Uint8Array(10));
    await k.sign(gone.handle, new Uint8Array(10));
    await k.destroy(gone.handle);
    await root.close();
    const state = await tpmState();
    // The root's storage key and session went with close(); nothing of the key pairs stays loaded.
    expect(state.transient).toEqual([]);
    expect(state.persistent).toContain(persistentOf(kept.handle));
    expect(state.persistent).not.toContain(persistentOf(gone.handle));

    // Another root (another auth secret) on the same TPM: the TPM refuses the key's auth value.
    const other = await freshRoot();
    const k2 = requireKeyPairs(checkedRoot(other.root));
    await expect(k2.sign(kept.handle, new Uint8Array(1))).rejects.toMatchObject({ code: 'KW_KEY_NOT_FOUND' });
    await expect(k2.destroy(kept.handle)).rejects.toMatchObject({ code: 'KW_KEY_NOT_FOUND' });
    await other.root.close();
    await other.store.close();
    expect((await tpmState()).persistent).toContain(persistentOf(kept.handle));

    const again = await TpmRoot.load({ store, tcti: tcti() });
    await again.sealable?.unseal(secret);
    await requireKeyPairs(checkedRoot(again)).destroy(kept.handle);
    await again.close();
    await store.close();
    expect((await tpmState()).persistent).not.toContain(persistentOf(kept.handle));
  });

  it('tpm2-tools: tpm2_readpublic shows the attributes and name Keywarden recorded, and tpm2_sign with the documented auth value makes a signature openssl verifies against the SPKI', async () => {
    // A root without an auth value: the key's auth is SHA-256("keywarden/tpm/keypair-auth/v1" ‖ 0x00 ‖ u32 handle).
    const store = new MemoryKeyStore();
    const root = await TpmRoot.create({ store, tcti: tcti() });
    const k = requireKeyPairs(checkedRoot(root));
    const pair = await k.generate('ECDSA-P256', 'kw-kp/tools/v1');
    await root.close();
    const ph = persistentOf(pair.handle);
    const hexHandle = `0x${ph.toString(16)}`;
    try {
      const yaml = tools('tpm2_readpublic', '-c', hexHandle);
      expect(/^name: ([0-9a-f]+)$/m.exec(yaml)?.[1]).toBe(Buffer.from(pair.handle.subarray(6)).toString('hex'));
      const attrs = /^attributes:\n\s+value: ([a-z|]+)$/m.exec(yaml)?.[1] ?? '';
      for (const a of ['fixedtpm', 'fixedparent', 'sensitivedataorigin', 'userwithauth', 'noda', 'sign']) {
        expect(attrs.split('|'), yaml).toContain(a);
      }
      expect(attrs.split('|')).not.toContain('restricted');
      expect(attrs.split('|')).not.toContain('decrypt');

      const domain = Buffer.from('keywarden/tpm/keypair-auth/v1\0', 'utf8');
      const u32 = Buffer.alloc(4);
      u32.writeUInt32BE(ph);
      const auth = createHash('sha256').update(domain).update(u32).digest('hex');
      const message = randomBytes(300);
      writeFileSync(f('msg.bin'), message);
      tools(
        'tpm2_sign',
        '-c',
        hexHandle,
        '-p',
        `hex:${auth}`,
        '-g',
        'sha256',
        '-s',
        'ecdsa',
        '-f',
        'plain',
        '-o',
        f('sig.der'),
        f('msg.bin'),
      );
      writeFileSync(f('pub.pem'), toPem(pair.publicKey, 'PUBLIC KEY'));
      const v = openssl('dgst', '-sha256', '-verify', f('pub.pem'), '-signature', f('sig.der'), f('msg.bin'));
      expect(v.output).toContain('Verified OK');
      expect(v.status).toBe(0);
    } finally {
      const r2 = await TpmRoot.load({ store, tcti: tcti() });
      await requireKeyPairs(checkedRoot(r2)).destroy(pair.handle);
      await r2.close();
      await store.close();
    }
  });

  it('RSA-3072: a 3072-bit RSA signing key in the TPM (openssl reads the SPKI), RSASSA over SHA-384 that openssl verifies against the SPKI; destroy evicts it', async () => {
    const { root, store } = await freshRoot();
    const k = requireKeyPairs(checkedRoot(root));
    expect(k.algorithms).toContain('RSA-3072');
    const pair = await k.generate('RSA-3072', 'kw-kp/rsa3072/v1');
    const message = randomBytes(200);
    const sig = await k.sign(pair.handle, new Uint8Array(message));
    await k.destroy(pair.handle);
    await root.close();
    await store.close();
    expect(sig).toHaveLength(384);
    writeFileSync(f('rsa.pem'), toPem(pair.publicKey, 'PUBLIC KEY'));
    writeFileSync(f('rsa.msg'), message);
    writeFileSync(f('rsa.sig'), sig);
    const text = openssl('pkey', '-pubin', '-in', f('rsa.pem'), '-noout', '-text');
    expect(text.output).toMatch(/Public-Key: \(3072 bit\)/);
    const v = openssl('dgst', '-sha384', '-verify', f('rsa.pem'), '-signature', f('rsa.sig'), f('rsa.msg'));
    expect(v.output).toContain('Verified OK');
    const w = openssl('dgst', '-sha256', '-verify', f('rsa.pem'), '-signature', f('rsa.sig'), f('rsa.msg'));
    expect(w.status).not.toBe(0);
    expect((await tpmState()).persistent).not.toContain(persistentOf(pair.handle));
  });

  it('@keywarden/pki with its keys in the TPM: openssl req -verify accepts the request, openssl verify -CAfile the certificate of a CA whose key is in the TPM', async () => {
    const { root, store } = await freshRoot();
    const kw = new Keywarden({ store, root });
    try {
      await kw.createKey('pki');
      const pairs = new KeyPairs({ keywarden: kw, storage: 'root' });
      const ca = await CertificateAuthority.create(kw, pairs, 'tpm-ca', {
        subject: { commonName: 'Keywarden TPM Test CA' },
        algorithm: 'ECDSA-P384',
        validityDays: 30,
      });
      await pairs.create('svc', { algorithm: 'ECDSA-P256' });
      expect((await pairs.get('svc')).storage).toBe('root');
      const csr = await createCsr(await pairs.signer('svc'), {
        subject: { commonName: 'svc.test' },
        dnsNames: ['svc.test'],
      });
      writeFileSync(f('svc.csr'), toPem(csr, 'CERTIFICATE REQUEST'));
      const req = openssl('req', '-in', f('svc.csr'), '-noout', '-verify');
      expect(req.output).toMatch(/verify OK/i);
      expect(req.status).toBe(0);
      const leaf = await ca.issue({ csr, profile: 'server', validityDays: 7 });
      writeFileSync(f('ca.pem'), toPem(await ca.certificate(), 'CERTIFICATE'));
      writeFileSync(f('leaf.pem'), toPem(leaf, 'CERTIFICATE'));
      const v = openssl('verify', '-x509_strict', '-purpose', 'sslserver', '-CAfile', f('ca.pem'), f('leaf.pem'));
      expect(v.output).toContain(': OK');
      expect(v.status).toBe(0);
      // Destroy evicts the TPM objects (the TPM has little NV space).
      await pairs.rotate('svc');
      await pairs.destroy('svc', 1);
      await pairs.rotate('tpm-ca');
      await pairs.destroy('tpm-ca', 1);
      const info = await pairs.get('svc');
      const k = requireKeyPairs(checkedRoot(root));
      for (const name of ['svc', 'tpm-ca']) {
        const raw = JSON.parse(
          Buffer.from((await store.getMeta(`pki/keypair/${name}`)) as Uint8Array).toString('utf8'),
        );
        const v2 = raw.versions.find((x: { version: number }) => x.version === 2);
        await k.destroy(new Uint8Array(Buffer.from(v2.handle, 'base64')));
      }
      expect(info.versions[0]?.state).toBe('destroyed');
    } finally {
      await kw.close();
      await root.close();
      await store.close();
    }
  });
});
