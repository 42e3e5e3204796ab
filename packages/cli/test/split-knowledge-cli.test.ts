/**
 * Split knowledge without an agent, in-process: init in its three hand-out forms and its
 * refusals, rekey's refusals, `share decrypt` and `share inspect`, and the hidden prompt with a fake
 * terminal (the agent protocol's pieces are tested in packages/agent).
 */
import { generateKeyPairSync } from 'node:crypto';
import { existsSync } from 'node:fs';
import { readdir, readFile, stat, writeFile } from 'node:fs/promises';
import * as path from 'node:path';
import { PassThrough } from 'node:stream';
import { parseShare } from '@keywarden/split-knowledge';
import { describe, expect, it } from 'vitest';
import { readHidden } from '../src/_prompt.js';
import { run } from '../src/cli.js';
import { cli, oneLine, tempDir } from './helpers.js';
import { custodian, sharesIn } from './split-helpers.js';

const mode = async (p: string) => (await stat(p)).mode & 0o777;

describe('init with split knowledge', () => {
  it('without custodians: each share printed once on stdout, labelled; the operator is told custodians are better', async () => {
    const cwd = await tempDir();
    const r = await cli(['init', '--shares', '5', '--threshold', '3'], { cwd });
    expect(r.code).toBe(0);
    const shares = sharesIn(r.out);
    expect(shares).toHaveLength(5);
    expect(new Set(shares).size).toBe(5);
    const parsed = shares.map(parseShare);
    expect(parsed.map((s) => s.index)).toEqual([1, 2, 3, 4, 5]);
    expect(new Set(parsed.map((s) => s.shareSetId)).size).toBe(1);
    const setId = parsed[0]?.shareSetId as string;
    for (let i = 1; i <= 5; i++) {
      expect(r.out).toContain(
        `share ${i} of 5 (share set ${setId}, any 3 unseal) — hand to custodian ${i}, then clear your screen and scrollback:\n`,
      );
    }
    expect(r.stderr).toContain("Encrypting each share to its custodian's public key (--custodian PEM, one per share)");
    expect(r.stderr).toContain(
      'The key store starts sealed: run `keywarden agent`, then `keywarden unseal` with 3 shares.',
    );
    expect(sharesIn(r.stderr)).toEqual([]);
    expect(existsSync(path.join(cwd, '.keywarden', 'unseal.key'))).toBe(false);
    expect(await mode(path.join(cwd, '.keywarden', 'keystore.db'))).toBe(0o600);
    // The store is split-knowledge: no command can use it without the agent.
    const st = await cli(['status'], { cwd });
    expect(st.out).toContain(`split knowledge: any 3 of 5 shares of share set ${setId}`);
  });

  it('defaults to 3 of 5; --share-dir writes plaintext shares one a file, 0600, and prints none', async () => {
    const cwd = await tempDir();
    const r = await cli(['init', '--threshold', '3', '--share-dir', 'out'], { cwd });
    expect(r.code).toBe(0);
    expect(r.out).toBe('');
    expect((await readdir(path.join(cwd, 'out'))).sort()).toEqual([1, 2, 3, 4, 5].map((i) => `share-${i}-of-5.txt`));
    for (let i = 1; i <= 5; i++) {
      const f = path.join(cwd, 'out', `share-${i}-of-5.txt`);
      expect(await mode(f)).toBe(0o600);
      expect(parseShare(await readFile(f, 'utf8')).index).toBe(i);
    }
    expect(await mode(path.join(cwd, 'out'))).toBe(0o700);
    expect(sharesIn(r.stderr)).toEqual([]);
  });

  it('refuses bad parameters and bad custodian keys before creating anything', async () => {
    const cwd = await tempDir();
    const a = await custodian(cwd, 'a', 'x25519');
    const b = await custodian(cwd, 'b', 'x25519');
    const cases: [string[], number, string | RegExp][] = [
      [
        ['--shares', '3', '--threshold', '4'],
        2,
        'keywarden: share: the threshold (4) cannot exceed the number of shares (3)',
      ],
      [['--shares', '3', '--threshold', '1'], 2, /^keywarden: share: the threshold must be an integer of at least 2/],
      [['--shares', 'x'], 2, /^keywarden: option '--shares <n>' argument 'x' is invalid\. must be a positive integer/],
      [
        ['--shares', '3', '--threshold', '2', '--custodian', a.publicKey, '--custodian', b.publicKey],
        2,
        'keywarden: 2 --custodian keys for 3 shares; give exactly one public key per share, in share order',
      ],
      [
        ['--shares', '2', '--threshold', '2', '--custodian', a.publicKey, '--custodian', a.privateKey],
        1,
        "keywarden: a.key: custodian: this is a private key; give the operator only the custodian's public key (openssl pkey -pubout)",
      ],
      [
        ['--shares', '2', '--threshold', '2', '--custodian', a.publicKey, '--custodian', a.publicKey],
        1,
        'keywarden: custodians 1 (a.pub) and 2 (a.pub) have the same public key; each share must go to a different custodian',
      ],
      [
        ['--shares', '3', '--print-unseal-key'],
        2,
        /^keywarden: --print-unseal-key and --unseal-key-file are for development mode/,
      ],
    ];
    for (const [args, code, message] of cases) {
      const r = await cli(['init', ...args], { cwd });
      expect(r.code, args.join(' ')).toBe(code);
      const suffix = code === 2 ? " (see 'keywarden --help')" : '';
      if (typeof message === 'string') expect(oneLine(r.stderr)).toBe(message + suffix);
      else expect(oneLine(r.stderr)).toMatch(message);
      expect(existsSync(path.join(cwd, '.keywarden')), args.join(' ')).toBe(false);
    }
  });

  it('refuses to overwrite share files of an earlier ceremony, and leaves no store behind', async () => {
    const cwd = await tempDir();
    await cli(['init', '--dir', 'first', '--shares', '2', '--threshold', '2', '--share-dir', 'out'], { cwd });
    const before = await readFile(path.join(cwd, 'out', 'share-1-of-2.txt'), 'utf8');
    const r = await cli(['init', '--dir', 'second', '--shares', '2', '--threshold', '2', '--share-dir', 'out'], {
      cwd,
    });
    expect(r.code).toBe(1);
    expect(oneLine(r.stderr)).toBe(
      'keywarden: out/share-1-of-2.txt already exists (shares of an earlier ceremony?): move them away or choose another --share-dir',
    );
    expect(existsSync(path.join(cwd, 'second', 'keystore.db'))).toBe(false);
    expect(await readFile(path.join(cwd, 'out', 'share-1-of-2.txt'), 'utf8')).toBe(before);
  });

  it('rekey: refuses a development-mode store, too few shares, and leaves the shares as they were', async () => {
    const dev = await tempDir();
    await cli(['init'], { cwd: dev });
    const r = await cli(['rekey'], { cwd: dev });
    expect(r.code).toBe(1);
    expect(oneLine(r.stderr)).toMatch(/^keywarden: rekey: this key store is in development mode/);

    const cwd = await tempDir();
    await cli(['init', '--shares', '3', '--threshold', '2', '--share-dir', 'old'], { cwd });
    const few = await cli(['rekey', '--share-file', 'old/share-1-of-3.txt', '--share-dir', 'new'], { cwd });
    expect(few.code).toBe(1);
    expect(oneLine(few.stderr)).toBe('keywarden: share: 1 of 2 shares, need 1 more');
    expect(existsSync(path.join(cwd, 'new'))).toBe(false);
    const none = await cli(['rekey', '--share-dir', 'new'], { cwd });
    expect(none.code).toBe(1);
    expect(oneLine(none.stderr)).toMatch(/^keywarden: rekey needs 2 current shares: pass --share-file/);
    // Piped, one a line, and printed once on stdout when there is no --share-dir or custodian.
    const piped = await cli(['rekey', '--threshold', '3'], {
      cwd,
      stdin: `${await readFile(path.join(cwd, 'old', 'share-1-of-3.txt'), 'utf8')}\n${await readFile(path.join(cwd, 'old', 'share-3-of-3.txt'), 'utf8')}`,
    });
    expect(piped.code).toBe(0);
    expect(sharesIn(piped.out).map((s) => parseShare(s).threshold)).toEqual([3, 3, 3]);
    expect(sharesIn(piped.stderr)).toEqual([]);
  });
});

describe('share decrypt and share inspect', () => {
  async function ceremony() {
    const cwd = await tempDir();
    const a = await custodian(cwd, 'alice', 'x25519');
    const b = await custodian(cwd, 'bob', 'rsa');
    const r = await cli(
      ['init', '--shares', '2', '--threshold', '2', '--custodian', a.publicKey, '--custodian', b.publicKey],
      {
        cwd,
      },
    );
    expect(r.code).toBe(0);
    return {
      cwd,
      a,
      b,
      s1: '.keywarden/shares-out/share-1-of-2.kwshare',
      s2: '.keywarden/shares-out/share-2-of-2.kwshare',
    };
  }

  it('decrypts your own share to stdout; the wrong private key is one line naming both fingerprints', async () => {
    const { cwd, a, b, s1, s2 } = await ceremony();
    const ok = await cli(['share', 'decrypt', '-i', s2, '--private-key', b.privateKey], { cwd });
    expect(ok.code).toBe(0);
    expect(sharesIn(ok.out)).toHaveLength(1);
    expect(parseShare(ok.out).index).toBe(2);
    expect(ok.stderr).toMatch(
      /^Decrypted share 2 of 2 of share set ss_\S+ \(any 2 unseal\); matches the commitment recorded in the key store in \.keywarden\./,
    );
    expect(sharesIn(ok.stderr)).toEqual([]);

    const wrong = await cli(['share', 'decrypt', '-i', s1, '--private-key', b.privateKey], { cwd });
    expect(wrong.code).toBe(1);
    expect(oneLine(wrong.stderr)).toMatch(
      /^keywarden: share: this encrypted share is not for this private key \(recipient fingerprint sha256:[0-9a-f]{64}, this key is sha256:[0-9a-f]{64}\)$/,
    );
    expect(wrong.out).toBe('');

    // A modified file: the one decryption error, nothing more.
    const armored = await readFile(path.join(cwd, s1), 'utf8');
    const lines = armored.split('\n');
    const body = lines.indexOf('') + 1;
    const line = lines[body] as string;
    lines[body] = (line[0] === 'A' ? 'B' : 'A') + line.slice(1);
    await writeFile(path.join(cwd, 'tampered.kwshare'), lines.join('\n'));
    const tampered = await cli(['share', 'decrypt', '-i', 'tampered.kwshare', '--private-key', a.privateKey], { cwd });
    expect(tampered.code).toBe(1);
    expect(oneLine(tampered.stderr)).toBe(
      'keywarden: share: decryption failed (wrong key or context, or the data was modified)',
    );
  });

  it('-o FILE is 0600 and never overwritten; an encrypted private key takes --passphrase-file', async () => {
    const { cwd } = await ceremony();
    const pair = generateKeyPairSync('x25519', {
      publicKeyEncoding: { type: 'spki', format: 'pem' },
      privateKeyEncoding: { type: 'pkcs8', format: 'pem', cipher: 'aes-256-cbc', passphrase: 'correct horse' },
    });
    await writeFile(path.join(cwd, 'carol.pub'), pair.publicKey);
    await writeFile(path.join(cwd, 'carol.key'), pair.privateKey, { mode: 0o600 });
    await writeFile(path.join(cwd, 'pass.txt'), 'correct horse\n', { mode: 0o600 });
    const r = await cli(
      [
        'init',
        '--dir',
        'c',
        '--shares',
        '2',
        '--threshold',
        '2',
        '--custodian',
        'carol.pub',
        '--custodian',
        'alice.pub',
      ],
      {
        cwd,
      },
    );
    expect(r.code).toBe(0);
    const enc = 'c/shares-out/share-1-of-2.kwshare';
    const noPass = await cli(['share', 'decrypt', '-i', enc, '--private-key', 'carol.key'], { cwd });
    expect(noPass.code).toBe(1);
    expect(oneLine(noPass.stderr)).toBe(
      'keywarden: custodian: the private key is encrypted; give its passphrase (--passphrase-file FILE, or run this in a terminal)',
    );
    const out = await cli(
      ['share', 'decrypt', '-i', enc, '--private-key', 'carol.key', '--passphrase-file', 'pass.txt', '-o', 'mine.txt'],
      { cwd },
    );
    expect(out.code).toBe(0);
    expect(out.out).toBe('');
    expect(await mode(path.join(cwd, 'mine.txt'))).toBe(0o600);
    expect(parseShare(await readFile(path.join(cwd, 'mine.txt'), 'utf8')).index).toBe(1);
    const again = await cli(
      ['share', 'decrypt', '-i', enc, '--private-key', 'carol.key', '--passphrase-file', 'pass.txt', '-o', 'mine.txt'],
      { cwd },
    );
    expect(again.code).toBe(1);
    expect(oneLine(again.stderr)).toBe('keywarden: mine.txt already exists; refusing to overwrite it');
  });

  it('inspect shows the headers only: set id, index, threshold, recipient; never a share', async () => {
    const { cwd, a, s1 } = await ceremony();
    const r = await cli(['share', 'inspect', '-i', s1], { cwd });
    expect(r.code).toBe(0);
    expect(r.out).toMatch(/^type:\s+encrypted share, version 1\n/m);
    expect(r.out).toMatch(/^algorithm:\s+X25519-HKDF-SHA256-AES-256-GCM$/m);
    expect(r.out).toMatch(/^share set:\s+ss_[A-Za-z0-9_-]{16}$/m);
    expect(r.out).toMatch(/^index:\s+1 of 2$/m);
    expect(r.out).toMatch(/^threshold:\s+2$/m);
    expect(r.out).toMatch(/^recipient:\s+sha256:[0-9a-f]{64}$/m);
    expect(r.out.split('\n').filter((l) => l !== '')).toHaveLength(7);
    const body = (await readFile(path.join(cwd, s1), 'utf8')).split('\n').find((l) => /^[A-Za-z0-9+/]{64}$/.test(l));
    expect(body).toBeDefined();
    expect(r.out).not.toContain(body);

    const json = JSON.parse((await cli(['share', 'inspect', '-i', s1, '--json'], { cwd })).out);
    expect(json).toMatchObject({ encrypted: true, index: 1, shares: 2, threshold: 2, purpose: 'unseal-key' });
    expect(Object.keys(json).sort()).toEqual(
      [
        'algorithm',
        'encrypted',
        'index',
        'purpose',
        'recipient',
        'shareSetId',
        'shares',
        'threshold',
        'version',
      ].sort(),
    );

    // A plaintext share: its labels, not its payload.
    await cli(['share', 'decrypt', '-i', s1, '--private-key', a.privateKey, '-o', 'p.txt'], { cwd });
    const text = (await readFile(path.join(cwd, 'p.txt'), 'utf8')).trim();
    const plain = await cli(['share', 'inspect', '-i', 'p.txt'], { cwd });
    expect(plain.out).toMatch(/^type:\s+plaintext share \(keep it offline\)$/m);
    expect(plain.out).not.toContain(text.split('.')[5] as string);
    expect(sharesIn(plain.out)).toEqual([]);

    const junk = await cli(['share', 'inspect', '-i', 'alice.pub'], { cwd });
    expect(junk.code).toBe(1);
    expect(oneLine(junk.stderr)).toBe('keywarden: share: not a Keywarden share');
  });
});

describe('the hidden prompt', () => {
  function fakeTty() {
    const input = Object.assign(new PassThrough(), {
      isTTY: true as const,
      isRaw: false,
      modes: [] as boolean[],
      setRawMode(this: { isRaw: boolean; modes: boolean[] }, m: boolean) {
        this.modes.push(m);
        this.isRaw = m;
        return this;
      },
    });
    const output = new PassThrough();
    let written = '';
    output.on('data', (c: Buffer) => (written += c.toString()));
    return { input, output, written: () => written };
  }

  it('reads a line in raw mode, echoes nothing (not even stars), and restores the mode', async () => {
    const t = fakeTty();
    const p = readHidden(t.input, t.output, 'Share (input hidden): ');
    t.input.write('kwshare1.secret');
    t.input.write('-part\r');
    expect(await p).toBe('kwshare1.secret-part');
    expect(t.written()).toBe('Share (input hidden): \n');
    expect(t.input.modes).toEqual([true, false]);
    expect(t.input.isRaw).toBe(false);
  });

  it('edits with Backspace and Ctrl-U, ignores arrow keys; keeps typed-ahead input for the next prompt', async () => {
    const t = fakeTty();
    const p = readHidden(t.input, t.output, '> ');
    t.input.write('junk\u0015abcX\u007fd\u001b[De\r\nnext\r');
    expect(await p).toBe('abcde');
    expect(await readHidden(t.input, t.output, '> ')).toBe('next');
    expect(t.written()).toBe('> \n> \n');
  });

  it('Ctrl-D on an empty line is end of input; Ctrl-C interrupts; raw mode restored either way', async () => {
    const t = fakeTty();
    const eof = readHidden(t.input, t.output, '> ');
    t.input.write('\u0004');
    expect(await eof).toBeUndefined();
    const interrupted = readHidden(t.input, t.output, '> ');
    t.input.write('kwshare1.abc\u0003');
    await expect(interrupted).rejects.toMatchObject({ name: 'AbortError' });
    expect(t.input.modes).toEqual([true, false, true, false]);
    expect(t.written()).not.toContain('abc');
    const ended = readHidden(t.input, t.output, '> ');
    t.input.end();
    expect(await ended).toBeUndefined();
  });

  it('an abort signal interrupts; a terminal without raw mode is refused', async () => {
    const t = fakeTty();
    const ac = new AbortController();
    const p = readHidden(t.input, t.output, '> ', { signal: ac.signal });
    ac.abort();
    await expect(p).rejects.toMatchObject({ name: 'AbortError' });
    expect(t.input.isRaw).toBe(false);
    const noRaw = Object.assign(new PassThrough(), { isTTY: true });
    await expect(readHidden(noRaw, new PassThrough(), '> ')).rejects.toThrow(/cannot turn off echo/);
  });
});

describe('commands at a terminal (fake TTY, in-process)', () => {
  /** run() with a terminal-like stdin; `type` answers each prompt that appears on stderr, in order. */
  async function atTerminal(argv: string[], cwd: string, answers: string[], prompt: RegExp) {
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
      const asked = err.split(prompt).length - 1;
      while (answered < asked && answered < answers.length) stdin.write(`${answers[answered++]}\r`);
      if (asked > answers.length) stdin.write('\u0004');
    });
    const code = await run(argv, { stdin, stdout, stderr, env: {}, cwd });
    return { code, out, err, isRaw: stdin.isRaw };
  }

  it('rekey asks for current shares without echo, reports a wrong one and asks again', async () => {
    const cwd = await tempDir();
    await cli(['init', '--shares', '3', '--threshold', '2', '--share-dir', 'old'], { cwd });
    const other = await tempDir();
    await cli(['init', '--shares', '3', '--threshold', '2', '--share-dir', 'x'], { cwd: other });
    const share = async (dir: string, i: number) =>
      (await readFile(path.join(dir, `share-${i}-of-3.txt`), 'utf8')).trim();
    const answers = [
      await share(path.join(cwd, 'old'), 1),
      await share(path.join(other, 'x'), 2),
      await share(path.join(cwd, 'old'), 3),
    ];
    const r = await atTerminal(
      ['rekey', '--share-dir', 'new'],
      cwd,
      answers,
      /Current share \(\d of 2, input hidden\): /,
    );
    expect(r.code).toBe(0);
    expect(r.err).toMatch(/keywarden: share: share 2 belongs to share set ss_\S+, expected ss_\S+\n/);
    expect(r.err.match(/Current share \(2 of 2, input hidden\)/g)).toHaveLength(2);
    for (const a of answers) expect(r.out + r.err).not.toContain(a);
    expect(r.isRaw).toBe(false);
    expect((await readdir(path.join(cwd, 'new'))).sort()).toEqual([
      'share-1-of-3.txt',
      'share-2-of-3.txt',
      'share-3-of-3.txt',
    ]);
  });

  it('rekey at a terminal: end of input before a quorum changes nothing', async () => {
    const cwd = await tempDir();
    await cli(['init', '--shares', '3', '--threshold', '2', '--share-dir', 'old'], { cwd });
    const one = (await readFile(path.join(cwd, 'old', 'share-1-of-3.txt'), 'utf8')).trim();
    const r = await atTerminal(
      ['rekey', '--share-dir', 'new'],
      cwd,
      [one],
      /Current share \(\d of 2, input hidden\): /,
    );
    expect(r.code).toBe(1);
    expect(r.err).toContain('keywarden: rekey: 1 of 2 current shares given; nothing was changed\n');
    expect(existsSync(path.join(cwd, 'new'))).toBe(false);
  });

  it('share decrypt asks for the passphrase of an encrypted private key, without echo', async () => {
    const cwd = await tempDir();
    const pair = generateKeyPairSync('x25519', {
      publicKeyEncoding: { type: 'spki', format: 'pem' },
      privateKeyEncoding: { type: 'pkcs8', format: 'pem', cipher: 'aes-256-cbc', passphrase: 'tr0ub4dor' },
    });
    const b = await custodian(cwd, 'b', 'x25519');
    await writeFile(path.join(cwd, 'a.pub'), pair.publicKey);
    await writeFile(path.join(cwd, 'a.key'), pair.privateKey, { mode: 0o600 });
    await cli(['init', '--shares', '2', '--threshold', '2', '--custodian', 'a.pub', '--custodian', b.publicKey], {
      cwd,
    });
    const r = await atTerminal(
      ['share', 'decrypt', '-i', '.keywarden/shares-out/share-1-of-2.kwshare', '--private-key', 'a.key'],
      cwd,
      ['tr0ub4dor'],
      /Passphrase for a\.key \(input hidden\): /,
    );
    expect(r.code).toBe(0);
    expect(parseShare(r.out).index).toBe(1);
    expect(r.err).not.toContain('tr0ub4dor');
  });
});

describe('help', () => {
  it.each([
    ['agent'],
    ['unseal'],
    ['seal'],
    ['status'],
    ['rekey'],
    ['share'],
    ['share', 'decrypt'],
    ['share', 'inspect'],
  ])('%s --help exits 0', async (...argv) => {
    const r = await cli([...argv, '--help'], { cwd: await tempDir() });
    expect(r.code).toBe(0);
    expect(r.out).toMatch(/^Usage: keywarden/);
  });

  it('init --help and the top-level help describe split knowledge', async () => {
    const cwd = await tempDir();
    const init = (await cli(['init', '--help'], { cwd })).out;
    for (const s of ['--shares', '--threshold', '--custodian', '--share-dir', 'never written anywhere in plaintext']) {
      expect(init).toContain(s);
    }
    const top = (await cli(['--help'], { cwd })).out;
    for (const s of ['agent', 'unseal', 'seal', 'rekey', 'share', '--socket']) expect(top).toContain(s);
  });
});
