/**
 * The record a root destruction leaves behind, and how a store's root is read: present, destroyed,
 * or missing — three different answers, never inferred from one another.
 *
 * Why a tombstone: a key store whose root record cannot be found is, far more often than not, a
 * damaged file (a broken index hides the row; `REINDEX` brings it back) or a store whose
 * initialization never finished. Reading that as "destroyed" invites the one irreversible step,
 * erasing every wrapped KEK. So `destroyRoot` writes an explicit tombstone (meta
 * "root-tombstone") BEFORE it deletes the sealed root, and only a store that holds a tombstone
 * reads as destroyed. A store with neither record is "damaged or missing" (RootMissingError),
 * with a pointer to recovery, and nothing that needs the root is allowed on it — not even destroy.
 *
 * Why it is authenticated under the unseal key: after destruction no root key exists, so a MAC
 * under the root could be checked by nobody. The unseal secret survives the root (the
 * development-mode key file; the custodians' shares), so the tombstone carries
 * HMAC-SHA256(K, domain ‖ canonical JSON of its fields) with K = HKDF-SHA256(unseal key, salt = "",
 * info = "keywarden/software-root/tombstone-key/v1") (RFC 5869; RFC 2104). Whoever holds the
 * unseal key, or a quorum of its shares, can check that the destruction was made with the same
 * consent, and finishing an interrupted destruction asks for exactly that consent again. Reading
 * the tombstone (`key list`) needs no secret and cannot check the MAC: it reports what the record
 * says. A forged tombstone needs write access to the store, which can erase the wraps anyway.
 *
 * The tombstone holds no secret: root id, time, the unseal description (share-set id, M, N), MAC.
 * Layout: docs/format.md §12.1.
 */
import { createHmac } from 'node:crypto';
import { constantTimeEqual, fromBase64Url, toBase64Url, utf8, wipe } from './_bytes.js';
import { hkdfSha256 } from './aead.js';
import { KeywardenError, RootMissingError, StoreCorruptError, UnsealError } from './errors.js';
import type { KeyStore } from './keystore.js';
import {
  canonicalJson,
  decodeSealedRoot,
  ROOT_META_NAME,
  ROOT_MISSING_MESSAGE,
  ROOT_TOMBSTONE_META_NAME,
  type SealedRootDocument,
  type UnsealMethod,
} from './software-root.js';

const TOMBSTONE_KEY_INFO = utf8.encode('keywarden/software-root/tombstone-key/v1');
const TOMBSTONE_DOMAIN = utf8.encode('keywarden/software-root/tombstone/v1');
const MAC_BYTES = 32;

/** The tombstone as stored (meta "root-tombstone"). No secret in it. */
export interface RootTombstone {
  format: 1;
  kind: 'root-tombstone';
  /** The destroyed root's id. */
  rootId: string;
  /** ISO 8601, when the destruction started. */
  destroyedAt: string;
  /** The destroyed root's unseal description: whose consent finishes the destruction. */
  unseal: UnsealMethod;
  /** base64url HMAC-SHA256 under a key derived from the unseal key (see above). */
  mac: string;
}

/**
 * What the store says about its root.
 * - present: the sealed root is there. `tombstone` is set when a destruction was started and
 *   interrupted before the sealed root was deleted: the root must not be used any more
 *   (SoftwareRoot.load refuses it), and running the destruction again finishes it.
 * - destroyed: no sealed root, and the tombstone says it was destroyed.
 * - missing: neither. Damaged (a record hidden by a broken index, a truncated file) or never
 *   initialized — never "destroyed".
 */
export type RootState =
  | { state: 'present'; document: SealedRootDocument; tombstone?: RootTombstone }
  | { state: 'destroyed'; tombstone: RootTombstone }
  | { state: 'missing' };

export async function readRootState(store: KeyStore): Promise<RootState> {
  const sealed = await store.getMeta(ROOT_META_NAME);
  const marked = await store.getMeta(ROOT_TOMBSTONE_META_NAME);
  const tombstone = marked && decodeRootTombstone(marked);
  if (sealed) {
    const document = decodeSealedRoot(sealed);
    return tombstone ? { state: 'present', document, tombstone } : { state: 'present', document };
  }
  return tombstone ? { state: 'destroyed', tombstone } : { state: 'missing' };
}

/** The unseal description whose consent a destruction needs: the root's, else the tombstone's. */
export function consentMethodOf(state: RootState): UnsealMethod {
  if (state.state === 'missing') throw new RootMissingError(ROOT_MISSING_MESSAGE);
  return structuredClone(state.state === 'present' ? state.document.unseal : state.tombstone.unseal);
}

/** A tombstone for the root described by `doc`, authenticated under `unsealKey`. */
export function makeRootTombstone(doc: SealedRootDocument, unsealKey: Uint8Array, at: Date): RootTombstone {
  const fields = {
    format: 1 as const,
    kind: 'root-tombstone' as const,
    rootId: doc.rootId,
    destroyedAt: at.toISOString(),
    unseal: structuredClone(doc.unseal),
  };
  return { ...fields, mac: toBase64Url(tombstoneMac(unsealKey, fields)) };
}

/**
 * Check that `tombstone` was made with `unsealKey`. A wrong key (or an altered tombstone) is one
 * UnsealError, like a wrong key on a sealed root: nothing says which.
 */
export function verifyRootTombstone(tombstone: RootTombstone, unsealKey: Uint8Array): void {
  const { mac, ...fields } = tombstone;
  const expected = tombstoneMac(unsealKey, fields);
  const given = fromBase64Url(mac, 'root: tombstone mac');
  const same = given.length === MAC_BYTES && constantTimeEqual(given, expected);
  wipe(expected);
  if (!same) {
    throw new UnsealError(
      'root: the unseal key (or shares) does not match the record of this root destruction; nothing was changed',
    );
  }
}

export function encodeRootTombstone(tombstone: RootTombstone): Uint8Array {
  return utf8.encode(JSON.stringify(tombstone));
}

/** Parse a stored tombstone. A malformed one is damage, reported as such (never as "no tombstone"). */
export function decodeRootTombstone(bytes: Uint8Array): RootTombstone {
  let t: Partial<RootTombstone>;
  try {
    t = JSON.parse(Buffer.from(bytes).toString('utf8')) as Partial<RootTombstone>;
  } catch {
    throw malformed();
  }
  if (typeof t !== 'object' || t === null || t.format !== 1 || t.kind !== 'root-tombstone') throw malformed();
  if (typeof t.rootId !== 'string' || typeof t.destroyedAt !== 'string' || typeof t.mac !== 'string') {
    throw malformed();
  }
  const u = t.unseal as UnsealMethod | undefined;
  if (typeof u !== 'object' || u === null || (u.method !== 'key' && u.method !== 'shamir')) throw malformed();
  try {
    if (fromBase64Url(t.mac, 'root: tombstone mac').length !== MAC_BYTES) throw malformed();
  } catch (err) {
    if (KeywardenError.isInstance(err) && !StoreCorruptError.isInstance(err)) throw malformed();
    throw err;
  }
  return t as RootTombstone;
}

function malformed(): StoreCorruptError {
  return new StoreCorruptError(
    'root: the record of a root destruction (meta "root-tombstone") is malformed: the key store is damaged; restore it from a backup',
  );
}

function tombstoneMac(unsealKey: Uint8Array, fields: Omit<RootTombstone, 'mac'>): Uint8Array {
  const key = hkdfSha256(unsealKey, new Uint8Array(0), TOMBSTONE_KEY_INFO, 32);
  try {
    return new Uint8Array(
      createHmac('sha256', key)
        .update(TOMBSTONE_DOMAIN)
        .update(utf8.encode(canonicalJson(fields)))
        .digest(),
    );
  } finally {
    wipe(key);
  }
}
