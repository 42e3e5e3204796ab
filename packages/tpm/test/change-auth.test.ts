/**
 * TpmRoot.changeAuth (TPM2_ObjectChangeAuth on the root's check object), what a rekey of a split
 * TPM auth value does (docs/split-knowledge.md §10.2): the new value opens the root and the old one
 * no longer does (the TPM itself refuses it), the root's id and everything it wrapped stay, the old
 * check object still opens with the old value until the store's record is replaced (the switch is
 * that one write), a wrong current value changes nothing, and neither value crosses the TPM
 * interface in the clear (pcap TCTI recording, as command-stream.test.ts).
 */
import { randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { KeywardenError, MemoryKeyStore } from '@keywarden/core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { TPM_ROOT_META_NAME, TpmRoot } from '../src/index.js';
import { relaxDictionaryAttack, tcti } from './_tpm.js';

const dir = mkdtempSync(join(tmpdir(), 'keywarden-change-auth-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
beforeAll(() => relaxDictionaryAttack());

function leaks(capture: Buffer, secret: Uint8Array): boolean {
  for (let i = 0; i + 12 <= secret.length; i += 4) {
    if (capture.includes(Buffer.from(secret.subarray(i, i + 12)))) return true;
  }
  return false;
}

async function unsealCode(root: TpmRoot, secret: Uint8Array): Promise<string> {
  try {
    await root.sealable?.unseal(secret);
    return 'ok';
  } catch (err) {
    return KeywardenError.isInstance(err) ? err.code : String(err);
  }
}

describe('TpmRoot.changeAuth', () => {
  it('the new auth value opens the root, the old one is refused by the TPM; id and wraps unchanged; a wrong current value changes nothing; neither value in the command stream', async () => {
    const file = join(dir, 'change.pcap');
    const previous = process.env.TCTI_PCAP_FILE;
    process.env.TCTI_PCAP_FILE = file;
    const recorded = `pcap:${tcti()}`;
    const oldAuth = new Uint8Array(randomBytes(32));
    const newAuth = new Uint8Array(randomBytes(32));
    const material = new Uint8Array(randomBytes(32));
    const aad = new TextEncoder().encode('change-auth');
    const store = new MemoryKeyStore();
    try {
      const root = await TpmRoot.create({ store, tcti: recorded, authValue: oldAuth });
      const id = root.describe().id;
      const wrapped = await root.wrapKey(material, aad);
      const oldRecord = (await store.getMeta(TPM_ROOT_META_NAME)) as Uint8Array;
      await root.sealable?.seal();
      await root.changeAuth(store, oldAuth, newAuth);
      await root.close();

      const reopened = await TpmRoot.load({ store, tcti: recorded });
      try {
        expect(reopened.describe().id).toBe(id);
        expect(await unsealCode(reopened, oldAuth)).toBe('KW_UNSEAL');
        expect(await unsealCode(reopened, newAuth)).toBe('ok');
        expect(Buffer.from(await reopened.unwrapKey(wrapped, aad)).equals(Buffer.from(material))).toBe(true);
        // A wrong current value: UnsealError, and the record is left as it was.
        const before = (await store.getMeta(TPM_ROOT_META_NAME)) as Uint8Array;
        await expect(reopened.changeAuth(store, oldAuth, new Uint8Array(32).fill(7))).rejects.toMatchObject({
          code: 'KW_UNSEAL',
        });
        expect(Buffer.from((await store.getMeta(TPM_ROOT_META_NAME)) as Uint8Array).equals(Buffer.from(before))).toBe(
          true,
        );
      } finally {
        await reopened.close();
      }

      // The old record (a store backup from before the change) still opens with the old value:
      // the TPM keeps nothing, the switch is the store's record.
      const backup = new MemoryKeyStore();
      await backup.putMeta(TPM_ROOT_META_NAME, oldRecord);
      const old = await TpmRoot.load({ store: backup, tcti: recorded });
      try {
        expect(await unsealCode(old, oldAuth)).toBe('ok');
        expect(old.describe().id).toBe(id);
      } finally {
        await old.close();
      }
    } finally {
      if (previous === undefined) delete process.env.TCTI_PCAP_FILE;
      else process.env.TCTI_PCAP_FILE = previous;
    }
    const capture = readFileSync(file);
    expect(capture.length).toBeGreaterThan(1000);
    expect(leaks(capture, newAuth), 'the new auth value in the command stream').toBe(false);
    expect(leaks(capture, material), 'KEK material in the command stream').toBe(false);
  }, 120_000);
});
