/**
 * Share commitments (docs/split-knowledge.md §12.5): one per share, recorded in the sealed root's
 * unseal description, so that a share can be checked against the key store ON ITS OWN — by the
 * custodian at `keywarden share decrypt`, by the agent as each share arrives — instead of showing
 * a substitution only when a whole quorum fails to combine.
 *
 *   commitment_i = base64url(SHA-256("keywarden/share-commitment/v1" ‖ 0x00 ‖ canonical text of share i))
 *
 * Why a hash and not a MAC: a custodian holding one share must be able to check it without any
 * other secret. What stops someone from rewriting the list is where it lives: inside the sealed
 * root's unseal description, which is bound as AES-256-GCM associated data under the unseal key
 * (core's software-root.ts, docs/format.md §4) — so the list is MACed under the unseal key, and a
 * list changed in the store makes the next quorum's unseal fail. The canonical text carries the
 * share-set id, index, N, M and the 32-byte y-values (256 bits, uniformly random for any set of
 * fewer than M shares); publishing the hash gives nothing a brute force can use.
 */
import { ShareError } from '@keywarden/core';
import { sha256, toBase64Url, utf8 } from './_bytes.js';
import { encodeShare, ParsedShare, parseShare } from './share.js';

const DOMAIN = utf8.encode('keywarden/share-commitment/v1');
const COMMITMENT_RE = /^[A-Za-z0-9_-]{43}$/;

/** The commitment to one share (text or parsed; a parsed share is not wiped). */
export function shareCommitment(share: string | ParsedShare): string {
  const parsed = share instanceof ParsedShare ? share : parseShare(share);
  try {
    return toBase64Url(sha256(DOMAIN, Uint8Array.of(0), utf8.encode(encodeShare(parsed))));
  } finally {
    if (parsed !== share) parsed.wipe();
  }
}

/** True when `value` is a list of N well-formed commitments. */
export function isCommitmentList(value: unknown, shares: number): value is string[] {
  return (
    Array.isArray(value) &&
    value.length === shares &&
    value.every((c) => typeof c === 'string' && COMMITMENT_RE.test(c))
  );
}

/**
 * Check `share` against the recorded `commitments` (index i ↔ commitments[i-1]). Throws a
 * ShareError naming the index when it does not match: the share is not the one this key store
 * handed out (substituted, or made by someone else with identical labels).
 * Pre: the share's set, purpose, N and M were already checked against the same share set.
 */
export function checkShareCommitment(share: ParsedShare, commitments: readonly string[]): void {
  const expected = commitments[share.index - 1];
  if (expected === undefined) return;
  // Commitments are public hashes; comparing them needs no constant time.
  if (shareCommitment(share) !== expected) {
    throw new ShareError(
      `share: share ${share.index} of share set ${share.shareSetId} is not the share this key store handed out ` +
        '(its commitment does not match: substituted or forged); it was not used',
    );
  }
}
