import { randomBytes } from 'node:crypto';
import { inspect } from 'node:util';
import fc from 'fast-check';
import { combine } from 'shamir-secret-sharing';
import { describe, expect, it, vi } from 'vitest';
import {
  checkSplitParameters,
  combineShares,
  encodeShare,
  ParsedShare,
  parseShare,
  splitSecret,
} from '../src/index.js';
import { checksumFor, expectKwError, forgeShare, payloadOf, rewrite, subsets } from './_helpers.js';

const SHARE_RE =
  /^kwshare1\.unseal-key\.ss_[A-Za-z0-9_-]{16}\.([1-9][0-9]*)-of-5\.need-3\.[A-Za-z0-9_-]+\.[0-9a-f]{8}$/;

function key(): Uint8Array {
  return new Uint8Array(randomBytes(32));
}

async function unsealKeySet(shares = 5, threshold = 3) {
  const secret = key();
  const set = await splitSecret(secret, { shares, threshold, purpose: 'unseal-key' });
  return { secret, set, s: set.encoded };
}

describe('splitSecret: the text form', () => {
  it('makes N self-describing shares in index order, with a random share-set id', async () => {
    const { set, s } = await unsealKeySet();
    expect(set).toMatchObject({ threshold: 3, shares: 5, purpose: 'unseal-key' });
    expect(set.shareSetId).toMatch(/^ss_[A-Za-z0-9_-]{16}$/);
    expect(s).toHaveLength(5);
    s.forEach((text, i) => {
      expect(text).toMatch(SHARE_RE);
      expect(text.split('.')[2]).toBe(set.shareSetId);
      expect(SHARE_RE.exec(text)![1]).toBe(String(i + 1));
      const p = parseShare(text);
      expect(p).toMatchObject({ version: 1, index: i + 1, shares: 5, threshold: 3, shareSetId: set.shareSetId });
      // The payload is the shamir-secret-sharing share: 32 y-bytes ‖ x, and x is the index.
      expect(p.payload).toHaveLength(33);
      expect(p.payload[32]).toBe(i + 1);
    });
    const other = await unsealKeySet();
    expect(other.set.shareSetId).not.toBe(set.shareSetId);
  });

  it('does not modify the caller secret', async () => {
    const secret = key();
    const copy = secret.slice();
    await splitSecret(secret, { shares: 3, threshold: 2, purpose: 'unseal-key' });
    expect(secret).toEqual(copy);
  });

  it('parses a share with surrounding whitespace, or pasted over two lines', async () => {
    const { s } = await unsealKeySet();
    const share = s[1]!;
    const mid = Math.floor(share.length / 2);
    for (const variant of [
      `  ${share}\n`,
      `${share.slice(0, mid)}\n${share.slice(mid)}`,
      `${share.slice(0, mid)}\r\n   ${share.slice(mid)}\r\n`,
      `\t${share.slice(0, 20)} ${share.slice(20, 60)}\n${share.slice(60)}`,
      share.replace(/[0-9a-f]{8}$/, (c) => c.toUpperCase()),
    ]) {
      expect(parseShare(variant).encode()).toBe(share);
    }
  });

  it('never shows the payload in toString, JSON or util.inspect', async () => {
    const { s } = await unsealKeySet();
    const p = parseShare(s[0]!);
    const payload = payloadOf(s[0]!);
    for (const shown of [String(p), JSON.stringify(p), inspect(p), inspect({ nested: [p] }, { depth: 5 })]) {
      expect(shown).not.toContain(payload.slice(0, 8));
      expect(shown).toMatch(/share 1 of 5|"index":1/);
    }
    expect(JSON.parse(JSON.stringify(p))).not.toHaveProperty('payload');
  });

  it('refuses parameters that are no split, with the reason', async () => {
    const secret = key();
    const split = (shares: number, threshold: number) => () =>
      splitSecret(secret, { shares, threshold, purpose: 'unseal-key' });
    await expectKwError(split(5, 1), 'KW_BAD_INPUT', /at least 2 \(a 1-of-N split would make every share the secret/);
    await expectKwError(split(1, 1), 'KW_BAD_INPUT', 'share: the number of shares must be an integer from 2 to 255');
    await expectKwError(split(256, 3), 'KW_BAD_INPUT', 'share: the number of shares must be an integer from 2 to 255');
    await expectKwError(split(3, 4), 'KW_BAD_INPUT', 'share: the threshold (4) cannot exceed the number of shares (3)');
    await expectKwError(split(3.5, 2), 'KW_BAD_INPUT', /number of shares/);
    await expectKwError(split(5, Number.NaN), 'KW_BAD_INPUT', /threshold/);
    await expectKwError(
      () => splitSecret(new Uint8Array(16), { shares: 3, threshold: 2, purpose: 'unseal-key' }),
      'KW_BAD_INPUT',
      'share: wrong secret length (an unseal-key secret is 32 bytes)',
    );
    await expectKwError(
      () => splitSecret(secret, { shares: 3, threshold: 2, purpose: 'Bad Purpose' }),
      'KW_BAD_INPUT',
      /purpose must be a lowercase word/,
    );
    await expectKwError(
      () => splitSecret(new Uint8Array(8), { shares: 3, threshold: 2, purpose: 'hsm-pin' }),
      'KW_BAD_INPUT',
      'share: split an hsm-pin with splitHardwareSecret (it pads and verifies it)',
    );
    expect(() => checkSplitParameters(255, 255)).not.toThrow();
    expect(() => checkSplitParameters(2, 2)).not.toThrow();
  });
});

describe('combineShares: quorum', () => {
  it('3 of 5: every 3-subset (in any order) and every larger subset combines; no 2-subset does', async () => {
    const { secret, s } = await unsealKeySet();
    for (const k of [3, 4, 5]) {
      for (const subset of subsets(s, k)) {
        expect(await combineShares(subset)).toEqual(secret);
        expect(await combineShares([...subset].reverse())).toEqual(secret);
      }
    }
    expect(subsets(s, 3)).toHaveLength(10);
    for (const pair of subsets(s, 2)) {
      await expectKwError(() => combineShares(pair), 'KW_SHARE', 'share: 2 of 3 shares, need 1 more', s);
      // Even with our count check bypassed, the library interpolates the wrong polynomial.
      const raw = pair.map((t) => parseShare(t).payload);
      expect(await combine(raw)).not.toEqual(secret);
    }
    for (const one of s) {
      await expectKwError(() => combineShares([one]), 'KW_SHARE', 'share: 1 of 3 shares, need 2 more', s);
    }
  });

  it('property: for N in 2..8 and M in 2..N, a random M-subset combines and an (M-1)-subset is refused', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.integer({ min: 2, max: 8 }).chain((n) =>
          fc.record({
            n: fc.constant(n),
            m: fc.integer({ min: 2, max: n }),
            order: fc.shuffledSubarray([...Array(n).keys()], { minLength: n, maxLength: n }),
            extra: fc.integer({ min: 0, max: n }),
            secret: fc.uint8Array({ minLength: 1, maxLength: 64 }),
          }),
        ),
        async ({ n, m, order, extra, secret }) => {
          const set = await splitSecret(secret, { shares: n, threshold: m, purpose: 'test-secret' });
          const take = Math.min(n, m + extra);
          const chosen = order.slice(0, take).map((i) => set.encoded[i]!);
          expect(await combineShares(chosen)).toEqual(secret);
          const short = order.slice(0, m - 1).map((i) => set.encoded[i]!);
          await expectKwError(
            () => combineShares(short),
            'KW_SHARE',
            `share: ${m - 1} of ${m} shares, need 1 more`,
            set.encoded,
          );
        },
      ),
      { numRuns: 60 },
    );
  });

  it('property: shares round-trip through the text form (parse ∘ encode is the identity)', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc
          .integer({ min: 2, max: 6 })
          .chain((n) => fc.record({ n: fc.constant(n), m: fc.integer({ min: 2, max: n }) })),
        async ({ n, m }) => {
          const set = await splitSecret(new Uint8Array(randomBytes(32)), {
            shares: n,
            threshold: m,
            purpose: 'unseal-key',
          });
          for (const text of set.encoded) expect(encodeShare(parseShare(text))).toBe(text);
        },
      ),
      { numRuns: 20 },
    );
  });

  it('accepts ParsedShare objects and leaves them to the caller', async () => {
    const { secret, s } = await unsealKeySet();
    const parsed = s.slice(0, 3).map(parseShare);
    expect(await combineShares(parsed)).toEqual(secret);
    expect(parsed.every((p) => !p.wiped)).toBe(true);
    parsed[0]!.wipe();
    expect(parsed[0]!.wiped).toBe(true);
    await expectKwError(() => combineShares(parsed), 'KW_BAD_INPUT', 'share: share 1 was wiped', s);
  });

  it('wipes the parsed copies it makes of share texts', async () => {
    const { secret, s } = await unsealKeySet();
    const wipe = vi.spyOn(ParsedShare.prototype, 'wipe');
    try {
      expect(await combineShares(s.slice(1, 4))).toEqual(secret);
      expect(wipe).toHaveBeenCalledTimes(3);
      wipe.mockClear();
      await expectKwError(() => combineShares([s[0]!, s[0]!]), 'KW_SHARE', 'share: share 1 was given twice', s);
      expect(wipe).toHaveBeenCalledTimes(2);
    } finally {
      wipe.mockRestore();
    }
  });

  it('a forged share (valid encoding and checksum, altered payload) combines into a different secret', async () => {
    const { secret, s } = await unsealKeySet();
    const forged = forgeShare(s[1]!);
    expect(forged).not.toBe(s[1]);
    expect(parseShare(forged).index).toBe(2);
    const out = await combineShares([s[0]!, forged, s[2]!]);
    expect(out).toHaveLength(32);
    expect(out).not.toEqual(secret);
  });
});

describe('combineShares and parseShare: precise errors before combining', () => {
  it('a share that is not one at all', async () => {
    for (const text of ['', '   ', 'hello', 'kwshare', 'KWSHARE1.x', 'kwsharex.unseal-key', '-----BEGIN KEYWARDEN']) {
      await expectKwError(() => parseShare(text), 'KW_SHARE', 'share: not a Keywarden share');
    }
    await expectKwError(() => parseShare(42 as unknown as string), 'KW_SHARE', 'share: not a Keywarden share');
    await expectKwError(() => parseShare('k'.repeat(10_000)), 'KW_SHARE', 'share: too long to be a Keywarden share');
  });

  it('another format version', async () => {
    const { s } = await unsealKeySet();
    const v2 = s[0]!.replace(/^kwshare1\./, 'kwshare2.');
    await expectKwError(() => parseShare(v2), 'KW_SHARE', 'share: unsupported share format version 2', s);
  });

  it('a missing or repeated part', async () => {
    const { s } = await unsealKeySet();
    const fields = s[0]!.split('.');
    const missing = [...fields.slice(0, 3), ...fields.slice(4)].join('.');
    await expectKwError(
      () => parseShare(missing),
      'KW_SHARE',
      'share: malformed share (expected 7 fields separated by ".", found 6; part of it is missing or repeated)',
      s,
    );
    await expectKwError(() => parseShare(`${s[0]}.${fields[6]}`), 'KW_SHARE', /found 8/, s);
  });

  it('every single-character typo and every adjacent transposition is caught', async () => {
    const { s } = await unsealKeySet();
    const share = s[2]!;
    for (let i = 0; i < share.length; i++) {
      const c = share[i]!;
      const typo = share.slice(0, i) + (c === 'Q' ? 'Z' : 'Q') + share.slice(i + 1);
      await expectKwError(() => parseShare(typo), 'KW_SHARE', /^share: /, s);
      const next = share[i + 1];
      if (next !== undefined && next !== c && next.toLowerCase() !== c.toLowerCase()) {
        const swapped = share.slice(0, i) + next + c + share.slice(i + 2);
        await expectKwError(() => parseShare(swapped), 'KW_SHARE', /^share: /, s);
      }
    }
    // A typo in the payload is reported as exactly that.
    const at = share.indexOf(payloadOf(share)) + 5;
    const typo = share.slice(0, at) + (share[at] === 'A' ? 'B' : 'A') + share.slice(at + 1);
    await expectKwError(
      () => parseShare(typo),
      'KW_SHARE',
      'share: checksum mismatch (mistyped or corrupted share)',
      s,
    );
    // In a list, the message names the position of the bad input.
    await expectKwError(
      () => combineShares([s[0]!, typo, s[3]!]),
      'KW_SHARE',
      'share: input 2: checksum mismatch (mistyped or corrupted share)',
      s,
    );
  });

  it('a share from another share set', async () => {
    const a = await unsealKeySet();
    const b = await unsealKeySet();
    const err = await expectKwError(
      () => combineShares([a.s[0]!, a.s[1]!, b.s[3]!]),
      'KW_SHARE',
      `share: share 4 belongs to share set ${b.set.shareSetId}, expected ${a.set.shareSetId}`,
      [...a.s, ...b.s],
    );
    expect(err.name).toBe('ShareError');
    // Against an expected set (the root's), even a complete quorum of another set is refused.
    await expectKwError(
      () => combineShares(b.s.slice(0, 3), { shareSetId: a.set.shareSetId }),
      'KW_SHARE',
      `share: share 1 belongs to share set ${b.set.shareSetId}, expected ${a.set.shareSetId}`,
      [...a.s, ...b.s],
    );
  });

  it('a share for another purpose', async () => {
    const { s } = await unsealKeySet();
    const other = await splitSecret(new Uint8Array(randomBytes(32)), {
      shares: 5,
      threshold: 3,
      purpose: 'backup-key',
    });
    await expectKwError(
      () => combineShares(other.encoded.slice(0, 3), { purpose: 'unseal-key' }),
      'KW_SHARE',
      'share: share 1 is for backup-key, expected a share for unseal-key',
      other.encoded,
    );
    await expectKwError(
      () => combineShares([s[0]!, other.encoded[1]!, s[2]!]),
      'KW_SHARE',
      'share: share 2 is for backup-key, expected a share for unseal-key',
      [...s, ...other.encoded],
    );
  });

  it('a share that was relabelled with another threshold or size (re-checksummed)', async () => {
    const { set, s } = await unsealKeySet();
    const relabelled = rewrite(s[1]!, (f) => {
      f[4] = 'need-2';
    });
    expect(parseShare(relabelled).threshold).toBe(2);
    await expectKwError(
      () => combineShares([s[0]!, relabelled, s[2]!]),
      'KW_SHARE',
      `share: share 2 says it is one of 5 needing 2, but share set ${set.shareSetId} has 5 needing 3 (the share was altered)`,
      s,
    );
    await expectKwError(
      () => combineShares([s[0]!, s[1]!, s[2]!], { threshold: 2 }),
      'KW_SHARE',
      /share 1 says it is one of 5 needing 3, but share set .* has 5 needing 2/,
      s,
    );
  });

  it('the same share twice, and two different shares claiming one index', async () => {
    const { set, s } = await unsealKeySet();
    await expectKwError(() => combineShares([s[0]!, s[1]!, s[1]!]), 'KW_SHARE', 'share: share 2 was given twice', s);
    await expectKwError(
      () => combineShares([s[0]!, ` ${s[1]!}\n`, s[2]!, s[1]!]),
      'KW_SHARE',
      'share: share 2 was given twice',
      s,
    );
    const forged = forgeShare(s[1]!);
    await expectKwError(
      () => combineShares([s[0]!, s[1]!, forged]),
      'KW_SHARE',
      `share: two different shares claim to be share 2 of share set ${set.shareSetId} (one was altered)`,
      [...s, forged],
    );
  });

  it('too few shares, and none', async () => {
    const { s } = await unsealKeySet(7, 4);
    await expectKwError(() => combineShares(s.slice(0, 2)), 'KW_SHARE', 'share: 2 of 4 shares, need 2 more', s);
    await expectKwError(() => combineShares([]), 'KW_SHARE', 'share: no shares given');
  });

  it('checks run in the documented order: parse, purpose, set, parameters, duplicates, count', async () => {
    const a = await unsealKeySet();
    const b = await unsealKeySet();
    const corrupt = `${a.s[0]!.slice(0, -1)}${a.s[0]!.endsWith('0') ? '1' : '0'}`;
    // Unparseable beats everything, wherever it is.
    await expectKwError(() => combineShares([b.s[0]!, a.s[1]!, corrupt]), 'KW_SHARE', /^share: input 3: checksum/);
    // Wrong set beats duplicate and too few.
    await expectKwError(() => combineShares([a.s[0]!, a.s[0]!, b.s[2]!]), 'KW_SHARE', /belongs to share set/);
    // Duplicate beats too few.
    await expectKwError(() => combineShares([a.s[0]!, a.s[0]!]), 'KW_SHARE', 'share: share 1 was given twice');
  });

  it('a share whose x-coordinate disagrees with its index (crafted, re-checksummed) is refused', async () => {
    const { s } = await unsealKeySet();
    const p = parseShare(s[0]!);
    const payload = p.payload.slice();
    payload[32] = 4; // claims x = 4 but is labelled share 1
    const crafted = rewrite(s[0]!, (f) => {
      f[5] = Buffer.from(payload).toString('base64url');
    });
    await expectKwError(
      () => parseShare(crafted),
      'KW_SHARE',
      "share: share 1's x-coordinate does not match its index",
      [...s, crafted],
    );
    await expectKwError(
      () => encodeShare({ ...p.toJSON(), payload }),
      'KW_BAD_INPUT',
      "share: cannot encode: share 1's x-coordinate does not match its index",
    );
    const short = rewrite(s[0]!, (f) => {
      f[5] = Buffer.from(payload.subarray(1)).toString('base64url');
    });
    await expectKwError(
      () => parseShare(short),
      'KW_SHARE',
      'share: share 1 has a payload of the wrong length (an unseal-key secret is 32 bytes)',
    );
  });

  it('malformed fields behind a valid checksum', async () => {
    const { s } = await unsealKeySet();
    const cases: Array<[(f: string[]) => void, string]> = [
      [(f) => (f[3] = '6-of-5'), 'share: invalid index for 5 shares (must be 1..5)'],
      [(f) => (f[3] = '2of5'), 'share: malformed position field (expected "<index>-of-<N>")'],
      [(f) => (f[3] = '1-of-1'), 'share: invalid number of shares (must be 2..255)'],
      [(f) => (f[4] = 'need-6'), 'share: invalid threshold for 5 shares (must be 2..5)'],
      [(f) => (f[4] = 'need-1'), 'share: invalid threshold for 5 shares (must be 2..5)'],
      [(f) => (f[4] = '3'), 'share: malformed threshold field (expected "need-<M>")'],
      [(f) => (f[2] = 'ss_short'), 'share: invalid share-set id'],
      [(f) => (f[1] = 'Unseal'), 'share: invalid purpose field'],
      [(f) => (f[5] = `${f[5]}=`), 'share: payload is not canonical base64url'],
      [(f) => (f[5] = `${f[5]!.slice(0, -1)}+`), 'share: payload is not canonical base64url'],
    ];
    for (const [change, message] of cases) {
      await expectKwError(() => parseShare(rewrite(s[0]!, change)), 'KW_SHARE', message, s);
    }
    await expectKwError(() => parseShare(`${s[0]!.slice(0, -8)}xyz`), 'KW_SHARE', /malformed checksum field/, s);
    expect(checksumFor('kwshare1')).toMatch(/^[0-9a-f]{8}$/);
  });

  it('refuses hsm-pin and tpm-auth shares: those go through combineHardwareSecret', async () => {
    const { splitHardwareSecret } = await import('../src/index.js');
    const set = await splitHardwareSecret(new TextEncoder().encode('123456'), { purpose: 'tpm-auth' });
    await expectKwError(
      () => combineShares(set.encoded.slice(0, 3)),
      'KW_BAD_INPUT',
      'share: combine tpm-auth shares with combineHardwareSecret',
      set.encoded,
    );
  });
});
