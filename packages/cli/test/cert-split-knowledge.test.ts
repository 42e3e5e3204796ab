/**
 * `keywarden cert …` on a split-knowledge folder (docs/pki.md §6): the agent has no sign
 * operation, so a command that signs takes a quorum of the current shares (piped one a line, or
 * --share-file) as `audit` and `rekey` do, unseals the root in its own process for that command
 * only, and signs; the commands that only read or add records (list, export, import, revoke) need
 * no shares. Everything signed is checked by openssl. Too few shares, none, or another store's
 * are refused in one line and change nothing.
 */
import { spawnSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { describe, expect, it } from 'vitest';
import { cli, initialized, oneLine, tempDir } from './helpers.js';
import { kw, requireBuild, sharesIn } from './split-helpers.js';

requireBuild('cert-split-knowledge.test.ts');

function openssl(...args: string[]): { status: number; output: string } {
  const r = spawnSync('openssl', args, { encoding: 'utf8', timeout: 20_000 });
  return { status: r.status ?? -1, output: `${r.stdout}${r.stderr}` };
}

async function splitFolder(): Promise<{ cwd: string; shares: string[] }> {
  const cwd = await tempDir();
  const init = await cli(['init', '--shares', '3', '--threshold', '2'], { cwd });
  expect(init.code, init.stderr).toBe(0);
  const shares = sharesIn(init.out);
  expect(shares).toHaveLength(3);
  return { cwd, shares };
}

describe('keywarden cert under split knowledge', () => {
  it('--share-file on a folder not sealed by split knowledge is a usage error (exit 2)', async () => {
    const cwd = await initialized();
    writeFileSync(path.join(cwd, 's1.txt'), 'not a share\n', { mode: 0o600 });
    const r = await cli(['cert', 'ca', 'demo-ca', '--cn', 'Demo', '--share-file', 's1.txt'], { cwd });
    expect(r.code).toBe(2);
    expect(oneLine(r.stderr)).toBe(
      "keywarden: --share-file is for a key store sealed by split knowledge (see 'keywarden --help')",
    );
  });

  it('signing commands take a quorum (piped or --share-file); record commands need none; openssl checks the results', async () => {
    const { cwd, shares } = await splitFolder();
    const quorum = `${shares[0]}\n${shares[2]}\n`;
    const ca = await cli(['cert', 'ca', 'demo-ca', '--cn', 'Split Demo CA', '--out', 'ca.pem'], {
      cwd,
      stdin: quorum,
    });
    expect(ca.stderr).toBe('');
    expect(ca.code).toBe(0);
    writeFileSync(path.join(cwd, 's1.txt'), `${shares[1]}\n`, { mode: 0o600 });
    writeFileSync(path.join(cwd, 's2.txt'), `${shares[2]}\n`, { mode: 0o600 });
    const files = ['--share-file', 's1.txt', '--share-file', 's2.txt'];
    const req = await cli(
      ['cert', 'request', 'web', '--cn', 'web.test', '--dns', 'web.test', '--out', 'web.csr', ...files],
      {
        cwd,
      },
    );
    expect(req.stderr).toBe('');
    expect(openssl('req', '-in', path.join(cwd, 'web.csr'), '-verify', '-noout').status).toBe(0);
    const issue = await cli(['cert', 'issue', 'demo-ca', '--csr', 'web.csr', '--out', 'web.pem', '--json'], {
      cwd,
      stdin: quorum,
    });
    expect(issue.stderr).toBe('');
    const serial = JSON.parse(issue.out).serialNumber as string;
    const verified = openssl('verify', '-x509_strict', '-CAfile', path.join(cwd, 'ca.pem'), path.join(cwd, 'web.pem'));
    expect(verified.output).toContain('web.pem: OK');

    // Records only: no shares asked for, none on stdin.
    const revoke = await cli(['cert', 'revoke', 'demo-ca', serial, '--reason', 'keyCompromise'], { cwd });
    expect(revoke.stderr).toBe('');
    expect(revoke.code).toBe(0);
    const list = await cli(['cert', 'list', '--json'], { cwd });
    expect(list.code).toBe(0);
    const rows = JSON.parse(list.out) as Array<{ name: string; revoked?: string[]; certificates: unknown[] }>;
    expect(rows.find((r) => r.name === 'demo-ca')?.revoked).toEqual([serial]);
    expect(rows.find((r) => r.name === 'web')?.certificates).toHaveLength(1);
    const exported = await cli(['cert', 'export', 'web'], { cwd });
    expect(exported.out).toContain('-----BEGIN CERTIFICATE-----');

    const crl = await cli(['cert', 'crl', 'demo-ca', '--out', 'ca.crl', ...files], { cwd });
    expect(crl.stderr).toBe('');
    expect(
      openssl('crl', '-in', path.join(cwd, 'ca.crl'), '-CAfile', path.join(cwd, 'ca.pem'), '-noout').output,
    ).toContain('verify OK');
    const checked = openssl(
      'verify',
      '-crl_check',
      '-CAfile',
      path.join(cwd, 'ca.pem'),
      '-CRLfile',
      path.join(cwd, 'ca.crl'),
      path.join(cwd, 'web.pem'),
    );
    expect(checked.status).not.toBe(0);
    expect(checked.output).toContain('certificate revoked');
  }, 60_000);

  it('no shares, too few, or another store’s: one line naming what it needs (not the agent), nothing signed', async () => {
    const { cwd, shares } = await splitFolder();
    const other = await splitFolder();
    const made = await cli(['cert', 'request', 'web', '--cn', 'web.test', '--out', 'web.csr'], {
      cwd,
      stdin: `${shares[0]}\n${shares[1]}\n`,
    });
    expect(made.code, made.stderr).toBe(0);
    const ca = await cli(['cert', 'ca', 'demo-ca', '--cn', 'Split Demo CA'], {
      cwd,
      stdin: `${shares[0]}\n${shares[1]}\n`,
    });
    expect(ca.code, ca.stderr).toBe(0);

    // The built binary, as an operator runs it: one line, no stack trace, not "start keywarden agent".
    const none = await kw(['cert', 'issue', 'demo-ca', '--csr', 'web.csr'], cwd, { input: '', timeoutMs: 30_000 });
    expect(none.code).toBe(1);
    expect(none.stdout).toBe('');
    expect(oneLine(none.stderr)).toBe(
      'keywarden: cert issue needs 2 current shares: pass --share-file, pipe them one a line, or run it in a terminal',
    );
    const one = await cli(['cert', 'issue', 'demo-ca', '--csr', 'web.csr'], { cwd, stdin: `${shares[0]}\n` });
    expect(one.code).not.toBe(0);
    expect(one.out).toBe('');
    expect(oneLine(one.stderr)).not.toContain('agent');
    const foreign = await cli(['cert', 'crl', 'demo-ca'], { cwd, stdin: `${other.shares[0]}\n${other.shares[1]}\n` });
    expect(foreign.code).not.toBe(0);
    expect(foreign.out).toBe('');
    expect(oneLine(foreign.stderr)).not.toContain('agent');

    // Nothing was issued, and no CRL number was taken.
    const list = await cli(['cert', 'list', '--json'], { cwd });
    const rows = JSON.parse(list.out) as Array<{ name: string; certificates: unknown[] }>;
    expect(rows.find((r) => r.name === 'web')?.certificates).toHaveLength(0);
    const crl = await cli(['cert', 'crl', 'demo-ca', '--out', 'ca.crl'], {
      cwd,
      stdin: `${shares[1]}\n${shares[2]}\n`,
    });
    expect(crl.code, crl.stderr).toBe(0);
    expect(openssl('crl', '-in', path.join(cwd, 'ca.crl'), '-noout', '-crlnumber').output.trim()).toBe(
      'crlNumber=0x01',
    );
  }, 60_000);
});
