/**
 * Interop with a real TLS server (issue #14): a key pair made by Keywarden's TPM root (a
 * persistent signing key at a random owner handle, keypairs.ts) with a certificate issued by
 * @keywarden/pki, used by `openssl s_server` through the tpm2-openssl provider (`handle:0x81…`)
 * against the harness's swtpm; `openssl s_client -verify_return_error` completes a TLS 1.3
 * handshake, so the TPM signs the handshake's CertificateVerify.
 *
 * The key's auth value is the documented one for a root without an auth value,
 * SHA-256("keywarden/tpm/keypair-auth/v1" ‖ 0x00 ‖ u32 handle) (keypairs.ts). A sealable root's
 * key auth is HMAC-SHA-256(K, …) with K known only inside the unsealed root, so no outside
 * program can use its keys; that is by design. The auth value reaches s_server through a file in
 * a 0700 temporary folder (openssl's `-pass file:`), removed after the test, never printed.
 */
import { createHash } from 'node:crypto';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { checkedRoot, Keywarden, MemoryKeyStore, requireKeyPairs } from '@keywarden/core';
import { CertificateAuthority, createCsr, KeyPairs, toPem } from '@keywarden/pki';
import { oneHandshakeServerArgs, startOpensslServer, tlsClientHandshake } from '@keywarden/testkit/openssl-server';
import { Esys } from '@keywarden/tss2';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { TpmRoot } from '../src/index.js';
import { relaxDictionaryAttack, tcti } from './_tpm.js';

const dir = mkdtempSync(join(tmpdir(), 'keywarden-tpm-tls-'));
const f = (name: string) => join(dir, name);
beforeAll(() => relaxDictionaryAttack());
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const AUTH_DOMAIN = Buffer.from('keywarden/tpm/keypair-auth/v1\0', 'utf8');
const persistentOf = (handle: Uint8Array): number => Buffer.from(handle).readUInt32BE(2);

function providerPath(): string | undefined {
  for (const p of [
    '/usr/lib/x86_64-linux-gnu/ossl-modules/tpm2.so',
    '/usr/lib/aarch64-linux-gnu/ossl-modules/tpm2.so',
    '/usr/lib64/ossl-modules/tpm2.so',
  ]) {
    if (existsSync(p)) return p;
  }
  return undefined;
}

/** The key pair's stored handle, from its record. */
async function handleOf(store: MemoryKeyStore, name: string, version: number): Promise<Uint8Array> {
  const record = JSON.parse(
    Buffer.from((await store.getMeta(`pki/keypair/${name}`)) as Uint8Array).toString('utf8'),
  ) as {
    versions: Array<{ version: number; handle: string }>;
  };
  return new Uint8Array(Buffer.from(record.versions.find((v) => v.version === version)?.handle ?? '', 'base64'));
}

describe('TLS with the server key in the TPM (tpm2-openssl provider)', () => {
  it('openssl s_client completes a TLS 1.3 handshake with an openssl s_server whose key is a Keywarden TPM key pair; a wrong auth value fails it', async () => {
    if (!providerPath()) {
      if (process.env.CI) throw new Error('tpm2-openssl is not installed (harness/debian-packages.txt)');
      console.warn('TLS test skipped: the tpm2-openssl provider is not installed');
      return;
    }
    const store = new MemoryKeyStore();
    const root = await TpmRoot.create({ store, tcti: tcti() });
    const kw = new Keywarden({ store, root });
    let handle: Uint8Array = new Uint8Array();
    let auth = Buffer.alloc(0);
    const certPath = f('tls.pem');
    const caPath = f('ca.pem');
    const secretDir = mkdtempSync(join(tmpdir(), 'keywarden-tpm-tls-auth-'));
    const passFile = join(secretDir, 'auth');
    try {
      try {
        await kw.createKey('pki');
        // The CA's key is a software one (under the KEK): the TPM's NV space is small.
        const ca = await CertificateAuthority.create(kw, new KeyPairs({ keywarden: kw }), 'tls-ca', {
          subject: { commonName: 'Keywarden TPM TLS Test CA' },
          algorithm: 'ECDSA-P256',
          validityDays: 30,
        });
        const pairs = new KeyPairs({ keywarden: kw, storage: 'root' });
        // openssl hands the provider the passphrase as a C string read as one line: an auth value
        // with a 0x00 or 0x0a byte cannot pass through it, so rotate until one can (a limit of the
        // openssl command line, not of the TPM or of Keywarden; (254/256)^32 ≈ 0.78 a try).
        await pairs.create('tls', { algorithm: 'ECDSA-P256' });
        for (let version = 1; ; version++) {
          handle = await handleOf(store, 'tls', version);
          const u32 = Buffer.alloc(4);
          u32.writeUInt32BE(persistentOf(handle));
          auth = createHash('sha256').update(AUTH_DOMAIN).update(u32).digest();
          if (!auth.includes(0x00) && !auth.includes(0x0a)) break;
          auth.fill(0);
          if (version >= 12) throw new Error('no key pair with a line-safe auth value in 12 tries');
          await pairs.rotate('tls');
          await pairs.destroy('tls', version);
        }
        expect((await pairs.get('tls')).storage).toBe('root');
        const csr = await createCsr(await pairs.signer('tls'), {
          subject: { commonName: 'localhost' },
          dnsNames: ['localhost'],
          ipAddresses: ['127.0.0.1'],
        });
        const cert = await ca.issue({ csr, profile: 'server', validityDays: 7 });
        writeFileSync(certPath, toPem(cert, 'CERTIFICATE'));
        writeFileSync(caPath, toPem(await ca.certificate(), 'CERTIFICATE'));
      } finally {
        // swtpm serves one connection at a time: the root lets go before s_server connects.
        await kw.close();
        await root.close();
      }
      const key = `handle:0x${persistentOf(handle).toString(16)}`;

      // A wrong auth value first: the TPM refuses TPM2_Sign, so the handshake cannot succeed
      // unless the key in the TPM signs it (the key has noDA: no lockout).
      const wrong = Buffer.from(auth);
      wrong[0] = wrong[0] === 0x41 ? 0x42 : 0x41;
      writeFileSync(passFile, wrong, { mode: 0o600 });
      wrong.fill(0);
      const refused = await handshake(key, passFile, certPath, caPath);
      expect(refused.client).not.toMatch(/Protocol version: TLSv1\.3/);
      expect(refused.status).not.toBe(0);
      expect(refused.server).toMatch(/authorization failure/);

      writeFileSync(passFile, auth, { mode: 0o600 });
      auth.fill(0);
      const ok = await handshake(key, passFile, certPath, caPath);
      const output = `${ok.client}\n--- s_server:\n${ok.server}`;
      expect(ok.client, output).toMatch(/Verification: OK/);
      expect(ok.client, output).toMatch(/Protocol version: TLSv1\.3/);
      expect(ok.client, output).toMatch(/Peer certificate: CN\s*=\s*localhost/);
      expect(ok.status, output).toBe(0);
      // s_server flushed what it loaded: nothing is left in swtpm's few object slots.
      const esys = await Esys.open({ tcti: tcti() });
      try {
        expect(await esys.transientHandles()).toEqual([]);
      } finally {
        await esys.close();
      }
    } finally {
      auth.fill(0);
      rmSync(secretDir, { recursive: true, force: true });
      // Evict the key pair (swtpm has little NV space); destroy is idempotent.
      if (handle.length > 0) {
        const again = await TpmRoot.load({ store, tcti: tcti() });
        try {
          await requireKeyPairs(checkedRoot(again)).destroy(handle);
        } finally {
          await again.close();
        }
      }
      await store.close();
    }
  });
});

/**
 * One `openssl s_server -naccept 1` with the TPM key and one `openssl s_client` against it; the
 * server is killed (SIGTERM, then SIGKILL) if it has not exited by the end.
 */
async function handshake(
  key: string,
  passFile: string,
  certPath: string,
  caPath: string,
): Promise<{ status: number; client: string; server: string }> {
  const {
    child: server,
    port,
    output,
  } = await startOpensslServer(
    (port) => [
      's_server',
      '-provider',
      'tpm2',
      '-provider',
      'default',
      // The key's operations from the tpm2 provider, but no digest and no cipher: its digests
      // are TPM hash sequences, and swtpm (3 object slots, no resource manager) runs out of
      // them when TLS 1.3 copies transcript hashes ("out of memory for object contexts").
      '-propquery',
      '?provider=tpm2,tpm2.digest=no,tpm2.cipher=no',
      // `?pass` makes the provider ask openssl's password callback, which reads -pass.
      '-key',
      `${key}?pass`,
      '-pass',
      `file:${passFile}`,
      ...oneHandshakeServerArgs(port, certPath),
    ],
    { env: { ...process.env, TPM2OPENSSL_TCTI: tcti() } },
  );
  const exited = new Promise<void>((resolve) => {
    if (server.exitCode !== null || server.signalCode !== null) resolve();
    else server.on('exit', () => resolve());
  });
  const settle = (ms: number) => Promise.race([exited, new Promise((resolve) => setTimeout(resolve, ms))]);
  try {
    const r = tlsClientHandshake(port, caPath);
    // s_server -naccept 1 exits after the connection; its output tells why a handshake failed.
    await settle(5_000);
    return { status: r.status, client: r.output, server: output() };
  } finally {
    if (server.exitCode === null && server.signalCode === null) server.kill('SIGTERM');
    await settle(5_000);
    if (server.exitCode === null && server.signalCode === null) server.kill('SIGKILL');
  }
}
