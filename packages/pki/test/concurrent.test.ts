/**
 * Concurrent writers (docs/pki.md §Concurrent writers): real processes rotate one key pair, issue
 * from one CA, add to one certificate book, revoke and make CRLs at the same time on one SQLite
 * file. Every change of every process is in the records afterwards: versions 1..N with no gap and
 * no duplicate, each opening under its own number; every certificate in the book and in the CA's
 * issued list; every revocation; every CRL number given out once; every key pair in the index.
 * Against the former read-modify-write of these records (one writer per record) it fails.
 */
import { execFileSync, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdirSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Keywarden, SoftwareRoot } from '@keywarden/core';
import { SqliteKeyStore } from '@keywarden/store-sqlite';
import { afterEach, describe, expect, it } from 'vitest';
import { CertificateAuthority, Certificates, KeyPairs } from '../src/index.js';

const WRITER = fileURLToPath(new URL('./fixtures/pki-writer.mjs', import.meta.url));
const dirs: string[] = [];
afterEach(() => {
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});

interface WriterResult {
  versions: number[];
  issued: string[];
  revoked: string[];
}

/** Starts a writer; resolves `ready` once it has unsealed, `done` with its result after "go". */
function startWriter(db: string, name: string, rounds: number, out: string, unsealHex: string) {
  const child = spawn(process.execPath, [WRITER, db, name, String(rounds), out], { stdio: ['pipe', 'pipe', 'pipe'] });
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
  // A writer that dies before "ready" must fail the test, not hang it.
  done.catch(() => onReady());
  child.stdin.write(`${unsealHex}\n`);
  return { ready, done, go: () => child.stdin.end('go\n') };
}

describe('pki records on SQLite with concurrent writer processes', () => {
  it('four processes rotating, issuing, adding, revoking and making CRLs at once lose no update', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'kw-pki-concurrent-'));
    dirs.push(dir);
    const db = join(dir, 'keystore.db');
    const out = join(dir, 'crl');
    mkdirSync(out);
    const unsealKey = new Uint8Array(randomBytes(32));
    const unsealHex = Buffer.from(unsealKey).toString('hex');
    {
      const store = SqliteKeyStore.open(db);
      const root = await SoftwareRoot.initialize(store, { unsealKey: new Uint8Array(unsealKey) });
      const kw = new Keywarden({ store, root });
      await kw.createKey('pki');
      const pairs = new KeyPairs({ keywarden: kw });
      await CertificateAuthority.create(kw, pairs, 'ca', {
        subject: { commonName: 'Concurrent CA' },
        algorithm: 'ECDSA-P256',
        validityDays: 10,
      });
      await pairs.create('shared', { algorithm: 'ECDSA-P256' });
      await kw.close();
      await root.close();
      await store.close();
    }
    const names = ['w1', 'w2', 'w3', 'w4'];
    const rounds = 4;
    const writers = names.map((n) => startWriter(db, n, rounds, out, unsealHex));
    await Promise.all(writers.map((w) => w.ready));
    for (const w of writers) w.go();
    const results = await Promise.all(writers.map((w) => w.done));

    const store = SqliteKeyStore.open(db, { create: false });
    const root = await SoftwareRoot.load(store);
    await root.unseal(unsealKey);
    const kw = new Keywarden({ store, root });
    try {
      const pairs = new KeyPairs({ keywarden: kw });
      const total = names.length * rounds;
      // Key pair: versions 1..1+total, each made by exactly one writer, each opening under its number.
      const info = await pairs.get('shared');
      const made = results.flatMap((r) => r.versions).sort((a, b) => a - b);
      expect(made).toEqual(Array.from({ length: total }, (_, i) => i + 2));
      expect(info.versions.map((v) => v.version)).toEqual(Array.from({ length: total + 1 }, (_, i) => i + 1));
      expect(info.primaryVersion).toBe(total + 1);
      expect(new Set(info.versions.map((v) => Buffer.from(v.publicKey).toString('hex'))).size).toBe(total + 1);
      for (const v of info.versions) {
        const signer = await pairs.signer('shared', v.version);
        expect(Buffer.from(signer.publicKey).equals(Buffer.from(v.publicKey))).toBe(true);
      }
      // Index: every key pair, also those created at once.
      expect(await pairs.list()).toEqual(['ca', 'shared', ...names.map((n) => `own-${n}`)].sort());

      // Certificate book of the shared key pair: every certificate, each under the version it certifies.
      const issued = results.flatMap((r) => r.issued).sort();
      const book = await new Certificates({ keywarden: kw, keyPairs: pairs }).list('shared');
      expect(book.map((c) => c.serialNumber).sort()).toEqual(issued);
      for (const c of book) {
        const v = info.versions.find((x) => x.version === c.keyVersion);
        expect(v && c.subject.commonName.length > 0).toBe(true);
      }

      // CA: every issued serial, every revocation, one CRL number per crl() call.
      const ca = await CertificateAuthority.open(kw, pairs, 'ca');
      const caRecord = JSON.parse(new TextDecoder().decode(await store.getMeta('pki/ca/ca')));
      expect(caRecord.issued.map((i: { serialNumber: string }) => i.serialNumber).sort()).toEqual(issued);
      expect((await ca.revoked()).sort()).toEqual(results.flatMap((r) => r.revoked).sort());
      expect(caRecord.crlNumber).toBe(total);
      const crlNumbers = readdirSync(out).map((f) =>
        Number.parseInt(
          execFileSync('openssl', ['crl', '-inform', 'DER', '-in', join(out, f), '-noout', '-crlnumber'])
            .toString()
            .trim()
            .replace(/^crlNumber=(0x)?/, ''),
          16,
        ),
      );
      expect(crlNumbers.sort((a, b) => a - b)).toEqual(Array.from({ length: total }, (_, i) => i + 1));
    } finally {
      await kw.close();
      await root.close();
      await store.close();
    }
  }, 120_000);
});
