/**
 * `keywarden audit …`, `policy …` and `principal …` against a real SQLite key store whose audit log
 * an application wrote through the library.
 */
import { writeFile } from 'node:fs/promises';
import * as path from 'node:path';
import { Keywarden, SoftwareRoot } from '@keywarden/core';
import { SqliteKeyStore } from '@keywarden/store-sqlite';
import { describe, expect, it } from 'vitest';
import { resolveStoreLocation, resolveUnsealSource, unsealRoot } from '../src/store-dir.js';
import { cli, Database, initialized, oneLine } from './helpers.js';

/** An application's Keywarden on the folder's store, recording into the store's audit log. */
async function appKeywarden(cwd: string, principal: string): Promise<Keywarden> {
  const io = { cwd, env: {} };
  const loc = resolveStoreLocation(io);
  const store = SqliteKeyStore.open(path.join(loc.dir, 'keystore.db'));
  const root = await SoftwareRoot.load(store);
  await unsealRoot(root, resolveUnsealSource(io, loc), { stderr: process.stderr });
  return new Keywarden({ store, root, ownsStore: true, ownsRoot: true, principal, audit: {} });
}

async function withTraffic(): Promise<string> {
  const cwd = await initialized();
  const kw = await appKeywarden(cwd, 'svc');
  await kw.createKey('app');
  await kw.createKey('other');
  const env = await kw.encrypt(new TextEncoder().encode('hello'), { key: 'app', context: { order: 'o-1' } });
  await kw.decrypt(env, { key: 'app', context: { order: 'o-1' } });
  for (let i = 0; i < 12; i++) {
    const bad = env.slice();
    bad[bad.length - 1 - i] = (bad[bad.length - 1 - i] as number) ^ 1;
    await kw.decrypt(bad, { key: 'app', context: { order: 'o-1' } }).catch(() => {});
  }
  await kw.close();
  return cwd;
}

describe('keywarden audit', () => {
  it('verify, tail, export and search read the store’s log', async () => {
    const cwd = await withTraffic();
    const v = await cli(['audit', 'verify'], { cwd });
    expect(v.stderr).toBe('');
    expect(v.out).toBe('audit: 16 records verified, chain intact up to seq 16, the head the key store recorded\n');
    const tail = await cli(['audit', 'tail', '-n', '2'], { cwd });
    expect(
      tail.out
        .trim()
        .split('\n')
        .map((l) => JSON.parse(l).seq),
    ).toEqual([15, 16]);
    const all = await cli(['audit', 'export', '--jsonl'], { cwd });
    expect(all.out.trim().split('\n')).toHaveLength(16);
    expect(all.out.split(/[^\w-]+/)).not.toContain('o-1'); // a whole token: a MAC may hold the letters
    const search = await cli(['audit', 'search', '--key', 'app', '--principal', 'svc', '--outcome', 'ok'], { cwd });
    expect(
      search.out
        .trim()
        .split('\n')
        .map((l) => JSON.parse(l).op),
    ).toEqual(['create-key', 'encrypt', 'decrypt']);
    const none = await cli(['audit', 'search', '--principal', 'nobody'], { cwd });
    expect(none.out).toBe('');
  });

  it('anomalies flags the burst of failed decryptions', async () => {
    const cwd = await withTraffic();
    const a = await cli(['audit', 'anomalies'], { cwd });
    expect(a.code).toBe(0);
    expect(a.out).toMatch(
      /decrypt-failure-burst {2}svc {2}kek_\S+ v1 {2}\(seq 14\): 10 failed decryptions within 60 s/,
    );
  });

  it('verify names the first bad record of a log altered in the store, and exits 1', async () => {
    const cwd = await withTraffic();
    const db = new Database(path.join(cwd, '.keywarden', 'keystore.db'));
    const row = db.prepare("SELECT value FROM meta WHERE name = 'audit/seg/0000000003'").get() as { value: Buffer };
    const text = row.value.toString('utf8').replace('"outcome":"ok"', '"outcome":"denied"');
    db.prepare("UPDATE meta SET value = ? WHERE name = 'audit/seg/0000000003'").run(Buffer.from(text));
    db.close();
    const v = await cli(['audit', 'verify'], { cwd });
    expect(v.code).toBe(1);
    expect(oneLine(v.stderr)).toBe(
      'keywarden: audit: the log does not verify: line 3 (seq 3): MAC does not verify (the record was edited, or MACed without the audit key); 2 records before it verified',
    );
  });

  it('verify --file checks a JSONL copy against the store’s head (a truncated copy is caught)', async () => {
    const cwd = await withTraffic();
    const all = (await cli(['audit', 'export', '--jsonl'], { cwd })).out.trim().split('\n');
    const file = path.join(cwd, 'copy.jsonl');
    await writeFile(file, `${all.join('\n')}\n`);
    expect((await cli(['audit', 'verify', '--file', file], { cwd })).code).toBe(0);
    await writeFile(file, `${all.slice(0, 10).join('\n')}\n`);
    const v = await cli(['audit', 'verify', '--file', file], { cwd });
    expect(v.code).toBe(1);
    expect(oneLine(v.stderr)).toMatch(/line 11 \(seq 11\): truncated: the log ends at seq 10 but seq 16 was written/);
  });
});

describe('keywarden policy and principal', () => {
  it('set refuses an invalid policy naming the line, stores a valid one as a version, and show prints it', async () => {
    const cwd = await initialized();
    const bad = path.join(cwd, 'bad.policy');
    await writeFile(bad, 'keywarden-policy 1\nprincipal app environment=prod\nallow app decrpyt on *\n');
    const r = await cli(['policy', 'set', bad], { cwd });
    expect(r.code).toBe(1);
    expect(oneLine(r.stderr)).toMatch(/^keywarden: policy: line 3: unknown operation "decrpyt"/);
    const good = path.join(cwd, 'good.policy');
    const text = 'keywarden-policy 1\nprincipal app environment=prod\nallow app encrypt,decrypt on app/*\n';
    await writeFile(good, text);
    expect((await cli(['policy', 'check', good], { cwd })).out).toBe('policy: valid: 1 principals, 1 rules\n');
    expect((await cli(['policy', 'set', good], { cwd })).out).toBe('policy: version 1 is in force\n');
    expect((await cli(['policy', 'show'], { cwd })).out).toBe(text);
    const change = await cli(['audit', 'search', '--op', 'policy-change'], { cwd });
    expect(JSON.parse(change.out)).toMatchObject({ principal: 'cli', outcome: 'ok', detail: { policyVersion: 1 } });
  });

  it('issue prints a credential once (stored as a digest), list shows it, revoke removes it', async () => {
    const cwd = await initialized();
    const issued = await cli(['principal', 'issue', 'app'], { cwd });
    expect(issued.code).toBe(0);
    const token = issued.out.trim();
    expect(token).toMatch(/^kwagent1\.app\.[A-Za-z0-9_-]{43}$/);
    const db = new Database(path.join(cwd, '.keywarden', 'keystore.db'));
    const stored = db.prepare("SELECT value FROM meta WHERE name = 'agent/credentials'").get() as { value: Buffer };
    db.close();
    expect(stored.value.toString('utf8')).not.toContain(token.split('.')[2]);
    expect((await cli(['principal', 'list'], { cwd })).out).toMatch(/^app {2}issued \d{4}-/);
    expect((await cli(['principal', 'revoke', 'app'], { cwd })).out).toBe(
      "principal: app's credential revoked; its client certificates are refused too\n",
    );
    expect((await cli(['principal', 'list'], { cwd })).out).toMatch(/^app {2}revoked \d{4}-[^\n]*\n$/);
    expect((await cli(['principal', 'revoke', 'app'], { cwd })).out).toBe('principal: app was already revoked\n');
    expect((await cli(['principal', 'admit', 'app'], { cwd })).out).toBe(
      "principal: app's client certificates are accepted again\n",
    );
    expect((await cli(['principal', 'list'], { cwd })).out).toBe('principal: no credentials issued\n');
    expect((await cli(['principal', 'admit', 'app'], { cwd })).out).toBe('principal: app was not revoked\n');
  });

  it('revoking a principal with no token (one that uses a client certificate) says what it did', async () => {
    const cwd = await initialized();
    expect((await cli(['principal', 'revoke', 'tls-only'], { cwd })).out).toBe(
      'principal: tls-only had no token; its client certificates are now refused\n',
    );
    expect((await cli(['principal', 'list'], { cwd })).out).toMatch(/^tls-only {2}revoked /);
  });
});
