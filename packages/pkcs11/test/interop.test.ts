/**
 * Interop with clients that are not Keywarden: OpenSC's pkcs11-tool (another process) lists the
 * objects Keywarden made with their attributes, and a data key sealed by a KEK in the HSM is opened
 * by a raw pkcs11js C_Decrypt with docs/format.md §2's associated data, no Keywarden code involved.
 */
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { encodeContext, Keywarden, MemoryKeyStore, openRoot, parseWrappedKey } from '@keywarden/core';
import { afterAll, describe, expect, it } from 'vitest';
import '../src/index.js';
import { hsm, rootUri, uniqueLabel, unavailable } from './_hsm.js';
import { RawToken } from './_raw.js';

function listObjects(): string {
  return execFileSync(
    'pkcs11-tool',
    [
      '--module',
      hsm.module,
      '--token-label',
      hsm.token,
      '--login',
      '--pin',
      readFileSync(hsm.pinFile, 'utf8'),
      '--list-objects',
      '--type',
      'secrkey',
    ],
    { encoding: 'utf8', timeout: 30_000, env: process.env },
  );
}

/** pkcs11-tool's block for the object labelled `label` (its lines up to the next object). */
function objectBlock(listing: string, label: string): string | undefined {
  return listing.split(/\n(?=\S)/).find((b) => new RegExp(`label:\\s+${label}\\s*$`, 'm').test(b));
}

describe.skipIf(unavailable)('interop with OpenSC and raw pkcs11js', () => {
  const raw = unavailable ? undefined : new RawToken();
  afterAll(() => raw?.close());

  it('pkcs11-tool --list-objects (another process) shows the root and KEK objects as AES-256 secret keys, sensitive and never extractable, with encrypt/decrypt usage only', async () => {
    const store = new MemoryKeyStore();
    const object = uniqueLabel('kw-interop');
    const root = await openRoot(rootUri(object), { store, create: true });
    const kw = new Keywarden({ store, root });
    const k = await kw.createKey('interop', { kekMode: 'root' });
    const listing = listObjects();
    // Seen from another process: token objects (a session object would not be listed there).
    for (const label of [object, `kw-kek/${k.id}/v1`]) {
      const block = objectBlock(listing, label);
      expect(block, `object ${label} in:\n${listing}`).toBeDefined();
      expect(block).toMatch(/^Secret Key Object; AES length 32/);
      expect(block).toMatch(/Usage:\s+encrypt, decrypt\s*$/m);
      expect(block).toMatch(/Access:.*never extractable/);
      expect(block).toMatch(/Access:.*sensitive/);
    }
    await kw.close();
    await root.close();
  });

  it('a data key sealed by a KEK in the HSM is opened by a raw pkcs11js AES-GCM C_Decrypt with the header ‖ context as AAD', async () => {
    const store = new MemoryKeyStore();
    const root = await openRoot(rootUri(uniqueLabel('kw-interop')), { store, create: true });
    const kw = new Keywarden({ store, root });
    const k = await kw.createKey('interop', { kekMode: 'root' });
    const ctx = { purpose: 'interop' };
    const dk = await kw.generateDataKey('interop', ctx);
    const parsed = parseWrappedKey(dk.wrapped);
    expect(parsed.suite).toBe(0x01);
    const ref = (await store.getVersion(k.id, 1))!.wrappedMaterial.slice(5);
    const [handle] = raw!.find({ id: ref, label: `kw-kek/${k.id}/v1` });
    expect(handle).toBeDefined();
    const aad = new Uint8Array([...parsed.header, ...encodeContext(ctx)]);
    const opened = raw!.gcmDecrypt(handle!, parsed.nonce, aad, parsed.sealed);
    expect(Array.from(opened)).toEqual(Array.from(dk.plaintext));
    // The same call with another context's AAD is refused by the token.
    expect(() => raw!.gcmDecrypt(handle!, parsed.nonce, new Uint8Array([...parsed.header]), parsed.sealed)).toThrow();
    await kw.close();
    await root.close();
  });
});
