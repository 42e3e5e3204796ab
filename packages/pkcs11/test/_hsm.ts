/** What the suites read from the harness's environment, and helpers to make roots on the token. */
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { type KeyStore, MemoryKeyStore } from '@keywarden/core';
import { type PoolKind, Pkcs11Root } from '../src/index.js';

/** The suites that exercise the pool run once per kind of worker (threads, child processes). */
export const POOL_KINDS: PoolKind[] = ['threads', 'processes'];

export const unavailable = process.env.KEYWARDEN_PKCS11_UNAVAILABLE;
if (unavailable) console.warn(`pkcs11 suites cannot run: ${unavailable}`);

export const hsm = {
  module: process.env.KEYWARDEN_PKCS11_MODULE ?? '',
  token: process.env.KEYWARDEN_PKCS11_TOKEN ?? 'keywarden',
  pinFile: process.env.KEYWARDEN_PKCS11_PIN_FILE ?? '',
  soPinFile: process.env.KEYWARDEN_PKCS11_SO_PIN_FILE ?? '',
};

export function pin(): Uint8Array {
  return new Uint8Array(readFileSync(hsm.pinFile));
}

export function uniqueLabel(prefix = 'kw-test'): string {
  return `${prefix}-${randomBytes(6).toString('hex')}`;
}

/** The root URI; `withPin` adds pin-source=file:… (the harness's PIN file). */
export function rootUri(object: string, withPin = true): string {
  const q = [`module-path=${encodeURI(hsm.module)}`];
  if (withPin) q.push(`pin-source=file:${encodeURI(hsm.pinFile)}`);
  return `pkcs11:token=${encodeURIComponent(hsm.token)};object=${encodeURIComponent(object)}?${q.join('&')}`;
}

export async function createRoot(
  options: { store?: KeyStore; object?: string; poolSize?: number; callTimeoutMs?: number; pool?: PoolKind } = {},
): Promise<{ root: Pkcs11Root; store: KeyStore; object: string }> {
  const store = options.store ?? new MemoryKeyStore();
  const object = options.object ?? uniqueLabel();
  const root = await Pkcs11Root.open(rootUri(object), {
    store,
    create: true,
    poolSize: options.poolSize ?? 2,
    ...(options.pool ? { pool: options.pool } : {}),
    ...(options.callTimeoutMs ? { callTimeoutMs: options.callTimeoutMs } : {}),
  });
  return { root, store, object };
}
