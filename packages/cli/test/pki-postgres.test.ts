/**
 * @keywarden/pki's records with concurrent writer processes on the PostgreSQL store (docs/pki.md
 * §3.1): three processes rotate one key pair, issue from one CA, add to one certificate book,
 * revoke and make CRLs at once; the store's updateMeta (a transaction-level advisory lock on the
 * record's name) makes every change land. Lives here because the CLI already depends on pki, the
 * PostgreSQL store and pg. The cluster is harness/postgres.sh's (the environment's, else one
 * started here); in CI a missing PostgreSQL is a failure.
 */
import { execFileSync, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { Keywarden, SoftwareRoot } from '@keywarden/core';
import { CertificateAuthority, Certificates, KeyPairs } from '@keywarden/pki';
import { PostgresKeyStore } from '@keywarden/store-postgres';
import pgClient from 'pg';
import { parse } from 'pg-connection-string';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type HarnessPostgres, startPostgres, stopPostgres } from './_postgres.js';

const WRITER = fileURLToPath(new URL('./_pki-pg-writer.mjs', import.meta.url));
const SCHEMA = `kw_pki_${process.pid}_${Date.now().toString(36)}`;
let pg: HarnessPostgres = { env: {} };
let scratch = '';

beforeAll(() => {
  scratch = mkdtempSync(path.join(tmpdir(), 'kw-pki-pg-'));
  pg = startPostgres('pki-postgres.test.ts');
}, 150_000);

afterAll(async () => {
  if (!pg.unavailable && !pg.dir && pg.env.KEYWARDEN_PG_URL) {
    // A cluster the environment named outlives the run: drop this suite's schema.
    const { password: _none, ...parts } = parse(pg.env.KEYWARDEN_PG_URL);
    const password = readFileSync(pg.env.KEYWARDEN_PG_PASSWORD_FILE as string, 'utf8').trim();
    const client = new pgClient.Client({ ...(parts as pgClient.ClientConfig), password });
    client.on('error', () => {});
    await client.connect();
    try {
      await client.query(`DROP SCHEMA IF EXISTS ${pgClient.escapeIdentifier(SCHEMA)} CASCADE`);
    } finally {
      await client.end();
    }
  }
  stopPostgres(pg);
  if (scratch) rmSync(scratch, { recursive: true, force: true });
}, 90_000);

interface WriterResult {
  versions: number[];
  issued: string[];
  revoked: string[];
}

function startWriter(name: string, rounds: number, out: string, unsealHex: string) {
  const child = spawn(process.execPath, [WRITER, SCHEMA, name, String(rounds), out], {
    env: { PATH: process.env.PATH, ...pg.env },
    stdio: ['pipe', 'pipe', 'pipe'],
  });
  let stdout = '';
  let stderr = '';
  let onReady: () => void = () => undefined;
  const ready = new Promise<void>((resolve) => {
    onReady = resolve;
  });
  child.stdout.on('data', (c: Buffer) => {
    stdout += c.toString();
    if (stdout.startsWith('ready\n')) onReady();
  });
  child.stderr.on('data', (c: Buffer) => {
    stderr += c.toString();
  });
  const timer = setTimeout(() => child.kill('SIGKILL'), 90_000);
  const done = new Promise<WriterResult>((resolve, reject) => {
    child.on('exit', (code) => {
      clearTimeout(timer);
      const last = stdout.trim().split('\n').pop() ?? '';
      if (code === 0 && last.startsWith('{')) resolve(JSON.parse(last) as WriterResult);
      else reject(new Error(`${name} exited ${code}: ${stderr}`));
    });
  });
  done.catch(() => onReady());
  child.stdin.write(`${unsealHex}\n`);
  return { ready, done, go: () => child.stdin.end('go\n') };
}

describe('pki records on PostgreSQL with concurrent writer processes', () => {
  it('three processes rotating, issuing, adding, revoking and making CRLs at once lose no update', async () => {
    if (pg.unavailable) return;
    const out = path.join(scratch, 'crl');
    mkdirSync(out);
    const unsealKey = new Uint8Array(randomBytes(32));
    const unsealHex = Buffer.from(unsealKey).toString('hex');
    const store = await PostgresKeyStore.open({ schema: SCHEMA, env: pg.env });
    const root = await SoftwareRoot.initialize(store, { unsealKey: new Uint8Array(unsealKey) });
    const kw = new Keywarden({ store, root });
    try {
      await kw.createKey('pki');
      const pairs = new KeyPairs({ keywarden: kw });
      await CertificateAuthority.create(kw, pairs, 'ca', {
        subject: { commonName: 'Concurrent CA' },
        algorithm: 'ECDSA-P256',
        validityDays: 10,
      });
      await pairs.create('shared', { algorithm: 'ECDSA-P256' });

      const names = ['w1', 'w2', 'w3'];
      const rounds = 3;
      const writers = names.map((n) => startWriter(n, rounds, out, unsealHex));
      await Promise.all(writers.map((w) => w.ready));
      for (const w of writers) w.go();
      const results = await Promise.all(writers.map((w) => w.done));

      const total = names.length * rounds;
      const info = await pairs.get('shared');
      expect(results.flatMap((r) => r.versions).sort((a, b) => a - b)).toEqual(
        Array.from({ length: total }, (_, i) => i + 2),
      );
      expect(info.versions.map((v) => v.version)).toEqual(Array.from({ length: total + 1 }, (_, i) => i + 1));
      for (const v of info.versions) {
        expect(Buffer.from((await pairs.signer('shared', v.version)).publicKey).equals(Buffer.from(v.publicKey))).toBe(
          true,
        );
      }
      expect(await pairs.list()).toEqual(['ca', 'shared', ...names.map((n) => `own-${n}`)].sort());
      const issued = results.flatMap((r) => r.issued).sort();
      const book = await new Certificates({ keywarden: kw, keyPairs: pairs }).list('shared');
      expect(book.map((c) => c.serialNumber).sort()).toEqual(issued);
      const ca = await CertificateAuthority.open(kw, pairs, 'ca');
      const record = JSON.parse(new TextDecoder().decode(await store.getMeta('pki/ca/ca')));
      expect(record.issued.map((i: { serialNumber: string }) => i.serialNumber).sort()).toEqual(issued);
      expect((await ca.revoked()).sort()).toEqual(results.flatMap((r) => r.revoked).sort());
      expect(record.crlNumber).toBe(total);
      const numbers = readdirSync(out).map((f) =>
        Number.parseInt(
          execFileSync('openssl', ['crl', '-inform', 'DER', '-in', path.join(out, f), '-noout', '-crlnumber'])
            .toString()
            .trim()
            .replace(/^crlNumber=(0x)?/, ''),
          16,
        ),
      );
      expect(numbers.sort((a, b) => a - b)).toEqual(Array.from({ length: total }, (_, i) => i + 1));
    } finally {
      await kw.close();
      await root.close();
      await store.close();
    }
  }, 150_000);
});
