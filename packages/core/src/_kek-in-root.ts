/**
 * Data keys under a KEK held in the root (root.ts `KekInRoot`). Internal to keywarden.ts.
 *
 * The wrapped data key keeps docs/format.md §2's layout exactly — magic, version, suite, KEK id,
 * KEK version, nonce, ciphertext ‖ tag — and the same associated data (header ‖ canonical context),
 * so `parseWrappedKey`, envelopes and every tool read it unchanged; only who holds the KEK
 * differs. The header is built here as data-key.ts builds it (test/root-kek-mode.test.ts checks
 * that a wrap made through a root opens with data-key.ts `unwrapDataKey` under the same KEK).
 */
import { concatBytes, u8, u32be, utf8 } from './_bytes.js';
import { type EncryptionContext, encodeContextShared } from './context.js';
import {
  checkKekRef,
  type DataKey,
  type KekRef,
  type ParsedWrappedKey,
  WRAPPED_KEY_MAGIC,
  WRAPPED_KEY_VERSION,
} from './data-key.js';
import { DecryptionError } from './errors.js';
import { KEK_IN_ROOT_MAGIC, type KekInRoot } from './root.js';

/** The root's reference inside a stored KEK-in-root record ("KWKR" ‖ 0x01 ‖ reference). */
export function kekReferenceOf(stored: Uint8Array): Uint8Array {
  return stored.slice(KEK_IN_ROOT_MAGIC.length);
}

/** The stored record for a reference the root gave. */
export function kekInRootRecord(reference: Uint8Array): Uint8Array {
  return concatBytes(KEK_IN_ROOT_MAGIC, reference);
}

export async function wrapDataKeyInRoot(
  root: KekInRoot,
  reference: Uint8Array,
  kekAad: Uint8Array,
  ref: KekRef,
  dek: Uint8Array,
  context: EncryptionContext | undefined,
): Promise<DataKey> {
  checkKekRef(ref);
  const id = utf8.encode(ref.keyId);
  const header = concatBytes(
    WRAPPED_KEY_MAGIC,
    u8(WRAPPED_KEY_VERSION),
    u8(root.suite),
    u8(id.length),
    id,
    u32be(ref.version),
  );
  const aad = concatBytes(header, encodeContextShared(context));
  const { nonce, sealed } = await root.sealDataKey(reference, kekAad, dek, aad);
  return { plaintext: dek, wrapped: concatBytes(header, nonce, sealed), keyId: ref.keyId, version: ref.version };
}

export async function unwrapDataKeyInRoot(
  root: KekInRoot,
  reference: Uint8Array,
  kekAad: Uint8Array,
  parsed: ParsedWrappedKey,
  context: EncryptionContext | undefined,
): Promise<Uint8Array> {
  // A wrap of another suite was not made by this root: one failure, nothing said about why.
  if (parsed.suite !== root.suite) throw new DecryptionError('data key');
  const aad = concatBytes(parsed.header, encodeContextShared(context));
  return root.openDataKey(reference, kekAad, parsed.nonce, parsed.sealed, aad);
}
