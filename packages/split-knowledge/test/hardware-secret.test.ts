import { randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import {
  combineHardwareSecret,
  MAX_HARDWARE_SECRET_BYTES,
  parseShare,
  splitHardwareSecret,
  splitSecret,
} from '../src/index.js';
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
    expect(parseShare(short.encoded[0]!).payload).toHaveLength(81);
  });

  it('a forged share is caught by the verifier: the wrong PIN never reaches the token', async () => {
    const pin = pinOf('2468');
    const set = await splitHardwareSecret(pin, { purpose: 'hsm-pin' });
    for (const byte of [0, 1, 5, 40, 70, 79]) {
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
});
