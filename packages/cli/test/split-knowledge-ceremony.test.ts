/**
 * The whole split-knowledge ceremony with the built CLI, as operators and custodians run it
 * (docs/split-knowledge.md): init with five custodians' public keys, a sealed agent, three
 * custodians decrypt and give their shares, key operations through the agent, seal, restart,
 * rekey to 2 of 3, and the old shares refused while the new ones unseal and old data still decrypts.
 */
import { existsSync } from 'node:fs';
import { readdir, readFile, stat, writeFile } from 'node:fs/promises';
import * as path from 'node:path';
import { describe, expect, it } from 'vitest';
import { tempDir } from './helpers.js';
import { built, custodian, kw, requireBuild, type Spawned, sharesIn, startAgent } from './split-helpers.js';

requireBuild('split-knowledge-ceremony.test.ts');

const SEALED =
  'keywarden: keystore: sealed; unseal the root before using keys (the agent is sealed: unseal it with a quorum of shares, `keywarden unseal`)';

const mode = async (p: string) => (await stat(p)).mode & 0o777;

describe.skipIf(!built)('split-knowledge ceremony (dist/bin.js, real agent processes)', () => {
  it('init → sealed agent → 3 custodians unseal → encrypt/decrypt → seal → restart → rekey → old shares refused', async () => {
    const cwd = await tempDir();
    const outputs: Spawned[] = [];
    const run = async (args: string[], input?: string) => {
      const r = await kw(args, cwd, input === undefined ? {} : { input });
      outputs.push(r);
      return r;
    };

    // Five custodians: three X25519, two RSA-2048. Only their public keys reach the operator.
    const c = [
      await custodian(cwd, 'alice', 'x25519'),
      await custodian(cwd, 'bob', 'x25519'),
      await custodian(cwd, 'carol', 'x25519'),
      await custodian(cwd, 'dan', 'rsa'),
      await custodian(cwd, 'erin', 'rsa'),
    ];

    // ── init: 3 of 5, each share encrypted to its custodian ──────────────────────────────────
    const init = await run([
      'init',
      '--shares',
      '5',
      '--threshold',
      '3',
      ...c.flatMap((k) => ['--custodian', k.publicKey]),
    ]);
    expect(init.stderr).toContain('Initialized a split-knowledge key store');
    expect(init.code).toBe(0);
    expect(init.stdout).toBe('');
    expect(sharesIn(init.stderr)).toEqual([]);
    const outDir = path.join(cwd, '.keywarden', 'shares-out');
    expect(await mode(outDir)).toBe(0o700);
    expect((await readdir(outDir)).sort()).toEqual([1, 2, 3, 4, 5].map((i) => `share-${i}-of-5.kwshare`));
    for (let i = 1; i <= 5; i++) {
      const f = path.join(outDir, `share-${i}-of-5.kwshare`);
      expect(await mode(f)).toBe(0o600);
      const text = await readFile(f, 'utf8');
      expect(text).toMatch(/^-----BEGIN KEYWARDEN ENCRYPTED SHARE-----\n/);
      expect(text).toContain(`Index: ${i} of 5`);
      expect(sharesIn(text)).toEqual([]);
    }
    expect(existsSync(path.join(cwd, '.keywarden', 'unseal.key'))).toBe(false);
    const shareSetId = /Share set (ss_[A-Za-z0-9_-]{16})/.exec(init.stderr)?.[1] as string;
    expect(shareSetId).toBeDefined();

    // ── a sealed agent ───────────────────────────────────────────────────────────────────────
    let agent = await startAgent(cwd);
    const socket = path.join(cwd, '.keywarden', 'agent.sock');
    expect(await mode(socket)).toBe(0o600);

    const createSealed = await run(['key', 'create', 'app']);
    expect(createSealed.code).toBe(1);
    expect(createSealed.stderr).toBe(`${SEALED}\n`);
    const status0 = await run(['status']);
    expect(status0.code).toBe(0);
    expect(status0.stdout).toMatch(/state:\s+sealed, unseal progress 0 of 3\n/);
    expect(status0.stdout).toContain(`any 3 of 5 shares of share set ${shareSetId}`);

    // ── three custodians decrypt their own shares, on "their own machine" ─────────────────────
    const custodiansAtUnseal = [0, 2, 3]; // alice (X25519), carol (X25519), dan (RSA)
    const plain: string[] = [];
    for (const i of custodiansAtUnseal) {
      const out = path.join(cwd, `plain-${i + 1}.txt`);
      const d = await run([
        'share',
        'decrypt',
        '-i',
        path.join(outDir, `share-${i + 1}-of-5.kwshare`),
        '--private-key',
        (c[i] as { privateKey: string }).privateKey,
        '-o',
        out,
      ]);
      expect(d.stderr).toContain(`Decrypted share ${i + 1} of 5 of share set ${shareSetId}`);
      expect(d.code).toBe(0);
      expect(await mode(out)).toBe(0o600);
      plain.push((await readFile(out, 'utf8')).trim());
    }
    for (const s of plain) expect(s).toMatch(/^kwshare1\.unseal-key\.ss_/);

    // ── unseal, one custodian at a time ─────────────────────────────────────────────────────
    const u1 = await run(['unseal', '--share-file', 'plain-1.txt']);
    expect(u1.code).toBe(0);
    expect(u1.stdout).toContain('unseal progress: 1 of 3 (share 1)\n');
    expect(u1.stdout).toContain('still sealed: 1 of 3');
    const u2 = await run(['unseal', '--share-file', 'plain-3.txt']);
    expect(u2.stdout).toContain('unseal progress: 2 of 3 (shares 1, 3)\n');
    const u3 = await run(['unseal', '--share-file', 'plain-4.txt']);
    expect(u3.code).toBe(0);
    expect(u3.stdout).toBe('unseal progress: 3 of 3 (shares 1, 3, 4)\nunsealed\n');
    expect((await run(['status'])).stdout).toMatch(/state:\s+unsealed\n/);

    // ── key operations through the agent; envelope encryption in the CLI process ─────────────
    expect((await run(['key', 'create', 'app', '--env', 'prod'])).code).toBe(0);
    await writeFile(path.join(cwd, 'data.txt'), 'patient record 42\n');
    const enc = await run(['encrypt', '--key', 'app', '-c', 'table=patients', '-i', 'data.txt', '-o', 'data.kw']);
    expect(enc.stderr).toBe('');
    expect(enc.code).toBe(0);
    const text = await run(['encrypt', '--key', 'app', '--text'], 'a database value');
    expect(text.stdout).toMatch(/^kw1\./);
    const dec = await run(['decrypt', '--key', 'app', '-c', 'table=patients', '-i', 'data.kw']);
    expect(dec.code).toBe(0);
    expect(dec.stdout).toBe('patient record 42\n');
    expect((await run(['decrypt', '--key', 'app'], text.stdout)).stdout).toBe('a database value');
    const wrong = await run(['decrypt', '--key', 'app', '-c', 'table=other', '-i', 'data.kw']);
    expect(wrong.code).toBe(1);
    expect(wrong.stderr).toBe(
      'keywarden: envelope: decryption failed (wrong key or context, or the data was modified)\n',
    );
    const dk = await run(['datakey', 'app']);
    expect(JSON.parse(dk.stdout).plaintext).toHaveLength(44);
    expect((await run(['key', 'rotate', 'app'])).stdout).toContain('primary is now v2');
    expect((await run(['key', 'list'])).stdout).toContain('app');

    // ── seal: refused again ─────────────────────────────────────────────────────────────────
    expect((await run(['seal'])).stdout).toBe('sealed\n');
    for (const argv of [
      ['decrypt', '--key', 'app', '-c', 'table=patients', '-i', 'data.kw'],
      ['encrypt', '--key', 'app', '--text'],
    ]) {
      const r = await run(argv, 'x');
      expect(r.code).toBe(1);
      expect(r.stderr).toBe(`${SEALED}\n`);
    }

    // ── restart: sealed again; unseal with the same three (in one command) ───────────────────
    expect(await agent.stop('SIGTERM')).toBe(0);
    expect(agent.log()).toContain('stopped: the root and the KEK cache were wiped');
    expect(existsSync(socket)).toBe(false);
    const none = await run(['decrypt', '--key', 'app', '-c', 'table=patients', '-i', 'data.kw']);
    expect(none.code).toBe(1);
    expect(none.stderr).toBe(
      'keywarden: this key store is sealed by split knowledge (no agent answers on .keywarden/agent.sock); start `keywarden agent` and unseal it with a quorum (`keywarden unseal`)\n',
    );
    agent = await startAgent(cwd);
    expect((await run(['status'])).stdout).toMatch(/sealed, unseal progress 0 of 3/);
    expect((await run(['decrypt', '--key', 'app', '-c', 'table=patients', '-i', 'data.kw'])).stderr).toBe(
      `${SEALED}\n`,
    );
    const again = await run([
      'unseal',
      ...['plain-1.txt', 'plain-3.txt', 'plain-4.txt'].flatMap((f) => ['--share-file', f]),
    ]);
    expect(again.code).toBe(0);
    expect(again.stdout).toMatch(
      /unseal progress: 1 of 3.*\nunseal progress: 2 of 3.*\nunseal progress: 3 of 3.*\nunsealed\n$/,
    );

    // ── rekey to 2 of 3 with a quorum of the current shares, to three custodians ─────────────
    const newDir = path.join(cwd, 'rekeyed');
    const rk = await run([
      'rekey',
      '--shares',
      '3',
      '--threshold',
      '2',
      ...['plain-1.txt', 'plain-3.txt', 'plain-4.txt'].flatMap((f) => ['--share-file', f]),
      ...[c[0], c[1], c[4]].flatMap((k) => ['--custodian', (k as { publicKey: string }).publicKey]),
      '--share-dir',
      newDir,
    ]);
    expect(rk.stderr).toContain(`The previous share set ${shareSetId} (3 of 5) no longer opens it`);
    expect(rk.code).toBe(0);
    expect(rk.stdout).toBe('');
    expect((await readdir(newDir)).sort()).toEqual([
      'share-1-of-3.kwshare',
      'share-2-of-3.kwshare',
      'share-3-of-3.kwshare',
    ]);
    const newSetId = /Share set (ss_[A-Za-z0-9_-]{16}): 3 shares, any 2/.exec(rk.stderr)?.[1] as string;
    expect(newSetId).toBeDefined();
    expect(newSetId).not.toBe(shareSetId);
    // The running agent stays unsealed: the root key did not change.
    expect((await run(['decrypt', '--key', 'app', '-c', 'table=patients', '-i', 'data.kw'])).stdout).toBe(
      'patient record 42\n',
    );

    // ── restart: the old shares are refused, the new ones unseal ────────────────────────────
    await agent.stop('SIGKILL'); // killed, not stopped: leaves a stale socket behind
    agent = await startAgent(cwd);
    expect(agent.log()).toContain('removed a stale socket file');
    const old = await run([
      'unseal',
      ...['plain-1.txt', 'plain-3.txt', 'plain-4.txt'].flatMap((f) => ['--share-file', f]),
    ]);
    expect(old.code).toBe(1);
    expect(old.stderr).toBe(`keywarden: share: share 1 belongs to share set ${shareSetId}, expected ${newSetId}\n`);
    expect((await run(['status'])).stdout).toMatch(/sealed, unseal progress 0 of 2\n/);

    const newPlain: string[] = [];
    for (const [i, k] of [
      [1, c[0]],
      [3, c[4]],
    ] as const) {
      const d = await run([
        'share',
        'decrypt',
        '-i',
        path.join(newDir, `share-${i}-of-3.kwshare`),
        '--private-key',
        (k as { privateKey: string }).privateKey,
        '-o',
        `new-${i}.txt`,
      ]);
      expect(d.code).toBe(0);
      newPlain.push((await readFile(path.join(cwd, `new-${i}.txt`), 'utf8')).trim());
    }
    const n1 = await run(['unseal', '--share-file', 'new-1.txt']);
    expect(n1.stdout).toContain('unseal progress: 1 of 2 (share 1)\n');
    const n2 = await run(['unseal', '--share-file', 'new-3.txt']);
    expect(n2.stdout).toBe('unseal progress: 2 of 2 (shares 1, 3)\nunsealed\n');
    // Data encrypted before the rekey still decrypts.
    expect((await run(['decrypt', '--key', 'app', '-c', 'table=patients', '-i', 'data.kw'])).stdout).toBe(
      'patient record 42\n',
    );
    expect((await run(['decrypt', '--key', 'app'], text.stdout)).stdout).toBe('a database value');

    expect(await agent.stop()).toBe(0);

    // No command ever printed a plaintext share (they were only ever written with -o).
    for (const r of outputs) {
      for (const s of [...plain, ...newPlain]) {
        expect(r.stdout).not.toContain(s);
        expect(r.stderr).not.toContain(s);
      }
      expect(sharesIn(r.stdout + r.stderr)).toEqual([]);
    }
  }, 60_000);
});
