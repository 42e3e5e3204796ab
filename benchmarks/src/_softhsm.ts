/**
 * The PKCS#11 benchmarks' token: an isolated SoftHSM2 started with the project's harness script
 * (harness/softhsm.sh), whatever the environment says, and removed when the benchmark ends; plus a
 * raw pkcs11js client on it (no graphene, no pool): the ceiling the PKCS#11 rows are measured
 * against, on the same token and the same key object.
 */
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { constants } from 'node:os';
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

/** Keep the module loaded until the process exits (RTLD_NODELETE), as @keywarden/pkcs11 does
 * (its _pin-module.ts says why): a worker thread's teardown must never run SoftHSM2's destructors
 * while other threads are still in the module (SIGSEGV). process.dlopen then fails on a library
 * that is not an addon, as expected. */
function pinModule(modulePath: string): void {
  try {
    process.dlopen({ exports: {} }, modulePath, (constants.dlopen.RTLD_NOW ?? 2) | 0x01000);
  } catch {
    // Expected: "did not self-register"; the library stays loaded.
  }
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
  pinModule(module);
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

/** The slot whose token has this label (a slot whose token cannot be read is not it). */
export function findSlot(lib: Pkcs11js.PKCS11, label: string): Buffer | undefined {
  for (const slot of lib.C_GetSlotList(true)) {
    try {
      if (lib.C_GetTokenInfo(slot).label.trim() === label) return slot;
    } catch {
      // SoftHSM2's free slot, a token being initialised: not ours.
    }
  }
  return undefined;
}

/** A second token in the same SoftHSM2 (softhsm2-util --init-token --free), with the same user PIN
 * (and that PIN as its SO PIN: the token lives as long as the benchmark). */
export function addToken(hsm: SoftHsm, label: string): SoftHsm {
  const pin = readFileSync(hsm.pinFile, 'utf8');
  execFileSync('softhsm2-util', ['--init-token', '--free', '--label', label, '--so-pin', pin, '--pin', pin], {
    stdio: 'ignore',
    timeout: 30_000,
  });
  return { ...hsm, token: label, uri: (object) => hsm.uri(object).replace(`token=${hsm.token}`, `token=${label}`) };
}

/** A fresh AES-256 key object on the token, made with raw pkcs11js (Keywarden's template: token,
 * private, sensitive, never extractable, encrypt/decrypt only); its CKA_ID (16 random bytes). */
export function createBenchKey(hsm: SoftHsm): Uint8Array {
  const lib = new pkcs11js.PKCS11();
  lib.load(hsm.module);
  try {
    lib.C_Initialize({ flags: pkcs11js.CKF_OS_LOCKING_OK });
  } catch (err) {
    if (!/ALREADY_INITIALIZED/.test(String((err as Error).message))) throw err;
  }
  const slot = findSlot(lib, hsm.token);
  if (!slot) throw new Error('bench: the harness token is not there');
  const session = lib.C_OpenSession(slot, pkcs11js.CKF_SERIAL_SESSION | pkcs11js.CKF_RW_SESSION);
  try {
    lib.C_Login(session, pkcs11js.CKU_USER, readFileSync(hsm.pinFile, 'utf8'));
  } catch (err) {
    if (!/ALREADY_LOGGED_IN/.test(String((err as Error).message))) throw err;
  }
  const id = Buffer.alloc(16);
  lib.C_GenerateRandom(session, id);
  lib.C_GenerateKey(session, { mechanism: pkcs11js.CKM_AES_KEY_GEN }, [
    { type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_SECRET_KEY },
    { type: pkcs11js.CKA_KEY_TYPE, value: pkcs11js.CKK_AES },
    { type: pkcs11js.CKA_TOKEN, value: true },
    { type: pkcs11js.CKA_PRIVATE, value: true },
    { type: pkcs11js.CKA_SENSITIVE, value: true },
    { type: pkcs11js.CKA_EXTRACTABLE, value: false },
    { type: pkcs11js.CKA_ENCRYPT, value: true },
    { type: pkcs11js.CKA_DECRYPT, value: true },
    { type: pkcs11js.CKA_VALUE_LEN, value: 32 },
    { type: pkcs11js.CKA_LABEL, value: 'kw-bench-scaling' },
    { type: pkcs11js.CKA_ID, value: id },
  ]);
  lib.C_CloseSession(session);
  return new Uint8Array(id);
}

function gcm(iv: Uint8Array, aad: Uint8Array): Pkcs11js.Mechanism {
  return {
    mechanism: pkcs11js.CKM_AES_GCM,
    parameter: { type: pkcs11js.CK_PARAMS_AES_GCM, iv: Buffer.from(iv), aad: Buffer.from(aad), tagBits: 128 },
  } as Pkcs11js.Mechanism;
}

/** A raw pkcs11js session on the token, logged in, with one AES key object found by CKA_ID. */
export class RawPkcs11 {
  readonly lib: Pkcs11js.PKCS11;
  readonly session: Buffer;
  readonly key: Buffer;

  /**
   * The module loaded and C_Initialize'd on this thread. Call it before a pool of threads starts in
   * this process (`lib` for the constructor): SoftHSM2 2.6 crashes when two threads make their
   * first call at once, and the pool's own lock (@keywarden/pkcs11 _init-lock.ts) does not reach
   * this thread's pkcs11js.
   */
  static initialize(hsm: SoftHsm): Pkcs11js.PKCS11 {
    const lib = new pkcs11js.PKCS11();
    lib.load(hsm.module);
    try {
      lib.C_Initialize({ flags: pkcs11js.CKF_OS_LOCKING_OK });
    } catch (err) {
      if (!/ALREADY_INITIALIZED/.test(String((err as Error).message))) throw err;
    }
    return lib;
  }

  constructor(hsm: SoftHsm, keyId: Uint8Array, lib: Pkcs11js.PKCS11 = RawPkcs11.initialize(hsm)) {
    this.lib = lib;
    const slot = findSlot(this.lib, hsm.token);
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
