import { existsSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { cli, tempDir } from './helpers.js';

describe('keywarden demo', () => {
  it('walks the lifecycle, exits 0, prints no unseal key or 32-byte key, and removes its directory', async () => {
    const cwd = await tempDir();
    // The demo ignores the caller's store settings.
    const r = await cli(['demo'], { cwd, env: { KEYWARDEN_DIR: 'ignored', KEYWARDEN_UNSEAL_KEY: 'ignored' } });
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    const out = r.out;

    for (let step = 1; step <= 16; step++) expect(out).toContain(`[${step}] `);
    expect(out).toContain('DEVELOPMENT MODE');
    expect(out).toMatch(/Protects against:/);
    expect(out.match(/refused: DecryptionError: envelope: decryption failed/g)?.length).toBe(2);
    expect(out).toMatch(/refused: DecryptionError: data key: decryption failed/);
    expect(out).toMatch(
      /refused: UnexpectedKeyError: keywarden: the data key is wrapped under kek_\S+, which is not the expected key/,
    );
    expect(out).toMatch(/refused: KeystoreSealedError: /);
    expect(out).toContain('identical');
    expect(out).toMatch(/old envelope:\s+KEK v1: still decrypts/);
    expect(out).toMatch(/new envelope:\s+KEK v2/);
    expect(out).toMatch(/refused: KeyVersionRetiredError: /);
    expect(out).toMatch(/refused: KeyDestroyedError: /);
    expect(out).toMatch(/refused: KeyCompromisedError: /);

    // No secret: neither the unseal key's text form nor anything shaped like a base64 32-byte key.
    expect(out).not.toContain('keywarden-unseal-key');
    for (const token of out.split(/[\s"'(),]+/)) {
      expect(token).not.toMatch(/^[A-Za-z0-9+/]{43}=$/);
      expect(token).not.toMatch(/^[A-Za-z0-9_-]{43}$/);
      expect(token).not.toMatch(/^[0-9a-f]{64}$/);
    }

    const tmp = /\((\/[^,]+keywarden-demo-[^,]+), removed at the end\)/.exec(out)?.[1];
    expect(tmp).toBeDefined();
    expect(existsSync(tmp as string)).toBe(false);
    expect(existsSync(`${cwd}/ignored`)).toBe(false);
  });
});
