/**
 * The worker pool's batching on the real SoftHSM2: many requests made in one turn of the event
 * loop travel to the worker as one message (one binary frame: src/_wire.ts) and must each
 * come back with their own result; and the callers are resumed a few at a time (at most 16 per
 * turn of the event loop), never all at once inside the port's message handler, which held the
 * event loop for 60-100 ms under full load (issue #8). Speed itself is the benchmarks' (bench:pkcs11).
 */
import { randomBytes } from 'node:crypto';
import { afterAll, describe, expect, it } from 'vitest';
import type { Pkcs11Root } from '../src/index.js';
import { createRoot, unavailable } from './_hsm.js';

const CALLERS = 64;

describe.skipIf(unavailable)('worker pool batching on SoftHSM2', () => {
  const roots: Pkcs11Root[] = [];
  afterAll(async () => {
    for (const r of roots) await r.close();
  });

  it('64 requests of different sizes made in one turn each get their own result back (packed byte fields, packed results)', async () => {
    const { root } = await createRoot({ poolSize: 1 });
    roots.push(root);
    const inputs = Array.from({ length: CALLERS }, (_, i) => ({
      material: new Uint8Array(randomBytes(16 + (i % 5) * 8)),
      aad: new TextEncoder().encode(`caller ${i} ${'x'.repeat(i % 7)}`),
    }));
    const wrapped = await Promise.all(inputs.map((x) => root.wrapKey(x.material.slice(), x.aad)));
    const back = await Promise.all(wrapped.map((w, i) => root.unwrapKey(w, (inputs[i] as { aad: Uint8Array }).aad)));
    back.forEach((b, i) => {
      expect(Buffer.from(b).equals(Buffer.from((inputs[i] as { material: Uint8Array }).material))).toBe(true);
    });
    // Swapped associated data does not open (each request carried its own AAD).
    await expect(root.unwrapKey(wrapped[0] as Uint8Array, (inputs[1] as { aad: Uint8Array }).aad)).rejects.toThrow();
  }, 30_000);

  it('a batch of 64 answers resumes its callers at most 16 per turn of the event loop', async () => {
    const { root } = await createRoot({ poolSize: 1 });
    roots.push(root);
    await root.randomBytes(8); // the worker is up and logged in
    // Count turns of the event loop: this immediate runs once per turn, before the pool's own.
    let turn = 0;
    let ticking = true;
    const tick = () => {
      turn++;
      if (ticking) setImmediate(tick);
    };
    setImmediate(tick);
    const resumedIn: number[] = [];
    try {
      await Promise.all(
        Array.from({ length: CALLERS }, async () => {
          await root.randomBytes(16);
          resumedIn.push(turn);
        }),
      );
    } finally {
      ticking = false;
    }
    const perTurn = new Map<number, number>();
    for (const t of resumedIn) perTurn.set(t, (perTurn.get(t) ?? 0) + 1);
    expect(resumedIn).toHaveLength(CALLERS);
    expect(Math.max(...perTurn.values())).toBeLessThanOrEqual(16);
    expect(perTurn.size).toBeGreaterThanOrEqual(CALLERS / 16);
  }, 30_000);
});
