/**
 * The CLI's own key commands on a development-mode folder (the root unsealed in the command's own
 * process, no agent) record into the store's audit log as principal "cli" (docs/audit.md §1): the
 * built CLI is spawned for each command, then `keywarden audit verify` checks the chain and
 * `audit search` finds each operation.
 */
import { writeFile } from 'node:fs/promises';
import * as path from 'node:path';
import { describe, expect, it } from 'vitest';
import { tempDir } from './helpers.js';
import { built, kw, requireBuild } from './split-helpers.js';

requireBuild('audit-dev-mode.test.ts');

describe.skipIf(!built)('the CLI audits its own key commands in development mode', () => {
  it('key create/rotate, encrypt, decrypt and datakey leave records that audit verify and search read', async () => {
    const cwd = await tempDir();
    const ok = async (args: string[], input?: string) => {
      const r = await kw(args, cwd, input === undefined ? {} : { input });
      expect(r.stderr, args.join(' ')).toBe('');
      expect(r.code, args.join(' ')).toBe(0);
      return r.stdout;
    };
    expect((await kw(['init'], cwd)).code).toBe(0);
    await ok(['key', 'create', 'files']);
    await writeFile(path.join(cwd, 'a.txt'), 'audited plaintext');
    await ok(['encrypt', '--key', 'files', '-i', 'a.txt', '-o', 'a.kw', '--context', 'purpose=backup']);
    await ok(['decrypt', '--key', 'files', '-i', 'a.kw', '-o', 'a.out', '--context', 'purpose=backup']);
    await ok(['key', 'rotate', 'files']);
    await ok(['datakey', 'files']);
    // A failure is recorded too: the wrong context.
    const bad = await kw(['decrypt', '--key', 'files', '-i', 'a.kw', '-o', 'b.out', '--context', 'purpose=other'], cwd);
    expect(bad.code).not.toBe(0);

    expect(await ok(['audit', 'verify'])).toBe(
      'audit: 6 records verified, chain intact up to seq 6, the head the key store recorded\n',
    );
    const records = (await ok(['audit', 'export', '--jsonl']))
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l) as { op: string; principal: string; outcome: string; code?: string; ctx?: string });
    expect(records.map((r) => [r.op, r.outcome])).toEqual([
      ['create-key', 'ok'],
      // The CLI encrypts a file under a data key it asks for (the KeyService's data-key calls).
      ['generate-data-key', 'ok'],
      ['decrypt-data-key', 'ok'],
      ['rotate-key', 'ok'],
      ['generate-data-key', 'ok'],
      ['decrypt-data-key', 'error'],
    ]);
    expect(new Set(records.map((r) => r.principal))).toEqual(new Set(['cli']));
    expect(records[5]?.code).toBe('KW_DECRYPT');
    // The context is a keyed digest, never the value.
    expect(records[1]?.ctx).toMatch(/^h:/);
    expect(JSON.stringify(records)).not.toContain('backup');
    const search = await ok(['audit', 'search', '--key', 'files', '--principal', 'cli', '--op', 'decrypt-data-key']);
    expect(search.trim().split('\n')).toHaveLength(2);
  }, 120_000);
});
