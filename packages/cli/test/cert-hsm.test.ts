/**
 * `keywarden cert … --storage root` on a PKCS#11 root (SoftHSM2 started by harness/softhsm.sh):
 * the CA key and a leaf key are generated in the token and sign there; openssl checks the request,
 * the certificate and the CRL; a certificate openssl made for the token's key is imported; the CA's key signs an audit checkpoint that `audit verify
 * --checkpoint-cert` accepts. When the environment already names a token (KEYWARDEN_PKCS11_MODULE
 * + _PIN_FILE) that one is used; outside CI a machine without SoftHSM2 skips with the harness's
 * reason, in CI it fails.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { tempDir } from './helpers.js';
import { built, kw, requireBuild } from './split-helpers.js';

requireBuild('cert-hsm.test.ts');

const HARNESS = fileURLToPath(new URL('../../../harness/', import.meta.url));

type Env = Record<string, string>;

function openssl(...args: string[]): { status: number; output: string } {
  const r = spawnSync('openssl', args, { encoding: 'utf8', timeout: 20_000 });
  return { status: r.status ?? -1, output: `${r.stdout}${r.stderr}` };
}

describe.skipIf(!built)('keywarden cert with keys in a PKCS#11 root (SoftHSM2)', () => {
  const env: Env = {};
  let dir: string | undefined;
  let reason: string | undefined;
  beforeAll(() => {
    if (process.env.KEYWARDEN_PKCS11_MODULE && process.env.KEYWARDEN_PKCS11_PIN_FILE) {
      for (const k of [
        'KEYWARDEN_PKCS11_MODULE',
        'KEYWARDEN_PKCS11_PIN_FILE',
        'KEYWARDEN_PKCS11_TOKEN',
        'SOFTHSM2_CONF',
      ]) {
        const v = process.env[k] ?? (k === 'SOFTHSM2_CONF' ? process.env.KEYWARDEN_SOFTHSM2_CONF : undefined);
        if (v) env[k] = v;
      }
      return;
    }
    let out: string;
    try {
      out = execFileSync('bash', [path.join(HARNESS, 'softhsm.sh'), 'start'], {
        encoding: 'utf8',
        stdio: ['ignore', 'pipe', 'pipe'],
        timeout: 60_000,
      });
    } catch (err) {
      reason = `softhsm.sh could not start: ${String((err as { stderr?: string }).stderr ?? err).trim()}`;
      if (process.env.CI) throw new Error(reason);
      return;
    }
    for (const line of out.split('\n')) {
      const m = /^export ([A-Z0-9_]+)='?([^']*)'?$/.exec(line);
      if (m?.[1] && m[2] !== undefined) env[m[1]] = m[2];
    }
    dir = env.KEYWARDEN_SOFTHSM_DIR;
  }, 90_000);
  afterAll(() => {
    if (dir)
      execFileSync('bash', [path.join(HARNESS, 'softhsm.sh'), 'stop', dir], { stdio: 'ignore', timeout: 30_000 });
  });

  it('a CA and a leaf whose keys are born and stay in the token: openssl req -verify, verify -CAfile, crl -verify; the CA key signs an audit checkpoint', async (ctx) => {
    if (reason) {
      console.warn(`skipped: ${reason}`);
      return ctx.skip();
    }
    const cwd = await tempDir();
    const f = (name: string) => path.join(cwd, name);
    const pin = readFileSync(env.KEYWARDEN_PKCS11_PIN_FILE as string, 'utf8').replace(/\n$/, '');
    const e: Env = { ...env, KW_TEST_PIN: pin };
    const run = async (...args: string[]) => {
      const r = await kw(args, cwd, { env: e, timeoutMs: 60_000 });
      expect(r.code, `keywarden ${args.join(' ')}\n${r.stderr}`).toBe(0);
      return r;
    };
    const uri =
      `pkcs11:token=${encodeURIComponent(env.KEYWARDEN_PKCS11_TOKEN || 'keywarden')};object=kw-cert-${Date.now().toString(36)}` +
      `?module-path=${encodeURI(env.KEYWARDEN_PKCS11_MODULE as string)}&pin-source=env:KW_TEST_PIN`;
    await run('init', '--root', uri);

    const ca = JSON.parse(
      (
        await run(
          'cert',
          'ca',
          'hsm-ca',
          '--cn',
          'HSM CA',
          '--algorithm',
          'ECDSA-P384',
          '--storage',
          'root',
          '--json',
          '--out',
          'ca.pem',
        )
      ).stdout,
    );
    expect(ca).toMatchObject({ ca: 'hsm-ca', algorithm: 'ECDSA-P384', storage: 'root' });
    const req = await run(
      'cert',
      'request',
      'web',
      '--cn',
      'web.hsm.test',
      '--dns',
      'web.hsm.test',
      '--storage',
      'root',
    );
    expect(req.stdout).toMatch(/^-----BEGIN CERTIFICATE REQUEST-----/);
    writeFileSync(f('web.csr'), req.stdout);
    const reqCheck = openssl('req', '-verify', '-in', f('web.csr'), '-noout');
    expect(reqCheck.status, reqCheck.output).toBe(0);
    await run('cert', 'issue', 'hsm-ca', '--csr', 'web.csr', '--out', 'web.pem');
    const v = openssl('verify', '-x509_strict', '-purpose', 'sslserver', '-CAfile', f('ca.pem'), f('web.pem'));
    expect(v.status, v.output).toBe(0);

    // A certificate made by openssl (its own CA) for the key in the token is imported.
    const osslCa = openssl(
      'req',
      '-x509',
      '-newkey',
      'ec',
      '-pkeyopt',
      'ec_paramgen_curve:P-256',
      '-nodes',
      '-keyout',
      f('ossl.key'),
      '-out',
      f('ossl.pem'),
      '-days',
      '5',
      '-subj',
      '/CN=OpenSSL CA',
    );
    expect(osslCa.status, osslCa.output).toBe(0);
    const osslLeaf = openssl(
      'x509',
      '-req',
      '-in',
      f('web.csr'),
      '-CA',
      f('ossl.pem'),
      '-CAkey',
      f('ossl.key'),
      '-CAcreateserial',
      '-days',
      '5',
      '-out',
      f('web-ossl.pem'),
    );
    expect(osslLeaf.status, osslLeaf.output).toBe(0);
    const imported = JSON.parse((await run('cert', 'import', 'web', 'web-ossl.pem', '--json')).stdout);
    expect(imported).toMatchObject({ keyPair: 'web', keyVersion: 1, source: 'imported' });

    const list = JSON.parse((await run('cert', 'list', '--json')).stdout) as Array<{ name: string; storage: string }>;
    expect(list.map((r) => [r.name, r.storage])).toEqual([
      ['hsm-ca', 'root'],
      ['web', 'root'],
    ]);

    await run('cert', 'revoke', 'hsm-ca', '--cert', 'web.pem', '--reason', 'superseded');
    await run('cert', 'crl', 'hsm-ca', '--out', 'ca.crl');
    expect(openssl('crl', '-in', f('ca.crl'), '-CAfile', f('ca.pem'), '-noout').output).toMatch(/verify OK/);
    const revoked = openssl('verify', '-crl_check', '-CAfile', f('ca.pem'), '-CRLfile', f('ca.crl'), f('web.pem'));
    expect(revoked.output).toMatch(/certificate revoked/);

    await run('audit', 'checkpoint', '--key-pair', 'hsm-ca');
    const verified = await run('audit', 'verify', '--checkpoint-cert', 'ca.pem', '--max-uncovered', '0');
    expect(verified.stdout).toMatch(/audit: 1 signed checkpoint\(s\) verified/);
  }, 300_000);
});
