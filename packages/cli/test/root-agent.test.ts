/**
 * Root rotation and destruction with a running agent (a real `keywarden agent` process from
 * dist/bin.js; the commands run in-process): the agent is sealed afterwards, custodians unseal it
 * again with the same shares after a rotation, and after a destruction nothing decrypts and the
 * agent refuses shares.
 */
import { readFile, writeFile } from 'node:fs/promises';
import * as path from 'node:path';
import { describe, expect, it } from 'vitest';
import { cli, oneLine, tempDir } from './helpers.js';
import { built, kw, requireBuild, sharesIn, startAgent, waitFor } from './split-helpers.js';

requireBuild('root-agent.test.ts');

const SEALED =
  'keywarden: keystore: sealed; unseal the root before using keys (the agent is sealed: unseal it with a quorum of shares, `keywarden unseal`)';

describe.skipIf(!built)('root rotate and root destroy with a running agent', () => {
  it('rotate while the agent is unsealed → agent sealed → unseal again with the same shares → data encrypted before still decrypts; destroy → nothing decrypts', async () => {
    const cwd = await tempDir();
    const init = await cli(['init', '--shares', '3', '--threshold', '2', '--share-dir', 'shares'], { cwd });
    expect(init.code).toBe(0);
    const share = [1, 2, 3].map((i) => path.join('shares', `share-${i}-of-3.txt`));
    const texts = await Promise.all(share.map(async (f) => (await readFile(path.join(cwd, f), 'utf8')).trim()));
    const agent = await startAgent(cwd);
    const quorum = (a: number, b: number) => ['--share-file', share[a] as string, '--share-file', share[b] as string];

    // Unsealed agent, a key with two versions, data under each.
    expect((await cli(['unseal', ...quorum(0, 1)], { cwd })).out).toContain('unsealed');
    expect((await cli(['key', 'create', 'app'], { cwd })).code).toBe(0);
    await writeFile(path.join(cwd, 'data.txt'), 'patient record 42\n');
    expect((await cli(['encrypt', '--key', 'app', '-i', 'data.txt', '-o', 'data.kw'], { cwd })).code).toBe(0);
    expect((await cli(['key', 'rotate', 'app'], { cwd })).code).toBe(0);
    const text = (await cli(['encrypt', '--key', 'app', '--text'], { cwd, stdin: 'after key rotation' })).out;
    const before = JSON.parse((await cli(['status', '--json'], { cwd })).out).rootId as string;

    // ── root rotate, the built CLI as an operator runs it, with two custodians' files ─────────
    const rotated = await kw(['root', 'rotate', ...quorum(1, 2)], cwd);
    expect(rotated.stderr).toBe('');
    expect(rotated.code).toBe(0);
    expect(rotated.stdout).toContain('2 key versions rewrapped under the new root in one transaction.');
    expect(rotated.stdout).toContain(
      'The agent on .keywarden/agent.sock was sealed (it held the old root): custodians must unseal it again with a quorum of the same shares (`keywarden unseal`).\n',
    );
    const after = JSON.parse((await cli(['status', '--json'], { cwd })).out).rootId as string;
    expect(after).not.toBe(before);
    await waitFor(() => agent.log().includes(`the key store's root was rotated (now ${after})`), 'the agent to log it');

    // The agent is sealed: key operations are refused until a quorum unseals the new root.
    const refused = await cli(['decrypt', '--key', 'app', '-i', 'data.kw'], { cwd });
    expect(refused.code).toBe(1);
    expect(refused.stderr).toBe(`${SEALED}\n`);
    expect((await cli(['status'], { cwd })).out).toMatch(/sealed, unseal progress 0 of 2/);

    // The same shares unseal the new root; everything encrypted before decrypts.
    const again = await cli(['unseal', ...quorum(2, 0)], { cwd });
    expect(again.code).toBe(0);
    expect(again.out).toContain('unsealed\n');
    expect((await cli(['decrypt', '--key', 'app', '-i', 'data.kw'], { cwd })).out).toBe('patient record 42\n');
    expect((await cli(['decrypt', '--key', 'app'], { cwd, stdin: text })).out).toBe('after key rotation');
    const show = JSON.parse((await cli(['key', 'show', 'app', '--json'], { cwd })).out) as {
      versions: Array<{ rootId: string }>;
    };
    expect(show.versions.map((v) => v.rootId)).toEqual([after, after]);
    expect((await cli(['key', 'rotate', 'app'], { cwd })).code).toBe(0); // new versions under the new root

    // ── root destroy: without the flag nothing happens; with it and a quorum, everything goes ──
    const noFlag = await kw(['root', 'destroy', ...quorum(0, 1)], cwd);
    expect(noFlag.code).toBe(2);
    expect((await cli(['decrypt', '--key', 'app', '-i', 'data.kw'], { cwd })).code).toBe(0);
    const destroyed = await kw(['root', 'destroy', '--yes-destroy-every-key', ...quorum(0, 1)], cwd);
    expect(destroyed.stderr).toBe('');
    expect(destroyed.code).toBe(0);
    expect(destroyed.stdout).toContain(`Destroyed the root of the key store in .keywarden (${after})`);
    expect(destroyed.stdout).toContain('3 key versions destroyed');
    expect(destroyed.stdout).toContain(
      'The agent on .keywarden/agent.sock was sealed; stop it: it has nothing left to serve.\n',
    );
    await waitFor(() => agent.log().includes("the key store's root was destroyed"), 'the agent to log it');

    for (const argv of [
      ['decrypt', '--key', 'app', '-i', 'data.kw'],
      ['decrypt', '--key', 'app'],
    ]) {
      const d = await cli(argv, { cwd, stdin: text });
      expect(d.code).toBe(1);
      expect(d.out).toBe('');
      expect(oneLine(d.stderr)).toBe(
        'keywarden: root: the root of this key store was destroyed: nothing in it can be unwrapped',
      );
    }
    // The agent takes no more shares: there is no root to unseal.
    const unseal = await cli(['unseal', '--share-file', share[0] as string], { cwd });
    expect(unseal.code).toBe(1);
    expect(oneLine(unseal.stderr)).toBe(
      'keywarden: root: this key store has no root any more (it was destroyed); stop the agent',
    );
    const list = await cli(['key', 'list', '--json'], { cwd });
    expect(list.code).toBe(0);
    const states = (JSON.parse(list.out) as Array<{ versions: Array<{ state: string }> }>).flatMap((k) =>
      k.versions.map((v) => v.state),
    );
    expect(states).toEqual(['destroyed', 'destroyed', 'destroyed']);

    expect(await agent.stop()).toBe(0);
    for (const r of [rotated, noFlag, destroyed]) {
      expect(sharesIn(r.stdout + r.stderr)).toEqual([]);
      for (const t of texts) expect(r.stdout + r.stderr).not.toContain(t);
    }
    expect(sharesIn(agent.log())).toEqual([]);
  }, 60_000);
});
