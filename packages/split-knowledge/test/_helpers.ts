/** Test helpers shared by the split-knowledge tests (not a test file itself). */
import { createHash } from 'node:crypto';
import { KeywardenError } from '@keywarden/core';
import { expect } from 'vitest';
import { encodeShare, parseShare } from '../src/index.js';

/** The payload field (base64url) of a share text. */
export function payloadOf(share: string): string {
  return share.trim().split('.')[5]!;
}

/** The checksum field of a share text. */
export function checksumOf(share: string): string {
  return share.trim().split('.')[6]!;
}

/** Checksum as the format defines it: first 4 bytes of SHA-256 over the text before it, in hex. */
export function checksumFor(body: string): string {
  return createHash('sha256').update(body).digest().subarray(0, 4).toString('hex');
}

/** Replace a share's body fields and re-checksum it, the way a forger would. */
export function rewrite(share: string, change: (fields: string[]) => void): string {
  const fields = share.trim().split('.').slice(0, 6);
  change(fields);
  const body = fields.join('.');
  return `${body}.${checksumFor(body)}`;
}

/**
 * A forged share: valid encoding, valid checksum, same index and set, but one payload byte changed
 * (never the last byte, the x-coordinate).
 */
export function forgeShare(share: string, byte = 0): string {
  const p = parseShare(share);
  const payload = p.payload.slice();
  payload[byte]! ^= 0x5a;
  const forged = encodeShare({
    purpose: p.purpose,
    shareSetId: p.shareSetId,
    index: p.index,
    shares: p.shares,
    threshold: p.threshold,
    payload,
  });
  p.wipe();
  return forged;
}

/** Every k-element subset of `items`, in order. */
export function subsets<T>(items: readonly T[], k: number): T[][] {
  if (k === 0) return [[]];
  if (items.length < k) return [];
  const [head, ...rest] = items as [T, ...T[]];
  return [...subsets(rest, k - 1).map((s) => [head, ...s]), ...subsets(rest, k)];
}

/** Run `fn`, which must throw or reject; return what it threw. */
export async function caught(fn: () => unknown): Promise<unknown> {
  try {
    await fn();
  } catch (err) {
    return err;
  }
  throw new Error('expected an error, but none was thrown');
}

/**
 * The error leaks nothing of any share: no 8-character run of a payload, and no checksum,
 * appears in its message (nor in its cause's message).
 */
export function expectNoShareLeak(err: unknown, shares: readonly string[]): void {
  const messages: string[] = [];
  for (let e: unknown = err; e instanceof Error; e = e.cause) messages.push(e.message, String(e.stack ?? ''));
  const leaks: string[] = [];
  for (const message of messages) {
    for (const share of shares) {
      const payload = payloadOf(share);
      for (let i = 0; i + 8 <= payload.length; i++) {
        if (message.includes(payload.slice(i, i + 8))) leaks.push(`payload fragment at ${i}`);
      }
      if (message.includes(checksumOf(share))) leaks.push('checksum');
    }
  }
  expect(leaks, 'a share fragment appears in an error message').toEqual([]);
}

/** `fn` throws a Keywarden error with this code and message, and leaks none of `shares`. */
export async function expectKwError(
  fn: () => unknown,
  code: string,
  message: string | RegExp,
  shares: readonly string[] = [],
): Promise<KeywardenError> {
  const err = await caught(fn);
  expect(KeywardenError.isInstance(err), `not a KeywardenError: ${String(err)}`).toBe(true);
  const kw = err as KeywardenError;
  expect(kw.code).toBe(code);
  if (typeof message === 'string') expect(kw.message).toBe(message);
  else expect(kw.message).toMatch(message);
  expectNoShareLeak(err, shares);
  return kw;
}
