/**
 * An independent client on the same token: pkcs11js called directly from the test's thread (no
 * graphene, no pool), to check what Keywarden left in the token and to inject faults under the
 * pool (C_CloseAllSessions, C_Finalize). It shares the process's one loaded module with the pool's
 * workers, as any second library in an application would.
 */
import { createRequire } from 'node:module';
import type * as Pkcs11js from 'pkcs11js';
import { hsm, pin } from './_hsm.js';

const pkcs11js = createRequire(import.meta.url)('pkcs11js') as typeof Pkcs11js;

export class RawToken {
  readonly lib = new pkcs11js.PKCS11();
  slot!: Buffer;
  session!: Buffer;

  constructor(readonly token = hsm.token) {
    this.lib.load(hsm.module);
    this.init();
  }

  init(): void {
    try {
      this.lib.C_Initialize({ flags: pkcs11js.CKF_OS_LOCKING_OK });
    } catch (err) {
      if (!/CKR_CRYPTOKI_ALREADY_INITIALIZED/.test(String((err as Error).message))) throw err;
    }
    const slot = this.lib.C_GetSlotList(true).find((s) => {
      try {
        return this.lib.C_GetTokenInfo(s).label.trim() === this.token;
      } catch {
        return false;
      }
    });
    if (!slot) throw new Error(`raw: no token labelled ${this.token}`);
    this.slot = slot;
    this.session = this.lib.C_OpenSession(slot, pkcs11js.CKF_SERIAL_SESSION | pkcs11js.CKF_RW_SESSION);
    this.login();
  }

  /** Login state is the application's (PKCS#11 §5.6): a root's seal logs this session out too. */
  login(): void {
    try {
      this.lib.C_Login(this.session, pkcs11js.CKU_USER, Buffer.from(pin()).toString('utf8'));
    } catch (err) {
      if (!/CKR_USER_ALREADY_LOGGED_IN/.test(String((err as Error).message))) throw err;
    }
  }

  /** Secret-key objects with this CKA_ID (all of them when `id` is undefined). */
  find(template: { id?: Uint8Array; label?: string }): Buffer[] {
    this.login();
    const t: Pkcs11js.Template = [{ type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_SECRET_KEY }];
    if (template.id) t.push({ type: pkcs11js.CKA_ID, value: Buffer.from(template.id) });
    if (template.label) t.push({ type: pkcs11js.CKA_LABEL, value: template.label });
    this.lib.C_FindObjectsInit(this.session, t);
    const out = this.lib.C_FindObjects(this.session, 100);
    this.lib.C_FindObjectsFinal(this.session);
    return out;
  }

  /** AES-GCM decryption with a key object, as any PKCS#11 client would do it. */
  gcmDecrypt(key: Buffer, iv: Uint8Array, aad: Uint8Array, data: Uint8Array): Buffer {
    const mech = {
      mechanism: pkcs11js.CKM_AES_GCM,
      parameter: { type: pkcs11js.CK_PARAMS_AES_GCM, iv: Buffer.from(iv), aad: Buffer.from(aad), tagBits: 128 },
    } as Pkcs11js.Mechanism;
    this.lib.C_DecryptInit(this.session, mech, key);
    return this.lib.C_Decrypt(this.session, Buffer.from(data), Buffer.alloc(data.length));
  }

  attributes(key: Buffer): Record<string, boolean> {
    const names = [
      'CKA_TOKEN',
      'CKA_PRIVATE',
      'CKA_SENSITIVE',
      'CKA_EXTRACTABLE',
      'CKA_NEVER_EXTRACTABLE',
      'CKA_WRAP',
      'CKA_UNWRAP',
    ] as const;
    const got = this.lib.C_GetAttributeValue(
      this.session,
      key,
      names.map((n) => ({ type: pkcs11js[n] })),
    );
    return Object.fromEntries(names.map((n, i) => [n, Boolean((got[i]?.value as Buffer)?.[0])]));
  }

  finalize(): void {
    this.lib.C_Finalize();
  }

  close(): void {
    try {
      this.lib.C_CloseSession(this.session);
    } catch {
      // Closed under us by a fault test.
    }
  }
}
