/**
 * XAES-256-GCM (C2SP, https://c2sp.org/XAES-256-GCM): AES-256-GCM under a subkey derived from the
 * key and the first half of a 192-bit nonce, so that nonces can be drawn at random for a virtually
 * unlimited number of messages (2⁸⁰ messages with collision risk 2⁻³²) instead of SP 800-38D
 * §8.3's 2³² per key. Used by the "KWK" wrap suite 0x02 (docs/format.md §2.1).
 *
 * The subkey derivation is the NIST SP 800-108r1 §4.1 counter-mode KDF with CMAC-AES-256
 * (SP 800-38B) as PRF, label "X", context N[:12], a 16-bit counter and no L field. Each CMAC input
 * is one complete block, so CMAC reduces to one AES-256 block encryption under the input key,
 * done here with node:crypto's AES-256-ECB (OpenSSL; no hand-written AES). Checked against the
 * C2SP vectors, their intermediate values and the 10 000-iteration accumulated hash
 * (test/xaes.test.ts, test/vectors/c2sp/).
 *
 * Internal module: the only callers are data-key.ts and the tests.
 */
import { type Cipher, createCipheriv } from 'node:crypto';
import { asUint8, assertBytes } from './_bytes.js';
import { AES256_KEY_BYTES, GCM_NONCE_BYTES, gcmOpen, gcmSeal } from './aead.js';
import { KeyMaterialError } from './errors.js';

export const XAES_NONCE_BYTES = 24;
const BLOCK = 16;
const ZERO_BLOCK = new Uint8Array(BLOCK);

/**
 * The C2SP "Detailed key derivation algorithm", steps 1–5: returns Kₓ (32 bytes, secret: the
 * caller wipes it). Nₓ is simply N[12:].
 *
 *   L  = AES-256_K(0¹²⁸)                                        (SP 800-38B §6.1 step 1)
 *   K1 = L << 1, xor 0x87 into the last byte if MSB₁(L) = 1     (SP 800-38B §6.1 steps 2–3)
 *   Mi = 0x00 ‖ i ‖ "X" ‖ 0x00 ‖ N[:12]  for i = 1, 2            (SP 800-108r1 §4.1)
 *   Kₓ = AES-256_K(M1 ⊕ K1) ‖ AES-256_K(M2 ⊕ K1)                 (SP 800-38B §6.2, one block)
 */
export function xaesDeriveKey(key: Uint8Array, nonce: Uint8Array): Uint8Array {
  assertBytes(key, 'xaes-256-gcm: key', AES256_KEY_BYTES);
  assertBytes(nonce, 'xaes-256-gcm: nonce', XAES_NONCE_BYTES);
  // One ECB context for all three block encryptions: the AES key schedule is run once.
  const ecb = createCipheriv('aes-256-ecb', key, null);
  ecb.setAutoPadding(false);
  try {
    return deriveWith(ecb, nonce);
  } finally {
    // Without padding, ECB returns every complete block from update() and nothing from final();
    // final() also frees the context (below).
    ecb.final();
  }
}

/** Steps 1–5 on an AES-256-ECB context keyed with K (ECB carries no state from block to block). */
function deriveWith(ecb: Cipher, nonce: Uint8Array): Uint8Array {
  const l = ecb.update(ZERO_BLOCK);
  const m = new Uint8Array(2 * BLOCK);
  try {
    // K1 = (L << 1) ⊕ (0x87 if MSB₁(L)), branch-free on the secret bit. Written straight into
    // both message blocks as the xor mask, so K1 never exists as a buffer of its own.
    const carry = 0x87 & -((l[0] as number) >>> 7);
    for (let i = 0; i < BLOCK; i++) {
      const next = i + 1 < BLOCK ? (l[i + 1] as number) >>> 7 : 0;
      const k1 = (((l[i] as number) << 1) | next) & 0xff;
      m[i] = k1;
      m[BLOCK + i] = k1;
    }
    m[BLOCK - 1] = (m[BLOCK - 1] as number) ^ carry;
    m[2 * BLOCK - 1] = (m[2 * BLOCK - 1] as number) ^ carry;
    // M1 = 00 01 58 00 ‖ N[:12], M2 = 00 02 58 00 ‖ N[:12], each xored with K1.
    m[1] = (m[1] as number) ^ 0x01;
    m[BLOCK + 1] = (m[BLOCK + 1] as number) ^ 0x02;
    m[2] = (m[2] as number) ^ 0x58;
    m[BLOCK + 2] = (m[BLOCK + 2] as number) ^ 0x58;
    for (let i = 0; i < 12; i++) {
      m[4 + i] = (m[4 + i] as number) ^ (nonce[i] as number);
      m[BLOCK + 4 + i] = (m[BLOCK + 4 + i] as number) ^ (nonce[i] as number);
    }
    return asUint8(ecb.update(m));
  } finally {
    l.fill(0);
    m.fill(0);
  }
}

/**
 * One key's AES-256-ECB context, kept for many subkey derivations (issue 11, hot path): the
 * derivation then costs two block encryptions on a ready context instead of an AES key schedule and
 * a native cipher object per wrap and unwrap. Whoever keeps one keeps the key's expanded schedule
 * alive in OpenSSL memory as long as the key itself, so it must be destroyed exactly when the key is
 * wiped: Keywarden's KEK cache does both in the same place (keywarden.ts, KekEntry). destroy() calls
 * final(), after which Node frees the cipher context (EVP_CIPHER_CTX_free, which clears the
 * schedule); any later use throws instead of deriving under a destroyed key.
 */
export class XaesKeySchedule {
  #ecb: Cipher | undefined;

  constructor(key: Uint8Array) {
    assertBytes(key, 'xaes-256-gcm: key', AES256_KEY_BYTES);
    this.#ecb = createCipheriv('aes-256-ecb', key, null);
    this.#ecb.setAutoPadding(false);
  }

  /** Kₓ for `nonce`, as xaesDeriveKey(key, nonce) returns it (secret: the caller wipes it). */
  derive(nonce: Uint8Array): Uint8Array {
    if (!this.#ecb) throw new KeyMaterialError('xaes-256-gcm: the key schedule was destroyed with its key');
    assertBytes(nonce, 'xaes-256-gcm: nonce', XAES_NONCE_BYTES);
    return deriveWith(this.#ecb, nonce);
  }

  get destroyed(): boolean {
    return this.#ecb === undefined;
  }

  destroy(): void {
    const ecb = this.#ecb;
    this.#ecb = undefined;
    ecb?.final();
  }
}

/** The key, or a schedule made from it (the caller guarantees it is the same key). */
export type XaesKey = Uint8Array | XaesKeySchedule;

function subkey(key: XaesKey, nonce: Uint8Array): Uint8Array {
  return key instanceof XaesKeySchedule ? key.derive(nonce) : xaesDeriveKey(key, nonce);
}

/** XAES-256-GCM encryption: returns ciphertext ‖ tag (16). `nonce` is 24 bytes, fresh from a CSPRNG. */
export function xaesSeal(key: XaesKey, nonce: Uint8Array, plaintext: Uint8Array, aad: Uint8Array): Uint8Array {
  const kx = subkey(key, nonce);
  try {
    return gcmSeal(kx, nonce.subarray(XAES_NONCE_BYTES - GCM_NONCE_BYTES), plaintext, aad);
  } finally {
    kx.fill(0);
  }
}

/** XAES-256-GCM decryption; like gcmOpen, every failure is the same DecryptionError. */
export function xaesOpen(
  key: XaesKey,
  nonce: Uint8Array,
  sealed: Uint8Array,
  aad: Uint8Array,
  component = 'xaes-256-gcm',
): Uint8Array {
  const kx = subkey(key, nonce);
  try {
    return gcmOpen(kx, nonce.subarray(XAES_NONCE_BYTES - GCM_NONCE_BYTES), sealed, aad, component);
  } finally {
    kx.fill(0);
  }
}
