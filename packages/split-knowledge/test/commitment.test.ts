/**
 * commitment.ts: the commitment to one share (docs/split-knowledge.md §12.5), recomputed here
 * independently from its definition, and its use by an UnsealSession.
 */
import { createHash, randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { isCommitmentList } from '../src/commitment.js';
import { checkShareCommitment, parseShare, shareCommitment, splitSecret, UnsealSession } from '../src/index.js';
import { expectKwError, forgeShare } from './_helpers.js';

/** The definition: base64url(SHA-256("keywarden/share-commitment/v1" ‖ 0x00 ‖ canonical share text)). */
function reference(canonical: string): string {
  return createHash('sha256')
    .update('keywarden/share-commitment/v1')
    .update(Uint8Array.of(0))
    .update(canonical)
    .digest('base64url');
}

describe('shareCommitment', () => {
  it('is SHA-256 over the domain and the canonical share text, base64url, one per share', async () => {
    const set = await splitSecret(new Uint8Array(randomBytes(32)), { shares: 4, threshold: 2, purpose: 'unseal-key' });
    const commitments = set.encoded.map((t) => shareCommitment(t));
    expect(commitments).toEqual(set.encoded.map(reference));
    expect(new Set(commitments).size).toBe(4);
    expect(isCommitmentList(commitments, 4)).toBe(true);
    expect(isCommitmentList(commitments, 3)).toBe(false);
    expect(isCommitmentList([...commitments.slice(1), 'x'], 4)).toBe(false);
    // The same share however it is spelled (wrapped over two lines, upper-case checksum).
    const t = set.encoded[0]!;
    const respelled = `${t.slice(0, 30)}\n  ${t.slice(30, -8)}${t.slice(-8).toUpperCase()}`;
    expect(shareCommitment(respelled)).toBe(commitments[0]);
    // A parsed share gives the same and is not wiped.
    const p = parseShare(t);
    expect(shareCommitment(p)).toBe(commitments[0]);
    expect(p.payload.some((b) => b !== 0)).toBe(true);
    p.wipe();
  });

  it('checkShareCommitment and an UnsealSession with commitments refuse a share that does not match, naming it', async () => {
    const set = await splitSecret(new Uint8Array(randomBytes(32)), { shares: 3, threshold: 2, purpose: 'unseal-key' });
    const commitments = set.encoded.map((t) => shareCommitment(t));
    const forged = forgeShare(set.encoded[1]!, 4);
    const parsed = parseShare(forged);
    await expectKwError(
      () => checkShareCommitment(parsed, commitments),
      'KW_SHARE',
      `share: share 2 of share set ${set.shareSetId} is not the share this key store handed out (its commitment does not match: substituted or forged); it was not used`,
      [...set.encoded, forged],
    );
    parsed.wipe();
    const session = new UnsealSession({ expected: { ...set, commitments } });
    session.submit(set.encoded[0]!);
    await expectKwError(() => session.submit(forged), 'KW_SHARE', /^share: share 2 of share set/);
    expect(session.progress().accepted).toBe(1);
    session.submit(set.encoded[2]!);
    expect(await session.takeSecret()).toHaveLength(32);
    expect(() => new UnsealSession({ expected: { ...set, commitments: commitments.slice(1) } })).toThrow(
      /one commitment per share/,
    );
  });
});
