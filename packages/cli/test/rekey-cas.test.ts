/**
 * Two `keywarden rekey` processes on the same split-knowledge store at the same moment cannot both
 * win (issue 10, "Concurrency"): both stage a new share set from the same sealed root (held there
 * by the test step hook until both have staged), then both go on; the pending record and the
 * sealed root are compare-and-swapped, so exactly one rekey is activated, the other fails with the
 * core's ConflictError (KW_CONFLICT: "…committed first…" / "…recorded since…"), deletes nothing of
 * the winner's and leaves no share files of its own. The winner's shares are the store's.
 */
import { spawn } from 'node:child_process';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { writeFile } from 'node:fs/promises';
import * as path from 'node:path';
import { describe, expect, it } from 'vitest';
import { tempDir } from './helpers.js';
import { BIN, built, kw, requireBuild, type Spawned, waitFor } from './split-helpers.js';

requireBuild('rekey-cas.test.ts');

/** `keywarden ARGS` with its stderr readable while it runs. */
function running(args: string[], cwd: string, env: NodeJS.ProcessEnv) {
  const child = spawn(process.execPath, [BIN, ...args], {
    cwd,
    env: { PATH: process.env.PATH, ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stderr = '';
  let stdout = '';
  child.stderr.on('data', (c: Buffer) => {
    stderr += c.toString('utf8');
  });
  child.stdout.on('data', (c: Buffer) => {
    stdout += c.toString('utf8');
  });
  const done = new Promise<Spawned>((resolve, reject) => {
    const guard = setTimeout(() => child.kill('SIGKILL'), 60_000);
    child.on('error', reject);
    child.on('close', (code) => {
      clearTimeout(guard);
      resolve({ code, stdout, stderr });
    });
  });
  return { stderr: () => stderr, done };
}

const shareSetOf = (file: string) => /\.(ss_[A-Za-z0-9_-]{16})\./.exec(readFileSync(file, 'utf8'))?.[1];

describe.skipIf(!built)('rekey: compare-and-swap on the sealed root document', () => {
  it('two rekeys staged at the same moment: one wins, the other gets KW_CONFLICT and nothing is lost', async () => {
    const cwd = await tempDir();
    const init = await kw(['init', '--shares', '3', '--threshold', '2', '--share-dir', 's0'], cwd);
    expect(init.code, init.stderr).toBe(0);
    const current = ['--share-file', 's0/share-1-of-3.txt', '--share-file', 's0/share-3-of-3.txt'];
    const go = path.join(cwd, 'go');
    const hook = { KEYWARDEN_TEST_STEP_HOOK: `announce,wait:rekey:staged@${go}` };
    const a = running(['rekey', ...current, '--share-dir', 'sa'], cwd, hook);
    const b = running(['rekey', ...current, '--share-dir', 'sb'], cwd, hook);
    // Both have combined the current quorum and staged from the same sealed root.
    await waitFor(
      () => /rekey:staged/.test(a.stderr()) && /rekey:staged/.test(b.stderr()),
      'both rekeys to stage',
      30_000,
    );
    await writeFile(go, '');
    const [ra, rb] = await Promise.all([a.done, b.done]);
    const results = [
      { r: ra, dir: 'sa' },
      { r: rb, dir: 'sb' },
    ];
    const winners = results.filter((x) => x.r.code === 0);
    const losers = results.filter((x) => x.r.code !== 0);
    expect(winners, `${ra.stderr}\n${rb.stderr}`).toHaveLength(1);
    expect(losers).toHaveLength(1);
    const win = winners[0] as (typeof results)[number];
    const lose = losers[0] as (typeof results)[number];
    expect(lose.r.code).toBe(1);
    const message = lose.r.stderr.split('\n').filter((l) => l.startsWith('keywarden: '));
    expect(message).toHaveLength(1);
    expect(message[0]).toMatch(/committed first|recorded since this one was staged|started or finished meanwhile/);
    expect(lose.r.stderr).not.toMatch(/\n\s+at /);
    // The loser left no share files; the winner's are all there and name the store's share set.
    expect(existsSync(path.join(cwd, lose.dir)) ? readdirSync(path.join(cwd, lose.dir)) : []).toEqual([]);
    const winFiles = [1, 2, 3].map((i) => path.join(cwd, win.dir, `share-${i}-of-3.txt`));
    const status = await kw(['status', '--json'], cwd);
    expect(status.code, status.stderr).toBe(0);
    const st = JSON.parse(status.stdout);
    expect(st.pending).toBeNull();
    expect(st.shareSetId).toBe(shareSetOf(winFiles[0] as string));
    // The winner's shares are a working quorum (a further rekey takes them); the old ones are not.
    const old = await kw(['rekey', ...current, '--share-dir', 'sc'], cwd);
    expect(old.code).toBe(1);
    const next = await kw(
      ['rekey', '--share-file', winFiles[0] as string, '--share-file', winFiles[2] as string, '--share-dir', 'sd'],
      cwd,
    );
    expect(next.code, next.stderr).toBe(0);
  }, 120_000);
});
