/**
 * CKR value → name, from pkcs11js's constants (the names of the standard's header). Its own module,
 * free of @keywarden/core, because the pool's worker threads load it too and should load nothing
 * more than the PKCS#11 bindings.
 */
import { createRequire } from 'node:module';
import type * as Pkcs11js from 'pkcs11js';

/** pkcs11js is CommonJS whose exports live on a native object: loaded through require. */
const pkcs11js = createRequire(import.meta.url)('pkcs11js') as typeof Pkcs11js;

/** CKR value → name, from pkcs11js's constants (the names of the standard's header). */
const CKR_NAMES = new Map<number, string>();
for (const [name, value] of Object.entries(pkcs11js as unknown as Record<string, unknown>)) {
  if (name.startsWith('CKR_') && typeof value === 'number' && !CKR_NAMES.has(value)) CKR_NAMES.set(value, name);
}

/** The CKR name of a return value ("CKR_VENDOR_DEFINED+0x…" for vendor codes, "CKR_0x…" for unknown ones). */
export function ckrName(code: number): string {
  const name = CKR_NAMES.get(code);
  if (name) return name;
  if (code >= 0x80000000) return `CKR_VENDOR_DEFINED+0x${(code - 0x80000000).toString(16)}`;
  return `CKR_0x${code.toString(16)}`;
}

/** The CKR name of a pkcs11js/graphene error, or "" when it is not a return value. */
export function ckrOf(err: unknown): string {
  const e = err as { code?: unknown; message?: unknown };
  const m = typeof e?.message === 'string' ? /(CKR_[A-Z0-9_]+)/.exec(e.message) : null;
  if (m?.[1]) return m[1];
  if (typeof e?.code === 'number' && e.code !== 0) return ckrName(e.code);
  return '';
}
