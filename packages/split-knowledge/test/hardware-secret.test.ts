import { createHmac, randomBytes } from 'node:crypto';
import { combine } from 'shamir-secret-sharing';
import { describe, expect, it } from 'vitest';
import { encodeLegacyHardwareSecret } from '../src/hardware-secret.js';
import {
  combineHardwareSecret,
  encodeShare,
  MAX_HARDWARE_SECRET_BYTES,
  parseShare,
  splitHardwareSecret,
  splitSecret,
} from '../src/index.js';
import { splitWithPurpose } from '../src/share.js';
import { expectKwError, forgeShare, rewrite, subsets } from './_helpers.js';

const pinOf = (s: string) => new TextEncoder().encode(s);

describe('splitHardwareSecret / combineHardwareSecret', () => {
  it('an HSM PIN, 3 of 5 by default: every 3-subset recombines it, no 2-subset does', async () => {
    const pin = pinOf('84 19 66 02');
    const set = await splitHardwareSecret(pin, { purpose: 'hsm-pin' });
    expect(set).toMatchObject({ purpose: 'hsm-pin', shares: 5, threshold: 3 });
    for (const text of set.encoded) expect(text).toMatch(/^kwshare1\.hsm-pin\.ss_/);
    for (const three of subsets(set.encoded, 3)) {
      expect(await combineHardwareSecret(three, { purpose: 'hsm-pin' })).toEqual(pin);
    }
    for (const two of subsets(set.encoded, 2)) {
      await expectKwError(
        () => combineHardwareSecret(two, { purpose: 'hsm-pin' }),
        'KW_SHARE',
        'share: 2 of 3 shares, need 1 more',
        set.encoded,
      );
    }
  });

  it('TPM auth values of any length 1..254 bytes, including zero bytes', async () => {
    for (const length of [1, 4, 32, 62, 63, 64, 126, 127, 200, MAX_HARDWARE_SECRET_BYTES]) {
      const secret = new Uint8Array(randomBytes(length));
      secret[0] = 0;
      const set = await splitHardwareSecret(secret, { shares: 3, threshold: 2, purpose: 'tpm-auth' });
      expect(await combineHardwareSecret(set.encoded.slice(1), { purpose: 'tpm-auth' }), `length ${length}`).toEqual(
        secret,
      );
    }
    for (const bad of [new Uint8Array(0), new Uint8Array(MAX_HARDWARE_SECRET_BYTES + 1)]) {
      await expectKwError(
        () => splitHardwareSecret(bad, { purpose: 'tpm-auth' }),
        'KW_BAD_INPUT',
        'share: a tpm-auth must be 1..254 bytes',
      );
    }
    await expectKwError(
      () => splitHardwareSecret(pinOf('1234'), { purpose: 'unseal-key' as 'hsm-pin' }),
      'KW_BAD_INPUT',
      'share: a hardware secret has purpose "hsm-pin" or "tpm-auth"',
    );
  });

  it('shares do not reveal the length of the PIN (padded to a 64-byte block)', async () => {
    const short = await splitHardwareSecret(pinOf('1234'), { purpose: 'hsm-pin' });
    const long = await splitHardwareSecret(pinOf('a much longer passphrase-like PIN, 60 bytes...'), {
      purpose: 'hsm-pin',
    });
    expect(short.encoded.map((t) => t.length)).toEqual(long.encoded.map((t) => t.length));
    // 64-byte block ‖ 32-byte verifier key ‖ 16-byte tag, then the x-coordinate.
    expect(parseShare(short.encoded[0]!).payload).toHaveLength(113);
  });

  it('a forged share is caught by the verifier: the wrong PIN never reaches the token', async () => {
    const pin = pinOf('2468');
    const set = await splitHardwareSecret(pin, { purpose: 'hsm-pin' });
    // In the block, the verifier key (64..95) and the tag (96..111).
    for (const byte of [0, 1, 5, 40, 63, 64, 80, 95, 96, 111]) {
      const forged = forgeShare(set.encoded[0]!, byte);
      const err = await expectKwError(
        () => combineHardwareSecret([forged, set.encoded[1]!, set.encoded[2]!], { purpose: 'hsm-pin' }),
        'KW_SHARE',
        'share: the shares combined into something that is not a valid hsm-pin: at least one share is forged or ' +
          'altered, or comes from another ceremony (the secret was not used)',
        [...set.encoded, forged],
      );
      expect(err.message).not.toContain('2468');
    }
  });

  it('a share of another purpose is refused before combining, both ways', async () => {
    const pin = await splitHardwareSecret(pinOf('1111'), { purpose: 'hsm-pin' });
    const tpm = await splitHardwareSecret(pinOf('2222'), { purpose: 'tpm-auth' });
    const unseal = await splitSecret(new Uint8Array(randomBytes(32)), {
      shares: 5,
      threshold: 3,
      purpose: 'unseal-key',
    });
    const all = [...pin.encoded, ...tpm.encoded, ...unseal.encoded];
    await expectKwError(
      () => combineHardwareSecret(unseal.encoded.slice(0, 3), { purpose: 'hsm-pin' }),
      'KW_SHARE',
      'share: share 1 is for unseal-key, expected a share for hsm-pin',
      all,
    );
    await expectKwError(
      () => combineHardwareSecret(tpm.encoded.slice(0, 3), { purpose: 'hsm-pin' }),
      'KW_SHARE',
      'share: share 1 is for tpm-auth, expected a share for hsm-pin',
      all,
    );
    await expectKwError(
      () => combineHardwareSecret([pin.encoded[0]!, tpm.encoded[1]!, pin.encoded[2]!], { purpose: 'hsm-pin' }),
      'KW_SHARE',
      'share: share 2 is for tpm-auth, expected a share for hsm-pin',
      all,
    );
    // A PIN share relabelled as a TPM share (re-checksummed) passes the label checks but not the
    // verifier, which binds the purpose.
    const relabelled = pin.encoded.map((t) =>
      rewrite(t, (f) => {
        f[1] = 'tpm-auth';
      }),
    );
    await expectKwError(
      () => combineHardwareSecret(relabelled.slice(0, 3), { purpose: 'tpm-auth' }),
      'KW_SHARE',
      /not a valid tpm-auth: at least one share is forged/,
      [...all, ...relabelled],
    );
    await expectKwError(
      () => combineHardwareSecret(pin.encoded, { purpose: 'unseal-key' as 'hsm-pin' }),
      'KW_BAD_INPUT',
      /purpose "hsm-pin" or "tpm-auth"/,
    );
  });

  it('does not modify the caller secret', async () => {
    const pin = pinOf('13579');
    const copy = pin.slice();
    await splitHardwareSecret(pin, { purpose: 'hsm-pin', shares: 2, threshold: 2 });
    expect(pin).toEqual(copy);
  });

  it('a forging custodian who shifts the combined secret by a chosen offset is refused: the verifier is keyed (HMAC under a key inside the shared secret)', async () => {
    const real = pinOf('1234');
    const chosen = pinOf('6666');
    const quorum = [1, 2, 3];

    // Version 1 (an unkeyed hash over the block): custodian 3 guesses the PIN right and hands the
    // token a PIN of their choice. This is the attack that passed before the fix.
    const v1 = await splitWithPurpose(encodeLegacyHardwareSecret(real, 'hsm-pin'), {
      shares: 5,
      threshold: 3,
      purpose: 'hsm-pin',
    });
    const offset1 = xor(encodeLegacyHardwareSecret(chosen, 'hsm-pin'), encodeLegacyHardwareSecret(real, 'hsm-pin'));
    const v1Forged = [v1.encoded[0]!, v1.encoded[1]!, await shifted(v1.encoded[2]!, quorum, offset1)];
    expect(await combineHardwareSecret(v1Forged, { purpose: 'hsm-pin' }, { allowLegacyVerifier: true })).toEqual(
      chosen,
    );
    // Now version-1 shares are refused unless the caller opts in to recover an old secret once.
    await expectKwError(
      () => combineHardwareSecret(v1Forged, { purpose: 'hsm-pin' }),
      'KW_SHARE',
      /^share: these hsm-pin shares use the version-1 verifier, which a forging custodian can defeat/,
      [...v1.encoded, ...v1Forged],
    );
    expect(
      await combineHardwareSecret(v1.encoded.slice(0, 3), { purpose: 'hsm-pin' }, { allowLegacyVerifier: true }),
    ).toEqual(real);

    // Version 2: the forger still guesses the PIN right and shifts the block to theirs; the tag
    // they would need is an HMAC under a key they do not know. Every strategy is refused.
    const v2 = await splitHardwareSecret(real, { purpose: 'hsm-pin' });
    const realBlock = block(real);
    const chosenBlock = block(chosen);
    const guessedKey = new Uint8Array(32);
    const attempts: Uint8Array[] = [
      // block shifted, key and tag left alone
      concat(xor(chosenBlock, realBlock), new Uint8Array(48)),
      // block shifted, tag shifted by the difference of the tags under a guessed key
      concat(
        xor(chosenBlock, realBlock),
        new Uint8Array(32),
        xor(tag(guessedKey, chosenBlock), tag(guessedKey, realBlock)),
      ),
      // the version-1 offset (unkeyed tags), padded to the version-2 length
      concat(offset1.subarray(0, 64), new Uint8Array(32), offset1.subarray(64)),
    ];
    for (const offset of attempts) {
      const forged = [v2.encoded[0]!, v2.encoded[1]!, await shifted(v2.encoded[2]!, quorum, offset)];
      await expectKwError(
        () => combineHardwareSecret(forged, { purpose: 'hsm-pin' }),
        'KW_SHARE',
        /^share: the shares combined into something that is not a valid hsm-pin: at least one share is forged/,
        [...v2.encoded, ...forged],
      );
    }
    expect(await combineHardwareSecret(v2.encoded.slice(0, 3), { purpose: 'hsm-pin' })).toEqual(real);
  });
});

function xor(a: Uint8Array, b: Uint8Array): Uint8Array {
  return a.map((v, i) => v ^ (b[i] ?? 0));
}

function concat(...parts: Uint8Array[]): Uint8Array {
  return new Uint8Array(Buffer.concat(parts));
}

/** The version-2 block of a PIN (what the forger can compute from a right guess). */
function block(pin: Uint8Array): Uint8Array {
  const b = new Uint8Array(64);
  b[0] = 0x02;
  b[1] = pin.length;
  b.set(pin, 2);
  return b;
}

function tag(key: Uint8Array, b: Uint8Array): Uint8Array {
  const h = createHmac('sha256', key);
  h.update('keywarden/hardware-secret/v2');
  h.update(Uint8Array.of(0));
  h.update('hsm-pin');
  h.update(Uint8Array.of(0));
  h.update(b);
  return new Uint8Array(h.digest().subarray(0, 16));
}

/**
 * Share `share` (of the quorum at x-coordinates `indices`) altered so that the quorum combines to
 * the real secret XOR `offset`: combining is linear over GF(2^8), so shares (0, x_i) for the
 * others and (e, x_j) combine to λ_j·e; tabulating e → λ_j·e once gives the δ for any offset byte.
 */
async function shifted(share: string, indices: number[], offset: Uint8Array): Promise<string> {
  const p = parseShare(share);
  const inverse = new Map<number, number>();
  for (let e = 0; e < 256; e++) {
    const out = await combine(indices.map((x) => Uint8Array.of(x === p.index ? e : 0, x)));
    inverse.set(out[0]!, e);
  }
  const payload = p.payload.slice();
  for (let i = 0; i < payload.length - 1; i++) payload[i]! ^= inverse.get(offset[i] ?? 0)!;
  const text = encodeShare({
    purpose: p.purpose,
    shareSetId: p.shareSetId,
    index: p.index,
    shares: p.shares,
    threshold: p.threshold,
    payload,
  });
  p.wipe();
  return text;
}
