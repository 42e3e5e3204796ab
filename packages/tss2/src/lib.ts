/**
 * The native side: libtss2-esys, -mu, -tctildr and -rc loaded through koffi (a prebuilt FFI for
 * Node.js; nothing is compiled on the consumer's machine). Loaded on first use; a missing library
 * is a TssUnavailableError that names the package to install.
 *
 * Every function is declared with plain C types. Pointers to TPM structures are opaque (`void *`):
 * they are filled by Tss2_MU_*_Unmarshal from the wire form built in marshal.ts, and ESAPI's own
 * results are read back with Tss2_MU_*_Marshal, so the C struct layout never appears here.
 */
import { createRequire } from 'node:module';
import { TssUnavailableError } from './errors.js';

// koffi is CommonJS with a prebuilt addon: load it through require so its own resolution works.
const require = createRequire(import.meta.url);

/** A koffi-bound function: sync call, and `.async(...args, callback)` on a worker thread. */
export interface NativeFn {
  (...args: unknown[]): unknown;
  async: (...args: unknown[]) => void;
}

interface Koffi {
  load(path: string, options?: { deep?: boolean }): { func(definition: string): NativeFn };
}

/** C sizes of the TPM structures that ESAPI takes by pointer (sizeof in tpm2-tss 3.2's
 * tss2_tpm2_types.h on 64-bit Linux: fixed-size arrays, no pointers). Buffers are allocated this
 * large; Tss2_MU_*_Unmarshal never writes past the struct. */
export const C_SIZE = {
  TPM2B_PUBLIC: 616,
  TPM2B_PRIVATE: 1552,
  TPM2B_SENSITIVE_CREATE: 326,
  TPM2B_DATA: 66,
  TPML_PCR_SELECTION: 132,
  TPM2B_DIGEST: 66,
  TPM2B_NONCE: 66,
  TPMT_SYM_DEF: 6,
  TPM2B_AUTH: 66,
  TPMS_CONTEXT: 5208,
  TPML_DIGEST_VALUES: 1060,
  TPML_DIGEST: 532,
  TPM2B_SENSITIVE_DATA: 258,
  TPM2B_NAME: 70,
  TPMS_CAPABILITY_DATA: 1032,
  TPMT_SIG_SCHEME: 6,
  TPMT_TK_HASHCHECK: 76,
  TPMT_SIGNATURE: 518,
} as const;

export type MuType = keyof typeof C_SIZE;

const MU_TYPES = Object.keys(C_SIZE) as MuType[];

const S3 = 'uint32_t s1, uint32_t s2, uint32_t s3';

const ESYS_DECLS = {
  Esys_Initialize: 'uint32_t Esys_Initialize(_Out_ void **ctx, void *tcti, void *abi)',
  Esys_Finalize: 'void Esys_Finalize(_Inout_ void **ctx)',
  Esys_Free: 'void Esys_Free(void *ptr)',
  Esys_SetTimeout: 'uint32_t Esys_SetTimeout(void *ctx, int32_t timeout)',
  Esys_Startup: 'uint32_t Esys_Startup(void *ctx, uint16_t type)',
  Esys_GetRandom: `uint32_t Esys_GetRandom(void *ctx, ${S3}, uint16_t n, _Out_ void **out)`,
  Esys_CreatePrimary: `uint32_t Esys_CreatePrimary(void *ctx, uint32_t hierarchy, ${S3}, const void *inSensitive, const void *inPublic, const void *outsideInfo, const void *creationPcr, _Out_ uint32_t *handle, _Out_ void **outPublic, _Out_ void **creationData, _Out_ void **creationHash, _Out_ void **creationTicket)`,
  Esys_Create: `uint32_t Esys_Create(void *ctx, uint32_t parent, ${S3}, const void *inSensitive, const void *inPublic, const void *outsideInfo, const void *creationPcr, _Out_ void **outPrivate, _Out_ void **outPublic, _Out_ void **creationData, _Out_ void **creationHash, _Out_ void **creationTicket)`,
  Esys_Load: `uint32_t Esys_Load(void *ctx, uint32_t parent, ${S3}, const void *inPrivate, const void *inPublic, _Out_ uint32_t *handle)`,
  Esys_Unseal: `uint32_t Esys_Unseal(void *ctx, uint32_t item, ${S3}, _Out_ void **outData)`,
  Esys_ObjectChangeAuth: `uint32_t Esys_ObjectChangeAuth(void *ctx, uint32_t object, uint32_t parent, ${S3}, const void *newAuth, _Out_ void **outPrivate)`,
  Esys_FlushContext: 'uint32_t Esys_FlushContext(void *ctx, uint32_t handle)',
  Esys_Sign: `uint32_t Esys_Sign(void *ctx, uint32_t key, ${S3}, const void *digest, const void *inScheme, const void *validation, _Out_ void **signature)`,
  Esys_StartAuthSession: `uint32_t Esys_StartAuthSession(void *ctx, uint32_t tpmKey, uint32_t bind, ${S3}, const void *nonceCaller, uint8_t sessionType, const void *symmetric, uint16_t authHash, _Out_ uint32_t *session)`,
  Esys_TRSess_SetAttributes:
    'uint32_t Esys_TRSess_SetAttributes(void *ctx, uint32_t session, uint8_t flags, uint8_t mask)',
  Esys_PolicyPCR: `uint32_t Esys_PolicyPCR(void *ctx, uint32_t session, ${S3}, const void *pcrDigest, const void *pcrs)`,
  Esys_PolicyAuthValue: `uint32_t Esys_PolicyAuthValue(void *ctx, uint32_t session, ${S3})`,
  Esys_PolicyGetDigest: `uint32_t Esys_PolicyGetDigest(void *ctx, uint32_t session, ${S3}, _Out_ void **digest)`,
  Esys_PCR_Read: `uint32_t Esys_PCR_Read(void *ctx, ${S3}, const void *selection, _Out_ uint32_t *counter, _Out_ void **selectionOut, _Out_ void **values)`,
  Esys_PCR_Extend: `uint32_t Esys_PCR_Extend(void *ctx, uint32_t pcr, ${S3}, const void *digests)`,
  Esys_EvictControl: `uint32_t Esys_EvictControl(void *ctx, uint32_t auth, uint32_t object, ${S3}, uint32_t persistent, _Out_ uint32_t *newHandle)`,
  Esys_ReadPublic: `uint32_t Esys_ReadPublic(void *ctx, uint32_t object, ${S3}, _Out_ void **outPublic, _Out_ void **name, _Out_ void **qualifiedName)`,
  Esys_TR_SetAuth: 'uint32_t Esys_TR_SetAuth(void *ctx, uint32_t handle, const void *auth)',
  Esys_TR_GetName: 'uint32_t Esys_TR_GetName(void *ctx, uint32_t handle, _Out_ void **name)',
  Esys_TR_FromTPMPublic: `uint32_t Esys_TR_FromTPMPublic(void *ctx, uint32_t tpmHandle, ${S3}, _Out_ uint32_t *object)`,
  Esys_TR_Close: 'uint32_t Esys_TR_Close(void *ctx, _Inout_ uint32_t *handle)',
  Esys_ContextSave: 'uint32_t Esys_ContextSave(void *ctx, uint32_t handle, _Out_ void **context)',
  Esys_ContextLoad: 'uint32_t Esys_ContextLoad(void *ctx, const void *context, _Out_ uint32_t *handle)',
  Esys_GetCapability: `uint32_t Esys_GetCapability(void *ctx, ${S3}, uint32_t capability, uint32_t property, uint32_t count, _Out_ uint8_t *more, _Out_ void **data)`,
  Esys_DictionaryAttackLockReset: `uint32_t Esys_DictionaryAttackLockReset(void *ctx, uint32_t lockHandle, ${S3})`,
  Esys_DictionaryAttackParameters: `uint32_t Esys_DictionaryAttackParameters(void *ctx, uint32_t lockHandle, ${S3}, uint32_t maxTries, uint32_t recoveryTime, uint32_t lockoutRecovery)`,
} as const;

export type EsysFnName = keyof typeof ESYS_DECLS;

export interface Tss2Native {
  esys: Record<EsysFnName, NativeFn>;
  tctiInit: NativeFn;
  tctiFinalize: NativeFn;
  rcDecode: NativeFn;
  /** Tss2_MU_<T>_Unmarshal(buffer, size, &offset, dest) */
  unmarshal: Record<MuType, NativeFn>;
  /** Tss2_MU_<T>_Marshal(src, buffer, size, &offset) */
  marshal: Record<MuType, NativeFn>;
  /** explicit_bzero from libc: wipes C memory (an unsealed secret) before Esys_Free. */
  bzero: NativeFn;
  /** flock(2) from libc: the cross-process TPM lock (lock.ts). */
  flock: NativeFn;
}

let native: Tss2Native | undefined;

function open(koffi: Koffi, names: string[]): { func(definition: string): NativeFn } {
  let last: unknown;
  for (const n of names) {
    try {
      // RTLD_DEEPBIND: tpm2-tss resolves OpenSSL from the libcrypto it was built against, not from
      // the OpenSSL statically linked into Node.js (whose exported symbols would otherwise win:
      // another version, and state shared with node:crypto). Measured: no change in speed.
      return koffi.load(n, { deep: true });
    } catch (err) {
      last = err;
    }
  }
  throw new TssUnavailableError(
    'dlopen',
    undefined,
    `tss2: the tpm2-tss library ${names[0]} cannot be loaded; install tpm2-tss (Debian/Ubuntu: apt-get install libtss2-dev, or the runtime packages libtss2-esys-3.0.2-0 libtss2-tctildr0 libtss2-mu0 libtss2-rc0 and a TCTI such as libtss2-tcti-device0)`,
    { cause: last },
  );
}

/** The bound libraries (loaded once). */
export function tss2Native(): Tss2Native {
  if (native) return native;
  // tpm2-tss logs every TPM error to stderr; this package reports them as typed errors instead.
  // TSS2_LOG set by the user (e.g. "esys+debug") wins.
  if (process.env.TSS2_LOG === undefined) process.env.TSS2_LOG = 'all+none';
  let koffi: Koffi;
  try {
    koffi = require('koffi') as Koffi;
  } catch (err) {
    throw new TssUnavailableError(
      'koffi',
      undefined,
      'tss2: the koffi FFI package cannot be loaded (reinstall @keywarden/tss2; with pnpm, allow its build script: allowBuilds koffi: true)',
      { cause: err },
    );
  }
  const esysLib = open(koffi, ['libtss2-esys.so.0', 'libtss2-esys.so']);
  const muLib = open(koffi, ['libtss2-mu.so.0', 'libtss2-mu.so']);
  const ldrLib = open(koffi, ['libtss2-tctildr.so.0', 'libtss2-tctildr.so']);
  const rcLib = open(koffi, ['libtss2-rc.so.0', 'libtss2-rc.so']);
  const libc = open(koffi, ['libc.so.6']);
  const esys = {} as Record<EsysFnName, NativeFn>;
  for (const [name, decl] of Object.entries(ESYS_DECLS)) esys[name as EsysFnName] = esysLib.func(decl);
  const unmarshal = {} as Record<MuType, NativeFn>;
  const marshal = {} as Record<MuType, NativeFn>;
  for (const t of MU_TYPES) {
    unmarshal[t] = muLib.func(
      `uint32_t Tss2_MU_${t}_Unmarshal(const void *buffer, size_t size, _Inout_ size_t *offset, void *dest)`,
    );
    marshal[t] = muLib.func(
      `uint32_t Tss2_MU_${t}_Marshal(const void *src, void *buffer, size_t size, _Inout_ size_t *offset)`,
    );
  }
  native = {
    esys,
    tctiInit: ldrLib.func('uint32_t Tss2_TctiLdr_Initialize(const char *conf, _Out_ void **ctx)'),
    tctiFinalize: ldrLib.func('void Tss2_TctiLdr_Finalize(_Inout_ void **ctx)'),
    rcDecode: rcLib.func('const char *Tss2_RC_Decode(uint32_t rc)'),
    unmarshal,
    marshal,
    bzero: libc.func('void explicit_bzero(void *ptr, size_t len)'),
    flock: libc.func('int flock(int fd, int operation)'),
  };
  return native;
}
