/**
 * What the token itself says about a key pair's objects, read through an independent pkcs11js
 * session (RawToken), never through the root under test.
 */
import { createRequire } from 'node:module';
import type { PrivateKeyFacts } from '@keywarden/testkit';
import type * as Pkcs11js from 'pkcs11js';
import { RawToken } from './_raw.js';

const pkcs11js = createRequire(import.meta.url)('pkcs11js') as typeof Pkcs11js;

/** The CKA_ID inside a PKCS#11 key pair handle (0x01 ‖ algorithm ‖ CKA_ID). */
export function idOfHandle(handle: Uint8Array): Buffer {
  return Buffer.from(handle.subarray(2));
}

/** Objects of `cls` ("private" or "public") with the CKA_ID. */
export function findKeyObjects(raw: RawToken, cls: 'private' | 'public', id: Uint8Array): Buffer[] {
  raw.login();
  const t: Pkcs11js.Template = [
    { type: pkcs11js.CKA_CLASS, value: cls === 'private' ? pkcs11js.CKO_PRIVATE_KEY : pkcs11js.CKO_PUBLIC_KEY },
    { type: pkcs11js.CKA_ID, value: Buffer.from(id) },
  ];
  raw.lib.C_FindObjectsInit(raw.session, t);
  const out = raw.lib.C_FindObjects(raw.session, 100);
  raw.lib.C_FindObjectsFinal(raw.session);
  return out;
}

/** Every private key object on the token. */
export function allPrivateKeys(raw: RawToken): Buffer[] {
  raw.login();
  raw.lib.C_FindObjectsInit(raw.session, [{ type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_PRIVATE_KEY }]);
  const out = raw.lib.C_FindObjects(raw.session, 10_000);
  raw.lib.C_FindObjectsFinal(raw.session);
  return out;
}

function bool(raw: RawToken, o: Buffer, type: number): boolean {
  const [a] = raw.lib.C_GetAttributeValue(raw.session, o, [{ type }]);
  return Boolean((a?.value as Buffer | undefined)?.[0]);
}

/** CKA_SENSITIVE, CKA_EXTRACTABLE, CKA_ALWAYS_SENSITIVE, CKA_NEVER_EXTRACTABLE of the private key,
 * and whether any private component (CKA_VALUE for EC, CKA_PRIVATE_EXPONENT, CKA_PRIME_1 for RSA) reads. */
export function privateKeyFacts(raw: RawToken, handle: Uint8Array): PrivateKeyFacts & { token: boolean } {
  const [key, ...more] = findKeyObjects(raw, 'private', idOfHandle(handle));
  if (!key || more.length > 0) throw new Error('inspect: not exactly one private key object with the CKA_ID');
  let valueReadable = false;
  for (const type of [pkcs11js.CKA_VALUE, pkcs11js.CKA_PRIVATE_EXPONENT, pkcs11js.CKA_PRIME_1]) {
    try {
      const [a] = raw.lib.C_GetAttributeValue(raw.session, key, [{ type }]);
      if (a?.value && (a.value as Buffer).length > 0) valueReadable = true;
    } catch {
      // CKR_ATTRIBUTE_SENSITIVE (or CKR_ATTRIBUTE_TYPE_INVALID for the other key type): not readable.
    }
  }
  return {
    sensitive: bool(raw, key, pkcs11js.CKA_SENSITIVE),
    extractable: bool(raw, key, pkcs11js.CKA_EXTRACTABLE),
    alwaysSensitive: bool(raw, key, pkcs11js.CKA_ALWAYS_SENSITIVE),
    neverExtractable: bool(raw, key, pkcs11js.CKA_NEVER_EXTRACTABLE),
    valueReadable,
    token: bool(raw, key, pkcs11js.CKA_TOKEN),
  };
}

/** The fixture hook of the root conformance suite (one RawToken per call: the suite seals roots,
 * which logs every session of the application out). */
export async function inspectPrivateKey(handle: Uint8Array): Promise<PrivateKeyFacts> {
  const raw = new RawToken();
  try {
    const { token: _token, ...facts } = privateKeyFacts(raw, handle);
    return facts;
  } finally {
    raw.close();
  }
}
