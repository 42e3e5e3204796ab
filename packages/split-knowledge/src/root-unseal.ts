/**
 * Split knowledge over any root (issue 7 §2): a root whose unlocking secret can be split — an
 * HSM's user PIN, a TPM's auth value — is unsealed by a quorum of custodians through core's
 * `sealable` capability, without knowing which backend it is. What the secret is comes from the
 * root itself (`Sealable.unsealSecret().kind`): "user-pin" shares carry the purpose "hsm-pin",
 * "auth-value" shares "tpm-auth" (hardware-secret.ts: padded, with a keyed verifier, so a forged
 * share is caught before the device sees a guessed PIN). The software root's unseal key keeps its
 * own path (`unsealWithShares`), whose share-set description lives in the sealed root.
 */
import { InvalidInputError, type RootOfTrust, requireSealable, wipe } from '@keywarden/core';
import { type CombineHardwareOptions, combineHardwareSecret, type HardwareSecretPurpose } from './hardware-secret.js';
import type { ParsedShare, ShareExpectation } from './share.js';

/** Share purpose for each kind of unlocking secret a root can describe. */
export const SHARE_PURPOSE_OF_SECRET: Readonly<Record<string, HardwareSecretPurpose>> = {
  'user-pin': 'hsm-pin',
  'auth-value': 'tpm-auth',
};

/**
 * Recombine the root's unlocking secret from a quorum and unseal the root with it; the secret is
 * wiped whatever happens. `expect` is the share set the root's secret was split into (id, M, N,
 * commitments — kept by the caller or in the root's record); its purpose follows from the root.
 * Errors: UnsupportedCapabilityError (the root cannot be sealed), InvalidInputError (a secret of a
 * kind split knowledge does not split this way, or of a length the root refuses), ShareError
 * (wrong, forged or too few shares: nothing reaches the root), UnsealError (the device refused).
 */
export async function unsealRootWithQuorum(
  root: RootOfTrust,
  shares: readonly string[] | readonly ParsedShare[],
  expect: Omit<ShareExpectation, 'purpose'> = {},
  options: CombineHardwareOptions = {},
): Promise<void> {
  const sealable = requireSealable(root);
  const described = sealable.unsealSecret();
  const purpose = SHARE_PURPOSE_OF_SECRET[described.kind];
  if (purpose === undefined) {
    throw new InvalidInputError(
      described.kind === 'unseal-key'
        ? 'unseal: a software root is unsealed from its sealed document (unsealWithShares), not this way'
        : `unseal: split knowledge has no share purpose for a root secret of kind "${described.kind}"`,
    );
  }
  const secret = await combineHardwareSecret(shares, { ...expect, purpose }, options);
  try {
    if (secret.length < described.minBytes || secret.length > described.maxBytes) {
      throw new InvalidInputError(
        `unseal: the recombined ${described.kind} has a length the root does not accept (${described.minBytes}..${described.maxBytes} bytes)`,
      );
    }
    await sealable.unseal(secret);
  } finally {
    wipe(secret);
  }
}
