/**
 * The audit key: 32 random bytes made by the root's CSPRNG, stored in the key store only wrapped
 * by the root (meta record "audit-key", associated data "keywarden/audit-key/v1"), exactly like a
 * KEK version. Two keys are derived from it with HKDF-SHA256 (RFC 5869), never the material itself:
 *  - the MAC key, which authenticates every audit record and chains it to the one before;
 *  - the identifier key, which turns caller-supplied identifiers and context values into keyed
 *    digests (looked up by hashing the value again, as Vault's audit devices do).
 * Whoever can verify the log can also forge it: verification needs the root unsealed (docs/audit.md).
 */
import { createHmac } from 'node:crypto';
import { toBase64Url, utf8, wipe } from '../_bytes.js';
import { hkdfSha256 } from '../aead.js';
import { InvalidInputError, KeywardenError, StoreCorruptError } from '../errors.js';
import type { KeyStore } from '../keystore.js';
import { nodeRandom } from '../random.js';
import type { RootOfTrust } from '../root.js';
import { checkedRoot } from '../root.js';
import { AuditHmac } from './_hmac.js';

export const AUDIT_KEY_META_NAME = 'audit-key';
/** The audit key staged under the next root during a root rotation (docs/audit.md §3). */
export const AUDIT_KEY_NEXT_META_NAME = 'audit-key/next';
const AUDIT_KEY_AAD = utf8.encode('keywarden/audit-key/v1');
const HKDF_SALT = utf8.encode('keywarden/audit/v1');
const MAC_DOMAIN = 'keywarden-audit-record-v1\n';
const ID_DOMAIN = 'keywarden-audit-id-v1\n';
/** Identifier and context digests are HMAC-SHA256 truncated to 128 bits (NIST SP 800-107 §5.3.4). */
const DIGEST_BYTES = 16;

export class AuditKey {
  /** HMAC-SHA256 under the MAC key, of MAC_DOMAIN ‖ message. */
  readonly #mac: AuditHmac;
  /** HMAC-SHA256 under the identifier key, of ID_DOMAIN ‖ value. */
  readonly #id: AuditHmac;
  readonly #contexts = new Map<string, string>();
  /** Non-secret fingerprint of the audit key, written into every record ("kid"). */
  readonly kid: string;

  /** `material` (32 bytes) is not kept: the caller wipes it. */
  constructor(material: Uint8Array) {
    if (!(material instanceof Uint8Array) || material.length !== 32) {
      throw new InvalidInputError('audit: the audit key is 32 bytes');
    }
    const macKey = hkdfSha256(material, HKDF_SALT, utf8.encode('record-mac'), 32);
    const idKey = hkdfSha256(material, HKDF_SALT, utf8.encode('identifier'), 32);
    this.#mac = new AuditHmac(macKey, MAC_DOMAIN);
    this.#id = new AuditHmac(idKey, ID_DOMAIN);
    // The fingerprint is the MAC key's HMAC of "kid" with no domain prefix (docs/audit.md §2).
    this.kid = toBase64Url(createHmac('sha256', macKey).update('kid').digest().subarray(0, 8));
    wipe(macKey, idKey);
  }

  /** The MAC of a record's canonical text (base64url, 32 bytes). */
  recordMac(canonical: string): string {
    return this.#mac.macBase64Url(canonical);
  }

  /** recordMac of the UTF-8 text bytes[start, end), read in place (the audit log's batch buffer). */
  recordMacOfBytes(bytes: Uint8Array, start: number, end: number): string {
    return this.#mac.macRangeBase64Url(bytes, start, end);
  }

  /**
   * digest() of a context's canonical JSON, remembered for the contexts seen last (an application
   * uses few distinct contexts at a high rate; one HMAC saved per record). Bounded; the digests
   * are as public as the records they go into.
   */
  contextDigest(canonical: string): string {
    let d = this.#contexts.get(canonical);
    if (d === undefined) {
      d = this.digest(canonical);
      if (this.#contexts.size >= 1024) this.#contexts.clear();
      this.#contexts.set(canonical, d);
    }
    return d;
  }

  /** The keyed digest of a caller-supplied identifier or context ("h:" + base64url, 128 bits). */
  digest(value: string): string {
    return `h:${this.#id.mac(value).subarray(0, DIGEST_BYTES).toString('base64url')}`;
  }

  destroy(): void {
    this.#mac.destroy();
    this.#id.destroy();
    this.#contexts.clear();
  }
}

async function readDoc(store: KeyStore, name: string): Promise<AuditKeyDocument | undefined> {
  const raw = await store.getMeta(name);
  if (!raw) return undefined;
  try {
    const doc = JSON.parse(Buffer.from(raw).toString('utf8')) as AuditKeyDocument;
    if (doc?.v !== 1 || typeof doc.wrapped !== 'string' || typeof doc.rootId !== 'string') throw new Error('shape');
    return doc;
  } catch {
    throw new StoreCorruptError(`audit: the ${name} record in the key store is unreadable`);
  }
}

/**
 * Root rotation, step 1 (before the new root is stored): the audit key wrapped by the new root,
 * staged as "audit-key/next". False when the store has no audit key. A rotation that then fails
 * leaves only a staged record nobody reads; one that stops after storing the new root is finished
 * by loadAuditKey, which takes the staged key when its root is the one in use.
 */
export async function stageAuditKeyMove(store: KeyStore, from: RootOfTrust, to: RootOfTrust): Promise<boolean> {
  const doc = await readDoc(store, AUDIT_KEY_META_NAME);
  if (!doc) return false;
  const oldRoot = checkedRoot(from);
  const newRoot = checkedRoot(to);
  const material = await oldRoot.unwrapKey(new Uint8Array(Buffer.from(doc.wrapped, 'base64url')), AUDIT_KEY_AAD);
  try {
    const wrapped = await newRoot.wrapKey(material, AUDIT_KEY_AAD);
    const next: AuditKeyDocument = { v: 1, rootId: newRoot.id, wrapped: toBase64Url(wrapped) };
    await store.putMeta(AUDIT_KEY_NEXT_META_NAME, utf8.encode(JSON.stringify(next)));
    return true;
  } finally {
    wipe(material);
  }
}

/** Root rotation, step 2 (after the new root is stored): the staged audit key becomes the audit key. */
export function finishAuditKeyMove(store: KeyStore, to: RootOfTrust): Promise<void> {
  return finishAuditKeyMoveTo(store, checkedRoot(to).id);
}

/** finishAuditKeyMove by the id of the root in use (the promotion needs nothing else). */
export async function finishAuditKeyMoveTo(store: KeyStore, rootId: string): Promise<void> {
  const next = await readDoc(store, AUDIT_KEY_NEXT_META_NAME);
  if (!next || next.rootId !== rootId) return;
  await store.putMeta(AUDIT_KEY_META_NAME, utf8.encode(JSON.stringify(next)));
  await store.deleteMeta(AUDIT_KEY_NEXT_META_NAME);
}

interface AuditKeyDocument {
  v: 1;
  rootId: string;
  /** base64url: the root's wrap of the 32-byte audit key. */
  wrapped: string;
}

/**
 * Load the store's audit key through the root (which must be unsealed), making it on first use
 * when `create` is true. The material is wiped once the derived keys exist.
 */
export async function loadAuditKey(
  store: KeyStore,
  rootOfTrust: RootOfTrust,
  options: { create?: boolean } = {},
): Promise<AuditKey> {
  const root = checkedRoot(rootOfTrust);
  const current = await readDoc(store, AUDIT_KEY_META_NAME);
  // A root rotation that stopped after the new root was stored leaves the key staged under it.
  const staged = current && current.rootId !== root.id ? await readDoc(store, AUDIT_KEY_NEXT_META_NAME) : undefined;
  const doc = staged?.rootId === root.id ? staged : current;
  if (doc) {
    const material = await root.unwrapKey(new Uint8Array(Buffer.from(doc.wrapped, 'base64url')), AUDIT_KEY_AAD);
    try {
      return new AuditKey(material);
    } finally {
      wipe(material);
    }
  }
  if (options.create === false) {
    throw new InvalidInputError('audit: this key store has no audit key yet (nothing was audited)');
  }
  const material = await (root.random ?? nodeRandom).randomBytes(32);
  try {
    const wrapped = await root.wrapKey(material, AUDIT_KEY_AAD);
    const doc: AuditKeyDocument = { v: 1, rootId: root.id, wrapped: toBase64Url(wrapped) };
    const value = utf8.encode(JSON.stringify(doc));
    // Several processes may make the first record at once: the key is stored only if there is none
    // yet, atomically, and whoever lost uses the winner's (one chain, one audit key).
    let stored = true;
    if (typeof store.updateMeta === 'function') {
      await store.updateMeta(AUDIT_KEY_META_NAME, (current) => {
        stored = current === undefined;
        return stored ? [{ name: AUDIT_KEY_META_NAME, value }] : [];
      });
    } else if (typeof store.swapMeta === 'function') {
      try {
        await store.swapMeta(AUDIT_KEY_META_NAME, null, value);
      } catch (err) {
        if (!KeywardenError.isInstance(err, 'KW_CONFLICT')) throw err;
        stored = false;
      }
    } else await store.putMeta(AUDIT_KEY_META_NAME, value);
    if (!stored) return loadAuditKey(store, rootOfTrust, { create: false });
    return new AuditKey(material);
  } finally {
    wipe(material);
  }
}

/**
 * After a root rotation (root-rotation.ts moves the KEK versions, not this record): unwrap the
 * audit key under the old root and store it wrapped by the new one, so the log keeps verifying
 * under the same key. False when the store has no audit key. Both roots must be unsealed.
 */
export async function rewrapAuditKey(store: KeyStore, from: RootOfTrust, to: RootOfTrust): Promise<boolean> {
  const existing = await store.getMeta(AUDIT_KEY_META_NAME);
  if (!existing) return false;
  let doc: AuditKeyDocument;
  try {
    doc = JSON.parse(Buffer.from(existing).toString('utf8')) as AuditKeyDocument;
  } catch {
    throw new StoreCorruptError('audit: the audit-key record in the key store is unreadable');
  }
  const oldRoot = checkedRoot(from);
  const newRoot = checkedRoot(to);
  const material = await oldRoot.unwrapKey(new Uint8Array(Buffer.from(doc.wrapped, 'base64url')), AUDIT_KEY_AAD);
  try {
    const wrapped = await newRoot.wrapKey(material, AUDIT_KEY_AAD);
    const next: AuditKeyDocument = { v: 1, rootId: newRoot.id, wrapped: toBase64Url(wrapped) };
    await store.putMeta(AUDIT_KEY_META_NAME, utf8.encode(JSON.stringify(next)));
    return true;
  } finally {
    wipe(material);
  }
}
