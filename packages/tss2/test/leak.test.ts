import { randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { Esys, ESYS_TR, sealedObjectTemplate, storagePrimaryTemplate, TPMA_SESSION } from '../src/index.js';

const tcti = process.env.KEYWARDEN_TPM_TCTI as string;

describe('no ESYS buffer or TPM handle leaks', () => {
  it('1000 Load + Unseal + FlushContext cycles (and 50 failing ones): no live buffer, no loaded object left', async () => {
    const esys = await Esys.open({ tcti });
    try {
      const baseline = (await esys.transientHandles()).length;
      const primary = await esys.createPrimary(ESYS_TR.RH_OWNER, storagePrimaryTemplate('ecc'));
      const session = await esys.startAuthSession({ tpmKey: primary.handle });
      const secret = new Uint8Array(randomBytes(32));
      const sealed = await esys.create(primary.handle, sealedObjectTemplate({ noDA: true }), {
        userAuth: secret,
        data: secret,
      });
      const flags = TPMA_SESSION.CONTINUESESSION | TPMA_SESSION.ENCRYPT;
      for (let i = 0; i < 1000; i++) {
        const item = await esys.load(primary.handle, sealed.outPrivate, sealed.outPublic);
        try {
          await esys.trSetAuth(item, secret);
          await esys.setSessionAttributes(session, flags);
          const out = await esys.unseal(item, [session]);
          expect(out.length).toBe(32);
          out.fill(0);
        } finally {
          await esys.flushContext(item);
        }
      }
      const wrong = new Uint8Array(32);
      for (let i = 0; i < 50; i++) {
        const item = await esys.load(primary.handle, sealed.outPrivate, sealed.outPublic);
        try {
          await esys.trSetAuth(item, wrong);
          await expect(esys.unseal(item, [session])).rejects.toMatchObject({ rcName: 'TPM_RC_BAD_AUTH' });
        } finally {
          await esys.flushContext(item);
        }
      }
      await esys.flushContext(session);
      await esys.flushContext(primary.handle);
      expect(esys.stats()).toMatchObject({ liveBuffers: 0, liveHandles: 0, liveTrs: 0 });
      expect((await esys.transientHandles()).length).toBe(baseline);
      expect(esys.stats().commands).toBeGreaterThan(3000);
    } finally {
      await esys.close();
    }
  });

  it('close() flushes what the caller left loaded (a new context finds the TPM empty)', async () => {
    const esys = await Esys.open({ tcti });
    const before = (await esys.transientHandles()).length;
    const p = await esys.createPrimary(ESYS_TR.RH_OWNER, storagePrimaryTemplate('ecc'));
    await esys.startAuthSession({ tpmKey: p.handle });
    expect(esys.stats().liveHandles).toBe(2);
    await esys.close();
    const again = await Esys.open({ tcti });
    try {
      expect((await again.transientHandles()).length).toBe(before);
    } finally {
      await again.close();
    }
    await expect(esys.getRandom(1)).rejects.toMatchObject({ code: 'KW_ROOT_UNAVAILABLE' });
  });
});
