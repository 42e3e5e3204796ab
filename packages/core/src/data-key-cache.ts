/**
 * Opt-in data-key cache: a DataKeyProvider that wraps a Keywarden (or any DataKeyProvider) and
 * reuses data keys, in the spirit of the AWS Encryption SDK's caching materials manager.
 *
 *  - Encryption: one data key serves several messages for the same key and the same context
 *    (canonical encoding, context.ts), until it is `maxAgeMs` old, has served `maxMessages`
 *    messages, or would pass `maxBytes` of plaintext. N concurrent misses for one (key, context)
 *    make ONE data key (single flight), not N.
 *  - Decryption: unwrapped data keys are kept for `maxAgeMs`, keyed by the exact wrapped-key bytes,
 *    the canonical context and the expected key, so a different key, context or expectation never
 *    hits: it goes to the provider, which checks everything. A hit stands for a successful unwrap
 *    of exactly these bytes under exactly this context and expectation, which is what the provider
 *    would redo. Concurrent misses for one slot share one unwrap.
 *  - Both are wiped by clear(), seal() and close(), and as soon as a call notices that the wrapped
 *    Keywarden was closed, or its root sealed, behind the cache's back.
 *  - A lifecycle change of a key (rotate, disable, enable, compromise, destroy, retire, policy) made
 *    through the wrapped Keywarden drops that key's data keys at once, in both directions, so a
 *    disabled, compromised or destroyed version stops serving here when it stops serving there
 *    (KEY_CHANGES). Changes made by another process reach this one through the store's change
 *    signal where it has one (PostgreSQL: invalidateCachesOnChange clears the cache); otherwise when
 *    the entries expire (maxAgeMs).
 *
 * What reuse costs (docs/architecture.md §Data-key cache): the messages that share a data key share
 * its fate. Every message still gets its own message id, and so its own HKDF-derived body key and
 * commitment (docs/format.md §4.2), so reuse costs no nonce safety; but one leaked data key opens
 * every message encrypted under it, and the bounds are how many that can be. A cached key keeps
 * being used after a rotation of its KEK made by another process until it reaches a bound (or
 * clear()); a rotation made through the wrapped Keywarden drops it.
 *
 * Buffers: the cache owns its copies. Every caller gets a fresh copy of the data key (envelope
 * encryption wipes the DEK it is given as soon as it has derived the message keys), so wiping the
 * cache never wipes a buffer a caller holds, and a caller wiping its copy never wipes the cache's.
 */
import type { Transform } from 'node:stream';
import { assertBytes, wipe } from './_bytes.js';
import { encodeContext, type EncryptionContext, VERIFICATION_KEY_CONTEXT_KEY } from './context.js';
import { DEK_BYTES, type DataKey, type DataKeyProvider, parseWrappedKey } from './data-key.js';

import {
  decryptEnvelope,
  type EnvelopeDecryptOptions,
  type EnvelopeEncryptOptions,
  encryptEnvelope,
} from './envelope.js';
import { ClosedError, InvalidInputError, KeystoreSealedError } from './errors.js';
import { checkKeyExpectation, type KeyExpectation, toKeyExpectation } from './key-expectation.js';
import type { RootOfTrust } from './root.js';
import {
  createDecryptStream,
  createEncryptStream,
  type DecryptStreamOptions,
  type EncryptStreamOptions,
} from './stream.js';

export interface DataKeyCacheOptions {
  /** How long one data key is used for encryption, and an unwrapped data key kept for decryption.
   * Required: there is no good default for how long a key may live. 1 ms .. 24 h. */
  maxAgeMs: number;
  /** Messages encrypted under one cached data key, 1 .. 2³². Default 4096. */
  maxMessages?: number;
  /** Plaintext bytes encrypted under one cached data key. Default: no byte bound. When set, a
   * message whose length is unknown up front (a stream) gets a data key of its own, uncached. */
  maxBytes?: number;
  /** Cached (key, context) pairs for encryption, and unwrapped keys for decryption (each, LRU).
   * Default 1000. */
  maxEntries?: number;
  /** Injected clock (ms) for tests. */
  now?: () => number;
}

/**
 * Subscription to the key changes made through a Keywarden: `provider[KEY_CHANGES](listener)` calls
 * `listener(keyId)` after each lifecycle change of one key, and `listener(undefined)` after
 * clearCache() (drop everything); it returns the function that unsubscribes. A registered symbol,
 * so that it works across two copies of this package, and not a named method, so that it is no
 * operation of the policy guard.
 */
export const KEY_CHANGES: unique symbol = Symbol.for('keywarden.keyChanges') as never;
export type KeyChangeListener = (keyId: string | undefined) => void;

/** What the cache can wrap: a DataKeyProvider, ideally a Keywarden (whose root it watches for a seal,
 * whose key changes it follows, and whose seal/close it forwards). */
export interface CacheableProvider extends DataKeyProvider {
  /** Keywarden: subscribe to its key changes (see KEY_CHANGES). */
  readonly [KEY_CHANGES]?: (listener: KeyChangeListener) => () => void;
  readonly root?: RootOfTrust;
  /** True once the provider was closed (Keywarden.closed): the cache wipes and refuses. */
  readonly closed?: boolean;
  seal?(): Promise<void>;
  close?(): Promise<void>;
}

/** Counters, for tests and benchmarks. */
export interface DataKeyCacheStats {
  /** Data keys the provider generated for the cache (cached misses). */
  dataKeysGenerated: number;
  encryptHits: number;
  /** Data keys handed out uncached (unknown length under maxBytes, one message over maxBytes, or a
   * signed envelope's, whose context is unique to the message). */
  encryptBypasses: number;
  decryptHits: number;
  /** Unwraps the provider did for the cache. */
  dataKeysUnwrapped: number;
}

/** The length of the plaintext the data key is for, when known: counted against maxBytes. */
export interface DataKeyUsage {
  plaintextBytes?: number;
}

interface EncryptEntry {
  plaintext: Uint8Array;
  wrapped: Uint8Array;
  keyId: string;
  version: number;
  expires: number;
  messages: number;
  bytes: number;
}
interface DecryptEntry {
  dek: Uint8Array;
  /** The KEK id the data key is wrapped under (for a key change). */
  keyId: string;
  expires: number;
}
/** One generation or unwrap in progress, shared by every caller that misses the same slot. */
interface Flight {
  promise: Promise<void>;
}

const MAX_AGE_LIMIT_MS = 24 * 60 * 60 * 1000;
/** @internal Tests only (not exported from the package): the secret buffers the cache holds now,
 * so a test can see them wiped. */
export const cachedSecretsForTests: unique symbol = Symbol('keywarden.dataKeyCache.cachedSecrets');
const MAX_MESSAGES_LIMIT = 2 ** 32;
/** Unsubscribes a cache dropped without close() from its Keywarden's key changes. */
const KEY_CHANGE_SUBSCRIPTIONS = new FinalizationRegistry<() => void>((unsubscribe) => unsubscribe());

export class DataKeyCache implements DataKeyProvider {
  readonly provider: CacheableProvider;
  readonly #maxAgeMs: number;
  readonly #maxMessages: number;
  readonly #maxBytes: number;
  readonly #maxEntries: number;
  readonly #now: () => number;
  readonly #encrypt = new Map<string, EncryptEntry>();
  readonly #decrypt = new Map<string, DecryptEntry>();
  readonly #encryptFlights = new Map<string, Flight>();
  readonly #decryptFlights = new Map<string, Flight>();
  /** Bumped by every wipe: a flight that straddles one does not put its key into the cache. */
  #generation = 0;
  #closed = false;
  /** Stop following the provider's key changes (close). */
  readonly #unsubscribe: (() => void) | undefined;
  readonly #stats: DataKeyCacheStats = {
    dataKeysGenerated: 0,
    encryptHits: 0,
    encryptBypasses: 0,
    decryptHits: 0,
    dataKeysUnwrapped: 0,
  };

  constructor(provider: CacheableProvider, options: DataKeyCacheOptions) {
    if (
      typeof provider !== 'object' ||
      provider === null ||
      typeof provider.generateDataKey !== 'function' ||
      typeof provider.decryptDataKey !== 'function'
    ) {
      throw new InvalidInputError('data key cache: provider must implement DataKeyProvider (a Keywarden)');
    }
    if (typeof options !== 'object' || options === null) {
      throw new InvalidInputError('data key cache: options with maxAgeMs are required');
    }
    const { maxAgeMs, maxMessages = 4096, maxBytes = Number.POSITIVE_INFINITY, maxEntries = 1000 } = options;
    if (!Number.isSafeInteger(maxAgeMs) || maxAgeMs < 1 || maxAgeMs > MAX_AGE_LIMIT_MS) {
      throw new InvalidInputError(`data key cache: maxAgeMs must be an integer in 1..${MAX_AGE_LIMIT_MS}`);
    }
    if (!Number.isSafeInteger(maxMessages) || maxMessages < 1 || maxMessages > MAX_MESSAGES_LIMIT) {
      throw new InvalidInputError('data key cache: maxMessages must be an integer in 1..2^32');
    }
    if (maxBytes !== Number.POSITIVE_INFINITY && (!Number.isSafeInteger(maxBytes) || maxBytes < 1)) {
      throw new InvalidInputError('data key cache: maxBytes must be a positive integer');
    }
    if (!Number.isSafeInteger(maxEntries) || maxEntries < 1) {
      throw new InvalidInputError('data key cache: maxEntries must be a positive integer');
    }
    this.provider = provider;
    this.#maxAgeMs = maxAgeMs;
    this.#maxMessages = maxMessages;
    this.#maxBytes = maxBytes;
    this.#maxEntries = maxEntries;
    this.#now = options.now ?? Date.now;
    const subscribe = provider[KEY_CHANGES];
    if (typeof subscribe === 'function') {
      // The listener holds the cache weakly: a cache dropped without close() is not kept alive by
      // the Keywarden it wraps (and its subscription goes with it).
      this.#unsubscribe = subscribe.call(provider, DataKeyCache.#keyChangeListener(new WeakRef(this)));
      KEY_CHANGE_SUBSCRIPTIONS.register(this, this.#unsubscribe, this);
    }
  }

  static #keyChangeListener(ref: WeakRef<DataKeyCache>): KeyChangeListener {
    return (keyId) => {
      const cache = ref.deref();
      if (!cache) return;
      if (keyId === undefined) cache.#wipe();
      else cache.#forgetKey(keyId);
    };
  }

  get stats(): Readonly<DataKeyCacheStats> {
    return { ...this.#stats };
  }

  // ── DataKeyProvider ───────────────────────────────────────────────────────────────────────────

  /**
   * A data key for `key` under `context`: the cached one while it is within every bound, else a
   * fresh one (one per slot however many callers miss at once). The returned plaintext is the
   * caller's own copy: wipe it when done. `usage.plaintextBytes` is charged against maxBytes.
   */
  async generateDataKey(key: string, context?: EncryptionContext, usage?: DataKeyUsage): Promise<DataKey> {
    this.#checkLive();
    if (typeof key !== 'string' || key.length === 0 || key.length > 128) {
      throw new InvalidInputError('data key cache: key must be a non-empty key name or id');
    }
    const bytes = usage?.plaintextBytes;
    if (bytes !== undefined && (!Number.isSafeInteger(bytes) || bytes < 0)) {
      throw new InvalidInputError('data key cache: plaintextBytes must be a non-negative integer');
    }
    const contextBytes = encodeContext(context);
    // Precondition of reuse: the message's length is known to fit the byte bound. A signed envelope's
    // context holds its own verification key (docs/format.md §4.9), so its slot is never hit again:
    // caching it would only keep a DEK in memory and evict entries that are reused.
    if (
      (bytes === undefined && this.#maxBytes !== Number.POSITIVE_INFINITY) ||
      (bytes ?? 0) > this.#maxBytes ||
      (context !== undefined && Object.hasOwn(context, VERIFICATION_KEY_CONTEXT_KEY))
    ) {
      this.#stats.encryptBypasses++;
      return this.provider.generateDataKey(key, context);
    }
    const charge = bytes ?? 0;
    // Length-prefixed key, then the canonical context: no two (key, context) pairs share a slot.
    const slot = `${key.length}:${key}:${Buffer.from(contextBytes).toString('base64')}`;
    for (;;) {
      const hit = this.#encrypt.get(slot);
      if (hit) {
        if (hit.expires > this.#now() && hit.messages < this.#maxMessages && hit.bytes + charge <= this.#maxBytes) {
          hit.messages++;
          hit.bytes += charge;
          this.#encrypt.delete(slot); // LRU: most recently used last
          this.#encrypt.set(slot, hit);
          this.#stats.encryptHits++;
          return {
            plaintext: new Uint8Array(hit.plaintext),
            wrapped: new Uint8Array(hit.wrapped),
            keyId: hit.keyId,
            version: hit.version,
          };
        }
        // Past a bound: retired for good. Callers only ever held copies, so wipe it now.
        this.#encrypt.delete(slot);
        wipe(hit.plaintext);
      }
      // Single flight: join the generation in progress for this slot, or start it. Either way,
      // look again afterwards (the new key may already be used up by the callers ahead).
      await (this.#encryptFlights.get(slot)?.promise ?? this.#generate(slot, key, context));
      this.#checkLive();
    }
  }

  /**
   * Unwrap a data key, from the cache when exactly these wrapped bytes were unwrapped under exactly
   * this context and this expected key within maxAgeMs. The returned key is the caller's own copy.
   */
  async decryptDataKey(
    wrapped: Uint8Array,
    context: EncryptionContext | undefined,
    expected: KeyExpectation,
  ): Promise<Uint8Array> {
    this.#checkLive();
    const allowed = checkKeyExpectation(expected, 'data key cache');
    // Bounds the slot's length, and names the KEK for a key change; the provider parses again.
    const { keyId } = parseWrappedKey(wrapped);
    const contextBytes = encodeContext(context);
    const slot = `${allowed === null ? '*' : JSON.stringify(allowed)}\n${Buffer.from(wrapped).toString('base64')}\n${Buffer.from(contextBytes).toString('base64')}`;
    for (;;) {
      const hit = this.#decrypt.get(slot);
      if (hit) {
        if (hit.expires > this.#now()) {
          this.#decrypt.delete(slot);
          this.#decrypt.set(slot, hit);
          this.#stats.decryptHits++;
          return new Uint8Array(hit.dek);
        }
        this.#decrypt.delete(slot);
        wipe(hit.dek);
      }
      const pending = this.#decryptFlights.get(slot);
      if (pending) {
        await pending.promise;
        this.#checkLive();
        continue;
      }
      // A failed unwrap is never cached, and fails every caller that joined it.
      await this.#unwrap(slot, keyId, new Uint8Array(wrapped), context, toKeyExpectation(allowed));
      this.#checkLive();
    }
  }

  // ── Envelope encryption through the cache ─────────────────────────────────────────────────────

  /** encryptEnvelope with a cached data key; the plaintext's length is charged against maxBytes. */
  encrypt(plaintext: Uint8Array, options: EnvelopeEncryptOptions): Promise<Uint8Array> {
    const plaintextBytes = plaintext instanceof Uint8Array ? plaintext.length : undefined;
    const sized: DataKeyProvider = {
      generateDataKey: (key, context) => this.generateDataKey(key, context, { plaintextBytes }),
      decryptDataKey: (wrapped, context, expected) => this.decryptDataKey(wrapped, context, expected),
    };
    return encryptEnvelope(sized, plaintext, options);
  }

  decrypt(envelope: Uint8Array, options: EnvelopeDecryptOptions): Promise<Uint8Array> {
    return decryptEnvelope(this, envelope, options);
  }

  /** A stream's length is unknown up front: with maxBytes set, each stream gets a data key of its own. */
  createEncryptStream(options: EncryptStreamOptions): Transform {
    return createEncryptStream(this, options);
  }

  createDecryptStream(options: DecryptStreamOptions): Transform {
    return createDecryptStream(this, options);
  }

  // ── Lifecycle ─────────────────────────────────────────────────────────────────────────────────

  /** Wipe every cached data key (they are made or unwrapped again on next use). */
  clear(): void {
    this.#wipe();
  }

  /** Wipe the cache, then seal the provider (a Keywarden wipes its KEK cache and seals its root). */
  async seal(): Promise<void> {
    this.#wipe();
    await this.provider.seal?.();
  }

  /** Wipe the cache and close the provider. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    this.#wipe();
    this.#unsubscribe?.();
    KEY_CHANGE_SUBSCRIPTIONS.unregister(this);
    await this.provider.close?.();
  }

  /** @internal See cachedSecretsForTests. */
  [cachedSecretsForTests](): Uint8Array[] {
    return [...[...this.#encrypt.values()].map((e) => e.plaintext), ...[...this.#decrypt.values()].map((e) => e.dek)];
  }

  // ── Internals ─────────────────────────────────────────────────────────────────────────────────

  #generate(slot: string, key: string, context: EncryptionContext | undefined): Promise<void> {
    const generation = this.#generation;
    // Registered before the provider is called, so that a provider failing synchronously still
    // finds (and removes) its own flight.
    const flight: Flight = { promise: undefined as unknown as Promise<void> };
    this.#encryptFlights.set(slot, flight);
    flight.promise = (async () => {
      try {
        const dk = await this.provider.generateDataKey(key, context);
        // Postconditions on the provider's answer, before anything is cached.
        if (typeof dk !== 'object' || dk === null) {
          throw new InvalidInputError('data key cache: the provider returned no data key');
        }
        assertBytes(dk.plaintext, 'data key cache: DEK from the provider', DEK_BYTES);
        const plaintext = new Uint8Array(dk.plaintext);
        wipe(dk.plaintext);
        assertBytes(dk.wrapped, 'data key cache: wrapped DEK from the provider');
        this.#stats.dataKeysGenerated++;
        // Made across a wipe (clear/seal/close): it must not outlive it.
        if (this.#closed || generation !== this.#generation) {
          wipe(plaintext);
          return;
        }
        const entry: EncryptEntry = {
          plaintext,
          wrapped: new Uint8Array(dk.wrapped),
          keyId: dk.keyId,
          version: dk.version,
          expires: this.#now() + this.#maxAgeMs,
          messages: 0,
          bytes: 0,
        };
        const previous = this.#encrypt.get(slot);
        if (previous) wipe(previous.plaintext);
        this.#encrypt.delete(slot);
        this.#encrypt.set(slot, entry);
        evict(this.#encrypt, this.#maxEntries, (e) => wipe(e.plaintext));
      } finally {
        if (this.#encryptFlights.get(slot) === flight) this.#encryptFlights.delete(slot);
      }
    })();
    return flight.promise;
  }

  #unwrap(
    slot: string,
    keyId: string,
    wrapped: Uint8Array,
    context: EncryptionContext | undefined,
    expected: KeyExpectation,
  ): Promise<void> {
    const generation = this.#generation;
    const flight: Flight = { promise: undefined as unknown as Promise<void> };
    this.#decryptFlights.set(slot, flight);
    flight.promise = (async () => {
      try {
        const returned = await this.provider.decryptDataKey(wrapped, context, expected);
        assertBytes(returned, 'data key cache: DEK from the provider', DEK_BYTES);
        const dek = new Uint8Array(returned);
        wipe(returned);
        this.#stats.dataKeysUnwrapped++;
        if (this.#closed || generation !== this.#generation) {
          wipe(dek);
          return;
        }
        const previous = this.#decrypt.get(slot);
        if (previous) wipe(previous.dek);
        this.#decrypt.delete(slot);
        this.#decrypt.set(slot, { dek, keyId, expires: this.#now() + this.#maxAgeMs });
        evict(this.#decrypt, this.#maxEntries, (e) => wipe(e.dek));
      } finally {
        if (this.#decryptFlights.get(slot) === flight) this.#decryptFlights.delete(slot);
      }
    })();
    return flight.promise;
  }

  /**
   * A key changed (docs/lifecycle.md §3 Caches): drop its data keys, both directions. Work in flight
   * for any key does not cache its result (generation), since it may have started before the change.
   */
  #forgetKey(keyId: string): void {
    this.#generation++;
    for (const [slot, e] of this.#encrypt) {
      if (e.keyId !== keyId) continue;
      this.#encrypt.delete(slot);
      wipe(e.plaintext);
    }
    for (const [slot, e] of this.#decrypt) {
      if (e.keyId !== keyId) continue;
      this.#decrypt.delete(slot);
      wipe(e.dek);
    }
    this.#encryptFlights.clear();
    this.#decryptFlights.clear();
  }

  #wipe(): void {
    this.#generation++;
    for (const e of this.#encrypt.values()) wipe(e.plaintext);
    for (const e of this.#decrypt.values()) wipe(e.dek);
    this.#encrypt.clear();
    this.#decrypt.clear();
    // In-flight work finishes for its callers, who look again and start afresh (or fail: sealed).
    this.#encryptFlights.clear();
    this.#decryptFlights.clear();
  }

  /** Closed: refuse. Closed or sealed behind our back (the Keywarden's own close() or seal(), or its
   * root's seal): wipe, refuse. */
  #checkLive(): void {
    if (this.#closed) throw new ClosedError('data key cache: closed');
    if (this.provider.closed === true) {
      if (this.#encrypt.size > 0 || this.#decrypt.size > 0) this.#wipe();
      throw new ClosedError('data key cache: the Keywarden it wraps was closed');
    }
    if (this.provider.root?.sealable?.isSealed()) {
      if (this.#encrypt.size > 0 || this.#decrypt.size > 0) this.#wipe();
      throw new KeystoreSealedError('keystore: sealed; unseal the root before using keys');
    }
  }
}

function evict<T>(map: Map<string, T>, max: number, dispose: (entry: T) => void): void {
  while (map.size > max) {
    const [oldest, entry] = map.entries().next().value as [string, T];
    map.delete(oldest);
    dispose(entry);
  }
}
