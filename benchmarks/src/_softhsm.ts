/**
 * The PKCS#11 benchmarks' token: an isolated SoftHSM2 started with the project's harness script
 * (harness/softhsm.sh), whatever the environment says, and removed when the benchmark ends; plus a
 * raw pkcs11js client on it (no graphene, no pool): the ceiling the PKCS#11 rows are measured
 * against, on the same token and the same key object.
 */
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import type * as Pkcs11js from 'pkcs11js';

const pkcs11js = createRequire(import.meta.url)('pkcs11js') as typeof Pkcs11js;
const SCRIPT = fileURLToPath(new URL('../../harness/softhsm.sh', import.meta.url));

export interface SoftHsm {
  module: string;
  token: string;
  pinFile: string;
  /** pkcs11:… for a new root object on the token. */
  uri(object: string): string;
  stop(): void;
}

export function startSoftHsm(): SoftHsm {
  const out = execFileSync('bash', [SCRIPT, 'start', 'kw-bench'], { encoding: 'utf8', timeout: 60_000 });
  const env: Record<string, string> = {};
  for (const line of out.split('\n')) {
    const m = /^export ([A-Z0-9_]+)='([^']*)'$/.exec(line);
    if (m?.[1] && m[2] !== undefined) env[m[1]] = m[2];
  }
  // The module reads its configuration from the environment when it is initialised.
  process.env.SOFTHSM2_CONF = env.SOFTHSM2_CONF;
  const module = env.KEYWARDEN_PKCS11_MODULE as string;
  const pinFile = env.KEYWARDEN_PKCS11_PIN_FILE as string;
  const dir = env.KEYWARDEN_SOFTHSM_DIR as string;
  return {
    module,
    token: 'kw-bench',
    pinFile,
    uri: (object) => `pkcs11:token=kw-bench;object=${object}?module-path=${module}&pin-source=file:${pinFile}`,
    stop: () => execFileSync('bash', [SCRIPT, 'stop', dir], { stdio: 'ignore', timeout: 30_000 }),
  };
}

function gcm(iv: Uint8Array, aad: Uint8Array): Pkcs11js.Mechanism {
  return {
    mechanism: pkcs11js.CKM_AES_GCM,
    parameter: { type: pkcs11js.CK_PARAMS_AES_GCM, iv: Buffer.from(iv), aad: Buffer.from(aad), tagBits: 128 },
  } as Pkcs11js.Mechanism;
}

/** A raw pkcs11js session on the token, logged in, with one AES key object found by CKA_ID. */
export class RawPkcs11 {
  readonly lib = new pkcs11js.PKCS11();
  readonly session: Buffer;
  readonly key: Buffer;

  constructor(hsm: SoftHsm, keyId: Uint8Array) {
    this.lib.load(hsm.module);
    try {
      this.lib.C_Initialize({ flags: pkcs11js.CKF_OS_LOCKING_OK });
    } catch (err) {
      if (!/ALREADY_INITIALIZED/.test(String((err as Error).message))) throw err;
    }
    const slot = this.lib.C_GetSlotList(true).find((s) => this.lib.C_GetTokenInfo(s).label.trim() === hsm.token);
    if (!slot) throw new Error('bench: the harness token is not there');
    this.session = this.lib.C_OpenSession(slot, pkcs11js.CKF_SERIAL_SESSION | pkcs11js.CKF_RW_SESSION);
    try {
      this.lib.C_Login(this.session, pkcs11js.CKU_USER, readFileSync(hsm.pinFile, 'utf8'));
    } catch (err) {
      if (!/ALREADY_LOGGED_IN/.test(String((err as Error).message))) throw err;
    }
    this.lib.C_FindObjectsInit(this.session, [
      { type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_SECRET_KEY },
      { type: pkcs11js.CKA_ID, value: Buffer.from(keyId) },
    ]);
    const [key] = this.lib.C_FindObjects(this.session, 1);
    this.lib.C_FindObjectsFinal(this.session);
    if (!key) throw new Error('bench: key object not found');
    this.key = key;
  }

  /** One data-key wrap + unwrap as Keywarden's KEK-in-HSM mode does it: AES-GCM of 32 bytes with a
   * 12-byte IV and associated data, then its decryption; synchronous, on the calling thread. */
  wrapUnwrap(iv: Uint8Array, aad: Uint8Array, dek: Uint8Array): void {
    const s = this.session;
    this.lib.C_EncryptInit(s, gcm(iv, aad), this.key);
    const ct = this.lib.C_Encrypt(s, Buffer.from(dek), Buffer.alloc(48));
    this.lib.C_DecryptInit(s, gcm(iv, aad), this.key);
    this.lib.C_Decrypt(s, ct, Buffer.alloc(48));
  }

  /** The same with pkcs11js's async variants (C_Encrypt/C_Decrypt on libuv's thread pool; the
   * Init calls stay synchronous): the other non-blocking design. One session per concurrent loop. */
  async wrapUnwrapAsync(session: Buffer, iv: Uint8Array, aad: Uint8Array, dek: Uint8Array): Promise<void> {
    this.lib.C_EncryptInit(session, gcm(iv, aad), this.key);
    const ct = await this.lib.C_EncryptAsync(session, Buffer.from(dek), Buffer.alloc(48));
    this.lib.C_DecryptInit(session, gcm(iv, aad), this.key);
    await this.lib.C_DecryptAsync(session, ct, Buffer.alloc(48));
  }

  openSession(): Buffer {
    const slotInfo = this.lib.C_GetSessionInfo(this.session);
    return this.lib.C_OpenSession(slotInfo.slotID, pkcs11js.CKF_SERIAL_SESSION | pkcs11js.CKF_RW_SESSION);
  }

  close(): void {
    this.lib.C_CloseSession(this.session);
  }
}
