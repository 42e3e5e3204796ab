/**
 * Secrets never cross the TPM interface in the clear. tpm2-tss's pcap TCTI ("pcap:<tcti>", file
 * from TCTI_PCAP_FILE) records every command and response byte; the test seals and unseals KEKs
 * through the root and searches the recording for the material, the root's auth value and the
 * secret K. A control run in the same recording unseals through a plain password session and
 * finds the material there: the recording does see secrets that cross unencrypted.
 */
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { MemoryKeyStore } from '@keywarden/core';
import { Esys, ESYS_TR, sealedObjectTemplate, storagePrimaryTemplate } from '@keywarden/tss2';
import { afterAll, describe, expect, it } from 'vitest';
import { TpmRoot } from '../src/index.js';
import { tcti } from './_tpm.js';

const dir = mkdtempSync(join(tmpdir(), 'keywarden-pcap-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** Every 12-byte window of `secret` (a partial leak counts too). */
function leaks(capture: Buffer, secret: Uint8Array): boolean {
  for (let i = 0; i + 12 <= secret.length; i += 4) {
    if (capture.includes(Buffer.from(secret.subarray(i, i + 12)))) return true;
  }
  return false;
}

describe('command stream (pcap TCTI recording)', () => {
  it('wrapKey and unwrapKey: the KEK material and the root auth value are not in the recorded stream; an unencrypted control unseal is', async () => {
    const file = join(dir, 'stream.pcap');
    const previous = process.env.TCTI_PCAP_FILE;
    process.env.TCTI_PCAP_FILE = file;
    const recorded = `pcap:${tcti()}`;
    const materials = [0, 1, 2].map(() => new Uint8Array(randomBytes(32)));
    const authValue = new Uint8Array(randomBytes(32));
    const control = new Uint8Array(randomBytes(32));
    try {
      const store = new MemoryKeyStore();
      const root = await TpmRoot.create({ store, tcti: recorded, authValue });
      await root.sealable?.seal();
      await root.sealable?.unseal(authValue); // the auth value and K cross (or not) here
      const aad = new TextEncoder().encode('stream');
      for (const m of materials) {
        const w = await root.wrapKey(m, aad);
        const back = await root.unwrapKey(w, aad);
        expect(Buffer.from(back).equals(Buffer.from(m))).toBe(true);
      }
      await root.close();

      // Control: the same recording, an unseal without parameter encryption.
      const esys = await Esys.open({ tcti: recorded });
      const p = await esys.createPrimary(ESYS_TR.RH_OWNER, storagePrimaryTemplate('ecc'));
      const sealed = await esys.create(p.handle, sealedObjectTemplate(), { data: control });
      const item = await esys.load(p.handle, sealed.outPrivate, sealed.outPublic);
      expect(Buffer.from(await esys.unseal(item)).equals(Buffer.from(control))).toBe(true);
      await esys.close();
    } finally {
      if (previous === undefined) delete process.env.TCTI_PCAP_FILE;
      else process.env.TCTI_PCAP_FILE = previous;
    }
    const capture = readFileSync(file);
    expect(capture.length).toBeGreaterThan(1000);
    expect(leaks(capture, control), 'the control secret crossed in the clear and was recorded').toBe(true);
    for (const m of materials) expect(leaks(capture, m), 'KEK material in the command stream').toBe(false);
    expect(leaks(capture, authValue), 'root auth value in the command stream').toBe(false);
  });
});
