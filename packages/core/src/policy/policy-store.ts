/**
 * The policy in the key store, versioned: meta "policy/v<N>" holds version N's text, and
 * "policy/current" says which version is in force. Writing a policy adds a version (nothing is
 * overwritten), so `keywarden policy history` can show who could do what, when.
 */
import { utf8 } from '../_bytes.js';
import { StoreCorruptError } from '../errors.js';
import type { KeyStore } from '../keystore.js';
import { Policy } from './policy.js';

export const POLICY_CURRENT_META_NAME = 'policy/current';

function versionName(n: number): string {
  return `policy/v${n}`;
}

interface Current {
  v: 1;
  version: number;
  at: string;
}

async function current(store: KeyStore): Promise<Current | undefined> {
  const raw = await store.getMeta(POLICY_CURRENT_META_NAME);
  if (!raw) return undefined;
  try {
    const c = JSON.parse(Buffer.from(raw).toString('utf8')) as Current;
    if (c.v !== 1 || !Number.isSafeInteger(c.version) || c.version < 1) throw new Error('shape');
    return c;
  } catch {
    throw new StoreCorruptError('policy: the policy/current record in the key store is unreadable');
  }
}

/** The policy in force and its version, or undefined when none was ever stored. */
export async function readStoredPolicy(
  store: KeyStore,
  version?: number,
): Promise<{ policy: Policy; version: number; at?: string } | undefined> {
  const c = await current(store);
  if (!c) return undefined;
  const n = version ?? c.version;
  const raw = await store.getMeta(versionName(n));
  if (!raw) throw new StoreCorruptError(`policy: version ${n} is missing from the key store`);
  return {
    policy: Policy.parse(Buffer.from(raw).toString('utf8')),
    version: n,
    ...(n === c.version ? { at: c.at } : {}),
  };
}

/** The version number in force (0: none), read without parsing the text. */
export async function storedPolicyVersion(store: KeyStore): Promise<number> {
  return (await current(store))?.version ?? 0;
}

/** Validate `text` and store it as the next version, in force at once. Returns the version. */
export async function writeStoredPolicy(store: KeyStore, text: string, at: Date = new Date()): Promise<number> {
  Policy.parse(text);
  const n = (await storedPolicyVersion(store)) + 1;
  await store.putMeta(versionName(n), utf8.encode(text));
  const c: Current = { v: 1, version: n, at: at.toISOString() };
  await store.putMeta(POLICY_CURRENT_META_NAME, utf8.encode(JSON.stringify(c)));
  return n;
}
