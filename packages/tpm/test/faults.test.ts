/**
 * Faults against a private swtpm (started here through harness/swtpm.sh, so killing it disturbs no
 * other suite): the TPM killed and restarted in the middle of a run, a TPM that does not answer, a
 * TPM that is not there, wrong auth values and the dictionary-attack lockout.
 */
import { randomBytes } from 'node:crypto';
import { MemoryKeyStore } from '@keywarden/core';
import { Esys } from '@keywarden/tss2';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type Swtpm, startSwtpm, stopSwtpm } from '../../tss2/test/_swtpm.js';
import { TpmRoot } from '../src/index.js';
import { relaxDictionaryAttack } from './_tpm.js';

const enc = new TextEncoder();

describe('TPM faults (private swtpm)', () => {
  let tpm: Swtpm;

  beforeAll(async () => {
    tpm = startSwtpm();
    await relaxDictionaryAttack(tpm.tcti);
  });

  afterAll(() => {
    if (tpm) {
      try {
        process.kill(tpm.pid, 'SIGCONT');
      } catch {
        // already gone
      }
      stopSwtpm(tpm);
    }
  });

  function restart(): void {
    tpm = { ...startSwtpm({ state: tpm.dir, port: tpm.port }), dir: tpm.dir };
  }

  it('swtpm killed (SIGKILL) and restarted in the middle of a run: calls fail KW_ROOT_UNAVAILABLE while it is down, then the root reconnects and continues', async () => {
    const store = new MemoryKeyStore();
    const secret = new Uint8Array(randomBytes(32));
    const root = await TpmRoot.create({ store, tcti: tpm.tcti, authValue: secret });
    const m = new Uint8Array(randomBytes(32));
    const w = await root.wrapKey(m, enc.encode('fault'));
    let ok = 0;
    let unavailable = 0;
    for (let i = 0; i < 60; i++) {
      if (i === 20) {
        // Kill it while a batch is in flight.
        const batch = Array.from({ length: 10 }, () => root.unwrapKey(w, enc.encode('fault')));
        process.kill(tpm.pid, 'SIGKILL');
        const settled = await Promise.allSettled(batch);
        for (const s of settled) {
          if (s.status === 'fulfilled') expect(Array.from(s.value)).toEqual(Array.from(m));
          else expect((s.reason as { code?: string }).code).toBe('KW_ROOT_UNAVAILABLE');
        }
      }
      if (i === 25) restart();
      try {
        const back = await root.unwrapKey(w, enc.encode('fault'));
        expect(Array.from(back)).toEqual(Array.from(m));
        ok++;
      } catch (err) {
        expect((err as { code?: string }).code).toBe('KW_ROOT_UNAVAILABLE');
        expect((err as Error).message).not.toMatch(/[\r\n]/);
        expect(i).toBeGreaterThanOrEqual(20);
        expect(i).toBeLessThan(25);
        unavailable++;
      }
    }
    expect(unavailable).toBe(5); // i = 20..24, while swtpm was down
    expect(ok).toBe(55);
    // The same root key after the restart (re-derived, checked by name); wraps go on too.
    const w2 = await root.wrapKey(m, enc.encode('after'));
    expect(Array.from(await root.unwrapKey(w2, enc.encode('after')))).toEqual(Array.from(m));
    expect(await root.transientHandles()).toEqual([]); // nothing held between operations
    await root.close();
  });

  it('a TPM that stops answering (SIGSTOP): each call fails KW_ROOT_UNAVAILABLE within its deadline; after SIGCONT the root recovers and nothing stays loaded', async () => {
    const store = new MemoryKeyStore();
    const root = await TpmRoot.create({ store, tcti: tpm.tcti, timeoutMs: 500 });
    const m = new Uint8Array(randomBytes(32));
    const w = await root.wrapKey(m, enc.encode('stop'));
    process.kill(tpm.pid, 'SIGSTOP');
    try {
      const started = Date.now();
      const err = await root.unwrapKey(w, enc.encode('stop')).then(
        () => undefined,
        (e: unknown) => e as Error & { code?: string },
      );
      const elapsed = Date.now() - started;
      expect(err?.code).toBe('KW_ROOT_UNAVAILABLE');
      expect(err?.message).toMatch(/did not answer within 500 ms/);
      // One deadline for the call and one for the reconnect attempt, with slack for a busy machine.
      expect(elapsed).toBeLessThan(5_000);
    } finally {
      process.kill(tpm.pid, 'SIGCONT');
    }
    // The abandoned commands answer now; their handles are flushed, and the root reconnects.
    let back: Uint8Array | undefined;
    let last: unknown;
    for (let i = 0; i < 20 && !back; i++) {
      back = await root.unwrapKey(w, enc.encode('stop')).catch((e: unknown) => {
        last = e;
        return undefined;
      });
      if (!back) await new Promise((r) => setTimeout(r, 100));
    }
    expect(back, String(last)).toBeDefined();
    expect(Array.from(back as Uint8Array)).toEqual(Array.from(m));
    await root.close();
    // The abandoned commands' handles are flushed when those commands answer (in the background,
    // each flush waited for however long it takes): nothing stays loaded.
    let left: number[] = [];
    for (const end = Date.now() + 10_000; ; ) {
      const esys = await Esys.open({ tcti: tpm.tcti });
      left = await esys.transientHandles();
      await esys.close();
      if (left.length === 0 || Date.now() > end) break;
      await new Promise((r) => setTimeout(r, 100));
    }
    expect(left).toEqual([]);
  });

  it('no TPM at the TCTI: opening fails at once with KW_ROOT_UNAVAILABLE naming the TCTI', async () => {
    const store = new MemoryKeyStore();
    const started = Date.now();
    const err = await TpmRoot.create({ store, tcti: 'swtpm:host=127.0.0.1,port=1' }).then(
      () => undefined,
      (e: unknown) => e as Error & { code?: string },
    );
    expect(err?.code).toBe('KW_ROOT_UNAVAILABLE');
    expect(err?.message).toMatch(
      /^Tss2_TctiLdr_Initialize: the TPM cannot be reached through TCTI "swtpm:host=127\.0\.0\.1,port=1"/,
    );
    expect(Date.now() - started).toBeLessThan(5_000);
  });

  it('a wrong auth value is an UnsealError; the dictionary-attack lockout is a RootLockoutError; the lockout authorization resets it', async () => {
    const store = new MemoryKeyStore();
    const secret = new Uint8Array(randomBytes(32));
    const root = await TpmRoot.create({ store, tcti: tpm.tcti, authValue: secret });
    const esys = await Esys.open({ tcti: tpm.tcti });
    try {
      await esys.dictionaryAttackLockReset();
      await esys.dictionaryAttackParameters(2, 1000, 1);
      const wrong = new Uint8Array(randomBytes(32));
      await root.sealable?.seal();
      const first = await root.sealable?.unseal(wrong).then(
        () => undefined,
        (e: unknown) => e as Error & { code?: string },
      );
      expect(first?.code).toBe('KW_UNSEAL');
      expect(first?.message).toBe('tpm: the auth value does not open this TPM root');
      let locked: (Error & { code?: string }) | undefined;
      for (let i = 0; i < 3 && !locked; i++) {
        const e = await root.sealable?.unseal(wrong).then(
          () => undefined,
          (x: unknown) => x as Error & { code?: string },
        );
        if (e?.code === 'KW_ROOT_LOCKOUT') locked = e;
        else expect(e?.code).toBe('KW_UNSEAL');
      }
      expect(locked?.name).toBe('TssLockoutError');
      expect(locked?.message).toMatch(/^TPM2_(Load|Unseal): TPM_RC_LOCKOUT \(tpm:warn\(2\.0\)\)/);
      // Locked out even with the right value.
      await expect(root.sealable?.unseal(secret)).rejects.toMatchObject({ code: 'KW_ROOT_LOCKOUT' });
      expect(root.sealable?.isSealed()).toBe(true);
      await esys.dictionaryAttackLockReset();
      await esys.dictionaryAttackParameters(1000, 1, 1);
      await root.sealable?.unseal(secret);
      expect(root.sealable?.isSealed()).toBe(false);
    } finally {
      await esys.dictionaryAttackLockReset().catch(() => undefined);
      await esys.dictionaryAttackParameters(1000, 1, 1).catch(() => undefined);
      await esys.close();
      await root.close();
    }
  });
});
