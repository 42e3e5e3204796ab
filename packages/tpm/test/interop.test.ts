/**
 * Interop with a real TPM client, tpm2-tools, in both directions:
 *  - a KEK Keywarden sealed is unsealed by tpm2-tools: tpm2_createprimary with the same (default)
 *    template re-derives the same root key, tpm2_load loads the blob's public and private parts,
 *    tpm2_unseal with the auth value docs/tpm.md defines returns the material;
 *  - an object sealed by tpm2-tools (tpm2_create -i) is unwrapped by the Keywarden root.
 */
import { execFileSync } from 'node:child_process';
import { createHash, createHmac, randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { MemoryKeyStore } from '@keywarden/core';
import { afterAll, describe, expect, it } from 'vitest';
import { splitSealedBlob, TpmRoot } from '../src/index.js';
import { tcti } from './_tpm.js';

const DOMAIN = Buffer.from('keywarden/tpm/kek-auth/v1\0', 'utf8');
const dir = mkdtempSync(join(tmpdir(), 'keywarden-interop-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** Run a tpm2-tools command, then flush the transient objects it leaves (swtpm has no resource
 * manager, and tpm2-tools keeps its objects in context files). Only run while no Keywarden root is
 * open on the TPM: `tpm2_flushcontext -t` flushes every transient object. */
function tools(cmd: string, ...args: string[]): Buffer {
  const run = (c: string, a: string[]) =>
    execFileSync(c, a, {
      cwd: dir,
      env: { ...process.env, TPM2TOOLS_TCTI: tcti(), TSS2_LOG: 'all+none' },
      timeout: 30_000,
      stdio: ['ignore', 'pipe', 'pipe'],
    });
  try {
    return run(cmd, args);
  } finally {
    run('tpm2_flushcontext', ['-t']);
  }
}

const f = (name: string) => join(dir, name);

describe('interop with tpm2-tools', () => {
  it('tpm2_createprimary -C o -G ecc re-derives the root key (same name as the store records)', async () => {
    const store = new MemoryKeyStore();
    const root = await TpmRoot.create({ store, tcti: tcti() });
    await root.close();
    tools('tpm2_createprimary', '-Q', '-C', 'o', '-G', 'ecc', '-c', f('prim.ctx'));
    const yaml = tools('tpm2_readpublic', '-c', f('prim.ctx')).toString('utf8');
    expect(/^name: ([0-9a-f]+)$/m.exec(yaml)?.[1]).toBe(root.record.primaryName);
  });

  it('a KEK sealed by a Keywarden root (with an auth value) is unsealed by tpm2_load + tpm2_unseal', async () => {
    const store = new MemoryKeyStore();
    const secret = new Uint8Array(randomBytes(32));
    const root = await TpmRoot.create({ store, tcti: tcti(), authValue: secret });
    const aad = new TextEncoder().encode('interop/v1');
    const material = new Uint8Array(randomBytes(32));
    const { outPublic, outPrivate } = splitSealedBlob(await root.wrapKey(material, aad));
    await root.close();
    tools('tpm2_createprimary', '-Q', '-C', 'o', '-G', 'ecc', '-c', f('prim.ctx'));
    // K, from the root's check object, with the root's auth value.
    const check = Buffer.from(root.record.check as string, 'base64');
    const checkParts = splitSealedBlob(new Uint8Array(check));
    writeFileSync(f('check.pub'), checkParts.outPublic);
    writeFileSync(f('check.priv'), checkParts.outPrivate);
    tools('tpm2_load', '-Q', '-C', f('prim.ctx'), '-u', f('check.pub'), '-r', f('check.priv'), '-c', f('check.ctx'));
    const k = tools('tpm2_unseal', '-c', f('check.ctx'), '-p', `hex:${Buffer.from(secret).toString('hex')}`);
    expect(k.length).toBe(32);
    // The KEK object's auth value: HMAC-SHA-256(K, domain ‖ aad).
    const auth = createHmac('sha256', k).update(DOMAIN).update(aad).digest('hex');
    writeFileSync(f('kek.pub'), outPublic);
    writeFileSync(f('kek.priv'), outPrivate);
    tools('tpm2_load', '-Q', '-C', f('prim.ctx'), '-u', f('kek.pub'), '-r', f('kek.priv'), '-c', f('kek.ctx'));
    const out = tools('tpm2_unseal', '-c', f('kek.ctx'), '-p', `hex:${auth}`);
    expect(Buffer.from(out).equals(Buffer.from(material))).toBe(true);
  });

  it('an object sealed by tpm2_create is unwrapped by a Keywarden root (no auth value: SHA-256(domain ‖ aad))', async () => {
    const aad = new TextEncoder().encode('sealed by tpm2-tools');
    const material = randomBytes(32);
    writeFileSync(f('secret.bin'), material);
    const auth = createHash('sha256').update(DOMAIN).update(aad).digest('hex');
    tools('tpm2_createprimary', '-Q', '-C', 'o', '-G', 'ecc', '-c', f('prim.ctx'));
    tools(
      'tpm2_create',
      '-Q',
      '-C',
      f('prim.ctx'),
      '-i',
      f('secret.bin'),
      '-p',
      `hex:${auth}`,
      '-a',
      'fixedtpm|fixedparent|userwithauth|noda',
      '-u',
      f('tools.pub'),
      '-r',
      f('tools.priv'),
    );
    rmSync(f('secret.bin'));
    const store = new MemoryKeyStore();
    const root = await TpmRoot.create({ store, tcti: tcti() });
    const blob = new Uint8Array(Buffer.concat([readFileSync(f('tools.pub')), readFileSync(f('tools.priv'))]));
    expect(Buffer.from(await root.unwrapKey(blob, aad)).equals(material)).toBe(true);
    await expect(root.unwrapKey(blob, new TextEncoder().encode('other'))).rejects.toMatchObject({ code: 'KW_DECRYPT' });
    await root.close();
  });
});
