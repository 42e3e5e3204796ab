/**
 * HMAC-SHA256 (RFC 2104 §2) for the audit log's hot path, computed as its definition,
 * H(K ⊕ opad ‖ H(K ⊕ ipad ‖ message)), with two one-shot `crypto.hash` calls over buffers that keep
 * the padded key in place. createHmac makes a native Hmac object per MAC, which was the largest
 * single cost of an audit record (about 2.5 µs of ~4 µs per record; this takes about 1.3 µs);
 * copying pre-keyed hash states was measured slower still. The output is the same bytes as
 * createHmac's (checked against Wycheproof's HMAC-SHA256 vectors and createHmac in
 * test/audit/hmac.test.ts). On a Node without `crypto.hash` (before 20.12) it is createHmac.
 *
 * Not re-entrant (one shared scratch buffer), which JavaScript's single thread guarantees: every
 * method runs to completion synchronously. destroy() wipes the padded keys.
 */
import * as nodeCrypto from 'node:crypto';

const BLOCK = 64;
const IPAD = 0x36;
const OPAD = 0x5c;
type OneShot = (algorithm: string, data: Uint8Array, outputEncoding: 'binary' | 'base64url') => string;
const oneShot: OneShot | undefined =
  typeof (nodeCrypto as { hash?: unknown }).hash === 'function' ? (nodeCrypto.hash as OneShot) : undefined;

export class AuditHmac {
  /** K ⊕ ipad ‖ domain ‖ room for the message. */
  #inner: Buffer;
  /** K ⊕ opad ‖ inner digest. */
  readonly #outer = Buffer.alloc(BLOCK + 32);
  /** The key as given (createHmac fallback, and messages too long for the scratch buffer). */
  readonly #key: Buffer;
  readonly #domain: string;
  readonly #prefix: number;
  /** Views of #inner by length (dropped when #inner grows). */
  readonly #views = new Map<number, Buffer>();

  /** `domain` is a fixed ASCII prefix of every message (the record MAC's domain separation string). */
  constructor(key: Uint8Array, domain = '') {
    this.#key = Buffer.from(key);
    this.#domain = domain;
    // RFC 2104 §2: a key longer than the block is hashed first; a shorter one is padded with zeros.
    const k = key.length > BLOCK ? nodeCrypto.createHash('sha256').update(key).digest() : key;
    this.#inner = Buffer.alloc(BLOCK + Buffer.byteLength(domain) + 4096);
    for (let i = 0; i < BLOCK; i++) {
      const b = i < k.length ? (k[i] as number) : 0;
      this.#inner[i] = b ^ IPAD;
      this.#outer[i] = b ^ OPAD;
    }
    if (k !== key) (k as Buffer).fill(0);
    this.#prefix = BLOCK + this.#inner.write(domain, BLOCK, 'latin1');
  }

  /** HMAC of domain ‖ message (UTF-8), base64url. */
  macBase64Url(message: string): string {
    return this.#compute(message, 'base64url');
  }

  /** HMAC of domain ‖ bytes[start, end), base64url (the bytes are copied behind the padded key). */
  macRangeBase64Url(bytes: Uint8Array, start: number, end: number): string {
    const hash = oneShot;
    const n = end - start;
    if (hash === undefined || n > this.#inner.length - this.#prefix) {
      return this.#compute(bytes.subarray(start, end), 'base64url');
    }
    this.#inner.set(bytes.subarray(start, end), this.#prefix);
    return this.#finish(hash, this.#prefix + n, 'base64url');
  }

  /** HMAC of domain ‖ message (UTF-8 when a string), as bytes. */
  mac(message: string | Uint8Array): Buffer {
    return Buffer.from(this.#compute(message, 'binary'), 'latin1');
  }

  #compute(message: string | Uint8Array, enc: 'binary' | 'base64url'): string {
    const hash = oneShot;
    if (hash === undefined) return this.#slow(message, enc);
    let n: number;
    const room = this.#inner.length - this.#prefix;
    if (typeof message === 'string') {
      // A UTF-16 code unit is at most 3 bytes of UTF-8: below room/3 the write cannot be cut short.
      if (message.length * 3 > room) {
        const need = Buffer.byteLength(message, 'utf8');
        if (need > room) this.#grow(need);
      }
      n = this.#inner.write(message, this.#prefix, 'utf8');
    } else {
      if (message.length > room) this.#grow(message.length);
      this.#inner.set(message, this.#prefix);
      n = message.length;
    }
    return this.#finish(hash, this.#prefix + n, enc);
  }

  /** The two hashes over inner[0, length) and outer. */
  #finish(hash: OneShot, length: number, enc: 'binary' | 'base64url'): string {
    // A view per message length, kept: consecutive records mostly have one of a few lengths.
    let view = this.#views.get(length);
    if (view === undefined) {
      if (this.#views.size >= 64) this.#views.clear();
      view = this.#inner.subarray(0, length);
      this.#views.set(length, view);
    }
    const innerDigest = hash('sha256', view, 'binary');
    this.#outer.write(innerDigest, BLOCK, 'latin1');
    return hash('sha256', this.#outer, enc);
  }

  #grow(bytes: number): void {
    const next = Buffer.alloc(this.#prefix + bytes + 4096);
    this.#inner.copy(next, 0, 0, this.#prefix);
    this.#inner.fill(0);
    this.#inner = next;
    this.#views.clear();
  }

  #slow(message: string | Uint8Array, enc: 'binary' | 'base64url'): string {
    return nodeCrypto.createHmac('sha256', this.#key).update(this.#domain).update(message).digest(enc);
  }

  destroy(): void {
    this.#inner.fill(0);
    this.#outer.fill(0);
    this.#key.fill(0);
  }
}
