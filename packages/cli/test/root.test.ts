/**
 * `keywarden root rotate` and `keywarden root destroy`, in-process: development mode (the unseal
 * key) and split knowledge without an agent (a quorum of current shares, from files, a pipe or the
 * hidden prompt). With a running agent: root-agent.test.ts.
 */
import { readFile, writeFile } from 'node:fs/promises';
import * as path from 'node:path';
import { PassThrough } from 'node:stream';
import { encodeUnsealKey } from '@keywarden/core';
import { parseShare, encodeShare } from '@keywarden/split-knowledge';
import { describe, expect, it } from 'vitest';
import { run } from '../src/cli.js';
import { cli, initialized, oneLine, tempDir } from './helpers.js';
import { sharesIn } from './split-helpers.js';

const NO_ROOT = 'keywarden: root: the root of this key store was destroyed: nothing in it can be unwrapped';
const NEEDS_FLAG =
  "keywarden: root destroy makes every key in this store, and all data encrypted under them, unrecoverable for good; pass --yes-destroy-every-key to confirm (see 'keywarden --help')";
const SUBSTITUTED =
  /^keywarden: share: share 2 of share set ss_[A-Za-z0-9_-]{16} is not the share this key store handed out \(its commitment does not match: substituted or forged\); it was not used$/;

async function rootId(cwd: string): Promise<string> {
  const r = await cli(['status', '--json'], { cwd });
  expect(r.code).toBe(0);
  return JSON.parse(r.out).rootId as string;
}

async function versions(cwd: string, key: string): Promise<Array<{ version: number; state: string; rootId: string }>> {
  const r = await cli(['key', 'show', key, '--json'], { cwd });
  expect(r.code).toBe(0);
  return JSON.parse(r.out).versions;
}

/** A development-mode store with key "app" (v1, v2) and a text envelope under each version. */
async function devStore() {
  const cwd = await initialized();
  expect((await cli(['key', 'create', 'app'], { cwd })).code).toBe(0);
  const v1 = (await cli(['encrypt', '--key', 'app', '--text'], { cwd, stdin: 'first' })).out;
  expect((await cli(['key', 'rotate', 'app'], { cwd })).code).toBe(0);
  const v2 = (await cli(['encrypt', '--key', 'app', '--text'], { cwd, stdin: 'second' })).out;
  return { cwd, v1, v2 };
}

/** A split store (2 of 3), key "app" created directly in the store, and the plaintext share files. */
async function splitStore() {
  const cwd = await tempDir();
  const init = await cli(['init', '--shares', '3', '--threshold', '2', '--share-dir', 'shares'], { cwd });
  expect(init.code).toBe(0);
  const share = [1, 2, 3].map((i) => path.join(cwd, 'shares', `share-${i}-of-3.txt`));
  return { cwd, share };
}

describe('root rotate (development mode)', () => {
  it('a new root id on the store and every version; the same unseal key; data encrypted before still decrypts', async () => {
    const { cwd, v1, v2 } = await devStore();
    const before = await rootId(cwd);
    const r = await cli(['root', 'rotate'], { cwd });
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    const after = await rootId(cwd);
    expect(after).not.toBe(before);
    expect(r.out).toBe(
      [
        `Rotated the root of the key store in .keywarden: ${before} → ${after}; 2 key versions rewrapped under the new root in one transaction.`,
        'The unseal key is unchanged (development mode): it unseals the new root.',
        'Data encrypted before still decrypts: the KEKs did not change, only the root that wraps them.',
        'Processes that still hold the old root (applications using this store) must be restarted.',
        '',
      ].join('\n'),
    );
    expect((await versions(cwd, 'app')).map((v) => v.rootId)).toEqual([after, after]);
    expect((await cli(['decrypt', '--key', 'app'], { cwd, stdin: v1 })).out).toBe('first');
    expect((await cli(['decrypt', '--key', 'app'], { cwd, stdin: v2 })).out).toBe('second');
    // The store keeps working: new keys and rotations under the new root.
    expect((await cli(['key', 'rotate', 'app'], { cwd })).code).toBe(0);
    expect((await versions(cwd, 'app')).at(-1)?.rootId).toBe(after);
    // Twice in a row is fine.
    expect((await cli(['root', 'rotate'], { cwd })).code).toBe(0);
    expect((await cli(['decrypt', '--key', 'app'], { cwd, stdin: v1 })).out).toBe('first');
  });

  it('a wrong unseal key is refused and changes nothing; --share-file is a usage error', async () => {
    const { cwd, v1 } = await devStore();
    const before = await rootId(cwd);
    const wrong = encodeUnsealKey(new Uint8Array(32).fill(7));
    const r = await cli(['root', 'rotate'], { cwd, env: { KEYWARDEN_UNSEAL_KEY: wrong } });
    expect(r.code).toBe(1);
    expect(oneLine(r.stderr)).toBe('keywarden: root: unseal failed (wrong unseal key or shares)');
    expect(r.stderr).not.toContain(wrong.split(':').at(-1) as string);
    const files = await cli(['root', 'rotate', '--share-file', 'x.txt'], { cwd });
    expect(files.code).toBe(2);
    expect(oneLine(files.stderr)).toMatch(
      /^keywarden: --share-file does not apply: this key store is in development mode/,
    );
    expect(await rootId(cwd)).toBe(before);
    expect((await cli(['decrypt', '--key', 'app'], { cwd, stdin: v1 })).out).toBe('first');
  });

  it('on a directory without a key store: one line, exit 1', async () => {
    const r = await cli(['root', 'rotate'], { cwd: await tempDir() });
    expect(r.code).toBe(1);
    expect(oneLine(r.stderr)).toBe('keywarden: no key store in .keywarden (run `keywarden init`)');
  });
});

describe('root destroy (development mode)', () => {
  it('is refused without --yes-destroy-every-key (exit 2, one line), and with a wrong unseal key (exit 1); nothing changes', async () => {
    const { cwd, v1 } = await devStore();
    const before = await rootId(cwd);
    const bare = await cli(['root', 'destroy'], { cwd });
    expect(bare.code).toBe(2);
    expect(oneLine(bare.stderr)).toBe(NEEDS_FLAG);
    // Refused before anything else is looked at, even without a store.
    expect(oneLine((await cli(['root', 'destroy'], { cwd: await tempDir() })).stderr)).toBe(NEEDS_FLAG);
    const wrong = await cli(['root', 'destroy', '--yes-destroy-every-key'], {
      cwd,
      env: { KEYWARDEN_UNSEAL_KEY: encodeUnsealKey(new Uint8Array(32).fill(9)) },
    });
    expect(wrong.code).toBe(1);
    expect(oneLine(wrong.stderr)).toBe('keywarden: root: unseal failed (wrong unseal key or shares)');
    expect(await rootId(cwd)).toBe(before);
    expect((await versions(cwd, 'app')).map((v) => v.state)).toEqual(['enabled', 'enabled']);
    expect((await cli(['decrypt', '--key', 'app'], { cwd, stdin: v1 })).out).toBe('first');
  });

  it('destroys the root and every version: decrypt fails with a clear message (exit 1); key list shows every version destroyed', async () => {
    const { cwd, v1, v2 } = await devStore();
    const id = await rootId(cwd);
    const r = await cli(['root', 'destroy', '--yes-destroy-every-key'], { cwd });
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    expect(r.out).toBe(
      `Destroyed the root of the key store in .keywarden (${id}): the sealed root is deleted and 2 key versions destroyed (wrapped material erased).\n` +
        'Nothing encrypted under this key store can be decrypted any more. Backups of the key store still hold the root: destroy them too.\n',
    );
    for (const text of [v1, v2]) {
      const d = await cli(['decrypt', '--key', 'app'], { cwd, stdin: text });
      expect(d.code).toBe(1);
      expect(d.out).toBe('');
      expect(oneLine(d.stderr)).toBe(NO_ROOT);
    }
    const enc = await cli(['encrypt', '--key', 'app', '--text'], { cwd, stdin: 'x' });
    expect(enc.code).toBe(1);
    expect(oneLine(enc.stderr)).toBe(NO_ROOT);

    const list = await cli(['key', 'list'], { cwd });
    expect(list.code).toBe(0);
    expect(list.out).toMatch(/^app\s+kek_\S+\s+v2 \(destroyed\)\s+-\s+\S+\s+\S+\s+\d+\s+-$/m);
    expect(list.stderr).toBe(
      'keywarden: the root of this key store was destroyed (its tombstone says so): nothing in it can be unwrapped; every key version is destroyed\n',
    );
    const json = await cli(['key', 'list', '--json'], { cwd });
    expect(json.code).toBe(0);
    const keys = JSON.parse(json.out) as Array<{ versions: Array<{ state: string }> }>;
    expect(keys.flatMap((k) => k.versions.map((v) => v.state))).toEqual(['destroyed', 'destroyed']);
    expect((await versions(cwd, 'app')).map((v) => v.state)).toEqual(['destroyed', 'destroyed']);

    // Again: the consent is asked for again (checked against the tombstone); nothing left to do.
    const wrongKey = await cli(['root', 'destroy', '--yes-destroy-every-key'], {
      cwd,
      env: { KEYWARDEN_UNSEAL_KEY: encodeUnsealKey(new Uint8Array(32).fill(7)) },
    });
    expect(wrongKey.code).toBe(1);
    expect(oneLine(wrongKey.stderr)).toMatch(
      /^keywarden: root: the unseal key \(or shares\) does not match the record/,
    );
    const again = await cli(['root', 'destroy', '--yes-destroy-every-key'], { cwd });
    expect(again.code).toBe(0);
    expect(again.out).toBe(
      `The root of the key store in .keywarden (${id}) was already destroyed by an earlier, interrupted destruction; 0 remaining key versions destroyed now (wrapped material erased).\n`,
    );
    for (const argv of [['root', 'rotate'], ['status']]) {
      const n = await cli(argv, { cwd });
      expect(n.code).toBe(1);
      expect(oneLine(n.stderr)).toBe(NO_ROOT);
    }
  });
});

describe('root rotate and root destroy (split knowledge, no agent)', () => {
  it('need a quorum of the current shares: too few or a forged share change nothing (exit 1); --unseal-key-file is a usage error', async () => {
    const { cwd, share } = await splitStore();
    const before = await rootId(cwd);
    const one = await cli(['root', 'rotate', '--share-file', share[0] as string], { cwd });
    expect(one.code).toBe(1);
    expect(oneLine(one.stderr)).toBe('keywarden: share: 1 of 2 shares, need 1 more');

    const p = parseShare(await readFile(share[1] as string, 'utf8'));
    const payload = p.payload.slice();
    payload[0] = (payload[0] as number) ^ 0x5a;
    const forged = encodeShare({ ...p, payload });
    await writeFile(path.join(cwd, 'forged.txt'), `${forged}\n`, { mode: 0o600 });
    for (const argv of [
      ['root', 'rotate', '--share-file', share[0] as string, '--share-file', 'forged.txt'],
      ['root', 'destroy', '--yes-destroy-every-key', '--share-file', share[0] as string, '--share-file', 'forged.txt'],
    ]) {
      const r = await cli(argv, { cwd });
      expect(r.code).toBe(1);
      // Refused by its commitment in the sealed root (share-commitment.test.ts) before anything is combined.
      expect(oneLine(r.stderr)).toMatch(SUBSTITUTED);
      expect(sharesIn(r.out + r.stderr)).toEqual([]);
    }
    const keyFile = await cli(['root', 'rotate', '--unseal-key-file', 'k', '--share-file', share[0] as string], {
      cwd,
    });
    expect(keyFile.code).toBe(2);
    expect(oneLine(keyFile.stderr)).toMatch(
      /^keywarden: --unseal-key-file does not apply: this key store is sealed by split knowledge/,
    );
    const none = await cli(['root', 'destroy', '--yes-destroy-every-key'], { cwd });
    expect(none.code).toBe(1);
    expect(oneLine(none.stderr)).toBe(
      'keywarden: root destroy needs 2 current shares: pass --share-file, pipe them one a line, or run it in a terminal',
    );
    expect(await rootId(cwd)).toBe(before);
  });

  it('rotate with a quorum (files, or piped), then destroy with a quorum: the same shares keep working until the root is gone', async () => {
    const { cwd, share } = await splitStore();
    const before = await rootId(cwd);
    const r = await cli(['root', 'rotate', '--share-file', share[0] as string, '--share-file', share[2] as string], {
      cwd,
    });
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    const after = await rootId(cwd);
    expect(after).not.toBe(before);
    const set = parseShare(await readFile(share[0] as string, 'utf8')).shareSetId;
    expect(r.out).toBe(
      [
        `Rotated the root of the key store in .keywarden: ${before} → ${after}; 0 key versions rewrapped under the new root in one transaction.`,
        `The shares are unchanged: any 2 of the 3 shares of share set ${set} unseal the new root.`,
        'Data encrypted before still decrypts: the KEKs did not change, only the root that wraps them.',
        'No agent answers on .keywarden/agent.sock: the next one to start loads the new root.',
        '',
      ].join('\n'),
    );
    // The same shares, piped: rotate again.
    const piped = await cli(['root', 'rotate'], {
      cwd,
      stdin: `${await readFile(share[1] as string, 'utf8')}${await readFile(share[2] as string, 'utf8')}`,
    });
    expect(piped.code).toBe(0);
    expect(await rootId(cwd)).not.toBe(after);

    const d = await cli(
      [
        'root',
        'destroy',
        '--yes-destroy-every-key',
        '--share-file',
        share[1] as string,
        '--share-file',
        share[0] as string,
      ],
      { cwd },
    );
    expect(d.code).toBe(0);
    expect(d.out).toMatch(
      /^Destroyed the root of the key store in \.keywarden \(root_\S+\): the sealed root is deleted/,
    );
    const again = await cli(
      ['root', 'rotate', '--share-file', share[0] as string, '--share-file', share[1] as string],
      {
        cwd,
      },
    );
    expect(again.code).toBe(1);
    expect(oneLine(again.stderr)).toBe(NO_ROOT);
    for (const out of [r, piped, d, again]) expect(sharesIn(out.out + out.stderr)).toEqual([]);
  });

  it('at a terminal, asks for the current shares without echo; end of input before a quorum changes nothing', async () => {
    const { cwd, share } = await splitStore();
    const texts = await Promise.all(share.map(async (f) => (await readFile(f, 'utf8')).trim()));
    const before = await rootId(cwd);
    const early = await atTerminal(['root', 'destroy', '--yes-destroy-every-key'], cwd, [texts[0] as string]);
    expect(early.code).toBe(1);
    expect(early.err).toContain('Root destruction of share set ss_');
    expect(early.err).toContain('keywarden: root destroy: 1 of 2 current shares given; nothing was changed\n');
    expect(await rootId(cwd)).toBe(before);

    const ok = await atTerminal(['root', 'rotate'], cwd, [texts[2] as string, texts[0] as string]);
    expect(ok.code).toBe(0);
    expect(ok.err).toContain('Root rotation of share set ss_');
    expect(ok.err.match(/Current share \(\d of 2, input hidden\): /g)).toHaveLength(2);
    for (const t of texts) expect(ok.out + ok.err).not.toContain(t);
    expect(ok.isRaw).toBe(false);
    expect(await rootId(cwd)).not.toBe(before);
  });
});

describe('help', () => {
  it.each([[['root']], [['root', 'rotate']], [['root', 'destroy']]])('%s --help exits 0', async (argv) => {
    const r = await cli([...argv, '--help'], { cwd: await tempDir() });
    expect(r.code).toBe(0);
    expect(r.out).toMatch(/^Usage: keywarden root/);
  });

  it('describes the quorum, the confirmation flag and what each command does', async () => {
    const cwd = await tempDir();
    const rotate = (await cli(['root', 'rotate', '--help'], { cwd })).out;
    for (const s of ['--share-file', 'quorum', 'SAME unseal key', 'one transaction', 'seal'])
      expect(rotate).toContain(s);
    const destroy = (await cli(['root', 'destroy', '--help'], { cwd })).out;
    for (const s of ['--yes-destroy-every-key', '--share-file', 'quorum', 'Irreversible', 'backups']) {
      expect(destroy).toContain(s);
    }
    expect((await cli(['--help'], { cwd })).out).toContain('root');
  });
});

/** run() with a terminal-like stdin; each prompt on stderr is answered in order, then Ctrl-D. */
async function atTerminal(argv: string[], cwd: string, answers: string[]) {
  const prompt = /Current share \(\d of \d+, input hidden\): /g;
  const stdin = Object.assign(new PassThrough(), {
    isTTY: true as const,
    isRaw: false,
    setRawMode(this: { isRaw: boolean }, m: boolean) {
      this.isRaw = m;
      return this;
    },
  });
  const stdout = new PassThrough();
  const stderr = new PassThrough();
  let out = '';
  let err = '';
  let answered = 0;
  stdout.on('data', (c: Buffer) => (out += c.toString()));
  stderr.on('data', (c: Buffer) => {
    err += c.toString();
    const asked = err.match(prompt)?.length ?? 0;
    while (answered < asked && answered < answers.length) stdin.write(`${answers[answered++]}\r`);
    if (asked > answers.length) stdin.write('\u0004');
  });
  const code = await run(argv, { stdin, stdout, stderr, env: {}, cwd });
  return { code, out, err, isRaw: stdin.isRaw };
}
