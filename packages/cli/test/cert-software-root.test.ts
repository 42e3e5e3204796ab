/**
 * `keywarden cert … --storage root` on a development-mode software root: the CA and leaf private
 * keys are the software root's key pairs (core's sealed-key-pairs.ts), sealed in the folder's
 * store. openssl checks the requests and the certificates; after `keywarden root rotate` (a new
 * root id) the CA key made before it issues for a request made before and one made after, and
 * openssl verifies both against the CA certificate made before the rotation. (Rekey, which does
 * not touch the root key, is covered in core and pki.)
 */
import { spawnSync } from 'node:child_process';
import { readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { describe, expect, it } from 'vitest';
import { tempDir } from './helpers.js';
import { built, kw, requireBuild, spawnKilled } from './split-helpers.js';

requireBuild('cert-software-root.test.ts');

function openssl(...args: string[]): { status: number; output: string } {
  const r = spawnSync('openssl', args, { encoding: 'utf8', timeout: 20_000 });
  return { status: r.status ?? -1, output: `${r.stdout}${r.stderr}` };
}

describe.skipIf(!built)('keywarden cert with keys held in the software root', () => {
  it('cert ca and cert request --storage root: openssl req -verify and verify -CAfile, before and after root rotate', async () => {
    const cwd = await tempDir();
    const f = (name: string) => path.join(cwd, name);
    const run = async (...args: string[]) => {
      const r = await kw(args, cwd, { timeoutMs: 60_000 });
      expect(r.code, `keywarden ${args.join(' ')}\n${r.stderr}`).toBe(0);
      return r;
    };
    await run('init');
    const ca = JSON.parse(
      (await run('cert', 'ca', 'sw-ca', '--cn', 'Software Root CA', '--storage', 'root', '--json', '--out', 'ca.pem'))
        .stdout,
    );
    expect(ca).toMatchObject({ ca: 'sw-ca', storage: 'root' });
    const request = async (name: string) => {
      const req = await run(
        'cert',
        'request',
        name,
        '--cn',
        `${name}.test`,
        '--dns',
        `${name}.test`,
        '--storage',
        'root',
      );
      writeFileSync(f(`${name}.csr`), req.stdout);
      const check = openssl('req', '-verify', '-in', f(`${name}.csr`), '-noout');
      expect(check.status, check.output).toBe(0);
    };
    const issue = async (name: string) => {
      await run('cert', 'issue', 'sw-ca', '--csr', `${name}.csr`, '--out', `${name}.pem`);
      const v = openssl('verify', '-x509_strict', '-purpose', 'sslserver', '-CAfile', f('ca.pem'), f(`${name}.pem`));
      expect(v.status, v.output).toBe(0);
    };
    await request('before');
    const rotated = await run('root', 'rotate');
    expect(rotated.stdout).toMatch(/root_/);
    await issue('before');
    await request('after');
    await issue('after');
  }, 120_000);

  it('cert crl --out over a published CRL, SIGKILLed at random instants: the file is the old CRL or a whole new one, never cut short', async () => {
    const cwd = await tempDir();
    const run = async (...args: string[]) => {
      const r = await kw(args, cwd, { timeoutMs: 60_000 });
      expect(r.code, `keywarden ${args.join(' ')}\n${r.stderr}`).toBe(0);
      return r;
    };
    await run('init');
    await run('cert', 'ca', 'crl-ca', '--cn', 'CRL CA', '--storage', 'root', '--out', 'ca.pem');
    await run('cert', 'crl', 'crl-ca', '--out', 'ca.crl');
    const whole = (text: string) => /^-----BEGIN X509 CRL-----\n[A-Za-z0-9+/=\n]+-----END X509 CRL-----\n$/.test(text);
    expect(whole(readFileSync(path.join(cwd, 'ca.crl'), 'utf8'))).toBe(true);
    for (let i = 0; i < 8; i++) {
      const r = await spawnKilled(['cert', 'crl', 'crl-ca', '--out', 'ca.crl'], cwd, {
        delayMs: 200 + Math.floor(Math.random() * 700),
      });
      const after = readFileSync(path.join(cwd, 'ca.crl'), 'utf8');
      expect(whole(after), `kill ${i}: ${JSON.stringify(after.slice(-40))}`).toBe(true);
      if (r.signal === null) expect(r.code, r.stderr).toBe(0);
      expect(statSync(path.join(cwd, 'ca.crl')).mode & 0o777).toBe(0o644);
      const v = openssl('crl', '-in', path.join(cwd, 'ca.crl'), '-CAfile', path.join(cwd, 'ca.pem'), '-noout');
      expect(v.status, v.output).toBe(0);
    }
    // Killed with the whole new CRL in its temporary file, before the rename: the old CRL stays.
    const published = readFileSync(path.join(cwd, 'ca.crl'), 'utf8');
    const k = await spawnKilled(['cert', 'crl', 'crl-ca', '--out', 'ca.crl'], cwd, { hook: 'kill:out:written' });
    expect(k.signal, k.stderr).toBe('SIGKILL');
    expect(readFileSync(path.join(cwd, 'ca.crl'), 'utf8')).toBe(published);
    // The same with a named temporary file (no O_TMPFILE): it is left, and the next run removes it.
    const named = await spawnKilled(
      ['cert', 'crl', 'crl-ca', '--out', 'ca.crl'],
      cwd,
      { hook: 'kill:out:written' },
      { KEYWARDEN_NO_TMPFILE: '1' },
    );
    expect(named.signal, named.stderr).toBe('SIGKILL');
    expect(readFileSync(path.join(cwd, 'ca.crl'), 'utf8')).toBe(published);
    expect(readdirSync(cwd).filter((n) => n.includes('keywarden-tmp'))).toHaveLength(1);
    // The next run removes the temporary files of killed runs; a whole CRL is written.
    await run('cert', 'crl', 'crl-ca', '--out', 'ca.crl');
    expect(readdirSync(cwd).filter((n) => n.includes('keywarden-tmp'))).toEqual([]);
  }, 120_000);
});
