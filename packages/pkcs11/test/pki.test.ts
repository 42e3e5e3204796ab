/**
 * @keywarden/pki with its private keys in SoftHSM2 (KeyPairs storage "root"): the key pair
 * lifecycle on the token, and interop with real clients — openssl verifies a request signed in
 * the HSM and a certificate issued by a CA whose key is in the HSM, pkcs11-tool lists the private
 * key as sensitive and never extractable, and an `openssl s_server` whose key stays in SoftHSM
 * (through libp11's pkcs11 engine) completes a TLS handshake with `openssl s_client`.
 */
import { spawnSync } from 'node:child_process';
import { createPublicKey, randomBytes, verify, X509Certificate } from 'node:crypto';
import { createRequire } from 'node:module';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  AccessDeniedError,
  destroyRoot,
  KeyDestroyedError,
  KeyStateError,
  Keywarden,
  type KeyStore,
  MemoryKeyStore,
  Policy,
  requireKeyPairs,
  UnsupportedCapabilityError,
} from '@keywarden/core';
import { CertificateAuthority, createCsr, KeyPairs, toPem } from '@keywarden/pki';
import { oneHandshakeServerArgs, startOpensslServer, tlsClientHandshake } from '@keywarden/testkit/openssl-server';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type * as Pkcs11js from 'pkcs11js';
import { Pkcs11Root } from '../src/index.js';
import { CKK_EC_EDWARDS, CKM_EC_EDWARDS_KEY_PAIR_GEN, CKM_EDDSA } from '../src/_worker-keypairs.js';
import { Pkcs11KeyPairs } from '../src/keypairs.js';
import { createRoot, hsm, pin, unavailable } from './_hsm.js';
import { allPrivateKeys, findKeyObjects, privateKeyFacts } from './_keypair-inspect.js';
import { RawToken } from './_raw.js';

const pkcs11js = createRequire(import.meta.url)('pkcs11js') as typeof Pkcs11js;

let root: Pkcs11Root;
let store: KeyStore;
let kw: Keywarden;
let pairs: KeyPairs;
let raw: RawToken;
let dir: string;
let tlsToken: { label: string; pinFile: string };

/**
 * A second token for the TLS test, with a 32-character user PIN: libp11's engine accepts PINs of
 * at most 32 characters (MAX_PIN_LENGTH), and the harness's token has a 48-character one.
 */
function initTlsToken(): { label: string; pinFile: string } {
  const label = `kw-tls-${randomBytes(4).toString('hex')}`;
  const pinFile = join(dir, 'tls.pin');
  writeFileSync(pinFile, randomBytes(16).toString('hex'), { mode: 0o600 });
  const so = randomBytes(16).toString('hex');
  const userPin = Buffer.from(readFileSync(pinFile)).toString('utf8');
  // softhsm2-util takes the PINs on its command line only (as harness/softhsm.sh does).
  const r = spawnSync('softhsm2-util', ['--init-token', '--free', '--label', label, '--pin', userPin, '--so-pin', so], {
    encoding: 'utf8',
    timeout: 30_000,
    env: process.env,
  });
  if (r.status !== 0) throw new Error(`softhsm2-util --init-token failed: ${r.stderr}`);
  return { label, pinFile };
}

function file(name: string, data: string | Uint8Array): string {
  const path = join(dir, name);
  writeFileSync(path, data);
  return path;
}

function run(cmd: string, args: string[], input?: string): { status: number; output: string } {
  const r = spawnSync(cmd, args, { encoding: 'utf8', timeout: 30_000, input, env: process.env });
  return { status: r.status ?? -1, output: `${r.stdout}${r.stderr}` };
}

/** The handle of a version, read from the key pair's stored record. */
async function handleOf(name: string, version: number, from: KeyStore = store): Promise<Uint8Array> {
  const bytes = await from.getMeta(`pki/keypair/${name}`);
  const record = JSON.parse(Buffer.from(bytes as Uint8Array).toString('utf8')) as {
    versions: Array<{ version: number; handle: string }>;
  };
  const v = record.versions.find((x) => x.version === version);
  return new Uint8Array(Buffer.from(v?.handle ?? '', 'base64'));
}

const idOf = (handle: Uint8Array): Uint8Array => handle.subarray(2);
/** `data` with its first byte changed. */
const flipped = (data: Uint8Array): Uint8Array => {
  const out = data.slice();
  out[0] = (out[0] as number) ^ 0x01;
  return out;
};

describe.skipIf(unavailable)('@keywarden/pki with keys in SoftHSM2', () => {
  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'keywarden-p11pki-'));
    // Before this process loads the module (SoftHSM2 reads its tokens at C_Initialize).
    tlsToken = initTlsToken();
    ({ root, store } = await createRoot({ poolSize: 2 }));
    kw = new Keywarden({ store, root });
    await kw.createKey('pki');
    pairs = new KeyPairs({ keywarden: kw, storage: 'root' });
    raw = new RawToken();
  });

  afterAll(async () => {
    raw?.close();
    await kw?.close();
    await root?.close();
    await store?.close();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it('a key pair in the token: versions, rotate, disable, and destroy by C_DestroyObject (both objects gone from the token)', async () => {
    const info = await pairs.create('svc', { algorithm: 'ECDSA-P256' });
    expect(info.storage).toBe('root');
    const h1 = await handleOf('svc', 1);
    expect(findKeyObjects(raw, 'private', idOf(h1))).toHaveLength(1);
    expect(findKeyObjects(raw, 'public', idOf(h1))).toHaveLength(1);
    expect(privateKeyFacts(raw, h1)).toEqual({
      sensitive: true,
      extractable: false,
      alwaysSensitive: true,
      neverExtractable: true,
      valueReadable: false,
      token: true,
    });
    // The record holds the public key and the handle; no private key.
    const record = Buffer.from((await store.getMeta('pki/keypair/svc')) as Uint8Array).toString('utf8');
    expect(record).not.toMatch(/PRIVATE KEY/);

    const data = new Uint8Array(randomBytes(200));
    const spki = (v: number) => ({
      key: Buffer.from(info.versions.find((x) => x.version === v)?.publicKey ?? new Uint8Array()),
      format: 'der' as const,
      type: 'spki' as const,
    });
    const s1 = await pairs.signer('svc');
    expect(verify('sha256', data, spki(1), await s1.sign(data))).toBe(true);

    const rotated = await pairs.rotate('svc');
    expect(rotated.primaryVersion).toBe(2);
    const s2 = await pairs.signer('svc');
    const sig2 = await s2.sign(data);
    expect(
      verify(
        'sha256',
        data,
        { key: Buffer.from(rotated.versions[1]?.publicKey as Uint8Array), format: 'der', type: 'spki' },
        sig2,
      ),
    ).toBe(true);
    expect(verify('sha256', data, spki(1), sig2)).toBe(false);

    await pairs.disable('svc', 1);
    await expect(pairs.signer('svc', 1)).rejects.toThrow(KeyStateError);
    await expect(pairs.destroy('svc', 2)).rejects.toThrow(KeyStateError); // the primary
    await pairs.enable('svc', 1);
    expect(verify('sha256', data, spki(1), await (await pairs.signer('svc', 1)).sign(data))).toBe(true);

    const destroyed = await pairs.destroy('svc', 1);
    expect(destroyed.versions[0]?.state).toBe('destroyed');
    expect(destroyed.versions[0]?.publicKey.length).toBeGreaterThan(0);
    expect(findKeyObjects(raw, 'private', idOf(h1))).toHaveLength(0);
    expect(findKeyObjects(raw, 'public', idOf(h1))).toHaveLength(0);
    await expect(pairs.signer('svc', 1)).rejects.toThrow(KeyDestroyedError);
    // A signer made before the destruction fails too: the object is gone from the token.
    await expect(s1.sign(data)).rejects.toThrow(KeyDestroyedError);
    await expect(requireKeyPairs(root).sign(h1, data)).rejects.toThrow(KeyDestroyedError);
    // Version 2 is untouched.
    expect(findKeyObjects(raw, 'private', idOf(await handleOf('svc', 2)))).toHaveLength(1);
    expect((await s2.sign(data)).length).toBeGreaterThan(0);
  });

  it('who may sign with a key in the HSM is who may decrypt under its KEK; a refused create leaves no object on the token', async () => {
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
    const guarded = new Keywarden({ store, root, policy, principal: 'admin' });
    try {
      await new KeyPairs({ keywarden: guarded, storage: 'root' }).create('policy-key', { algorithm: 'ECDSA-P256' });
      const signer = await new KeyPairs({ keywarden: guarded.as('ca-service') }).signer('policy-key');
      expect((await signer.sign(new Uint8Array(8))).length).toBeGreaterThan(0);
      const denied = await new KeyPairs({ keywarden: guarded.as('web') }).signer('policy-key').catch((e: unknown) => e);
      expect(AccessDeniedError.isInstance(denied)).toBe(true);
      const before = allPrivateKeys(raw).length;
      const refused = await new KeyPairs({ keywarden: guarded.as('ca-service'), storage: 'root' })
        .create('policy-other', { algorithm: 'ECDSA-P256' })
        .catch((e: unknown) => e);
      expect(AccessDeniedError.isInstance(refused)).toBe(true);
      expect(allPrivateKeys(raw).length).toBe(before);
    } finally {
      await guarded.close();
    }
  });

  it("destroying the root destroys the key pairs it made (C_DestroyObject of every private and public object under the root's CKA_ID)", async () => {
    const doomed = await createRoot({ poolSize: 1 });
    const k = requireKeyPairs(doomed.root);
    const a = await k.generate('ECDSA-P256', 'kw-kp/doomed-a/v1');
    const b = await k.generate('RSA-2048', 'kw-kp/doomed-b/v1');
    for (const h of [a.handle, b.handle]) expect(findKeyObjects(raw, 'private', idOf(h))).toHaveLength(1);
    await destroyRoot(doomed.store, { root: doomed.root, unsealKey: pin() });
    for (const h of [a.handle, b.handle]) {
      expect(findKeyObjects(raw, 'private', idOf(h))).toHaveLength(0);
      expect(findKeyObjects(raw, 'public', idOf(h))).toHaveLength(0);
    }
    // The suite's own key pairs (another root) are untouched.
    expect(findKeyObjects(raw, 'private', idOf(await handleOf('svc', 2)))).toHaveLength(1);
    await doomed.root.close();
    await doomed.store.close();
  });

  it('openssl req -verify accepts PKCS#10 requests signed in the HSM (P-256, P-384, RSA-2048, RSA-3072, Ed25519)', async () => {
    for (const algorithm of ['ECDSA-P256', 'ECDSA-P384', 'RSA-2048', 'RSA-3072', 'Ed25519'] as const) {
      const name = `csr-${algorithm.toLowerCase()}`;
      await pairs.create(name, { algorithm });
      const csr = await createCsr(await pairs.signer(name), {
        subject: { commonName: `${name}.test` },
        dnsNames: [`${name}.test`],
      });
      const path = file(`${name}.csr`, toPem(csr, 'CERTIFICATE REQUEST'));
      const r = run('openssl', ['req', '-in', path, '-noout', '-verify']);
      expect(r.output, algorithm).toMatch(/verify OK/i);
      expect(r.status, r.output).toBe(0);
    }
  });

  it('Ed25519 in the HSM (SoftHSM2 lists CKM_EC_EDWARDS_KEY_PAIR_GEN and CKM_EDDSA): an Edwards key pair on the token, private key sensitive and never extractable, 64-byte signatures that node:crypto and openssl pkeyutl verify', async () => {
    const mechanisms = raw.lib.C_GetMechanismList(raw.slot);
    expect(mechanisms).toContain(CKM_EC_EDWARDS_KEY_PAIR_GEN);
    expect(mechanisms).toContain(CKM_EDDSA);
    expect(requireKeyPairs(root).algorithms).toContain('Ed25519');

    const info = await pairs.create('ed', { algorithm: 'Ed25519' });
    const h = await handleOf('ed', 1);
    const [priv, ...morePriv] = findKeyObjects(raw, 'private', idOf(h));
    expect(morePriv).toHaveLength(0);
    expect(findKeyObjects(raw, 'public', idOf(h))).toHaveLength(1);
    const [keyType] = raw.lib.C_GetAttributeValue(raw.session, priv as Buffer, [{ type: pkcs11js.CKA_KEY_TYPE }]);
    const keyTypeValue = keyType?.value as Buffer;
    // CK_ULONG, native-endian (8 bytes on 64-bit Linux).
    expect(Number(keyTypeValue.length === 8 ? keyTypeValue.readBigUInt64LE() : keyTypeValue.readUInt32LE())).toBe(
      CKK_EC_EDWARDS,
    );
    expect(privateKeyFacts(raw, h)).toEqual({
      sensitive: true,
      extractable: false,
      alwaysSensitive: true,
      neverExtractable: true,
      valueReadable: false,
      token: true,
    });

    const publicKey = createPublicKey({
      key: Buffer.from(info.versions[0]?.publicKey ?? []),
      format: 'der',
      type: 'spki',
    });
    expect(publicKey.asymmetricKeyType).toBe('ed25519');
    const data = new Uint8Array(randomBytes(300));
    const sig = await (await pairs.signer('ed')).sign(data);
    expect(sig).toHaveLength(64);
    expect(verify(null, data, publicKey, sig)).toBe(true);
    expect(verify(null, flipped(data), publicKey, sig)).toBe(false);
    // Pure Ed25519 is deterministic (RFC 8032 §5.1.6): the same message gives the same signature.
    expect(Buffer.from(await (await pairs.signer('ed')).sign(data)).equals(Buffer.from(sig))).toBe(true);

    const pubPath = file('ed.pub.pem', publicKey.export({ type: 'spki', format: 'pem' }) as string);
    const dataPath = file('ed.data', data);
    const sigPath = file('ed.sig', sig);
    const ok = run('openssl', [
      'pkeyutl',
      '-verify',
      '-pubin',
      '-inkey',
      pubPath,
      '-rawin',
      '-in',
      dataPath,
      '-sigfile',
      sigPath,
    ]);
    expect(ok.output).toMatch(/Signature Verified Successfully/);
    expect(ok.status, ok.output).toBe(0);
    const bad = run('openssl', [
      'pkeyutl',
      '-verify',
      '-pubin',
      '-inkey',
      pubPath,
      '-rawin',
      '-in',
      file('ed.other', flipped(data)),
      '-sigfile',
      sigPath,
    ]);
    expect(bad.status).not.toBe(0);

    // Destroy: after a rotation, version 1's objects leave the token (C_DestroyObject).
    await pairs.rotate('ed');
    await pairs.disable('ed', 1);
    await pairs.destroy('ed', 1);
    expect(findKeyObjects(raw, 'private', idOf(h))).toHaveLength(0);
    expect(findKeyObjects(raw, 'public', idOf(h))).toHaveLength(0);
    await expect(requireKeyPairs(root).sign(h, data)).rejects.toBeInstanceOf(KeyDestroyedError);
  });

  it('a token whose mechanism list lacks the EdDSA mechanisms does not offer Ed25519, and generate refuses it (UnsupportedCapabilityError) without touching the token', async () => {
    let calls = 0;
    const k = new Pkcs11KeyPairs({
      rootObjectId: new Uint8Array(16),
      algorithms: ['ECDSA-P256', 'ECDSA-P384', 'RSA-2048', 'RSA-3072'],
      run: async () => {
        calls++;
        throw new Error('not reached');
      },
      randomBytes: async (n) => new Uint8Array(randomBytes(n)),
    });
    expect(k.algorithms).not.toContain('Ed25519');
    await expect(k.generate('Ed25519', 'kw-kp/none/v1')).rejects.toMatchObject({ code: 'KW_UNSUPPORTED' });
    await expect(k.generate('Ed25519', 'kw-kp/none/v1')).rejects.toBeInstanceOf(UnsupportedCapabilityError);
    expect(calls).toBe(0);
  });

  it('openssl verify -CAfile accepts a certificate issued by a CA whose key is in the HSM, and pkcs11-tool lists that key sensitive and never extractable', async () => {
    const ca = await CertificateAuthority.create(kw, pairs, 'hsm-ca', {
      subject: { commonName: 'Keywarden HSM Test CA' },
      algorithm: 'ECDSA-P384',
      validityDays: 365,
    });
    // The leaf's own key is a software one (under the KEK): any requester works.
    const soft = new KeyPairs({ keywarden: kw });
    await soft.create('leaf', { algorithm: 'RSA-2048' });
    const csr = await createCsr(await soft.signer('leaf'), {
      subject: { commonName: 'leaf.test' },
      dnsNames: ['leaf.test'],
    });
    const leaf = await ca.issue({ csr, profile: 'server', validityDays: 30 });
    const caPath = file('hsm-ca.pem', toPem(await ca.certificate(), 'CERTIFICATE'));
    const leafPath = file('leaf.pem', toPem(leaf, 'CERTIFICATE'));
    const r = run('openssl', ['verify', '-x509_strict', '-purpose', 'sslserver', '-CAfile', caPath, leafPath]);
    expect(r.output).toContain(`${leafPath}: OK`);
    expect(r.status, r.output).toBe(0);
    expect(new X509Certificate(leaf).checkIssued(new X509Certificate(await ca.certificate()))).toBe(true);

    const caHandle = await handleOf('hsm-ca', 1);
    const pinArg = Buffer.from(pin()).toString('utf8');
    const list = run('pkcs11-tool', [
      '--module',
      hsm.module,
      '--token-label',
      hsm.token,
      '--login',
      '--pin',
      pinArg,
      '--list-objects',
      '--type',
      'privkey',
      '--id',
      Buffer.from(idOf(caHandle)).toString('hex'),
    ]);
    expect(list.status, list.output).toBe(0);
    expect(list.output).toContain('label:      kw-kp/hsm-ca/v1');
    const access = /Access:\s*([^\n]*)/.exec(list.output)?.[1] ?? '';
    expect(access).toMatch(/(^|, )sensitive/);
    expect(access).toContain('always sensitive');
    expect(access).toContain('never extractable');
    expect(access).not.toMatch(/(^|, )extractable/);
  });

  it('TLS: openssl s_client completes a handshake with an openssl s_server whose key stays in SoftHSM (pkcs11 engine)', async () => {
    const engine = enginePath();
    if (!engine) {
      if (process.env.CI) throw new Error('libengine-pkcs11-openssl is not installed (harness/debian-packages.txt)');
      console.warn('TLS test skipped: libengine-pkcs11-openssl is not installed');
      return;
    }
    const tlsStore = new MemoryKeyStore();
    const tlsRoot = await Pkcs11Root.open(
      `pkcs11:token=${tlsToken.label};object=kw-root?module-path=${encodeURI(hsm.module)}&pin-source=file:${encodeURI(tlsToken.pinFile)}`,
      { store: tlsStore, create: true, poolSize: 1 },
    );
    const tlsKw = new Keywarden({ store: tlsStore, root: tlsRoot });
    await tlsKw.createKey('pki');
    const tlsPairs = new KeyPairs({ keywarden: tlsKw, storage: 'root' });
    try {
      await tlsHandshake(tlsKw, tlsPairs, tlsStore);
    } finally {
      await tlsKw.close();
      await tlsRoot.close();
      await tlsStore.close();
    }
  });
});

async function tlsHandshake(tlsKw: Keywarden, tlsPairs: KeyPairs, tlsStore: KeyStore): Promise<void> {
  {
    const ca = await CertificateAuthority.create(tlsKw, tlsPairs, 'tls-ca', {
      subject: { commonName: 'Keywarden TLS Test CA' },
      algorithm: 'ECDSA-P256',
      validityDays: 30,
    });
    await tlsPairs.create('tls', { algorithm: 'ECDSA-P256' });
    const tlsHandle = await handleOf('tls', 1, tlsStore);
    const csr = await createCsr(await tlsPairs.signer('tls'), {
      subject: { commonName: 'localhost' },
      dnsNames: ['localhost'],
      ipAddresses: ['127.0.0.1'],
    });
    const cert = await ca.issue({ csr, profile: 'server', validityDays: 7 });
    const certPath = file('tls.pem', toPem(cert, 'CERTIFICATE'));
    const caPath = file('tls-ca.pem', toPem(await ca.certificate(), 'CERTIFICATE'));
    const keyUri = `pkcs11:token=${tlsToken.label};id=${pctHex(idOf(tlsHandle))};type=private`;
    const { child: server, port } = await startOpensslServer(
      (port) => [
        's_server',
        '-engine',
        'pkcs11',
        '-keyform',
        'engine',
        '-key',
        keyUri,
        // The user PIN reaches libp11 through openssl's password callback, read from the file.
        '-pass',
        `file:${tlsToken.pinFile}`,
        ...oneHandshakeServerArgs(port, certPath),
      ],
      { env: { ...process.env, PKCS11_MODULE_PATH: hsm.module } },
    );
    try {
      const client = tlsClientHandshake(port, caPath);
      expect(client.output).toMatch(/Verification: OK/);
      expect(client.output).toMatch(/Protocol version: TLSv1\.3/);
      expect(client.output).toMatch(/Peer certificate: CN\s*=\s*localhost/);
      expect(client.status, client.output).toBe(0);
    } finally {
      server.kill('SIGTERM');
    }
  }
}

function enginePath(): string | undefined {
  for (const p of [
    '/usr/lib/x86_64-linux-gnu/engines-3/pkcs11.so',
    '/usr/lib/aarch64-linux-gnu/engines-3/pkcs11.so',
    '/usr/lib64/engines-3/pkcs11.so',
  ]) {
    if (existsSync(p)) return p;
  }
  return undefined;
}

/** RFC 7512 percent-encoding of a CKA_ID. */
function pctHex(id: Uint8Array): string {
  return Array.from(id, (b) => `%${b.toString(16).padStart(2, '0')}`).join('');
}
