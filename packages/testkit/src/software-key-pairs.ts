/**
 * What the software root's store says about a key pair's private key, read beside the root (the
 * way the PKCS#11 suite opens a second session): the `inspectPrivateKey` of a software-root
 * fixture in the root conformance suite.
 *
 * The software root has no device to ask, so each fact is checked on the store itself, with an
 * independent reading of docs/format.md §12 and §13 written here from the document (not with the
 * library's code): the unseal key opens the sealed root, the root key opens the key-pair key, the
 * key-pair key opens the record's sealed PKCS#8, whose public key must be the record's SPKI.
 *  - sensitive: the private key is in the store only as that AES-256-GCM ciphertext (the record
 *    opens to it along the documented path, and nothing in the record parses as a private key);
 *  - valueReadable: the PKCS#8, or the private value alone (JWK "d"), appears in clear in
 *    something the store keeps: the three meta records, or `rawBytes()` (the SQLite file and its
 *    WAL, when the fixture gives them);
 *  - alwaysSensitive: sensitive and never in clear in `rawBytes()` (which holds every page the
 *    store ever wrote until it is reused, and SQLite's secure_delete zeroes freed ones);
 *  - extractable: the root's key-pair capability has any member beyond algorithms, generate,
 *    sign, destroy and publicKey (the only ways in), i.e. some call could hand the key out.
 */
import { createDecipheriv, createHash, createPrivateKey, createPublicKey, type KeyObject } from 'node:crypto';
import type { KeyStore, RootOfTrust } from '@keywarden/core';
import type { PrivateKeyFacts } from './root-conformance.js';

const enc = new TextEncoder();
const ALLOWED_MEMBERS = new Set(['algorithms', 'generate', 'sign', 'destroy', 'publicKey', 'constructor']);

function b64(s: unknown): Buffer {
  if (typeof s !== 'string') throw new Error('testkit: expected a base64url field');
  return Buffer.from(s, 'base64url');
}

/** AES-256-GCM open (NIST SP 800-38D): ciphertext ‖ 16-byte tag. */
function open(key: Uint8Array, nonce: Uint8Array, sealed: Uint8Array, aad: Uint8Array): Buffer {
  const d = createDecipheriv('aes-256-gcm', key, nonce);
  d.setAAD(aad);
  d.setAuthTag(sealed.subarray(sealed.length - 16));
  return Buffer.concat([d.update(sealed.subarray(0, sealed.length - 16)), d.final()]);
}

function canonical(value: unknown): string {
  if (Array.isArray(value)) return `[${value.map(canonical).join(',')}]`;
  if (value !== null && typeof value === 'object') {
    const entries = Object.entries(value as Record<string, unknown>)
      .filter(([, v]) => v !== undefined)
      .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
    return `{${entries.map(([k, v]) => `${JSON.stringify(k)}:${canonical(v)}`).join(',')}}`;
  }
  return JSON.stringify(value);
}

function lp8(s: string): Buffer {
  const b = Buffer.from(s, 'utf8');
  return Buffer.concat([Buffer.of(b.length), b]);
}

async function json(store: KeyStore, name: string): Promise<Record<string, unknown>> {
  const bytes = await store.getMeta(name);
  if (!bytes) throw new Error(`testkit: the store has no meta record ${name}`);
  return JSON.parse(Buffer.from(bytes).toString('utf8')) as Record<string, unknown>;
}

function parsesAsPrivateKey(bytes: Buffer): boolean {
  for (const attempt of [
    () => createPrivateKey({ key: bytes, format: 'der', type: 'pkcs8' }),
    () => createPrivateKey({ key: bytes, format: 'der', type: 'sec1' }),
    () => createPrivateKey({ key: bytes, format: 'der', type: 'pkcs1' }),
    () => createPrivateKey(bytes.toString('utf8')),
  ]) {
    try {
      attempt();
      return true;
    } catch {
      // Not a private key in this form.
    }
  }
  return false;
}

/** The private key of `handle`, opened from the store along docs/format.md §12 and §13. */
export async function openSoftwareKeyPair(
  store: KeyStore,
  unsealKey: Uint8Array,
  handle: Uint8Array,
): Promise<{ privateKey: KeyObject; pkcs8: Buffer; record: Record<string, unknown> }> {
  const doc = await json(store, 'root');
  const { nonce: rootNonce, wrappedRoot, ...bound } = doc;
  const rootKey = open(
    unsealKey,
    b64(rootNonce),
    b64(wrappedRoot),
    Buffer.concat([enc.encode('keywarden/software-root/seal/v1'), enc.encode(canonical(bound))]),
  );
  const kpkDoc = await json(store, 'root-key-pairs/key');
  const wrapped = b64(kpkDoc.wrapped);
  if (wrapped[0] !== 0x01 || kpkDoc.rootId !== doc.rootId) throw new Error('testkit: unexpected key-pair key record');
  const rootId = Buffer.from(String(doc.rootId), 'utf8');
  const len = Buffer.alloc(4);
  len.writeUInt32BE(rootId.length);
  const kpk = open(
    rootKey,
    wrapped.subarray(1, 13),
    wrapped.subarray(13),
    Buffer.concat([
      enc.encode('keywarden/software-root/kek-wrap/v1'),
      len,
      rootId,
      enc.encode('keywarden/root-key-pairs/key/v1'),
    ]),
  );
  const id = Buffer.from(handle).toString('utf8');
  const record = await json(store, `root-key-pair/${id}`);
  const spki = b64(record.publicKey);
  const pkcs8 = open(
    kpk,
    b64(record.nonce),
    b64(record.sealedPrivateKey),
    Buffer.concat([
      enc.encode('keywarden/root-key-pair/private-key/v1'),
      lp8(id),
      lp8(String(record.algorithm)),
      lp8(String(record.label)),
      createHash('sha256').update(spki).digest(),
    ]),
  );
  rootKey.fill(0);
  kpk.fill(0);
  const privateKey = createPrivateKey({ key: pkcs8, format: 'der', type: 'pkcs8' });
  const derived = createPublicKey(privateKey).export({ type: 'spki', format: 'der' });
  if (!derived.equals(spki)) throw new Error('testkit: the sealed private key is not the record public key');
  return { privateKey, pkcs8, record };
}

/** The suite's PrivateKeyFacts for a software-root key pair (see the file comment). */
export async function inspectSoftwareKeyPair(
  root: RootOfTrust,
  store: KeyStore,
  unsealKey: Uint8Array,
  handle: Uint8Array,
  rawBytes?: () => Buffer,
): Promise<PrivateKeyFacts> {
  const { privateKey, pkcs8, record } = await openSoftwareKeyPair(store, unsealKey, handle);
  const jwk = privateKey.export({ format: 'jwk' });
  const secrets = [pkcs8, Buffer.from(String(jwk.d), 'base64url')];
  const kept = [
    (await store.getMeta('root')) ?? new Uint8Array(0),
    (await store.getMeta('root-key-pairs/key')) ?? new Uint8Array(0),
    (await store.getMeta(`root-key-pair/${Buffer.from(handle).toString('utf8')}`)) ?? new Uint8Array(0),
  ].map((b) => Buffer.from(b));
  const inClear = (hay: Buffer) => secrets.some((s) => hay.includes(s));
  const recordParses =
    Object.values(record).some((v) => typeof v === 'string' && parsesAsPrivateKey(Buffer.from(v, 'base64url'))) ||
    kept.some(parsesAsPrivateKey);
  const valueReadable = kept.some(inClear) || recordParses;
  const sensitive = !valueReadable && typeof record.sealedPrivateKey === 'string';
  const alwaysSensitive = sensitive && !(rawBytes ? inClear(rawBytes()) : false);
  const k = root.keyPairs as object | undefined;
  const members = new Set<string>();
  for (let o = k; o && o !== Object.prototype; o = Object.getPrototypeOf(o)) {
    for (const name of Object.getOwnPropertyNames(o)) members.add(name);
  }
  const extractable = k === undefined || [...members].some((m) => !ALLOWED_MEMBERS.has(m));
  pkcs8.fill(0);
  return { sensitive, extractable, alwaysSensitive, neverExtractable: !extractable, valueReadable };
}
