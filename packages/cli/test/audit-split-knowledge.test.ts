/**
 * `keywarden audit …` on a split-knowledge folder: the audit key is wrapped by the root, which only
 * a quorum unseals, so the command takes the current shares as rekey and root rotate do (piped one
 * a line, or --share-file), unseals the root in its own process for the command only, and verifies.
 * The records are written by an application that unsealed the store with a quorum itself.
 */
import { writeFile } from 'node:fs/promises';
import * as path from 'node:path';
import { Keywarden, SoftwareRoot } from '@keywarden/core';
import { unsealWithShares } from '@keywarden/split-knowledge';
import { SqliteKeyStore } from '@keywarden/store-sqlite';
import { describe, expect, it } from 'vitest';
import { cli, oneLine, tempDir } from './helpers.js';
import { sharesIn } from './split-helpers.js';

async function splitFolderWithRecords(): Promise<{ cwd: string; shares: string[] }> {
  const cwd = await tempDir();
  const init = await cli(['init', '--shares', '3', '--threshold', '2'], { cwd });
  expect(init.code).toBe(0);
  const shares = sharesIn(init.out);
  expect(shares).toHaveLength(3);
  const store = SqliteKeyStore.open(path.join(cwd, '.keywarden', 'keystore.db'), { create: false });
  const root = await SoftwareRoot.load(store);
  await unsealWithShares(root, [shares[0] as string, shares[2] as string]);
  const kw = new Keywarden({ store, root, ownsStore: true, ownsRoot: true, principal: 'svc', audit: {} });
  await kw.createKey('orders');
  const env = await kw.encrypt(new TextEncoder().encode('hello'), { key: 'orders', context: { order: 'o-7' } });
  await kw.decrypt(env, { key: 'orders', context: { order: 'o-7' } });
  await kw.close();
  return { cwd, shares };
}

describe('keywarden audit under split knowledge', () => {
  it('verify takes a quorum piped one a line, or from --share-file, and names the records verified', async () => {
    const { cwd, shares } = await splitFolderWithRecords();
    const piped = await cli(['audit', 'verify'], { cwd, stdin: `${shares[1]}\n${shares[2]}\n` });
    expect(piped.stderr).toBe('');
    expect(piped.out).toBe('audit: 3 records verified, chain intact up to seq 3, the head the key store recorded\n');
    await writeFile(path.join(cwd, 's1.txt'), `${shares[0]}\n`, { mode: 0o600 });
    await writeFile(path.join(cwd, 's2.txt'), `${shares[1]}\n`, { mode: 0o600 });
    const files = await cli(['audit', 'verify', '--share-file', 's1.txt', '--share-file', 's2.txt'], { cwd });
    expect(files.stderr).toBe('');
    expect(files.code).toBe(0);
    const search = await cli(
      ['audit', 'search', '--key', 'orders', '--principal', 'svc', '--share-file', 's1.txt', '--share-file', 's2.txt'],
      {
        cwd,
      },
    );
    expect(
      search.out
        .trim()
        .split('\n')
        .map((l) => JSON.parse(l).op),
    ).toEqual(['create-key', 'encrypt', 'decrypt']);
    expect(search.out.split(/[^\w-]+/)).not.toContain('o-7'); // a whole token: a MAC may hold the letters
  });

  it('too few shares, none, or a share of another store are refused in one line, and nothing is printed', async () => {
    const { cwd, shares } = await splitFolderWithRecords();
    const other = await splitFolderWithRecords();
    const one = await cli(['audit', 'verify'], { cwd, stdin: `${shares[0]}\n` });
    expect(one.code).not.toBe(0);
    expect(one.out).toBe('');
    expect(oneLine(one.stderr)).toMatch(/^keywarden: /);
    const none = await cli(['audit', 'verify'], { cwd, stdin: '' });
    expect(none.code).not.toBe(0);
    expect(oneLine(none.stderr)).toMatch(
      /^keywarden: audit needs 2 current shares: pass --share-file, pipe them one a line/,
    );
    const foreign = await cli(['audit', 'export', '--jsonl'], {
      cwd,
      stdin: `${other.shares[0]}\n${other.shares[1]}\n`,
    });
    expect(foreign.code).not.toBe(0);
    expect(foreign.out).toBe('');
    expect(oneLine(foreign.stderr)).toMatch(/^keywarden: /);
  });
});
