/**
 * Which KEK a caller expects its data to be under (issue 16, item 2).
 *
 * An envelope names the KEK that wraps its data key, and anyone who may use any KEK in the store
 * can make an envelope under their own KEK with someone else's context. If decryption accepted
 * whichever KEK the envelope names, an envelope made under tenant B's key would decrypt as
 * authentic in tenant A's code (a confused deputy). So decryption is told the expected key — a
 * name or id, or an allow-list — and refuses data under any other key before it loads a KEK, as
 * the AWS Encryption SDK's strict mode does. The opposite, accepting any KEK in this store, is an
 * explicit, deliberately named choice for tools (backup checks, re-encryption, inspection).
 */
import { InvalidInputError } from './errors.js';

export interface KeyExpectation {
  /**
   * The KEK the data must be under: a key name or id ("kek_…"), or a list of them (an allow-list,
   * for example the old and the new key during a migration). Required unless `anyKeyInStore`.
   */
  key?: string | readonly string[];
  /**
   * Accept data under ANY KEK in this store. For tools that must open everything (backup
   * verification, re-encryption, inspection), never for application code that decrypts on behalf
   * of one tenant or purpose: there, name the key.
   */
  anyKeyInStore?: boolean;
}

/** At most this many keys in one allow-list. */
export const MAX_EXPECTED_KEYS = 64;
const MAX_KEY_REF_CHARS = 128;

/**
 * Precondition shared by every decryption entry point: exactly one of `key` (a non-empty name or id,
 * or 1..64 of them) and `anyKeyInStore: true`. Returns the allow-list, or `null` for any key in the
 * store. Throws InvalidInputError naming `component`.
 */
export function checkKeyExpectation(expected: unknown, component: string): readonly string[] | null {
  if (typeof expected !== 'object' || expected === null) throw missing(component);
  const { key, anyKeyInStore } = expected as KeyExpectation;
  if (anyKeyInStore !== undefined && typeof anyKeyInStore !== 'boolean') {
    throw new InvalidInputError(`${component}: anyKeyInStore must be true or absent`);
  }
  if (anyKeyInStore === true) {
    if (key !== undefined) {
      throw new InvalidInputError(`${component}: give either key or anyKeyInStore: true, not both`);
    }
    return null;
  }
  if (key === undefined) throw missing(component);
  const list = typeof key === 'string' ? [key] : key;
  if (!Array.isArray(list) || list.length === 0 || list.length > MAX_EXPECTED_KEYS) {
    throw new InvalidInputError(
      `${component}: key must be a key name or id, or a list of 1..${MAX_EXPECTED_KEYS} of them`,
    );
  }
  for (const k of list) {
    if (typeof k !== 'string' || k.length === 0 || k.length > MAX_KEY_REF_CHARS) {
      throw new InvalidInputError(`${component}: each expected key is a non-empty name or id`);
    }
  }
  return list as readonly string[];
}

/** The normalized expectation handed to a DataKeyProvider (a private copy of the allow-list). */
export function toKeyExpectation(allowed: readonly string[] | null): KeyExpectation {
  return allowed === null ? { anyKeyInStore: true } : { key: [...allowed] };
}

function missing(component: string): InvalidInputError {
  return new InvalidInputError(
    `${component}: say which key the data must be under: key (a KEK name or id, or a list of them); tools that must accept every key in this store pass anyKeyInStore: true`,
  );
}
