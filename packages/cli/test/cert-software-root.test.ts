/**
 * `keywarden cert … --storage root` on a development-mode software root: the CA and leaf private
 * keys are the software root's key pairs (core's sealed-key-pairs.ts), sealed in the folder's
 * store. openssl checks the requests and the certificates; after `keywarden root rotate` (a new
 * root id) the CA key made before it issues for a request made before and one made after, and
 * openssl verifies both against the CA certificate made before the rotation. (Rekey, which does
 * not touch the root key, is covered in core and pki.)
 */
import { spawnSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { describe, expect, it } from 'vitest';
import { tempDir } from './helpers.js';
import { built, kw, requireBuild } from './split-helpers.js';

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
});
