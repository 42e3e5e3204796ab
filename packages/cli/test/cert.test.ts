/**
 * `keywarden cert …` and `keywarden audit checkpoint` / `audit verify --checkpoint-cert` with the
 * built CLI (dist/bin.js) on a temporary key store; everything it writes is checked by openssl
 * (`req -verify`, `verify -CAfile`, `crl -verify`, `verify -crl_check`). A certificate made by
 * openssl is imported. A log rewritten with the audit key (fresh chain, valid MACs) passes plain
 * `audit verify` and fails with the checkpoint certificate.
 */
import { spawnSync } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { openFolderKeywarden, resolveStoreLocation } from '@keywarden/ceremony';
import {
  AUDIT_HEAD_META_NAME,
  type AuditEvent,
  AuditLog,
  type AuditRecord,
  type Keywarden,
  loadAuditKey,
  readStoreAuditLines,
} from '@keywarden/core';
import { describe, expect, it } from 'vitest';
import { cli, initialized, oneLine, tempDir } from './helpers.js';
import { built, kw, requireBuild, type Spawned } from './split-helpers.js';

requireBuild('cert.test.ts');

function openssl(...args: string[]): { status: number; output: string } {
  const r = spawnSync('openssl', args, { encoding: 'utf8', timeout: 20_000 });
  return { status: r.status ?? -1, output: `${r.stdout}${r.stderr}` };
}

/** The same CLI in this process (run()): for steps whose point is not the spawned binary. */
async function here(cwd: string, ...args: string[]): Promise<Spawned> {
  const r = await cli(args, { cwd });
  expect(r.code, `keywarden ${args.join(' ')}\n${r.stderr}`).toBe(0);
  return { code: r.code, stdout: r.out, stderr: r.stderr };
}

async function hereFails(cwd: string, code: number, ...args: string[]): Promise<string> {
  const r = await cli(args, { cwd });
  expect(r.code, `keywarden ${args.join(' ')}\n${r.out}${r.stderr}`).toBe(code);
  return oneLine(r.stderr);
}

/** Run keywarden in `cwd`; expect exit 0 unless `code` says otherwise. */
async function ok(cwd: string, ...args: string[]): Promise<Spawned> {
  const r = await kw(args, cwd, { timeoutMs: 30_000 });
  expect(r.code, `keywarden ${args.join(' ')}\n${r.stderr}`).toBe(0);
  return r;
}

/** A failure: its exit status and its one stderr line. */
async function fails(cwd: string, code: number, ...args: string[]): Promise<string> {
  const r = await kw(args, cwd, { timeoutMs: 30_000 });
  expect(r.code, `keywarden ${args.join(' ')}\n${r.stdout}${r.stderr}`).toBe(code);
  const lines = r.stderr.split('\n').filter((l) => l !== '');
  expect(lines).toHaveLength(1);
  return lines[0] as string;
}

/** The folder's Keywarden in this test process (as an operator's script, or an attacker, would open it). */
async function openStore(cwd: string): Promise<Keywarden> {
  const loc = resolveStoreLocation({ cwd, env: {} });
  const file = path.join(loc.dir, 'unseal.key');
  return openFolderKeywarden(loc, { unseal: { kind: 'file', path: file, display: file, explicit: true } });
}

const SUBCOMMANDS = ['ca', 'request', 'issue', 'renew', 'revoke', 'crl', 'list', 'import', 'export'];

describe.skipIf(!built)('keywarden cert (dist/bin.js, checked by openssl)', () => {
  it('every subcommand has --help (exit 0) and --json', async () => {
    const cwd = await tempDir();
    for (const sub of SUBCOMMANDS) {
      const r = await cli(['cert', sub, '--help'], { cwd });
      expect(r.code).toBe(0);
      expect(r.out).toMatch(new RegExp(`^Usage: keywarden cert ${sub} `));
      expect(r.out).toContain('--json');
    }
    const cp = await cli(['audit', 'checkpoint', '--help'], { cwd });
    expect(cp.out).toContain('--key-pair <name>');
    expect((await cli(['audit', 'verify', '--help'], { cwd })).out).toContain('--checkpoint-cert <file>');
  });

  it('ca → request → issue → renew → revoke → crl: openssl req -verify, verify -CAfile, crl -verify and verify -crl_check agree', async () => {
    const cwd = await initialized();
    const f = (name: string) => path.join(cwd, name);
    const ca = JSON.parse(
      (
        await ok(
          cwd,
          'cert',
          'ca',
          'demo-ca',
          '--cn',
          'Demo Root CA',
          '--org',
          'Keywarden',
          '--json',
          '--out',
          'ca.pem',
        )
      ).stdout,
    );
    expect(ca).toMatchObject({ ca: 'demo-ca', algorithm: 'ECDSA-P256', subject: { commonName: 'Demo Root CA' } });
    expect(openssl('x509', '-in', f('ca.pem'), '-noout', '-text').output).toMatch(/CA:TRUE/);

    // A request (the key pair is created), checked by openssl.
    const req = await ok(
      cwd,
      'cert',
      'request',
      'web',
      '--cn',
      'web.example.test',
      '--dns',
      'web.example.test',
      '--ip',
      '192.0.2.10',
      '--algorithm',
      'ECDSA-P384',
      '--out',
      'web.csr',
    );
    expect(req.stdout).toMatch(
      /^Created key pair web \(ECDSA-P384\)\. Request for CN=web\.example\.test signed by web v1\./,
    );
    const reqCheck = openssl('req', '-verify', '-in', f('web.csr'), '-noout', '-text');
    expect(reqCheck.status, reqCheck.output).toBe(0);
    expect(reqCheck.output).toMatch(/verify OK/i);
    expect(reqCheck.output).toMatch(/DNS:web\.example\.test, IP Address:192\.0\.2\.10/);

    // Issue to stdout (PEM), then the same kind of request again into a file.
    const issued = await ok(cwd, 'cert', 'issue', 'demo-ca', '--csr', 'web.csr', '--profile', 'server', '--days', '30');
    expect(issued.stdout).toMatch(/^-----BEGIN CERTIFICATE-----\n/);
    writeFileSync(f('web-1.pem'), issued.stdout);
    const v1 = openssl('verify', '-x509_strict', '-purpose', 'sslserver', '-CAfile', f('ca.pem'), f('web-1.pem'));
    expect(v1.status, v1.output).toBe(0);

    const list = JSON.parse((await here(cwd, 'cert', 'list', '--json')).stdout) as Array<Record<string, unknown>>;
    expect(list.map((r) => [r.name, r.ca, (r.certificates as unknown[]).length])).toEqual([
      ['demo-ca', true, 1],
      ['web', false, 1],
    ]);

    // Renew the leaf: new key version, same names, previous certificate revoked as superseded.
    const renewed = JSON.parse(
      (await ok(cwd, 'cert', 'renew', 'web', '--ca', 'demo-ca', '--revoke-old', '--json', '--out', 'web-2.pem')).stdout,
    );
    expect(renewed).toMatchObject({
      keyPair: 'web',
      keyVersion: 2,
      profile: 'server',
      dnsNames: ['web.example.test'],
      ipAddresses: ['192.0.2.10'],
      ca: 'demo-ca',
      file: 'web-2.pem',
    });
    // A second leaf, revoked by its file.
    await here(cwd, 'cert', 'request', 'client-a', '--cn', 'client-a', '--out', 'a.csr');
    await here(cwd, 'cert', 'issue', 'demo-ca', '--csr', 'a.csr', '--profile', 'client', '--out', 'a.pem');
    const revoked = JSON.parse(
      (await here(cwd, 'cert', 'revoke', 'demo-ca', '--cert', 'a.pem', '--reason', 'keyCompromise', '--json')).stdout,
    );
    expect(revoked.reason).toBe('keyCompromise');

    const crl = JSON.parse(
      (await ok(cwd, 'cert', 'crl', 'demo-ca', '--hours', '12', '--json', '--out', 'ca.crl')).stdout,
    );
    expect(crl.revoked).toHaveLength(2);
    const crlCheck = openssl('crl', '-in', f('ca.crl'), '-CAfile', f('ca.pem'), '-noout', '-text');
    expect(crlCheck.status, crlCheck.output).toBe(0);
    expect(crlCheck.output).toMatch(/verify OK/);
    expect(crlCheck.output).toMatch(/Superseded/);
    expect(crlCheck.output).toMatch(/Key Compromise/);

    const crlVerify = (file: string) =>
      openssl('verify', '-crl_check', '-CAfile', f('ca.pem'), '-CRLfile', f('ca.crl'), f(file));
    expect(crlVerify('web-2.pem').status, crlVerify('web-2.pem').output).toBe(0);
    for (const gone of ['web-1.pem', 'a.pem']) {
      const r = crlVerify(gone);
      expect(r.status).not.toBe(0);
      expect(r.output).toMatch(/certificate revoked/);
    }

    // Renew the CA: a new key version; the old CA certificate stays exportable for the overlap.
    const caRenewed = JSON.parse((await ok(cwd, 'cert', 'renew', 'demo-ca', '--json', '--out', 'ca-2.pem')).stdout);
    expect(caRenewed.keyVersion).toBe(2);
    await here(cwd, 'cert', 'export', 'demo-ca', '--all', '--out', 'trust.pem');
    expect(readFileSync(f('trust.pem'), 'utf8').match(/BEGIN CERTIFICATE/g)).toHaveLength(2);
    expect(openssl('verify', '-CAfile', f('ca-2.pem'), f('ca-2.pem')).status).toBe(0);
    expect(openssl('verify', '-CAfile', f('ca-2.pem'), f('web-2.pem')).status).not.toBe(0);
    expect(openssl('verify', '-CAfile', f('trust.pem'), f('web-2.pem')).status).toBe(0);
    // The old key still signs the CRL of what it issued.
    await here(cwd, 'cert', 'crl', 'demo-ca', '--key-version', '1', '--out', 'ca-v1.crl');
    expect(openssl('crl', '-in', f('ca-v1.crl'), '-CAfile', f('ca.pem'), '-noout').output).toMatch(/verify OK/);
  }, 240_000);

  it('a certificate made by openssl for a key pair of the store is imported (it carries the key pair’s key); one for another key is refused', async () => {
    const cwd = await initialized();
    const f = (name: string) => path.join(cwd, name);
    const mk = openssl(
      'req',
      '-x509',
      '-newkey',
      'rsa:2048',
      '-nodes',
      '-keyout',
      f('ossl-ca.key'),
      '-out',
      f('ossl-ca.pem'),
      '-days',
      '30',
      '-subj',
      '/CN=OpenSSL CA',
    );
    expect(mk.status, mk.output).toBe(0);
    await ok(cwd, 'cert', 'request', 'svc', '--cn', 'svc.example.test', '--algorithm', 'RSA-2048', '--out', 'svc.csr');
    const signed = openssl(
      'x509',
      '-req',
      '-in',
      f('svc.csr'),
      '-CA',
      f('ossl-ca.pem'),
      '-CAkey',
      f('ossl-ca.key'),
      '-CAcreateserial',
      '-days',
      '10',
      '-out',
      f('svc.pem'),
    );
    expect(signed.status, signed.output).toBe(0);
    const imported = JSON.parse((await ok(cwd, 'cert', 'import', 'svc', 'svc.pem', '--json')).stdout);
    expect(imported).toMatchObject({ keyPair: 'svc', keyVersion: 1, source: 'imported' });
    expect(imported.issuer).toMatch(/CN=OpenSSL CA/);
    // It matches the key: the certificate's public key is the request's (the key pair's).
    const certKey = openssl('x509', '-in', f('svc.pem'), '-pubkey', '-noout').output;
    const reqKey = openssl('req', '-in', f('svc.csr'), '-pubkey', '-noout').output;
    expect(certKey).toMatch(/BEGIN PUBLIC KEY/);
    expect(certKey).toBe(reqKey);
    // Exported again byte for byte.
    const exported = await here(cwd, 'cert', 'export', 'svc');
    expect(exported.stdout.replace(/\s+/g, '')).toBe(readFileSync(f('svc.pem'), 'utf8').replace(/\s+/g, ''));

    const line = await fails(cwd, 1, 'cert', 'import', 'svc', 'ossl-ca.pem');
    expect(line).toBe(
      "keywarden: pki: the certificate's public key is not the public key of any version of key pair svc",
    );
  }, 120_000);

  it('typed failures: one stderr line, exit 1 for what the library refuses, 2 for the command line', async () => {
    const cwd = await initialized();
    const fail = async (code: number, ...args: string[]): Promise<string> => {
      const r = await cli(args, { cwd });
      expect(r.code, r.stderr).toBe(code);
      return oneLine(r.stderr);
    };
    writeFileSync(path.join(cwd, 'junk.csr'), 'not a request');
    expect(await fail(1, 'cert', 'issue', 'nope', '--csr', 'junk.csr')).toBe(
      'keywarden: pki: not a DER PKCS#10 certification request',
    );
    expect((await cli(['cert', 'request', 'k', '--cn', 'k.test', '--out', 'k.csr'], { cwd })).code).toBe(0);
    expect(await fail(1, 'cert', 'issue', 'nope', '--csr', 'k.csr')).toBe(
      'keywarden: pki: no certificate authority named nope',
    );
    expect(await fail(1, 'cert', 'issue', 'nope', '--csr', 'missing.csr')).toBe('keywarden: no such file: missing.csr');
    expect(await fail(1, 'cert', 'import', 'nobody', 'k.csr')).toBe('keywarden: pki: no PEM CERTIFICATE block');
    expect(await fail(1, 'cert', 'import', 'nobody', 'junk.csr')).toBe('keywarden: pki: not a DER X.509 certificate');
    expect(await fail(2, 'cert', 'revoke', 'ca')).toMatch(/give a serial number or --cert FILE/);
    expect(await fail(2, 'cert', 'issue', 'ca', '--csr', 'k.csr', '--profile', 'ca')).toMatch(
      /option '--profile <profile>' argument 'ca' is invalid/,
    );
    expect(await fail(2, 'cert', 'request', 'k', '--cn', 'k.test', '--algorithm', 'RSA-2048')).toMatch(
      /key pair k exists and is ECDSA-P256, not RSA-2048/,
    );
    expect(await fail(2, 'cert', 'renew', 'k')).toMatch(/give --ca/);
    expect(await fail(2, 'cert', 'ca', 'x', '--cn', 'X', '--country', 'Germany')).toMatch(/two-letter country code/);
    const table = await cli(['cert', 'list'], { cwd });
    expect(table.out).toMatch(
      /^NAME\s+KIND\s+ALGORITHM\s+PRIMARY\s+CERTIFICATES\s+NEWEST EXPIRES\nk\s+key pair\s+ECDSA-P256\s+v1\s+0\s+-\n$/,
    );
  }, 120_000);
});

/** What an attacker holding the audit key does to the store's log: a fresh chain of these events. */
async function rewriteStoreLog(cwd: string, edit: (records: AuditRecord[]) => AuditRecord[]): Promise<void> {
  const k = await openStore(cwd);
  try {
    const key = await loadAuditKey(k.store, k.root);
    const records = (await readStoreAuditLines(k.store, key)).map((l) => JSON.parse(l) as AuditRecord);
    await k.store.deleteMeta(AUDIT_HEAD_META_NAME);
    const log = new AuditLog({ store: k.store, key });
    for (const r of edit(records)) {
      const event: AuditEvent = {
        op: r.op,
        principal: r.principal,
        outcome: r.outcome,
        ...(r.detail !== undefined ? { detail: r.detail } : {}),
      };
      await log.record(event);
    }
    await log.close();
    key.destroy();
  } finally {
    await k.close();
  }
}

/** Records an application (or agent) wrote into the store's log. */
async function appendEvents(cwd: string, n: number): Promise<void> {
  const k = await openStore(cwd);
  try {
    const log = new AuditLog({ store: k.store, root: k.root });
    for (let i = 0; i < n; i++) await log.record({ op: 'encrypt', principal: `app-${i % 2}`, outcome: 'ok' });
    await log.close();
  } finally {
    await k.close();
  }
}

describe.skipIf(!built)('signed audit checkpoints (dist/bin.js)', () => {
  it('checkpoints verify against the signer’s certificate; a log rewritten with the audit key passes `audit verify` alone and fails with --checkpoint-cert, naming the checkpoint', async () => {
    const cwd = await initialized();
    // The signer: a key pair with a (self-signed CA) certificate; any key pair with a certificate will do.
    await ok(cwd, 'cert', 'ca', 'auditor', '--cn', 'Audit checkpoints', '--out', 'auditor.pem');
    const other = openssl(
      'req',
      '-x509',
      '-newkey',
      'ec',
      '-pkeyopt',
      'ec_paramgen_curve:P-256',
      '-nodes',
      '-keyout',
      path.join(cwd, 'other.key'),
      '-out',
      path.join(cwd, 'other.pem'),
      '-days',
      '5',
      '-subj',
      '/CN=Other',
    );
    expect(other.status, other.output).toBe(0);
    await appendEvents(cwd, 4);
    const first = JSON.parse((await ok(cwd, 'audit', 'checkpoint', '--key-pair', 'auditor', '--json')).stdout);
    expect(first).toMatchObject({ keyPair: 'auditor' });
    expect(first.headSeq).toBeGreaterThanOrEqual(4);
    await appendEvents(cwd, 3);
    expect((await here(cwd, 'audit', 'checkpoint', '--key-pair', 'auditor')).stdout).toMatch(
      /^audit: checkpoint signed by auditor over seq \d+\.\n$/,
    );

    const verified = await ok(cwd, 'audit', 'verify', '--checkpoint-cert', 'auditor.pem', '--max-uncovered', '0');
    expect(verified.stdout).toMatch(
      /^audit: \d+ records verified, chain intact up to seq \d+, the head the key store recorded\naudit: 2 signed checkpoint\(s\) verified; the log is signed through seq \d+ \(0 record\(s\) after it, at most 0 allowed\)\n$/,
    );
    // Another certificate's key did not sign them.
    expect(await hereFails(cwd, 1, 'audit', 'verify', '--checkpoint-cert', 'other.pem')).toMatch(
      /^keywarden: audit: the signed checkpoints do not verify: checkpoint at seq \d+: signed by a key none of the trusted certificates holds$/,
    );

    // The attacker edits record 2 and rebuilds the whole chain (and head) with the audit key.
    await rewriteStoreLog(cwd, (records) => records.map((r) => (r.seq === 2 ? { ...r, principal: 'intruder' } : r)));
    expect((await here(cwd, 'audit', 'verify')).stdout).toMatch(/^audit: \d+ records verified, chain intact/);
    expect(await fails(cwd, 1, 'audit', 'verify', '--checkpoint-cert', 'auditor.pem')).toMatch(
      /^keywarden: audit: the signed checkpoints do not verify: checkpoint at seq \d+: the signed head \(seq \d+\) is not the record this log has there: the log was rewritten$/,
    );

    // Dropping the checkpoints as well leaves records no checkpoint covers.
    await rewriteStoreLog(cwd, (records) => records.filter((r) => r.op !== 'audit-checkpoint'));
    expect((await here(cwd, 'audit', 'verify')).stdout).toMatch(/^audit: \d+ records verified, chain intact/);
    expect(
      await hereFails(cwd, 1, 'audit', 'verify', '--checkpoint-cert', 'auditor.pem', '--max-uncovered', '3'),
    ).toMatch(
      /^keywarden: audit: the signed checkpoints do not verify: no valid signed checkpoint in \d+ records \(at most 3 may be uncovered\)$/,
    );
  }, 240_000);
});
