/**
 * `keywarden scan` (issue 15) in a real temporary git repository: planted secrets of every kind in
 * the working tree and buried in history (added, then deleted in a later commit), lookalikes that
 * must not be flagged, and the pre-commit hook refusing a commit (real git, the built CLI).
 * Every secret is made at test time by Keywarden itself (`keywarden init`, `keywarden datakey`,
 * splitSecret, issueAgentCredential) or node:crypto: none is committed to this repository.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { generateKeyPairSync, randomBytes } from 'node:crypto';
import { mkdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { PassThrough } from 'node:stream';
import { fileURLToPath } from 'node:url';
import { issueAgentCredential } from '@keywarden/agent';
import { MemoryKeyStore } from '@keywarden/core';
import { encryptShareForCustodian, splitSecret } from '@keywarden/split-knowledge';
import { beforeAll, describe, expect, it } from 'vitest';
import { run } from '../src/cli.js';
import { cli, initialized, oneLine, tempDir } from './helpers.js';

const BIN = fileURLToPath(new URL('../dist/bin.js', import.meta.url));

const GIT_ENV = {
  ...process.env,
  GIT_AUTHOR_NAME: 'Test',
  GIT_AUTHOR_EMAIL: 'test@example.invalid',
  GIT_COMMITTER_NAME: 'Test',
  GIT_COMMITTER_EMAIL: 'test@example.invalid',
  GIT_CONFIG_NOSYSTEM: '1',
  GIT_CONFIG_GLOBAL: '/dev/null',
};

function git(cwd: string, ...args: string[]): string {
  return execFileSync('git', args, { cwd, env: GIT_ENV, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
}

async function gitRepo(): Promise<string> {
  const dir = await tempDir();
  git(dir, 'init', '-q', '-b', 'main');
  return dir;
}

function put(dir: string, file: string, text: string): void {
  mkdirSync(join(dir, file, '..'), { recursive: true });
  writeFileSync(join(dir, file), text);
}

interface Secrets {
  unsealKeyFile: string;
  unsealKey: string;
  dataKeyJson: string;
  wrappedOnlyJson: string;
  share: string;
  encryptedShare: string;
  credential: string;
  pin: string;
  privateKeyPem: string;
}

let s: Secrets;

beforeAll(async () => {
  // A real development store: its unseal key file, and `keywarden datakey` output.
  const store = await initialized();
  const unsealKeyFile = readFileSync(join(store, '.keywarden', 'unseal.key'), 'utf8');
  expect((await cli(['key', 'create', 'app'], { cwd: store })).code).toBe(0);
  const dk = await cli(['datakey', 'app'], { cwd: store });
  expect(dk.code, dk.stderr).toBe(0);
  const parsed = JSON.parse(dk.out) as { keyId: string; wrapped: string };
  const shares = await splitSecret(new Uint8Array(randomBytes(32)), { shares: 3, threshold: 2, purpose: 'unseal-key' });
  const { publicKey } = generateKeyPairSync('x25519');
  s = {
    unsealKeyFile,
    unsealKey: unsealKeyFile.trim(),
    dataKeyJson: dk.out,
    wrappedOnlyJson: JSON.stringify({ keyId: parsed.keyId, wrapped: parsed.wrapped }),
    share: shares.encoded[0] as string,
    encryptedShare: encryptShareForCustodian(
      shares.encoded[1] as string,
      publicKey.export({ type: 'spki', format: 'pem' }) as string,
    ),
    credential: (await issueAgentCredential(new MemoryKeyStore(), 'svc-billing')).token,
    pin: randomBytes(12).toString('hex'),
    privateKeyPem: generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey.export({
      type: 'pkcs8',
      format: 'pem',
    }) as string,
  };
}, 60_000);

/** One file per secret kind, and the message id each must be found under. */
function plantAll(dir: string): Record<string, string> {
  put(dir, 'config/unseal.key', s.unsealKeyFile);
  put(dir, 'out/datakey.json', s.dataKeyJson);
  put(dir, 'notes/custodian.txt', `share for Alice:\n${s.share}\n`);
  put(dir, 'deploy/env.sh', `export KEYWARDEN_AGENT_TOKEN='${s.credential}'\n`);
  put(dir, 'hsm/user.pin', `${s.pin}\n`);
  put(dir, 'keys/server.pem', s.privateKeyPem);
  return {
    'config/unseal.key': 'KeywardenUnsealKey',
    'out/datakey.json': 'KeywardenDataKey',
    'notes/custodian.txt': 'KeywardenShare',
    'deploy/env.sh': 'KeywardenAgentCredential',
    'hsm/user.pin': 'KeywardenPin',
    'keys/server.pem': 'PrivateKey',
  };
}

/** Things that look like secrets and are not: Keywarden's non-secret outputs and random data. */
function plantLookalikes(dir: string): void {
  put(dir, 'data/row.json', s.wrappedOnlyJson);
  put(dir, 'shares-out/share-2-of-3.kwshare', s.encryptedShare);
  put(dir, 'data/blob.b64', `${randomBytes(300).toString('base64')}\n${randomBytes(32).toString('base64url')}\n`);
  put(dir, 'README.md', 'Share text: `kwshare1.unseal-key.ss_q3Vh0yJ2mZk8c1aP.2-of-5.need-3.QmF3…Ag.5c1e09a4`\n');
}

interface Finding {
  file: string;
  line: number;
  column: number;
  commit?: string;
  rule: string;
  messageId: string;
  message: string;
  masked: string;
}

function expectNoSecretIn(text: string): void {
  for (const secret of [s.unsealKey.slice(24), s.share.split('.')[5] as string, s.credential.slice(-43), s.pin]) {
    expect(text).not.toContain(secret);
  }
  const dk = JSON.parse(s.dataKeyJson) as { plaintext: string };
  expect(text).not.toContain(dk.plaintext);
}

describe('keywarden scan (working tree)', () => {
  it('finds every kind with file, line and rule, masks the secret, names the remedy, and exits 1', async () => {
    const dir = await gitRepo();
    const expected = plantAll(dir);
    plantLookalikes(dir);
    git(dir, 'add', 'config', 'out');
    git(dir, 'commit', '-q', '-m', 'tracked part'); // tracked and untracked files are both scanned

    const r = await cli(['scan', '--json'], { cwd: dir });
    expect(r.code, r.stderr).toBe(1);
    expect(oneLine(r.stderr)).toMatch(/^keywarden: scan: 6 secrets found in 6 files; what to do: docs\/scanning\.md$/);
    const report = JSON.parse(r.out) as { findings: Finding[]; scanned: number };
    const got = Object.fromEntries(report.findings.map((f) => [f.file, f.messageId]));
    expect(got).toEqual(expected);
    const share = report.findings.find((f) => f.file === 'notes/custodian.txt') as Finding;
    expect(share).toMatchObject({ line: 2, rule: '@keywarden/secretlint-rule' });
    expect(share.message).toContain('keywarden rekey');
    expect(report.findings.find((f) => f.file === 'config/unseal.key')?.message).toContain('keywarden root rotate');
    expect(report.findings.find((f) => f.file === 'out/datakey.json')?.message).toContain('encrypt it again');
    expect(report.findings.find((f) => f.file === 'deploy/env.sh')?.message).toContain('principal svc-billing');
    for (const f of report.findings) expect(f.masked).toMatch(/^.{0,4}\*{8} \(\d+ chars\)$/);
    expectNoSecretIn(r.out + r.stderr);

    // Text output: file:line:column, the rule and message, the masked secret.
    const text = await cli(['scan'], { cwd: dir });
    expect(text.code).toBe(1);
    expect(text.out).toMatch(
      /^notes\/custodian\.txt:2:\d+\n {2}@keywarden\/secretlint-rule: found a plaintext Keywarden share \(unseal-key share 1 of 3 of share set ss_[A-Za-z0-9_-]{16}, 2 needed\): run `keywarden rekey`.*\n {2}secret: .{0,4}\*{8} \(53 chars\)$/m,
    );
    expect(text.out).toContain('@secretlint/secretlint-rule-privatekey: found private key: ********\n');
    expectNoSecretIn(text.out + text.stderr);
  });

  it('does not flag wrapped keys, envelopes, encrypted shares, random base64 or doc examples; honours .gitignore and .secretlintignore', async () => {
    const dir = await gitRepo();
    plantLookalikes(dir);
    // An envelope made by the real CLI.
    const store = await initialized();
    await cli(['key', 'create', 'app'], { cwd: store });
    put(store, 'plain.txt', 'hello');
    expect((await cli(['encrypt', '--key', 'app', '-i', 'plain.txt', '-o', 'msg.kw'], { cwd: store })).code).toBe(0);
    put(dir, 'data/msg.kw.b64', readFileSync(join(store, 'msg.kw')).toString('base64'));
    writeFileSync(join(dir, 'data', 'msg.kw'), readFileSync(join(store, 'msg.kw')));
    // Secrets where the scan must not look.
    put(dir, '.gitignore', 'local/\n');
    put(dir, 'local/unseal.key', s.unsealKeyFile);
    put(dir, '.secretlintignore', 'fixtures/\n');
    put(dir, 'fixtures/vector.pem', s.privateKeyPem);
    git(dir, 'add', '.');
    git(dir, 'commit', '-q', '-m', 'lookalikes');

    const r = await cli(['scan'], { cwd: dir });
    expect(r.code, r.out + r.stderr).toBe(0);
    expect(r.out).toMatch(/^scan: no secrets found \(\d+ files scanned\)\n$/);
    // A file named on the command line is scanned even when ignored.
    const named = await cli(['scan', '--json', 'local/unseal.key'], { cwd: dir });
    expect(named.code).toBe(1);
  });

  it('scans a folder that is not a git repository, and a single file', async () => {
    const dir = await tempDir();
    put(dir, 'a/b/.env', `KEYWARDEN_UNSEAL_KEY=${s.unsealKey}\n`);
    put(dir, 'clean.txt', 'nothing here\n');
    const r = await cli(['scan', '--json', '.'], { cwd: dir });
    expect(r.code).toBe(1);
    expect((JSON.parse(r.out) as { findings: Finding[] }).findings.map((f) => [f.file, f.line])).toEqual([
      ['a/b/.env', 1],
    ]);
    expect((await cli(['scan', 'clean.txt'], { cwd: dir })).code).toBe(0);
  });
});

describe('keywarden scan --history', () => {
  it('finds secrets added and then deleted in a later commit, each blob once, with the commit that added it; SARIF output', async () => {
    const dir = await gitRepo();
    const expected = plantAll(dir);
    plantLookalikes(dir);
    // The same unseal key under a second name in the same commit is the same blob: scanned once.
    put(dir, 'config/copy-of-unseal.key', s.unsealKeyFile);
    // .secretlintignore applies to history too; .gitignore does not hide what was committed anyway.
    put(dir, '.secretlintignore', 'vectors/\n');
    put(dir, 'vectors/published.pem', s.privateKeyPem);
    put(dir, '.gitignore', 'hsm/\n');
    git(dir, 'add', '.');
    git(dir, 'add', '-f', 'hsm/user.pin');
    git(dir, 'commit', '-q', '-m', 'oops');
    const added = git(dir, 'rev-parse', 'HEAD').trim();
    git(dir, 'rm', '-q', '-r', 'config', 'out', 'notes', 'deploy', 'hsm', 'keys');
    git(dir, 'commit', '-q', '-m', 'remove the secrets');
    put(dir, 'later.txt', 'a later, clean commit\n');
    git(dir, 'add', '.');
    git(dir, 'commit', '-q', '-m', 'later');

    expect((await cli(['scan'], { cwd: dir })).code).toBe(0); // the tree is clean now

    const r = await cli(['scan', '--history', '--json'], { cwd: dir });
    expect(r.code, r.stderr).toBe(1);
    const report = JSON.parse(r.out) as { findings: Finding[]; scanned: number };
    expect(report.findings).toHaveLength(6);
    const got = Object.fromEntries(report.findings.map((f) => [f.file, f.messageId]));
    expect(Object.values(got).sort()).toEqual(Object.values(expected).sort());
    for (const f of report.findings) expect(f.commit).toBe(added);
    expectNoSecretIn(r.out + r.stderr);

    const sarif = await cli(['scan', '--history', '--sarif'], { cwd: dir });
    expect(sarif.code).toBe(1);
    const doc = JSON.parse(sarif.out) as {
      version: string;
      runs: {
        tool: { driver: { name: string; rules: { id: string }[] } };
        results: {
          ruleId: string;
          level: string;
          locations: { physicalLocation: { artifactLocation: { uri: string }; region: { startLine: number } } }[];
          properties?: { commit?: string };
        }[];
      }[];
    };
    expect(doc.version).toBe('2.1.0');
    const run = doc.runs[0];
    expect(run?.results).toHaveLength(6);
    expect(run?.tool.driver.rules.map((x) => x.id)).toContain('@keywarden/secretlint-rule/KeywardenShare');
    for (const res of run?.results ?? []) {
      expect(run?.tool.driver.rules.some((x) => x.id === res.ruleId)).toBe(true);
      expect(res.level).toBe('error');
      expect(res.properties?.commit).toBe(added);
      expect(res.locations[0]?.physicalLocation.region.startLine).toBeGreaterThan(0);
    }
    expectNoSecretIn(sarif.out);
  });

  it('refuses outside a git repository, and a clean history exits 0', async () => {
    const plain = await tempDir();
    const r = await cli(['scan', '--history'], { cwd: plain });
    expect(r.code).toBe(2);
    expect(oneLine(r.stderr)).toContain('scan: --history needs a git repository');
    const dir = await gitRepo();
    plantLookalikes(dir);
    git(dir, 'add', '.');
    git(dir, 'commit', '-q', '-m', 'clean');
    const ok = await cli(['scan', '--history'], { cwd: dir });
    expect(ok.code, ok.out).toBe(0);
    expect(ok.out).toMatch(/no secrets found \(\d+ blobs scanned\)/);
  });
});

describe('keywarden scan --history on a terminal', () => {
  async function scanOnTerminal(cwd: string, args: string[]): Promise<{ code: number; stderr: string }> {
    const stdout = new PassThrough();
    const stderr = Object.assign(new PassThrough(), { isTTY: true, columns: 100 });
    const err: Buffer[] = [];
    stdout.resume();
    stderr.on('data', (c: Buffer) => err.push(Buffer.from(c)));
    const stdin = new PassThrough();
    stdin.end();
    const code = await run(['scan', '--history', ...args], { stdin, stdout, stderr, env: {}, cwd });
    return { code, stderr: Buffer.concat(err).toString('utf8') };
  }

  it('shows a progress bar from 200 blobs on, unless --no-progress', async () => {
    const dir = await gitRepo();
    for (let i = 0; i < 210; i++) put(dir, `f/${i}.txt`, `file ${i}\n`);
    git(dir, 'add', '.');
    git(dir, 'commit', '-q', '-m', 'many files');
    const r = await scanOnTerminal(dir, []);
    expect(r.code).toBe(0);
    expect(r.stderr).toContain('210/210 blobs');
    const quiet = await scanOnTerminal(dir, ['--no-progress']);
    expect(quiet.code).toBe(0);
    expect(quiet.stderr).toBe('');
  });
});

describe('keywarden scan --install-hook', () => {
  function commit(dir: string, env: NodeJS.ProcessEnv = {}, ...extra: string[]) {
    return spawnSync('git', ['commit', '-q', '-m', 'change', ...extra], {
      cwd: dir,
      env: { ...GIT_ENV, ...env },
      encoding: 'utf8',
      timeout: 60_000,
    });
  }

  it('installs a pre-commit hook that refuses a commit with a staged secret; --no-verify and KEYWARDEN_SCAN_SKIP bypass it', async () => {
    const dir = await gitRepo();
    const inst = spawnSync(process.execPath, [BIN, 'scan', '--install-hook'], {
      cwd: dir,
      encoding: 'utf8',
      env: GIT_ENV,
    });
    expect(inst.status, inst.stderr).toBe(0);
    const hook = join(dir, '.git', 'hooks', 'pre-commit');
    expect(statSync(hook).mode & 0o111).not.toBe(0);

    put(dir, 'ok.txt', 'fine\n');
    git(dir, 'add', 'ok.txt');
    expect(commit(dir).status).toBe(0);

    put(dir, 'config/unseal.key', s.unsealKeyFile);
    git(dir, 'add', 'config/unseal.key');
    const refused = commit(dir);
    expect(refused.status).not.toBe(0);
    expect(refused.stdout + refused.stderr).toContain('config/unseal.key:1:');
    expect(refused.stderr).toContain('commit refused (bypass: git commit --no-verify)');
    expectNoSecretIn(refused.stdout + refused.stderr);
    expect(git(dir, 'log', '--format=%s').trim().split('\n')).toHaveLength(1);

    // The staged content is what counts: a secret only in the working tree is not this commit's.
    writeFileSync(join(dir, 'config', 'unseal.key'), 'not a key any more\n');
    git(dir, 'add', 'config/unseal.key');
    writeFileSync(join(dir, 'ok.txt'), s.unsealKeyFile); // unstaged
    expect(commit(dir).status).toBe(0);
    git(dir, 'checkout', '-q', '--', 'ok.txt');

    put(dir, 'hsm/user.pin', `${s.pin}\n`);
    git(dir, 'add', 'hsm/user.pin');
    expect(commit(dir).status).not.toBe(0);
    const skipped = commit(dir, { KEYWARDEN_SCAN_SKIP: '1' });
    expect(skipped.status, skipped.stderr).toBe(0);
    expect(skipped.stderr).toContain('keywarden scan: skipped (KEYWARDEN_SCAN_SKIP is set)');

    put(dir, 'deploy/env.sh', `KEYWARDEN_AGENT_TOKEN=${s.credential}\n`);
    git(dir, 'add', 'deploy/env.sh');
    expect(commit(dir).status).not.toBe(0);
    expect(commit(dir, {}, '--no-verify').status).toBe(0);
  });

  it('does not replace a pre-commit hook it did not write, unless --force', async () => {
    const dir = await gitRepo();
    put(dir, '.git/hooks/pre-commit', '#!/bin/sh\nexit 0\n');
    const r = await cli(['scan', '--install-hook'], { cwd: dir });
    expect(r.code).toBe(2);
    expect(oneLine(r.stderr)).toContain('exists and is not Keywarden');
    expect(readFileSync(join(dir, '.git/hooks/pre-commit'), 'utf8')).toBe('#!/bin/sh\nexit 0\n');
    expect((await cli(['scan', '--install-hook', '--force'], { cwd: dir })).code).toBe(0);
    expect(readFileSync(join(dir, '.git/hooks/pre-commit'), 'utf8')).toContain('keywarden-scan-hook v1');
    // Installing again over its own hook needs no --force.
    expect((await cli(['scan', '--install-hook'], { cwd: dir })).code).toBe(0);
  });
});
