/**
 * `keywarden encrypt --signed` and `keywarden decrypt --require-signed` (issue 16, item 10; core
 * docs/format.md §4.9): the signed envelope suite through the CLI, in-process against a real key
 * store, and through the agent (the reserved context pair that binds the verification key must
 * cross the agent protocol unchanged).
 */
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { readFile, writeFile } from 'node:fs/promises';
import * as path from 'node:path';
import { beforeEach, describe, expect, it } from 'vitest';
import { cli, DECRYPT_FAILED, initialized, oneLine, tempDir } from './helpers.js';
import { built, startAgent } from './split-helpers.js';

let cwd: string;
beforeEach(async () => {
  cwd = await initialized();
  expect((await cli(['key', 'create', 'payments'], { cwd })).code).toBe(0);
});

const NOT_SIGNED = 'keywarden: envelope: the envelope is not signed (suite 1), and signed envelopes are required';

describe('encrypt --signed / decrypt --require-signed', () => {
  it('a signed binary file round-trips with --require-signed; its header says suite 2', async () => {
    const data = randomBytes(3 * 64 * 1024 + 77);
    await writeFile(path.join(cwd, 'a.plain'), data);
    const enc = await cli(
      ['encrypt', '--key', 'payments', '--signed', '-c', 'tenant=acme', '-i', 'a.plain', '-o', 'a.kw'],
      {
        cwd,
      },
    );
    expect(enc.stderr).toBe('');
    expect(enc.code).toBe(0);
    const ct = await readFile(path.join(cwd, 'a.kw'));
    // "KWE", format v2 (docs/format.md §4.10), suite 2.
    expect(ct.subarray(0, 5)).toEqual(Buffer.from([0x4b, 0x57, 0x45, 0x02, 0x02]));
    const dec = await cli(
      ['decrypt', '--key', 'payments', '--require-signed', '-c', 'tenant=acme', '-i', 'a.kw', '-o', 'a.out'],
      { cwd },
    );
    expect(dec.stderr).toBe('');
    expect(dec.code).toBe(0);
    expect((await readFile(path.join(cwd, 'a.out'))).equals(data)).toBe(true);
    // Without --require-signed a signed envelope decrypts too.
    const plain = await cli(['decrypt', '--key', 'payments', '-c', 'tenant=acme'], { cwd, stdin: ct });
    expect(plain.stdout.equals(data)).toBe(true);
  });

  it('a signed --text value round-trips with --require-signed', async () => {
    const enc = await cli(['encrypt', '--key', 'payments', '--signed', '--text'], { cwd, stdin: 'pay 10' });
    expect(enc.code).toBe(0);
    expect(enc.out).toMatch(/^kw1\.[A-Za-z0-9_-]+\n$/);
    const dec = await cli(['decrypt', '--key', 'payments', '--require-signed'], { cwd, stdin: enc.out });
    expect(dec.code).toBe(0);
    expect(dec.out).toBe('pay 10');
  });

  it('--require-signed refuses unsigned ciphertext (binary and text) with one line, and -o FILE is not created', async () => {
    const binary = await cli(['encrypt', '--key', 'payments'], { cwd, stdin: 'unsigned' });
    const text = await cli(['encrypt', '--key', 'payments', '--text'], { cwd, stdin: 'unsigned' });
    for (const stdin of [binary.stdout, text.out]) {
      const r = await cli(['decrypt', '--key', 'payments', '--require-signed', '-o', 'out.txt'], { cwd, stdin });
      expect(r.code).toBe(1);
      expect(oneLine(r.stderr)).toBe(NOT_SIGNED);
      expect(existsSync(path.join(cwd, 'out.txt'))).toBe(false);
      // The same ciphertext decrypts without the requirement.
      expect((await cli(['decrypt', '--key', 'payments'], { cwd, stdin })).out).toBe('unsigned');
    }
  });

  it('a modified signature fails the whole decryption; with -o FILE nothing is written', async () => {
    const enc = await cli(['encrypt', '--key', 'payments', '--signed'], { cwd, stdin: randomBytes(5000) });
    const bad = Buffer.from(enc.stdout);
    bad[bad.length - 1] = (bad[bad.length - 1] as number) ^ 1;
    const r = await cli(['decrypt', '--key', 'payments', '--require-signed', '-o', 'out.bin'], { cwd, stdin: bad });
    expect(r.code).toBe(1);
    expect(oneLine(r.stderr)).toBe(DECRYPT_FAILED);
    expect(existsSync(path.join(cwd, 'out.bin'))).toBe(false);
    // A signed stream cut just before its signature is refused as truncated.
    const cut = enc.stdout.subarray(0, enc.stdout.length - 96);
    const t = await cli(['decrypt', '--key', 'payments', '--require-signed', '-o', 'out.bin'], { cwd, stdin: cut });
    expect(t.code).toBe(1);
    expect(oneLine(t.stderr)).toBe('keywarden: envelope: truncated (the signature after the final frame is missing)');
    expect(existsSync(path.join(cwd, 'out.bin'))).toBe(false);
  });

  it('context keys starting with "keywarden:" are refused on both sides', async () => {
    const enc = await cli(['encrypt', '--key', 'payments', '--signed', '-c', 'keywarden:verification-key=x'], {
      cwd,
      stdin: 'x',
    });
    expect(enc.code).not.toBe(0);
    expect(oneLine(enc.stderr)).toMatch(/^keywarden: envelope: context keys starting with "keywarden:" are reserved/);
    const ok = await cli(['encrypt', '--key', 'payments', '--signed', '--text'], { cwd, stdin: 'x' });
    const dec = await cli(['decrypt', '--key', 'payments', '-c', 'keywarden:a=b'], { cwd, stdin: ok.out });
    expect(dec.code).not.toBe(0);
    expect(oneLine(dec.stderr)).toMatch(/reserved/);
  });
});

describe.skipIf(!built)('signed envelopes through the agent', () => {
  it('encrypt --signed and decrypt --require-signed work through the agent (the reserved context pair crosses the protocol)', async () => {
    const dir = await tempDir();
    const init = await cli(['init', '--shares', '2', '--threshold', '2', '--share-dir', 'shares'], { cwd: dir });
    expect(init.code).toBe(0);
    const agent = await startAgent(dir);
    try {
      const shares = ['--share-file', 'shares/share-1-of-2.txt', '--share-file', 'shares/share-2-of-2.txt'];
      expect((await cli(['unseal', ...shares], { cwd: dir })).code).toBe(0);
      expect((await cli(['key', 'create', 'payments'], { cwd: dir })).code).toBe(0);
      const data = randomBytes(70_000);
      const enc = await cli(['encrypt', '--key', 'payments', '--signed', '-c', 'tenant=a'], { cwd: dir, stdin: data });
      expect(enc.stderr).toBe('');
      expect(enc.code).toBe(0);
      const dec = await cli(['decrypt', '--key', 'payments', '--require-signed', '-c', 'tenant=a'], {
        cwd: dir,
        stdin: enc.stdout,
      });
      expect(dec.stderr).toBe('');
      expect(dec.stdout.equals(data)).toBe(true);
    } finally {
      expect(await agent.stop()).toBe(0);
    }
  });
});
