/**
 * TPM 2.0 constants (TCG TPM 2.0 Library Part 2) and ESAPI's reserved ESYS_TR values (tss2_esys.h),
 * with the values this package uses. An ESYS_TR is ESAPI's handle for a TPM resource: a number
 * local to one ESYS context, not the TPM's own handle.
 */

/** An ESAPI resource handle (ESYS_TR). */
export type EsysTR = number;

export const ESYS_TR = {
  NONE: 0xfff,
  PASSWORD: 0x0ff,
  RH_OWNER: 0x101,
  RH_NULL: 0x107,
  RH_LOCKOUT: 0x10a,
  RH_ENDORSEMENT: 0x10b,
  RH_PLATFORM: 0x10c,
  /** PCR n is ESYS_TR n (0..31). */
  PCR0: 0,
} as const;

export const TPM2_ALG = {
  RSA: 0x0001,
  SHA1: 0x0004,
  AES: 0x0006,
  KEYEDHASH: 0x0008,
  SHA256: 0x000b,
  SHA384: 0x000c,
  SHA512: 0x000d,
  NULL: 0x0010,
  /** TPM 2.0 Part 2 §6.3: signature schemes. */
  RSASSA: 0x0014,
  ECDSA: 0x0018,
  ECC: 0x0023,
  CFB: 0x0043,
} as const;

export const TPM2_ECC_NIST_P256 = 0x0003;

/** TPMA_OBJECT bits. */
export const TPMA_OBJECT = {
  FIXEDTPM: 0x00000002,
  STCLEAR: 0x00000004,
  FIXEDPARENT: 0x00000010,
  SENSITIVEDATAORIGIN: 0x00000020,
  USERWITHAUTH: 0x00000040,
  ADMINWITHPOLICY: 0x00000080,
  NODA: 0x00000400,
  ENCRYPTEDDUPLICATION: 0x00000800,
  RESTRICTED: 0x00010000,
  DECRYPT: 0x00020000,
  SIGN_ENCRYPT: 0x00040000,
} as const;

/** TPMA_SESSION bits. */
export const TPMA_SESSION = {
  CONTINUESESSION: 0x01,
  AUDITEXCLUSIVE: 0x02,
  AUDITRESET: 0x04,
  DECRYPT: 0x20,
  ENCRYPT: 0x40,
  AUDIT: 0x80,
} as const;

/** TPM2_SE session types. */
export const TPM2_SE = { HMAC: 0x00, POLICY: 0x01, TRIAL: 0x03 } as const;

/** TPM2_SU startup types. */
export const TPM2_SU = { CLEAR: 0x0000, STATE: 0x0001 } as const;

/** TPM2_CAP capabilities and the properties this package reads. */
export const TPM2_CAP = { HANDLES: 0x00000001, TPM_PROPERTIES: 0x00000006 } as const;

export const TPM2_PT = {
  MANUFACTURER: 0x105,
  VENDOR_STRING_1: 0x106,
  FIRMWARE_VERSION_1: 0x10b,
  LOCKOUT_COUNTER: 0x20e,
  MAX_AUTH_FAIL: 0x20f,
  LOCKOUT_INTERVAL: 0x210,
  LOCKOUT_RECOVERY: 0x211,
} as const;

/** First handle of each TPM handle range (TPM2_HT << 24). */
export const TPM2_HR = {
  PCR: 0x00000000,
  HMAC_SESSION: 0x02000000,
  POLICY_SESSION: 0x03000000,
  TRANSIENT: 0x80000000,
  PERSISTENT: 0x81000000,
} as const;

/** Digest size in bytes of each hash algorithm this package knows. */
export function digestSize(hashAlg: number): number {
  switch (hashAlg) {
    case TPM2_ALG.SHA1:
      return 20;
    case TPM2_ALG.SHA256:
      return 32;
    case TPM2_ALG.SHA384:
      return 48;
    case TPM2_ALG.SHA512:
      return 64;
    default:
      throw new RangeError(`tss2: unknown hash algorithm 0x${hashAlg.toString(16)}`);
  }
}
