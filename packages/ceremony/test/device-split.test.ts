/**
 * device-split.ts without a device: what is refused before anything is made, the share-set
 * record's format, the URI recorded without its PIN source, and a staged device init that the
 * software ceremonies must neither resume nor silently delete. The device paths themselves (SoftHSM2,
 * swtpm, a real agent, SIGKILL) run in packages/cli/test/device-split.test.ts.
 */
import { mkdir, mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { KeywardenError } from '@keywarden/core';
import { SqliteKeyStore } from '@keywarden/store-sqlite';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import {
  abortDeviceRekey,
  abortSplitInit,
  DEVICE_SECRET_SHARES_META,
  devicePendingInitOf,
  devicePendingRekeyOf,
  initDeviceSplitStoreDir,
  initSplitStoreDir,
  pendingCeremonyOf,
  readDeviceSecretShares,
  rekeyDeviceSecret,
  resolveStoreLocation,
  resumeDeviceRekey,
  resumeSplitInit,
  stagedStorePath,
  withoutSecretSource,
} from '../src/index.js';

let work: string;
beforeEach(async () => {
  work = await mkdtemp(path.join(tmpdir(), 'kw-ceremony-device-split-'));
});
afterEach(async () => {
  await rm(work, { recursive: true, force: true });
});

const loc = () => resolveStoreLocation({ cwd: work, env: {} }, 'd');

async function code(p: Promise<unknown>): Promise<string> {
  try {
    await p;
    return 'ok';
  } catch (err) {
    return KeywardenError.isInstance(err) ? `${err.code}: ${err.message}` : String(err);
  }
}

describe('withoutSecretSource', () => {
  it('drops pin-source, pin-value, auth-env and auth-file, and keeps everything else in order', () => {
    expect(withoutSecretSource('pkcs11:token=t;object=o?module-path=/m.so&pin-source=env:P')).toBe(
      'pkcs11:token=t;object=o?module-path=/m.so',
    );
    expect(withoutSecretSource('pkcs11:token=t?pin-source=file:/x&module-path=/m.so')).toBe(
      'pkcs11:token=t?module-path=/m.so',
    );
    expect(withoutSecretSource('tpm:pcrs=7?auth-file=/a&tcti-env=T')).toBe('tpm:pcrs=7?tcti-env=T');
    expect(withoutSecretSource('tpm:?auth-env=A')).toBe('tpm:');
    expect(withoutSecretSource('tpm:')).toBe('tpm:');
  });
});

describe('initDeviceSplitStoreDir refusals (nothing is made)', () => {
  const base = { shares: 3, threshold: 2, cwd: '' };
  it('a software URI, a PIN in the URI, a TPM auth value named by the URI, bad N and M', async () => {
    const l = loc();
    const opts = (uri: string, more: object = {}) => ({ ...base, cwd: work, uri, ...more });
    expect(await code(initDeviceSplitStoreDir(l, opts('software:')))).toMatch(
      /^KW_BAD_INPUT: init: a software: root has no PIN/,
    );
    const pinInUri = 'pkcs11:token=t?pin-value=1234'; // made-up PIN: secretlint-disable-line
    expect(await code(initDeviceSplitStoreDir(l, opts(pinInUri)))).toMatch(
      /^KW_BAD_INPUT: init: the root URI carries the PIN/,
    );
    expect(await code(initDeviceSplitStoreDir(l, opts('tpm:?auth-file=/x')))).toMatch(
      /drawn at random and exists only as shares/,
    );
    expect(await code(initDeviceSplitStoreDir(l, opts('tpm:', { secret: new Uint8Array(16) })))).toMatch(
      /drawn at random/,
    );
    expect(await code(initDeviceSplitStoreDir(l, opts('tpm:', { threshold: 4 })))).toMatch(/^KW_BAD_INPUT/);
    expect(await code(initDeviceSplitStoreDir(l, opts('pkcs11:token=t?module-path=/m.so')))).toMatch(
      /splitting the user PIN needs the PIN once/,
    );
    // None of the messages holds the PIN, and nothing was created.
    expect(await code(initDeviceSplitStoreDir(l, opts('pkcs11:token=t?pin-value=s3cr3t-pin')))).not.toMatch(/s3cr3t/); // made-up PIN: secretlint-disable-line
    expect(await readdir(work)).toEqual([]);
  });
});

describe('a staged device init beside the software ceremonies', () => {
  /** What a device init killed after recording leaves: a staged store with its two records, root.uri. */
  async function killedDeviceInit(): Promise<void> {
    const l = loc();
    await mkdir(l.dir, { recursive: true, mode: 0o700 });
    await writeFile(path.join(l.dir, 'root.uri'), 'tpm:\n', { mode: 0o600 });
    const store = SqliteKeyStore.open(stagedStorePath(l));
    const enc = new TextEncoder();
    const shareSet = { shareSetId: 'ss_AAAAAAAAAAAAAAAA', threshold: 2, shares: 3, purpose: 'tpm-auth' };
    await store.putMeta(
      'device/pending-init',
      enc.encode(
        JSON.stringify({
          format: 1,
          kind: 'init',
          device: 'tpm',
          createdAt: new Date().toISOString(),
          shareSet,
          digests: ['a', 'b', 'c'],
          handOut: { mode: 'plaintext-files', dir: path.join(work, 'shares'), files: [] },
        }),
      ),
    );
    await store.putMeta(
      DEVICE_SECRET_SHARES_META,
      enc.encode(
        JSON.stringify({ format: 1, ...shareSet, commitments: ['x', 'y', 'z'], createdAt: new Date().toISOString() }),
      ),
    );
    expect(await readDeviceSecretShares(store)).toMatchObject({ purpose: 'tpm-auth', threshold: 2, shares: 3 });
    await store.close();
  }

  it('a split init refuses it (not deleted), status reports it, the software resume refuses it, abort removes it all', async () => {
    await killedDeviceInit();
    const l = loc();
    expect(await devicePendingInitOf(l)).toBeDefined();
    expect((await pendingCeremonyOf(l))?.pending.shareSet.shareSetId).toBe('ss_AAAAAAAAAAAAAAAA');
    expect(await code(initSplitStoreDir(l, { shares: 3, threshold: 2, cwd: work }))).toMatch(
      /^KW_CEREMONY_PENDING: an earlier `keywarden init` in d did not finish \(share set ss_AAAAAAAAAAAAAAAA/,
    );
    expect(await code(resumeSplitInit(l, { cwd: work }))).toMatch(/device root/);
    expect((await readdir(l.dir)).sort()).toContain('keystore.db.staged');
    // The root was never made (no root record): the abort has nothing to destroy in the device.
    const notes = await abortSplitInit(l, { cwd: work });
    expect(notes).toEqual([]);
    expect(await readdir(l.dir)).toEqual([]);
  });
});

describe('rekey of a device secret, without a device', () => {
  /** A finished TPM folder's records: D/root.uri and a store with its share set. */
  async function tpmFolder(): Promise<void> {
    const l = loc();
    await mkdir(l.dir, { recursive: true, mode: 0o700 });
    await writeFile(path.join(l.dir, 'root.uri'), 'tpm:\n', { mode: 0o600 });
    const store = SqliteKeyStore.open(l.dbPath);
    await store.putMeta(
      DEVICE_SECRET_SHARES_META,
      new TextEncoder().encode(
        JSON.stringify({
          format: 1,
          purpose: 'tpm-auth',
          shareSetId: 'ss_AAAAAAAAAAAAAAAA',
          threshold: 2,
          shares: 3,
          commitments: ['x', 'y', 'z'],
          createdAt: new Date().toISOString(),
        }),
      ),
    );
    await store.close();
  }

  it('a root whose backend has no secret hooks (tpm: is not registered here) is refused before any share is asked for; resume and abort find nothing pending', async () => {
    await tpmFolder();
    const l = loc();
    let asked = false;
    const quorum = async () => {
      asked = true;
      return [];
    };
    expect(await code(rekeyDeviceSecret(l, { cwd: work, quorum }))).toMatch(
      /^KW_\w+: root: a tpm: root's unlocking secret cannot be changed through Keywarden/,
    );
    expect(asked).toBe(false);
    expect(await devicePendingRekeyOf(l)).toBeUndefined();
    expect(await code(resumeDeviceRekey(l, { cwd: work, quorum }))).toMatch(/no rekey of the device secret is pending/);
    expect(await code(abortDeviceRekey(l, { cwd: work }))).toMatch(/no rekey of the device secret is pending/);
    expect((await readdir(l.dir)).sort()).toEqual(['keystore.db', 'root.uri']);
  });
});
