/**
 * Faults against the real SoftHSM2, each under a deadline: a wrong PIN; a worker that dies
 * mid-request; every session closed under the pool; the module finalized with requests in
 * flight; the token deleted or re-initialised by another process while a root uses it. Requests
 * either succeed (retried after the pool repaired itself) or fail with a typed error; nothing hangs;
 * the pool serves again without a restart.
 */
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { KeywardenError, MemoryKeyStore } from '@keywarden/core';
import { afterAll, describe, expect, it } from 'vitest';
import { Pkcs11Root, Pkcs11UnavailableError, Pkcs11UnsealError } from '../src/index.js';
import { createRoot, hsm, POOL_KINDS, pin, rootUri, uniqueLabel, unavailable } from './_hsm.js';
import { RawToken } from './_raw.js';

const DEADLINE_MS = 20_000;

/** Resolves with the settled results, or fails the test when `calls` do not all settle in time. */
async function settleWithin<T>(calls: Promise<T>[], ms = DEADLINE_MS): Promise<PromiseSettledResult<T>[]> {
  let timer: NodeJS.Timeout | undefined;
  const deadline = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`requests still pending after ${ms} ms`)), ms);
  });
  try {
    return await Promise.race([Promise.allSettled(calls), deadline]);
  } finally {
    clearTimeout(timer);
  }
}

/** Each settled call either gave the right material back or failed with a Keywarden error. */
function expectCorrectOrTyped(results: PromiseSettledResult<boolean>[]): { ok: number; failed: string[] } {
  const failed: string[] = [];
  let ok = 0;
  for (const r of results) {
    if (r.status === 'fulfilled') {
      expect(r.value).toBe(true);
      ok++;
    } else {
      expect(KeywardenError.isInstance(r.reason), String(r.reason)).toBe(true);
      failed.push((r.reason as KeywardenError).code);
    }
  }
  return { ok, failed };
}

function roundTrips(root: Pkcs11Root, n: number): Promise<boolean>[] {
  return Array.from({ length: n }, async (_, i) => {
    const m = new Uint8Array(randomBytes(32));
    const aad = new TextEncoder().encode(`fault-${i}`);
    const back = await root.unwrapKey(await root.wrapKey(m, aad), aad);
    return Buffer.from(back).equals(Buffer.from(m));
  });
}

async function stillServes(root: Pkcs11Root): Promise<void> {
  const results = await settleWithin(roundTrips(root, 20));
  expect(expectCorrectOrTyped(results)).toEqual({ ok: 20, failed: [] });
}

function softhsm(args: string[]): void {
  execFileSync('softhsm2-util', args, { stdio: 'ignore', timeout: 30_000, env: process.env });
}

describe.skipIf(unavailable)('faults on SoftHSM2', () => {
  const raw = unavailable ? undefined : new RawToken();
  afterAll(() => raw?.close());

  describe.each(POOL_KINDS)('%s pool', (pool) => {
    it('a wrong PIN is Pkcs11UnsealError (C_Login, CKR_PIN_INCORRECT) naming neither PIN; the root stays sealed and the right PIN then opens it', async () => {
      const { root, store, object } = await createRoot({ pool });
      await root.close();
      const wrong = new TextEncoder().encode(`wrong-${randomBytes(8).toString('hex')}`);
      const err = (await Pkcs11Root.open(rootUri(object, false), { store, secret: wrong, poolSize: 1, pool }).then(
        () => undefined,
        (e: unknown) => e,
      )) as Pkcs11UnsealError;
      expect(err).toBeInstanceOf(Pkcs11UnsealError);
      expect(err.code).toBe('KW_UNSEAL');
      expect(err.fn).toBe('C_Login');
      expect(err.ckr).toBe('CKR_PIN_INCORRECT');
      expect(err.message).not.toContain(Buffer.from(wrong).toString());
      expect(err.message).not.toContain(Buffer.from(pin()).toString());
      expect(JSON.stringify(err)).not.toContain(Buffer.from(pin()).toString());

      const sealed = await Pkcs11Root.open(rootUri(object, false), { store, poolSize: 1, pool });
      await expect(sealed.unseal(wrong)).rejects.toBeInstanceOf(Pkcs11UnsealError);
      expect(sealed.isSealed()).toBe(true);
      await sealed.unseal(pin());
      await stillServes(sealed);
      await sealed.close();
    });

    it('a worker dying mid-request: its requests in flight are sent again to its replacement, nothing hangs, the pool serves on', async () => {
      const { root } = await createRoot({ poolSize: 2, pool });
      const before = roundTrips(root, 50);
      // The crash is queued behind the first requests and ahead of the next ones: those are in
      // flight (sent, unanswered) when the thread dies.
      root.pool.crashWorker(0);
      root.pool.crashWorker(1);
      const after = roundTrips(root, 250);
      const { ok, failed } = expectCorrectOrTyped(await settleWithin([...before, ...after]));
      expect(ok + failed.length).toBe(300);
      expect(failed).toEqual([]);
      expect(root.pool.replaced).toBe(2);
      await stillServes(root);
      await root.close();
    });

    it('every session closed under the pool (C_CloseAllSessions, which also drops the login): workers reopen, log in again, and retry', async () => {
      const { root } = await createRoot({ poolSize: 2, pool });
      const calls = roundTrips(root, 200);
      await new Promise((r) => setTimeout(r, 10));
      if (pool === 'threads') {
        // From a worker of the pool, while no other thread is inside the module: SoftHSM2 2.6
        // frees the sessions in C_CloseAllSessions while a thread that has just looked its own up
        // still uses it (a use-after-free; docs/pkcs11.md, Faults), which is what killed this test's
        // process once in about seven runs when the call came from the main thread mid-load. The
        // other workers' requests wait in the pool meanwhile, and meet closed sessions after it.
        await root.pool.closeAllSessions(0);
        expect(root.pool.exclusiveOthersInside).toBe(0);
      } else {
        // Each child has its own module instance: the call has to come from inside it.
        await Promise.all([root.pool.closeAllSessions(0), root.pool.closeAllSessions(1)]);
      }
      const { ok, failed } = expectCorrectOrTyped(await settleWithin(calls));
      expect(ok + failed.length).toBe(200);
      await stillServes(root);
      raw!.init();
      await root.close();
    });

    it('a call that never returns: past callTimeoutMs it fails with Pkcs11UnavailableError, the worker is replaced, and the pool serves on', async () => {
      // The deadline also covers a worker's start (a child process starts Node and the module:
      // seconds on a busy machine), so it is not made shorter than that.
      const timeout = pool === 'processes' ? 8_000 : 3_000;
      const { root } = await createRoot({ poolSize: 1, pool, callTimeoutMs: timeout });
      await stillServes(root);
      // The worker blocks as if stuck inside the module; 20 round trips queue behind it.
      const stalled = root.pool.stallWorker(0, 60_000).then(
        () => undefined,
        (e: unknown) => e,
      );
      const behind = roundTrips(root, 20);
      const err = (await settleWithin([stalled]))[0];
      expect(err?.status).toBe('fulfilled');
      const reason = (err as PromiseFulfilledResult<unknown>).value as KeywardenError;
      expect(reason).toBeInstanceOf(Pkcs11UnavailableError);
      expect(reason.message).toContain(`no answer within ${timeout} ms`);
      const { ok, failed } = expectCorrectOrTyped(await settleWithin(behind));
      expect(ok + failed.length).toBe(20);
      // The stuck worker was killed; its replacement comes when the kill has taken effect.
      const until = Date.now() + DEADLINE_MS;
      while (root.pool.replaced < 1 && Date.now() < until) await new Promise((r) => setTimeout(r, 10));
      expect(root.pool.replaced).toBe(1);
      await stillServes(root);
      await root.close();
    });

    it('the module finalized (C_Finalize) with requests in flight: the worker initialises it again, reopens, logs in and retries', async () => {
      // One worker: C_Finalize while another thread is inside the module is undefined behaviour
      // (PKCS#11 v2.40 §5.4) and SoftHSM2 can crash; here it runs between two requests, with 100
      // more sent and unanswered behind it.
      const { root } = await createRoot({ poolSize: 1, pool });
      const before = roundTrips(root, 50);
      const finalized = root.pool.finalizeModule(0);
      const after = roundTrips(root, 100);
      await finalized;
      const { ok, failed } = expectCorrectOrTyped(await settleWithin([...before, ...after]));
      expect(ok + failed.length).toBe(150);
      expect(failed).toEqual([]);
      await stillServes(root);
      raw!.init();
      await root.close();
    });

    it('the token deleted, or re-initialised, by another process while a root uses it: typed RootUnavailableError within the deadline, never a hang; a root on another token in the same process is untouched', async () => {
      const soPin = randomBytes(8).toString('hex');
      const userPin = Buffer.from(pin()).toString();
      const labels = [uniqueLabel('fault-del'), uniqueLabel('fault-reinit')];
      for (const label of labels)
        softhsm(['--init-token', '--free', '--label', label, '--pin', userPin, '--so-pin', soPin]);
      // SoftHSM2 sees tokens made by another process only after C_Initialize: no request is in flight here.
      raw!.finalize();
      raw!.init();
      const { root: bystander } = await createRoot({ poolSize: 1, pool });
      const roots: Pkcs11Root[] = [];
      for (const label of labels) {
        const uri = rootUri(uniqueLabel()).replace(/token=[^;]+/, `token=${label}`);
        roots.push(await Pkcs11Root.open(uri, { store: new MemoryKeyStore(), create: true, poolSize: 1, pool }));
      }
      for (const r of roots) await stillServes(r);

      softhsm(['--delete-token', '--token', labels[0] as string]);
      softhsm([
        '--init-token',
        '--token',
        labels[1] as string,
        '--label',
        labels[1] as string,
        '--pin',
        userPin,
        '--so-pin',
        soPin,
      ]);
      for (const r of roots) {
        const results = await settleWithin(roundTrips(r, 20));
        const { ok, failed } = expectCorrectOrTyped(results);
        expect(ok).toBe(0);
        expect(new Set(failed)).toEqual(new Set(['KW_ROOT_UNAVAILABLE']));
        // Asked again, it answers again (promptly, the same way): the pool is not wedged.
        const again = expectCorrectOrTyped(await settleWithin(roundTrips(r, 2), 10_000));
        expect(again.failed).toEqual(['KW_ROOT_UNAVAILABLE', 'KW_ROOT_UNAVAILABLE']);
        await r.close();
      }
      await stillServes(bystander);
      await bystander.close();
      softhsm(['--delete-token', '--token', labels[1] as string]);
      expect(hsm.token).toBeTruthy();
    });
  });
});
