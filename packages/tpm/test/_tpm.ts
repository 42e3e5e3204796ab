/** Shared helpers for the TPM root suites: the TPM the globalSetup started, fresh roots. */
import { randomBytes } from 'node:crypto';
import { MemoryKeyStore } from '@keywarden/core';
import { Esys, ESYS_TR, TPM2_HR } from '@keywarden/tss2';
import { TpmRoot, type TpmRootCreateOptions } from '../src/index.js';

export const tcti = (): string => process.env.KEYWARDEN_TPM_TCTI as string;

/** A fresh sealable root (auth value of 32 bytes) in its own memory store. */
export async function freshRoot(options: Partial<TpmRootCreateOptions> = {}) {
  const store = new MemoryKeyStore();
  const secret = new Uint8Array(randomBytes(32));
  const root = await TpmRoot.create({ store, tcti: tcti(), authValue: secret, ...options });
  return { root, store, secret };
}

/** Raise the TPM's dictionary-attack threshold so the suites' deliberate wrong auth values never
 * lock it (swtpm's owner and lockout authorizations are empty). */
export async function relaxDictionaryAttack(t = tcti()): Promise<void> {
  const esys = await Esys.open({ tcti: t });
  try {
    await esys.dictionaryAttackLockReset();
    await esys.dictionaryAttackParameters(1000, 1, 1);
  } finally {
    await esys.close();
  }
}

/** Evict the persistent object at `handle` if a test left one (swtpm has little NV space). */
export async function evictIfPresent(handle: number, t = tcti()): Promise<void> {
  const esys = await Esys.open({ tcti: t });
  try {
    if ((await esys.handles(TPM2_HR.PERSISTENT)).includes(handle)) {
      const tr = await esys.trFromTPMPublic(handle);
      await esys.evictControl(ESYS_TR.RH_OWNER, tr, handle);
    }
  } finally {
    await esys.close();
  }
}
