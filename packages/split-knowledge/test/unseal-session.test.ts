import { randomBytes } from 'node:crypto';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { ParsedShare, parseShare, splitHardwareSecret, splitSecret, UnsealSession } from '../src/index.js';
import { expectKwError, forgeShare } from './_helpers.js';

const MINUTE = 60_000;

async function setup(shares = 5, threshold = 3) {
  const secret = new Uint8Array(randomBytes(32));
  const set = await splitSecret(secret, { shares, threshold, purpose: 'unseal-key' });
  let t = 1_000_000;
  const clock = {
    now: () => t,
    advance: (ms: number) => {
      t += ms;
    },
  };
  const session = new UnsealSession({
    expected: { shareSetId: set.shareSetId, threshold, shares },
    now: clock.now,
  });
  return { secret, set, s: set.encoded, session, clock };
}

afterEach(() => {
  vi.useRealTimers();
  vi.restoreAllMocks();
});

describe('UnsealSession: progress', () => {
  it('takes shares one at a time, reports M of N, and combines when complete', async () => {
    const { secret, set, s, session, clock } = await setup();
    expect(session.progress()).toEqual({
      shareSetId: set.shareSetId,
      purpose: 'unseal-key',
      accepted: 0,
      threshold: 3,
      shares: 5,
      indices: [],
      complete: false,
      reset: false,
      expiresAt: undefined,
    });
    expect(session.submit(s[4]!)).toMatchObject({ accepted: 1, threshold: 3, complete: false, indices: [5] });
    clock.advance(MINUTE);
    const second = session.submit(`  ${s[1]!}\n`);
    expect(second).toMatchObject({ accepted: 2, complete: false, indices: [2, 5], reset: false });
    expect(second.expiresAt).toBe(clock.now() + 10 * MINUTE);
    expect(session.submit(parseShare(s[2]!))).toMatchObject({ accepted: 3, complete: true, indices: [2, 3, 5] });
    expect(await session.takeSecret()).toEqual(secret);
    // Taking the secret wipes what was held and starts over.
    expect(session.progress()).toMatchObject({ accepted: 0, complete: false, indices: [] });
  });

  it('takeSecret before the quorum is complete says how many are missing and keeps progress', async () => {
    const { s, session } = await setup();
    session.submit(s[0]!);
    await expectKwError(() => session.takeSecret(), 'KW_SHARE', 'share: 1 of 3 shares, need 2 more', s);
    expect(session.progress().accepted).toBe(1);
  });

  it('refuses a bad share with a precise error, without losing the progress made', async () => {
    const { set, s, session } = await setup();
    const other = await splitSecret(new Uint8Array(randomBytes(32)), {
      shares: 5,
      threshold: 3,
      purpose: 'unseal-key',
    });
    const pin = await splitHardwareSecret(new TextEncoder().encode('4711'), { purpose: 'hsm-pin' });
    session.submit(s[0]!);
    session.submit(s[3]!);
    const all = [...s, ...other.encoded, ...pin.encoded];
    const corrupt = s[1]!.replace(/\.([0-9a-f])/, (_m, c: string) => `.${c === '0' ? '1' : '0'}`);
    await expectKwError(() => session.submit(corrupt), 'KW_SHARE', /^share: (checksum mismatch|malformed)/, all);
    await expectKwError(
      () => session.submit(other.encoded[1]!),
      'KW_SHARE',
      `share: share 2 belongs to share set ${other.shareSetId}, expected ${set.shareSetId}`,
      all,
    );
    await expectKwError(
      () => session.submit(pin.encoded[1]!),
      'KW_SHARE',
      'share: share 2 is for hsm-pin, expected a share for unseal-key',
      all,
    );
    await expectKwError(() => session.submit(s[3]!), 'KW_SHARE', 'share: share 4 was given twice', all);
    await expectKwError(
      () => session.submit(forgeShare(s[0]!)),
      'KW_SHARE',
      /two different shares claim to be share 1/,
      all,
    );
    await expectKwError(() => session.submit('not a share'), 'KW_SHARE', 'share: not a Keywarden share');
    expect(session.progress()).toMatchObject({ accepted: 2, indices: [1, 4], complete: false });
    expect(session.submit(s[4]!)).toMatchObject({ accepted: 3, complete: true });
    await expectKwError(
      () => session.submit(s[1]!),
      'KW_SHARE',
      'share: already 3 of 3 shares; no more are needed',
      all,
    );
    expect(session.progress()).toMatchObject({ accepted: 3, complete: true });
  });

  it('holds its own copy of a ParsedShare: the caller keeps and wipes theirs', async () => {
    const { secret, s, session } = await setup(3, 2);
    const mine = parseShare(s[0]!);
    session.submit(mine);
    mine.wipe();
    session.submit(s[1]!);
    expect(await session.takeSecret()).toEqual(secret);
  });
});

describe('UnsealSession: timeout and wiping', () => {
  it('resets progress timeoutMs after the LAST accepted share, wipes the shares, and says so once', async () => {
    const { secret, s, session, clock } = await setup();
    session.submit(s[0]!);
    clock.advance(9 * MINUTE);
    session.submit(s[1]!);
    clock.advance(9 * MINUTE); // 18 minutes after the first, 9 after the last: still held
    expect(session.progress()).toMatchObject({ accepted: 2, reset: false });
    clock.advance(MINUTE); // 10 minutes after the last
    expect(session.progress()).toMatchObject({ accepted: 0, indices: [], reset: true, expiresAt: undefined });
    const restart = session.submit(s[1]!);
    expect(restart).toMatchObject({ accepted: 1, reset: true, indices: [2] });
    expect(session.submit(s[2]!)).toMatchObject({ accepted: 2, reset: false });
    expect(session.submit(s[3]!)).toMatchObject({ accepted: 3, complete: true });
    expect(await session.takeSecret()).toEqual(secret);
  });

  it('a rejected share does not extend the timeout', async () => {
    const { s, session, clock } = await setup();
    session.submit(s[0]!);
    clock.advance(9 * MINUTE);
    await expectKwError(() => session.submit(s[0]!), 'KW_SHARE', 'share: share 1 was given twice', s);
    clock.advance(MINUTE);
    expect(session.progress()).toMatchObject({ accepted: 0, reset: true });
  });

  it('a timer wipes the held shares even if nobody calls again', async () => {
    vi.useFakeTimers();
    const secret = new Uint8Array(randomBytes(32));
    const set = await splitSecret(secret, { shares: 3, threshold: 2, purpose: 'unseal-key' });
    const session = new UnsealSession({ expected: set, timeoutMs: 5 * MINUTE });
    const wipe = vi.spyOn(ParsedShare.prototype, 'wipe');
    session.submit(set.encoded[0]!);
    vi.advanceTimersByTime(5 * MINUTE - 1);
    expect(wipe).not.toHaveBeenCalled();
    vi.advanceTimersByTime(1);
    expect(wipe).toHaveBeenCalledTimes(1);
    expect(session.progress()).toMatchObject({ accepted: 0, reset: true });
  });

  it('reset() and takeSecret() wipe every held share', async () => {
    const { s, session } = await setup();
    const wipe = vi.spyOn(ParsedShare.prototype, 'wipe');
    session.submit(s[0]!);
    session.submit(s[1]!);
    session.reset();
    expect(wipe).toHaveBeenCalledTimes(2);
    expect(session.progress()).toMatchObject({ accepted: 0, reset: false });
    wipe.mockClear();
    for (const t of s.slice(0, 3)) session.submit(t);
    await session.takeSecret();
    // The three held copies, plus nothing left behind.
    expect(wipe).toHaveBeenCalledTimes(3);
  });

  it('combines a hardware secret and verifies it', async () => {
    const pin = new TextEncoder().encode('0000-1234-5678');
    const set = await splitHardwareSecret(pin, { shares: 4, threshold: 2, purpose: 'tpm-auth' });
    const session = new UnsealSession({ expected: set });
    session.submit(set.encoded[3]!);
    session.submit(set.encoded[0]!);
    expect(await session.takeSecret()).toEqual(pin);
    session.submit(set.encoded[1]!);
    session.submit(forgeShare(set.encoded[2]!, 7));
    await expectKwError(
      () => session.takeSecret(),
      'KW_SHARE',
      /not a valid tpm-auth: at least one share is forged/,
      set.encoded,
    );
    expect(session.progress().accepted).toBe(0);
  });

  it('checks its options', async () => {
    const { set } = await setup();
    const ok = { shareSetId: set.shareSetId, threshold: 3, shares: 5 };
    expect(() => new UnsealSession({ expected: { ...ok, shareSetId: 'nope' } })).toThrow(/shareSetId/);
    expect(() => new UnsealSession({ expected: { ...ok, threshold: 6 } })).toThrow(/threshold must be 2..5/);
    expect(() => new UnsealSession({ expected: { ...ok, threshold: 1 } })).toThrow(/threshold/);
    expect(() => new UnsealSession({ expected: { ...ok, shares: 300 } })).toThrow(/shares must be 2..255/);
    expect(() => new UnsealSession({ expected: ok, timeoutMs: 0 })).toThrow(/timeoutMs/);
    expect(new UnsealSession({ expected: ok }).timeoutMs).toBe(10 * MINUTE);
  });
});
