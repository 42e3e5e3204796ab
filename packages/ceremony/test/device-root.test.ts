/**
 * The folder's root URI (D/root.uri) without a device: the software default stays byte for byte
 * what it was (no file), refusals leave nothing behind, and a stale root.uri never outlives an
 * init. The device paths themselves run in packages/cli/test/hardware-root.test.ts (SoftHSM2,
 * swtpm).
 */
import { readdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { InvalidInputError, KeywardenError } from '@keywarden/core';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import {
  exists,
  folderRootScheme,
  folderRootUri,
  initDeviceStoreDir,
  initStoreDir,
  openFolderKeywarden,
  openKeyService,
  openSealed,
  ROOT_URI_FILE,
  resolveStoreLocation,
  rotateRootStoreDir,
  startFolderAgent,
} from '../src/index.js';

let work: string;
beforeEach(async () => {
  work = await mkdtemp(path.join(tmpdir(), 'kw-ceremony-device-'));
});
afterEach(async () => {
  await rm(work, { recursive: true, force: true });
});

const at = () => ({ cwd: work, env: {} });

describe('the folder root URI', () => {
  it('a development-mode folder has no root.uri and reads as "software:"', async () => {
    const loc = resolveStoreLocation(at());
    await initStoreDir(loc, { cwd: work });
    expect((await readdir(loc.dir)).sort()).toEqual(['keystore.db', 'unseal.key']);
    expect(await folderRootUri(loc)).toBe('software:');
    expect(await folderRootScheme(loc)).toBe('software');
  });

  it('a stale root.uri (a device init that failed before its store) is removed by a software init', async () => {
    const loc = resolveStoreLocation(at());
    await initDeviceStoreDir(loc, { uri: 'tpm:', env: {} }).catch(() => {});
    await writeFile(path.join(work, '.keywarden', ROOT_URI_FILE), 'tpm:\n');
    await initStoreDir(loc, { cwd: work });
    expect(await exists(path.join(loc.dir, ROOT_URI_FILE))).toBe(false);
    expect(await folderRootUri(loc)).toBe('software:');
    const kw = await openFolderKeywarden(loc);
    expect(kw.root.describe().kind).toBe('software');
    await kw.close();
  });

  it('initDeviceStoreDir refuses a software URI, a URI carrying the PIN and an unregistered scheme, leaving nothing', async () => {
    const loc = resolveStoreLocation(at());
    await expect(initDeviceStoreDir(loc, { uri: 'software:' })).rejects.toBeInstanceOf(InvalidInputError);
    const withPin = 'pkcs11:token=t;object=o?module-path=/x.so&pin-value=123456';
    const err = await initDeviceStoreDir(loc, { uri: withPin }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(InvalidInputError);
    expect(String((err as Error).message)).not.toContain('123456');
    // No backend registered in this package's tests: the registry's typed error, nothing left.
    const none = await initDeviceStoreDir(loc, { uri: 'tpm:', env: {} }).catch((e: unknown) => e);
    expect(KeywardenError.isInstance(none, 'KW_ROOT_SCHEME')).toBe(true);
    expect(await exists(loc.dbPath)).toBe(false);
    expect(await exists(path.join(loc.dir, ROOT_URI_FILE))).toBe(false);
  });

  it('a folder recording a device root is refused by the software-root paths with a typed error', async () => {
    const loc = resolveStoreLocation(at());
    await initStoreDir(loc, { cwd: work });
    await writeFile(path.join(loc.dir, ROOT_URI_FILE), 'pkcs11:token=t;object=o\n');
    expect(await folderRootScheme(loc)).toBe('pkcs11');
    await expect(openSealed(loc)).rejects.toThrow(/pkcs11: device root/);
    await expect(rotateRootStoreDir(loc, { unsealKey: async () => new Uint8Array(32) })).rejects.toThrow(
      /pkcs11: device root/,
    );
    await expect(startFolderAgent(loc, { socket: path.join(work, 'a.sock') })).rejects.toThrow(/no agent is needed/);
    // Every key-using path goes through the registry: no pkcs11 backend here, so its typed error.
    const e = await openKeyService(loc, {}, at()).catch((x: unknown) => x);
    expect(KeywardenError.isInstance(e, 'KW_ROOT_SCHEME')).toBe(true);
  });

  it('a root.uri that is not one URI is a typed error, not a guess', async () => {
    const loc = resolveStoreLocation(at());
    await initStoreDir(loc, { cwd: work });
    await writeFile(path.join(loc.dir, ROOT_URI_FILE), 'pkcs11:a\npkcs11:b\n');
    await expect(folderRootUri(loc)).rejects.toThrow(/not one root URI/);
  });
});
