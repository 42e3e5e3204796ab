/**
 * Roots of trust as small capabilities (house style §2). A root can wrap and unwrap KEK material
 * under a key that never leaves it, describe itself, and optionally give random bytes or seal.
 * The software root (software-root.ts), the PKCS#11 root and the TPM root all implement these.
 * Asking a root for a capability it lacks is a typed error, never a silent no-op.
 */
import { UnsupportedCapabilityError } from './errors.js';
import type { RandomSource } from './random.js';

export type RootKind = 'software' | 'pkcs11' | 'tpm';

export interface RootDescription {
  kind: RootKind;
  /** Stable identifier of this root (recorded with every KEK version it wraps). */
  id: string;
  /** Human-readable, non-secret description ("software root (development mode)", token label…). */
  label: string;
  /** Algorithm used to wrap KEK material, e.g. "AES-256-GCM". */
  wrapAlgorithm: string;
}

/** Capability: wrap and unwrap key material under the root key, binding `aad`. */
export interface KeyWrapper {
  /** Returns an opaque blob; the root key never leaves the root. */
  wrapKey(material: Uint8Array, aad: Uint8Array): Promise<Uint8Array>;
  /** Throws DecryptionError('root') when the blob or aad does not authenticate. */
  unwrapKey(wrapped: Uint8Array, aad: Uint8Array): Promise<Uint8Array>;
}

/** Capability: the root can be sealed (key wiped from memory) and reports whether it is. */
export interface Sealable {
  isSealed(): boolean;
  seal(): Promise<void>;
}

export interface RootOfTrust extends KeyWrapper {
  describe(): RootDescription;
  /** Present when the root has its own CSPRNG (HSM, TPM, node:crypto for the software root). */
  readonly random?: RandomSource;
  /** Present when the root can be sealed and unsealed. */
  readonly sealable?: Sealable;
  /** Release handles and wipe any key material held in memory. */
  close(): Promise<void>;
}

export function requireRandom(root: RootOfTrust): RandomSource {
  if (!root.random) {
    throw new UnsupportedCapabilityError(`root: ${root.describe().kind} root has no random-source capability`);
  }
  return root.random;
}

export function requireSealable(root: RootOfTrust): Sealable {
  if (!root.sealable) {
    throw new UnsupportedCapabilityError(`root: ${root.describe().kind} root cannot be sealed`);
  }
  return root.sealable;
}
