/**
 * ECDSA P-384 with SHA-384 for the signed envelope suite 0x02 (docs/format.md §4.9), on node:crypto
 * (OpenSSL): FIPS 186-5 §6 ECDSA over the NIST curve P-384 (SP 800-186 §3.2.1.4), FIPS 180-4 SHA-384.
 *
 * One signing key pair per message. The private scalar is drawn from the caller's random source
 * (the OS CSPRNG in the published API; fixed bytes only for the golden vectors, through _testing.ts)
 * by rejection sampling (FIPS 186-5 §A.2.2), used for exactly one signature and then dropped.
 *
 * Encodings, all fixed-length so that nothing is parsed from a length field:
 *  - verification key: the SEC 1 §2.3.3 compressed point, 0x02/0x03 ‖ x (49 bytes);
 *  - signature: IEEE P1363 r ‖ s (96 bytes), with s ≤ n/2 ("low s"). The signer normalizes s and
 *    the verifier refuses s > n/2, so a signature cannot be re-encoded into a second valid one
 *    ((r, n − s) is valid ECDSA too): one signed message has exactly one valid signature per key.
 *
 * Internal module: the envelope code uses it; it is not re-exported from the package index.
 */
import { createECDH, createPrivateKey, createPublicKey, createSign, createVerify, type KeyObject } from 'node:crypto';
import { asUint8, assertBytes, concatBytes, toBase64Url, wipe } from './_bytes.js';
import { FormatError, InvalidInputError } from './errors.js';

/** SP 800-186 §3.2.1.4: the field prime p and the group order n of P-384. */
const P384_P = BigInt(
  '0xfffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffeffffffff0000000000000000ffffffff',
);
const P384_N = BigInt(
  '0xffffffffffffffffffffffffffffffffffffffffffffffffc7634d81f4372ddf581a0db248b0a77aecec196accc52973',
);
const HALF_N = P384_N >> 1n;

export const P384_SCALAR_BYTES = 48;
/** SEC 1 §2.3.3 compressed point: 0x02 or 0x03 (parity of y) ‖ x. */
export const VERIFICATION_KEY_BYTES = 1 + P384_SCALAR_BYTES;
/** IEEE P1363: r ‖ s, 48 bytes each. */
export const SIGNATURE_BYTES = 2 * P384_SCALAR_BYTES;

/** RFC 5480 SubjectPublicKeyInfo prefix for id-ecPublicKey / secp384r1 with a compressed point:
 * SEQUENCE(70) { SEQUENCE(16) { OID 1.2.840.10045.2.1, OID 1.3.132.0.34 }, BIT STRING(50) 0x00 ‖ … }. */
const SPKI_COMPRESSED_PREFIX = Uint8Array.from(Buffer.from('3046301006072a8648ce3d020106052b81040022033200', 'hex'));
/**
 * RFC 5915 ECPrivateKey: SEQUENCE(164) { INTEGER 1, OCTET STRING(48) d, [0] { OID secp384r1 },
 * [1] { BIT STRING(98) 0x00 ‖ uncompressed Q } }. With Q given, OpenSSL does not recompute it from
 * d on import (a second scalar multiplication, about a third of the signing cost).
 */
const SEC1_PREFIX = Uint8Array.from(Buffer.from('3081a40201010430', 'hex'));
const SEC1_MIDDLE = Uint8Array.from(Buffer.from('a00706052b81040022a164036200', 'hex'));

/** Rejection sampling gives up after this many draws; with a working CSPRNG one draw out of range
 * happens with probability < 2⁻¹⁸⁹, so reaching the limit means the source is broken. */
const MAX_SCALAR_DRAWS = 8;

function toBigInt(b: Uint8Array): bigint {
  return BigInt(`0x${Buffer.from(b.buffer, b.byteOffset, b.byteLength).toString('hex') || '0'}`);
}

function fromBigInt(n: bigint, length: number): Uint8Array {
  return Uint8Array.from(Buffer.from(n.toString(16).padStart(length * 2, '0'), 'hex'));
}

/** A message's signing key: used for one signature, then dropped (sign() can be called once). */
export class MessageSigner {
  readonly verificationKey: Uint8Array;
  private key: KeyObject | undefined;
  private readonly hash = createSign('sha384');

  private constructor(key: KeyObject, verificationKey: Uint8Array) {
    this.key = key;
    this.verificationKey = verificationKey;
  }

  /** A fresh key pair from `random` (FIPS 186-5 §A.2.2: draw 48 bytes, accept 1 ≤ d ≤ n − 1). */
  static generate(random: (length: number) => Uint8Array): MessageSigner {
    for (let i = 0; i < MAX_SCALAR_DRAWS; i++) {
      const d = random(P384_SCALAR_BYTES);
      assertBytes(d, 'envelope: random signing key', P384_SCALAR_BYTES);
      try {
        const scalar = toBigInt(d);
        if (scalar === 0n || scalar >= P384_N) continue;
        const ecdh = createECDH('secp384r1');
        ecdh.setPrivateKey(d);
        const verificationKey = asUint8(ecdh.getPublicKey(undefined, 'compressed'));
        // Q = d·G as computed by OpenSSL just above: the key pair is consistent by construction.
        const der = concatBytes(SEC1_PREFIX, d, SEC1_MIDDLE, ecdh.getPublicKey(undefined, 'uncompressed'));
        try {
          return new MessageSigner(
            createPrivateKey({ key: Buffer.from(der.buffer), format: 'der', type: 'sec1' }),
            verificationKey,
          );
        } finally {
          wipe(der);
        }
      } finally {
        wipe(d);
      }
    }
    throw new InvalidInputError('envelope: the random source gave no valid P-384 signing key');
  }

  /** Feed the next bytes of the signed data (docs/format.md §4.9: every byte before the signature). */
  update(bytes: Uint8Array): void {
    if (!this.key) throw new InvalidInputError('envelope: the message was already signed');
    this.hash.update(bytes);
  }

  /** Sign what was fed, normalized to low s, and drop the private key. */
  sign(): Uint8Array {
    const key = this.key;
    if (!key) throw new InvalidInputError('envelope: the message was already signed');
    this.key = undefined;
    const sig = asUint8(this.hash.sign({ key, dsaEncoding: 'ieee-p1363' }));
    const s = toBigInt(sig.subarray(P384_SCALAR_BYTES));
    if (s > HALF_N) sig.set(fromBigInt(P384_N - s, P384_SCALAR_BYTES), P384_SCALAR_BYTES);
    return sig;
  }

  /** Drop the private key without signing (an abandoned message). */
  dispose(): void {
    this.key = undefined;
  }
}

/**
 * Import a compressed P-384 verification key. Everything here is visible without a key, so a
 * malformed key is a FormatError: wrong length, a prefix other than 0x02/0x03, x ≥ p, or an x
 * that is not on the curve (OpenSSL refuses to decompress it). The point at infinity has no
 * compressed form, so it cannot be given.
 */
export function importVerificationKey(bytes: Uint8Array): KeyObject {
  if (!(bytes instanceof Uint8Array) || bytes.length !== VERIFICATION_KEY_BYTES) {
    throw new FormatError('envelope: invalid verification key');
  }
  if ((bytes[0] !== 0x02 && bytes[0] !== 0x03) || toBigInt(bytes.subarray(1)) >= P384_P) {
    throw new FormatError('envelope: invalid verification key');
  }
  try {
    return createPublicKey({
      key: Buffer.from(concatBytes(SPKI_COMPRESSED_PREFIX, bytes)),
      format: 'der',
      type: 'spki',
    });
  } catch (cause) {
    throw new FormatError('envelope: invalid verification key (not a point on P-384)', { cause });
  }
}

/** Verifies one message's signature over the bytes fed to it, with the key from its header. */
export class MessageVerifier {
  private readonly key: KeyObject;
  private readonly hash = createVerify('sha384');

  /** Throws FormatError for a malformed key (importVerificationKey). */
  constructor(verificationKey: Uint8Array) {
    this.key = importVerificationKey(verificationKey);
  }

  update(bytes: Uint8Array): void {
    this.hash.update(bytes);
  }

  /**
   * True only for a 96-byte r ‖ s with 1 ≤ r < n and 1 ≤ s ≤ n/2 that verifies (FIPS 186-5 §6.4.2;
   * OpenSSL checks the ranges of r and s, we add the low-s rule). Can be called once.
   */
  verify(signature: Uint8Array): boolean {
    if (!(signature instanceof Uint8Array) || signature.length !== SIGNATURE_BYTES) return false;
    if (toBigInt(signature.subarray(P384_SCALAR_BYTES)) > HALF_N) return false;
    return this.hash.verify({ key: this.key, dsaEncoding: 'ieee-p1363' }, signature);
  }
}

/** The value of the reserved context key that binds a verification key into the DEK wrap
 * (context.ts VERIFICATION_KEY_CONTEXT_KEY): unpadded base64url (RFC 4648 §5), 66 characters. */
export function verificationKeyContextValue(verificationKey: Uint8Array): string {
  return toBase64Url(verificationKey);
}
