/**
 * The agent (a real `keywarden agent` process from dist/bin.js) and the commands that talk to it
 * (run in-process): unseal errors that keep the progress, the idle timeout, a forged share, the
 * socket's permissions and lifecycle, the protocol's behaviour on bad input, following a rekey,
 * and the hidden prompt end to end.
 */
import { existsSync } from 'node:fs';
import { chown, readFile, stat, writeFile } from 'node:fs/promises';
import { createConnection, createServer } from 'node:net';
import * as path from 'node:path';
import { PassThrough } from 'node:stream';
import { encodeShare, parseShare } from '@keywarden/split-knowledge';
import { describe, expect, it } from 'vitest';
import { run } from '../src/cli.js';
import { cli, oneLine, tempDir } from './helpers.js';
import { built, requireBuild, sharesIn, startAgent, waitFor } from './split-helpers.js';

requireBuild('split-knowledge-agent.test.ts');

/** A split store (3 of 5 by default) with plaintext shares in DIR/shares/share-<i>-of-<N>.txt. */
async function splitStore(shares = 5, threshold = 3, dir = '.keywarden'): Promise<{ cwd: string; share: string[] }> {
  const cwd = await tempDir();
  const r = await cli(
    [
      'init',
      '--dir',
      dir,
      '--shares',
      String(shares),
      '--threshold',
      String(threshold),
      '--share-dir',
      `${dir}-shares`,
    ],
    { cwd },
  );
  if (r.code !== 0) throw new Error(`init failed: ${r.stderr}`);
  const share: string[] = [];
  for (let i = 1; i <= shares; i++) {
    share.push(path.join(cwd, `${dir}-shares`, `share-${i}-of-${shares}.txt`));
  }
  return { cwd, share };
}

async function status(cwd: string): Promise<string> {
  const r = await cli(['status'], { cwd });
  expect(r.code).toBe(0);
  return r.out;
}

/** Send raw bytes on the agent's socket; collect the answer lines until it closes or `lines` came. */
function rawExchange(
  socket: string,
  payload: string | Buffer,
  lines: number,
): Promise<{ answers: string[]; closed: boolean }> {
  return new Promise((resolve, reject) => {
    const conn = createConnection({ path: socket });
    let buf = '';
    let closed = false;
    const timer = setTimeout(() => {
      conn.destroy();
      reject(new Error(`no answer on the socket: ${buf}`));
    }, 5000);
    const done = () => {
      clearTimeout(timer);
      conn.destroy();
      resolve({ answers: buf.split('\n').filter((l) => l !== ''), closed });
    };
    conn.on('data', (c: Buffer) => {
      buf += c.toString('utf8');
      if (buf.split('\n').filter((l) => l !== '').length >= lines && !closed) setTimeout(done, 50);
    });
    conn.on('error', () => {});
    conn.on('close', () => {
      closed = true;
      done();
    });
    conn.write(payload);
  });
}

describe.skipIf(!built)('keywarden agent and unseal', () => {
  it('refused shares (other set, duplicate, corrupted) give one precise line, exit 1, and keep the progress', async () => {
    const { cwd, share } = await splitStore();
    const other = await splitStore(5, 3, 'other');
    await startAgent(cwd);

    const first = await cli(['unseal', '--share-file', share[1] as string], { cwd });
    expect(first.code).toBe(0);
    expect(first.out).toContain('unseal progress: 1 of 3 (share 2)');

    const otherSet = parseShare(await readFile(other.share[0] as string, 'utf8')).shareSetId;
    const thisSet = parseShare(await readFile(share[0] as string, 'utf8')).shareSetId;
    const wrongSet = await cli(['unseal', '--share-file', other.share[0] as string], { cwd });
    expect(wrongSet.code).toBe(1);
    expect(oneLine(wrongSet.stderr)).toBe(
      `keywarden: share: share 1 belongs to share set ${otherSet}, expected ${thisSet}`,
    );

    const dup = await cli(['unseal', '--share-file', share[1] as string], { cwd });
    expect(dup.code).toBe(1);
    expect(oneLine(dup.stderr)).toBe('keywarden: share: share 2 was given twice');

    const text = (await readFile(share[2] as string, 'utf8')).trim();
    const i = text.lastIndexOf('.') - 5;
    const corrupted = text.slice(0, i) + (text[i] === 'A' ? 'B' : 'A') + text.slice(i + 1);
    await writeFile(path.join(cwd, 'corrupted.txt'), corrupted, { mode: 0o600 });
    const bad = await cli(['unseal', '--share-file', 'corrupted.txt'], { cwd });
    expect(bad.code).toBe(1);
    expect(oneLine(bad.stderr)).toBe('keywarden: share: checksum mismatch (mistyped or corrupted share)');

    const missing = await cli(['unseal', '--share-file', 'missing.txt'], { cwd });
    expect(missing.code).toBe(1);
    expect(oneLine(missing.stderr)).toBe('keywarden: cannot read share file missing.txt: no such file');

    await writeFile(
      path.join(cwd, 'enc.kwshare'),
      '-----BEGIN KEYWARDEN ENCRYPTED SHARE-----\nVersion: 1\n\nAAAA\n-----END KEYWARDEN ENCRYPTED SHARE-----\n',
      { mode: 0o600 },
    );
    const encrypted = await cli(['unseal', '--share-file', 'enc.kwshare'], { cwd });
    expect(encrypted.code).toBe(1);
    expect(oneLine(encrypted.stderr)).toBe(
      'keywarden: enc.kwshare holds an encrypted share: its custodian decrypts it first (`keywarden share decrypt -i enc.kwshare --private-key KEY`)',
    );

    // None of it cost the progress made: share 2 is still held.
    expect(await status(cwd)).toMatch(/sealed, unseal progress 1 of 3 \(share 2\)/);
    for (const r of [wrongSet, dup, bad]) expect(sharesIn(r.stderr + r.out)).toEqual([]);
    const done = await cli(['unseal', '--share-file', share[0] as string, '--share-file', share[4] as string], {
      cwd,
    });
    expect(done.code).toBe(0);
    expect(done.out).toBe(
      'unseal progress: 2 of 3 (shares 1, 2)\nunseal progress: 3 of 3 (shares 1, 2, 5)\nunsealed\n',
    );
    const already = await cli(['unseal', '--share-file', share[3] as string], { cwd });
    expect(already.out).toBe('already unsealed\n');
  });

  it('progress is discarded after --unseal-timeout without a new share', async () => {
    const { cwd, share } = await splitStore();
    const agent = await startAgent(cwd, ['--unseal-timeout', '0.5']);
    expect((await cli(['unseal', '--share-file', share[0] as string], { cwd })).out).toContain('1 of 3');
    await waitFor(() => agent.log().includes('unseal progress discarded'), 'the timeout to pass', 3000);
    expect(agent.log()).toContain('unseal progress discarded: no new share within 0.5 s (0 of 3 held)');
    expect(await status(cwd)).toMatch(/sealed, unseal progress 0 of 3 \(earlier shares timed out and were discarded\)/);
    // `status --agent` names the same agent directly and says the same thing in the same words.
    const named = await cli(['--agent', path.join(cwd, '.keywarden', 'agent.sock'), 'status'], { cwd });
    expect(named.code, named.stderr).toBe(0);
    expect(named.out).toMatch(
      /\nstate: +sealed, unseal progress 0 of 3 \(earlier shares timed out and were discarded\)\n/,
    );
    const next = await cli(['unseal', '--share-file', share[1] as string], { cwd });
    expect(next.out).toContain(
      'unseal progress: 1 of 3 (share 2) — earlier shares had timed out and were discarded; progress started over',
    );
    expect(agent.log()).toContain('earlier shares had timed out; share 2 accepted (1 of 3)');
  });

  it('a forged share (valid form, altered payload) is refused on the spot by its commitment, and the progress is kept', async () => {
    const { cwd, share } = await splitStore();
    await startAgent(cwd);
    const real = parseShare(await readFile(share[2] as string, 'utf8'));
    const payload = real.payload.slice();
    payload[0] = (payload[0] as number) ^ 0x01;
    const forged = encodeShare({ ...real.toJSON(), payload });
    await writeFile(path.join(cwd, 'forged.txt'), forged, { mode: 0o600 });
    const r = await cli(
      ['unseal', '--share-file', share[0] as string, '--share-file', share[1] as string, '--share-file', 'forged.txt'],
      { cwd },
    );
    expect(r.code).toBe(1);
    expect(oneLine(r.stderr)).toMatch(
      /^keywarden: share: share 3 of share set ss_\S+ is not the share this key store handed out \(its commitment does not match: substituted or forged\); it was not used$/,
    );
    expect(await status(cwd)).toMatch(/sealed, unseal progress 2 of 3 \(shares 1, 2\)\n/);
    // The genuine third share completes the quorum.
    const ok = await cli(['unseal', '--share-file', share[2] as string], { cwd });
    expect(ok.out).toContain('unsealed');
  });

  it('socket 0600, a second agent refused, a stale socket replaced, SIGTERM removes the socket and exits 0', async () => {
    const { cwd } = await splitStore();
    const agent = await startAgent(cwd);
    const socket = path.join(cwd, '.keywarden', 'agent.sock');
    const st = await stat(socket);
    expect(st.isSocket()).toBe(true);
    expect(st.mode & 0o777).toBe(0o600);
    expect((await stat(path.join(cwd, '.keywarden'))).mode & 0o777).toBe(0o700);

    const second = await startAgent(cwd).then(
      () => undefined,
      (err: { code?: number; log?: string }) => err,
    );
    expect(second?.code).toBe(1);
    expect(second?.log).toBe('keywarden: agent: another agent is already running on .keywarden/agent.sock\n');
    expect((await status(cwd)).includes(`pid ${agent.child.pid}`)).toBe(true);

    expect(await agent.stop('SIGKILL')).toBe(null);
    expect(existsSync(socket)).toBe(true); // killed: the socket file stays behind
    const third = await startAgent(cwd);
    expect(third.log()).toContain('removed a stale socket file .keywarden/agent.sock');
    expect(await third.stop('SIGINT')).toBe(0);
    expect(existsSync(socket)).toBe(false);
    expect(await status(cwd)).toContain('no agent running on .keywarden/agent.sock');
  });

  it('protocol: malformed JSON, an unknown op and an over-long line get error answers; the agent keeps serving', async () => {
    const { cwd } = await splitStore();
    const agent = await startAgent(cwd);
    const socket = path.join(cwd, '.keywarden', 'agent.sock');

    const a = await rawExchange(socket, '{not json\n{"id":7,"op":"frobnicate"}\n{"id":8,"op":"status"}\n', 3);
    const [bad, unknown, ok] = a.answers.map((l) => JSON.parse(l));
    expect(bad).toEqual({
      id: null,
      ok: false,
      error: { code: 'KW_AGENT_PROTOCOL', message: 'agent: the request is not valid JSON (one JSON object a line)' },
    });
    expect(unknown.id).toBe(7);
    expect(unknown.error.code).toBe('KW_AGENT_PROTOCOL');
    expect(unknown.error.message).toMatch(/^agent: unknown op/);
    expect(ok).toMatchObject({ id: 8, ok: true, result: { sealed: true, threshold: 3, shares: 5, accepted: 0 } });

    const long = await rawExchange(socket, Buffer.alloc(64 * 1024 + 10, 0x61), 1);
    expect(long.closed).toBe(true);
    expect(JSON.parse(long.answers[0] as string)).toEqual({
      id: null,
      ok: false,
      error: { code: 'KW_AGENT_PROTOCOL', message: 'agent: request longer than 64 KiB; closing the connection' },
    });

    const args = await rawExchange(socket, '{"id":"x","op":"unseal","args":{"share":42}}\n', 1);
    expect(JSON.parse(args.answers[0] as string).error).toEqual({
      code: 'KW_AGENT_PROTOCOL',
      message: 'agent: unseal needs args.share (a string)',
    });

    // Still alive and serving.
    expect(agent.child.exitCode).toBe(null);
    expect(await status(cwd)).toMatch(/sealed, unseal progress 0 of 3/);
  });

  it('a sealed agent follows a rekey: shares held for the old set are dropped, old shares refused', async () => {
    const { cwd, share } = await splitStore(3, 2);
    const agent = await startAgent(cwd);
    expect((await cli(['unseal', '--share-file', share[0] as string], { cwd })).out).toContain('1 of 2');
    const rk = await cli(
      ['rekey', '--share-file', share[0] as string, '--share-file', share[2] as string, '--share-dir', 'new'],
      { cwd },
    );
    expect(rk.code).toBe(0);
    expect(await status(cwd)).toMatch(/sealed, unseal progress 0 of 2\n/);
    await waitFor(() => agent.log().includes('the key store was rekeyed'), 'the agent to notice the rekey');
    expect(agent.log()).toContain('(1 shares held were discarded)');
    const old = await cli(['unseal', '--share-file', share[1] as string], { cwd });
    expect(old.code).toBe(1);
    expect(oneLine(old.stderr)).toMatch(/^keywarden: share: share 2 belongs to share set ss_\S+, expected ss_\S+$/);
    const fresh = await cli(
      ['unseal', '--share-file', 'new/share-1-of-3.txt', '--share-file', 'new/share-2-of-3.txt'],
      { cwd },
    );
    expect(fresh.out).toContain('unsealed');
  });

  it('an unsealed agent that seals after a rekey needs the new shares', async () => {
    const { cwd, share } = await splitStore(3, 2);
    await startAgent(cwd);
    await cli(['unseal', '--share-file', share[0] as string, '--share-file', share[1] as string], { cwd });
    expect(
      (
        await cli(
          ['rekey', '--share-file', share[0] as string, '--share-file', share[1] as string, '--share-dir', 'n'],
          {
            cwd,
          },
        )
      ).code,
    ).toBe(0);
    expect(await status(cwd)).toMatch(/state:\s+unsealed/);
    expect((await cli(['seal'], { cwd })).out).toBe('sealed\n');
    const old = await cli(['unseal', '--share-file', share[0] as string], { cwd });
    expect(old.code).toBe(1);
    expect(old.stderr).toMatch(/belongs to share set/);
  });

  it('the agent refuses a development-mode store, and a missing store', async () => {
    const cwd = await tempDir();
    await expect(startAgent(cwd)).rejects.toMatchObject({
      code: 1,
      log: 'keywarden: no key store in .keywarden (run `keywarden init`)\n',
    });
    expect((await cli(['init'], { cwd })).code).toBe(0);
    await expect(startAgent(cwd)).rejects.toMatchObject({
      code: 1,
      log: expect.stringMatching(/^keywarden: this key store is in development mode .* no agent is needed\n$/),
    });
  });

  it('unseal at a terminal: hidden prompt, refused shares reported and asked again, nothing echoed', async () => {
    const { cwd, share } = await splitStore();
    await startAgent(cwd);
    const texts = await Promise.all(share.map(async (f) => (await readFile(f, 'utf8')).trim()));

    const stdin = Object.assign(new PassThrough(), {
      isTTY: true,
      isRaw: false,
      modes: [] as boolean[],
      setRawMode(this: { isRaw: boolean; modes: boolean[] }, mode: boolean) {
        this.modes.push(mode);
        this.isRaw = mode;
        return this;
      },
    });
    const stdout = new PassThrough();
    const stderr = new PassThrough();
    let out = '';
    let err = '';
    stdout.on('data', (c: Buffer) => (out += c.toString()));
    stderr.on('data', (c: Buffer) => (err += c.toString()));
    const prompts = () => err.split('Share (input hidden): ').length - 1;
    const done = run(['unseal'], { stdin, stdout, stderr, env: {}, cwd });

    await waitFor(() => prompts() === 1, 'the first prompt');
    stdin.write(`${texts[0]}\r`);
    await waitFor(() => out.includes('1 of 3'), 'progress 1');
    await waitFor(() => prompts() === 2, 'the second prompt');
    stdin.write(`${texts[0]}\r`); // the same share again: refused, asked again
    await waitFor(() => err.includes('share 1 was given twice'), 'the duplicate refused');
    await waitFor(() => prompts() === 3, 'the third prompt');
    // A typo fixed with Backspace, then two shares pasted at once.
    stdin.write(`${texts[3]}X\u007f\r${texts[4]}\r`);
    expect(await done).toBe(0);

    expect(out).toBe(
      'unseal progress: 1 of 3 (share 1)\nunseal progress: 2 of 3 (shares 1, 4)\nunseal progress: 3 of 3 (shares 1, 4, 5)\nunsealed\n',
    );
    expect(err).toContain('keywarden: share: share 1 was given twice\n');
    for (const t of texts) {
      expect(out).not.toContain(t);
      expect(err).not.toContain(t);
    }
    expect(sharesIn(out + err)).toEqual([]);
    // Raw mode on for each prompt, restored after each.
    expect(stdin.modes.length).toBeGreaterThanOrEqual(8);
    expect(stdin.modes.filter((m) => m).length).toBe(stdin.modes.filter((m) => !m).length);
    expect(stdin.isRaw).toBe(false);
  });
});

describe('without an agent', () => {
  it('key commands on a split store say how to start and unseal one; unseal and seal say none runs', async () => {
    const { cwd } = await splitStore();
    const msg =
      'keywarden: this key store is sealed by split knowledge (no agent answers on .keywarden/agent.sock); start `keywarden agent` and unseal it with a quorum (`keywarden unseal`)';
    for (const argv of [
      ['encrypt', '--key', 'k'],
      ['decrypt', '--key', 'k'],
      ['datakey', 'k'],
      ['key', 'create', 'k'],
      ['key', 'rotate', 'k'],
    ]) {
      const r = await cli(argv, { cwd, stdin: 'x' });
      expect(r.code).toBe(1);
      expect(oneLine(r.stderr)).toBe(msg);
    }
    for (const argv of [['unseal'], ['seal']]) {
      const r = await cli(argv, { cwd });
      expect(r.code).toBe(1);
      expect(oneLine(r.stderr)).toBe(
        'keywarden: agent: no agent running on .keywarden/agent.sock (start one with `keywarden agent`)',
      );
    }
    // Metadata needs neither the agent nor a share.
    expect((await cli(['key', 'list'], { cwd })).code).toBe(0);
    const st = await cli(['status', '--json'], { cwd });
    expect(JSON.parse(st.out)).toMatchObject({
      mode: 'split-knowledge',
      threshold: 3,
      shares: 5,
      agent: { running: false },
    });
    // --socket and $KEYWARDEN_AGENT_SOCKET choose another socket.
    const other = await cli(['decrypt', '--key', 'k', '--socket', 'elsewhere.sock'], { cwd, stdin: 'x' });
    expect(oneLine(other.stderr)).toContain('(no agent answers on elsewhere.sock)');
    const env = await cli(['seal'], { cwd, env: { KEYWARDEN_AGENT_SOCKET: '/nonexistent/kw.sock' } });
    expect(oneLine(env.stderr)).toBe(
      'keywarden: agent: no agent running on /nonexistent/kw.sock (start one with `keywarden agent`)',
    );
    // A socket that belongs to another user is refused before anything is sent to it.
    if (process.getuid?.() === 0) {
      const server = createServer(() => {});
      await new Promise<void>((resolve) => server.listen(path.join(cwd, 'theirs.sock'), resolve));
      try {
        await chown(path.join(cwd, 'theirs.sock'), 12345, 12345);
        const theirs = await cli(['seal', '--socket', 'theirs.sock'], { cwd });
        expect(oneLine(theirs.stderr)).toBe(
          'keywarden: agent: theirs.sock belongs to another user (uid 12345); refusing to talk to it',
        );
      } finally {
        await new Promise((resolve) => server.close(resolve));
      }
    }
    // A development-mode unseal key option makes no sense here.
    const dev = await cli(['datakey', 'k', '--unseal-key-file', 'x.key'], { cwd });
    expect(dev.code).toBe(2);
    expect(oneLine(dev.stderr)).toMatch(
      /--unseal-key-file does not apply: this key store is sealed by split knowledge/,
    );
  });
});
