import * as path from 'node:path';
import { DecryptionError, Keywarden, SoftwareRoot } from '@keywarden/core';
import { SqliteKeyStore } from '@keywarden/store-sqlite';
import { describe, expect, it } from 'vitest';
import { resolveStoreLocation, resolveUnsealSource, unsealRoot } from '../src/store-dir.js';
import { cli, initialized, oneLine } from './helpers.js';

describe('keywarden datakey', () => {
  it('prints {keyId, version, plaintext, wrapped}; the wrapped key unwraps to the plaintext through the core API', async () => {
    const cwd = await initialized();
    await cli(['key', 'create', 'app'], { cwd });
    const r = await cli(['datakey', 'app', '--context', 'tenant=a', '--context', 'table=t'], { cwd });
    expect(r.code).toBe(0);
    expect(r.stderr).toBe('');
    const dk = JSON.parse(r.out);
    expect(Object.keys(dk)).toEqual(['keyId', 'version', 'plaintext', 'wrapped']);
    expect(dk.keyId).toMatch(/^kek_/);
    expect(dk.version).toBe(1);
    const plaintext = Buffer.from(dk.plaintext, 'base64');
    const wrapped = new Uint8Array(Buffer.from(dk.wrapped, 'base64'));
    expect(plaintext).toHaveLength(32);

    const io = { cwd, env: {} };
    const loc = resolveStoreLocation(io);
    const store = SqliteKeyStore.open(path.join(loc.dir, 'keystore.db'));
    const root = await SoftwareRoot.load(store);
    await unsealRoot(root, resolveUnsealSource(io, loc), { stderr: process.stderr });
    const kw = new Keywarden({ store, root, ownsStore: true, ownsRoot: true });
    try {
      const dek = await kw.decryptDataKey(wrapped, { table: 't', tenant: 'a' }, { key: dk.keyId });
      expect(Buffer.from(dek).equals(plaintext)).toBe(true);
      await expect(kw.decryptDataKey(wrapped, { tenant: 'b', table: 't' }, { key: dk.keyId })).rejects.toSatisfy(
        DecryptionError.isInstance,
      );
    } finally {
      await kw.close();
    }
  });

  it('uses the primary version after a rotation', async () => {
    const cwd = await initialized();
    await cli(['key', 'create', 'app'], { cwd });
    await cli(['key', 'rotate', 'app'], { cwd });
    expect(JSON.parse((await cli(['datakey', 'app'], { cwd })).out).version).toBe(2);
  });

  it('an unknown key and a malformed context are reported on one line', async () => {
    const cwd = await initialized();
    const missing = await cli(['datakey', 'nope'], { cwd });
    expect(missing.code).toBe(1);
    expect(oneLine(missing.stderr)).toBe('keywarden: keystore: no key named "nope"');
    const bad = await cli(['datakey', 'nope', '--context', 'novalue'], { cwd });
    expect(bad.code).toBe(2);
    expect(oneLine(bad.stderr)).toMatch(/^keywarden: context: expected key=value/);
  });
});
