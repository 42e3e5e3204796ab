/**
 * Resource hygiene: 10 000 unwrap cycles (Load + Unseal + FlushContext, through the root) on a TPM
 * without a resource manager. swtpm has 3 object slots: a single leaked transient handle per cycle
 * would fail the fourth cycle with TPM_RC_OBJECT_MEMORY (0x902). KEYWARDEN_TPM_SOAK_CYCLES changes
 * the count (benchmarks and docs/tpm.md give the measured rate).
 */
import { randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { freshRoot } from './_tpm.js';

const CYCLES = Number(process.env.KEYWARDEN_TPM_SOAK_CYCLES ?? 10_000);

describe('soak', () => {
  it(`${CYCLES} unwrap cycles: every one returns the material; no ESYS buffer, handle or TPM object leaks`, {
    timeout: 300_000,
  }, async () => {
    const { root } = await freshRoot();
    try {
      const aad = new TextEncoder().encode('soak');
      const m = new Uint8Array(randomBytes(32));
      const w = await root.wrapKey(m, aad);
      const before = await root.transientHandles();
      expect(before).toEqual([]); // nothing held between operations
      const want = Buffer.from(m);
      for (let i = 0; i < CYCLES; i++) {
        const back = await root.unwrapKey(w, aad);
        if (!want.equals(back)) throw new Error(`cycle ${i}: wrong material`);
        back.fill(0);
      }
      expect(root.stats()).toMatchObject({ liveBuffers: 0, liveHandles: 0 }); // nothing held between operations
      expect(await root.transientHandles()).toEqual(before);
      expect(root.stats()?.commands).toBeGreaterThanOrEqual(CYCLES * 3);
    } finally {
      await root.close();
    }
  });
});
