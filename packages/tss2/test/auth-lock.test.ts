/**
 * The auth value ESAPI keeps for a handle is overwritten (trClearAuth; flushContext, trClose and
 * close do it themselves), and the cross-process TPM lock (lock.ts) excludes another process and
 * is released by the kernel when its holder is killed.
 */
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  defaultLockFile,
  Esys,
  ESYS_TR,
  isTpmRc,
  lockDevice,
  sealedObjectTemplate,
  storagePrimaryTemplate,
} from '../src/index.js';

const tcti = process.env.KEYWARDEN_TPM_TCTI as string;
// The built module (the CI builds before it tests): a child process runs plain JavaScript.
const LOCK_JS = fileURLToPath(new URL('../dist/lock.js', import.meta.url));

describe('ESAPI copy of an auth value', () => {
  let esys: Esys;
  let primary: number;
  beforeAll(async () => {
    esys = await Esys.open({ tcti });
    primary = (await esys.createPrimary(ESYS_TR.RH_OWNER, storagePrimaryTemplate('ecc'))).handle;
  });
  afterAll(async () => {
    await esys?.close();
  });

  it('trClearAuth overwrites it: the next use without setting it again is refused by the TPM', async () => {
    const auth = new Uint8Array(randomBytes(32));
    const secret = new Uint8Array(randomBytes(20));
    const blob = await esys.create(primary, sealedObjectTemplate({ noDA: true }), { userAuth: auth, data: secret });
    const item = await esys.load(primary, blob.outPrivate, blob.outPublic);
    try {
      await esys.trSetAuth(item, auth);
      expect(Buffer.from(await esys.unseal(item)).equals(Buffer.from(secret))).toBe(true);
      await esys.trClearAuth(item);
      const err = await esys.unseal(item).then(
        () => undefined,
        (e: unknown) => e,
      );
      expect(isTpmRc(err, 'TPM_RC_BAD_AUTH') || isTpmRc(err, 'TPM_RC_AUTH_FAIL')).toBe(true);
      // Set again, it works again: the object was not changed, only ESAPI's copy.
      await esys.trSetAuth(item, auth);
      expect(Buffer.from(await esys.unseal(item)).equals(Buffer.from(secret))).toBe(true);
    } finally {
      await esys.flushContext(item);
    }
    expect(esys.stats()).toMatchObject({ liveBuffers: 0, liveHandles: 1 }); // the primary
  });
});

describe('the cross-process TPM lock', () => {
  const dir = mkdtempSync(join(tmpdir(), 'keywarden-tss2-lock-'));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('names one file per TCTI', () => {
    expect(defaultLockFile('swtpm:port=1')).toBe(defaultLockFile('swtpm:port=1'));
    expect(defaultLockFile('swtpm:port=1')).not.toBe(defaultLockFile('swtpm:port=2'));
    expect(defaultLockFile(undefined)).toMatch(/keywarden-tpm-[0-9a-f]{16}\.lock$/);
  });

  it('excludes another process while it holds it, and is free once that process is killed (SIGKILL)', async () => {
    const file = join(dir, 'tpm.lock');
    // Another process takes the lock and holds it until killed.
    const child = spawn(
      process.execPath,
      [
        '--input-type=module',
        '-e',
        `import { lockDevice } from ${JSON.stringify(LOCK_JS)};
         await lockDevice(${JSON.stringify(file)}, 5000);
         process.stdout.write('held\\n');
         setInterval(() => {}, 1000);`,
      ],
      { stdio: ['ignore', 'pipe', 'inherit'] },
    );
    const killer = setTimeout(() => child.kill('SIGKILL'), 30_000);
    try {
      await new Promise<void>((resolve, reject) => {
        child.stdout.on('data', (d: Buffer) => d.toString().includes('held') && resolve());
        child.on('exit', () => reject(new Error('the lock holder exited early')));
      });
      const busy = await lockDevice(file, 300).then(
        () => undefined,
        (e: unknown) => e,
      );
      expect((busy as Error).message).toMatch(/^tss2: the TPM is busy: another process held its lock .* for 300 ms$/);
      const exited = new Promise((r) => child.on('exit', r));
      child.kill('SIGKILL');
      await exited;
      const lock = await lockDevice(file, 5000);
      lock.release();
      lock.release(); // idempotent
    } finally {
      clearTimeout(killer);
      child.kill('SIGKILL');
    }
  }, 40_000);
});
