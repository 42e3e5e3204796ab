/**
 * AuditLog: buffered, batched, hash-chained appends to one or more sinks (docs/audit.md).
 *
 * The hot path only pushes the event onto a buffer; MACs and digests are computed when a batch is
 * written. Durability modes:
 *  - "each" (default): the operation's promise resolves only after the batch holding its record is
 *    written to every sink (files fdatasync'ed). Concurrent operations share one batch (group commit).
 *  - { intervalMs }: batches are written every intervalMs; an operation does not wait for its record.
 *    A crash (not a clean close) can lose up to intervalMs of records; close() writes everything.
 * Fail closed (default): once a batch cannot be written, the waiting operations fail with
 * AuditError and every later record() is refused, so no operation runs unrecorded. With
 * `failClosed: false` a failed batch is reported to `onError` and dropped: the next record's `prev`
 * does not chain on, so verification shows where records went missing.
 *
 * One writer per log: two processes appending to the same store or file fork the chain (the agent
 * is the single writer in a deployment; docs/audit.md §Writers).
 */
import { ContextMemo } from '../context.js';
import { AuditError, InvalidInputError, KeywardenError } from '../errors.js';
import type { KeyStore } from '../keystore.js';
import type { RootOfTrust } from '../root.js';
import { type AuditKey, loadAuditKey } from './audit-key.js';
import { type AuditAnchor, type AuditEvent, type AuditRecord, canonicalContext, RecordSealer } from './record.js';
import {
  type AuditSink,
  CallbackAuditSink,
  JsonlFileAuditSink,
  LazyAuditBatch,
  StoreAuditSink,
  WRITE_NOW,
} from './sinks.js';

export type AuditDurability = 'each' | { intervalMs: number };

export interface AuditLogOptions {
  /** The audit key, or where to load it from: the store's "audit-key" record through the root. */
  key?: AuditKey;
  store?: KeyStore;
  root?: RootOfTrust;
  /** Write records into the key store (needs `store`). Default true when `store` is given. */
  toStore?: boolean;
  /** Append records to this JSONL file. */
  file?: string;
  /** Hand each batch of records to the application. */
  callback?: (records: readonly AuditRecord[]) => void | Promise<void>;
  /** Further sinks. */
  sinks?: AuditSink[];
  durability?: AuditDurability;
  /** Default true: an operation whose record cannot be written is refused (docs/audit.md §Fail closed). */
  failClosed?: boolean;
  /** Failures of batches (fail open), and of background batches (interval mode). */
  onError?: (err: AuditError) => void;
  /** Records buffered while no batch can be written before record() refuses. Default 10 000. */
  maxBuffered?: number;
  /** Subscribers to every record written (anomaly detection, tests). */
  onRecord?: (record: AuditRecord) => void;
}

interface Waiter {
  resolve(): void;
  reject(err: unknown): void;
}

/** Interval mode: a batch this large is written at once, whatever the interval. */
const BATCH_RECORDS = 1024;

type SyncSink = AuditSink & { [WRITE_NOW](batch: LazyAuditBatch, key: AuditKey): void | Promise<void> };
const noop = () => {};
/** The waiters of a batch that has none (never pushed to). */
const NO_WAITERS: readonly Waiter[] = Object.freeze([]);

export class AuditLog {
  readonly #sinks: AuditSink[];
  /** The sink that gives out the chain's head under a lock (the key store with updateMeta), if any. */
  readonly #authority: AuditSink | undefined;
  readonly #durability: AuditDurability;
  readonly #failClosed: boolean;
  readonly #onError: ((err: AuditError) => void) | undefined;
  readonly #maxBuffered: number;
  readonly #keySource: { key?: AuditKey; store?: KeyStore; root?: RootOfTrust };
  readonly #listeners = new Set<(record: AuditRecord) => void>();
  #key: AuditKey | undefined;
  #sealer: RecordSealer | undefined;
  #head: AuditAnchor | undefined;
  #pending: AuditEvent[] = [];
  /** An empty array for #pending, recycled by the synchronous path. */
  #spare: AuditEvent[] | undefined;
  #waiters: Waiter[] = [];
  #scheduled = false;
  #batchQueued = false;
  #timer: NodeJS.Timeout | undefined;
  #chain: Promise<void> = Promise.resolve();
  /** Flushes queued on #chain and not started yet, and whether one is running (the log is idle when neither). */
  #queued = 0;
  #busy = false;
  /** The sinks, when every one of them can take a batch synchronously (the built-in file and callback sinks). */
  readonly #syncSinks: SyncSink[] | undefined;
  #failed: AuditError | undefined;
  #closed = false;
  /** Operations begun and not yet recorded (group commit in durability "each"). */
  #inFlight = 0;
  /** The last context object seen, its own keys and string values, and its canonical JSON. */
  readonly #ctxMemo = new ContextMemo<string>();

  constructor(options: AuditLogOptions) {
    if (typeof options !== 'object' || options === null) throw new InvalidInputError('audit: options are required');
    const sinks: AuditSink[] = [];
    const toStore = options.toStore ?? options.store !== undefined;
    if (toStore) {
      if (!options.store) throw new InvalidInputError('audit: toStore needs a store');
      sinks.push(new StoreAuditSink(options.store));
    }
    if (options.file !== undefined) sinks.push(new JsonlFileAuditSink(options.file));
    if (options.callback !== undefined) sinks.push(new CallbackAuditSink(options.callback));
    for (const s of options.sinks ?? []) {
      if (typeof s?.write !== 'function') throw new InvalidInputError('audit: a sink must have write()');
      sinks.push(s);
    }
    if (sinks.length === 0) throw new InvalidInputError('audit: at least one sink (store, file, callback, sinks)');
    if (!options.key && !(options.store && options.root)) {
      throw new InvalidInputError('audit: the audit key, or the store and root to load it from, is required');
    }
    const d = options.durability ?? 'each';
    if (d !== 'each' && !(typeof d === 'object' && Number.isFinite(d.intervalMs) && d.intervalMs >= 1)) {
      throw new InvalidInputError('audit: durability is "each" or { intervalMs ≥ 1 }');
    }
    this.#sinks = sinks;
    this.#authority = sinks.find((s) => typeof s.appendChained === 'function');
    this.#syncSinks = sinks.every((s) => typeof (s as Partial<SyncSink>)[WRITE_NOW] === 'function')
      ? (sinks as SyncSink[])
      : undefined;
    this.#durability = d;
    this.#failClosed = options.failClosed !== false;
    this.#onError = options.onError;
    this.#maxBuffered = options.maxBuffered ?? 10_000;
    this.#keySource = { key: options.key, store: options.store, root: options.root };
    if (options.onRecord) this.#listeners.add(options.onRecord);
  }

  /** Subscribe to every record once written; returns the unsubscribe function. */
  subscribe(listener: (record: AuditRecord) => void): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }

  /** Throws AuditError when a record could not be written now (fail closed): check before acting. */
  assertWritable(): void {
    if (this.#closed) throw new AuditError('audit: the audit log is closed; operations are refused');
    if (this.#failed && this.#failClosed) throw this.#failed;
    if (this.#pending.length >= this.#maxBuffered) {
      throw new AuditError(`audit: ${this.#pending.length} records wait to be written; operations are refused`);
    }
  }

  /**
   * An operation that will record starts (Keywarden's guard calls this before it acts): throws as
   * assertWritable does, and counts the operation as in flight until its record() with `begun`.
   * Durability "each" uses the count for group commit: a record made while other operations are
   * in flight waits one event-loop turn for theirs to join its batch; the record of the last one in
   * flight (a caller doing one operation at a time, or the end of a burst) is written at once.
   */
  begin(): void {
    this.assertWritable();
    this.#inFlight++;
  }

  /**
   * Append an event (`begun`: of an operation announced with begin()). Durability "each": resolves
   * once its batch is written (rejects with AuditError if it cannot be, fail closed). Interval mode:
   * returns undefined at once.
   */
  record(event: AuditEvent, begun = false): Promise<void> | undefined {
    if (begun && this.#inFlight > 0) this.#inFlight--;
    this.assertWritable();
    // Stamped in place (no copy on the hot path): record() owns the event from here on.
    if (event.at === undefined) event.at = Date.now();
    if (event.context !== undefined && event.contextCanonical === undefined) {
      event.contextCanonical = this.#canonicalOf(event.context);
    }
    this.#pending.push(event);
    if (this.#durability === 'each') {
      if (begun && this.#inFlight === 0 && this.#queued === 0 && !this.#busy) {
        // Nothing else in flight or being written: sealed and written in this call when the sinks
        // can take it synchronously (no waiter, no queued flush).
        const now = this.#flushNow();
        if (now !== false) return now;
      }
      const p = new Promise<void>((resolve, reject) => this.#waiters.push({ resolve, reject }));
      if (begun && this.#inFlight === 0) {
        // No other operation is about to record: no batch to wait for (the flush runs a microtask
        // later, so records made before it still join). Records not announced by begin() (an
        // application's own, the agent's unseal) keep waiting one turn for company.
        void this.#enqueueFlush();
      } else if (!this.#scheduled) {
        this.#scheduled = true;
        setImmediate(() => {
          this.#scheduled = false;
          void this.#enqueueFlush();
        });
      }
      return p;
    }
    // A batch is written once it is full, without waiting for the timer: a caller in a tight loop of
    // awaits never lets a timer run, and its records must not pile up until record() refuses.
    if (this.#pending.length >= BATCH_RECORDS && !this.#batchQueued) {
      this.#batchQueued = true;
      void this.#enqueueFlush().finally(() => {
        this.#batchQueued = false;
      });
    }
    if (this.#timer === undefined) {
      this.#timer = setTimeout(() => {
        this.#timer = undefined;
        void this.#enqueueFlush();
      }, this.#durability.intervalMs);
      this.#timer.unref();
    }
    return undefined;
  }

  /**
   * The context's canonical JSON, taken now (a caller may change its object afterwards). An
   * application passes the same context object at a high rate: when it is the object seen last,
   * with the same own keys holding the same string values, the canonical JSON made then is still
   * exact, and sorting and escaping are skipped.
   */
  #canonicalOf(context: Readonly<Record<string, string>>): string {
    return this.#ctxMemo.get(context) ?? this.#ctxMemo.set(context, canonicalContext(context));
  }

  /** Write everything buffered now. */
  flush(): Promise<void> {
    return this.#enqueueFlush(true);
  }

  /** The chain's head after the last written batch. */
  get head(): AuditAnchor | undefined {
    return this.#head && { ...this.#head };
  }

  /** The audit key (loaded through the root on first use). */
  async key(): Promise<AuditKey> {
    if (this.#key) return this.#key;
    const src = this.#keySource;
    const key = src.key ?? (await loadAuditKey(src.store as KeyStore, src.root as RootOfTrust, { create: true }));
    if (!this.#key) this.#key = key;
    return this.#key;
  }

  /** Write everything buffered (durably), close the sinks. Idempotent. */
  async close(): Promise<void> {
    if (this.#closed) return this.#chain;
    if (this.#timer !== undefined) clearTimeout(this.#timer);
    this.#timer = undefined;
    try {
      await this.#enqueueFlush(true);
    } finally {
      this.#closed = true;
      for (const s of this.#sinks) await s.close?.();
      if (!this.#keySource.key) this.#key?.destroy();
    }
  }

  #enqueueFlush(sync = false, rethrow = sync): Promise<void> {
    this.#queued++;
    const run = this.#chain.then(() => this.#flushOnce(sync));
    this.#chain = run.catch(() => {});
    return rethrow ? run : this.#chain;
  }

  /**
   * One queued flush. The log is busy from its start until its waiters are settled: `finally` runs
   * in the same job as the code that settles them, before any of their callers resumes (a caller
   * that records again at once finds the log idle).
   */
  #flushOnce(forceSync: boolean): Promise<void> {
    this.#queued--;
    this.#busy = true;
    return this.#flushBatch(forceSync);
  }

  /**
   * Durability "each" with the log idle (nothing queued or being written), the audit key loaded and
   * the head known, every sink able to take a batch synchronously, and no authority: the pending
   * records are sealed and handed to the sinks in this call. Returns undefined once written (the
   * waiters of any records that were pending resolved), a promise when a callback returned one
   * (the log is busy until it settles), or false when this cannot be done now (the caller queues a
   * flush as before). Fail closed: a batch that cannot be written is a rejected promise, as the
   * queued flush's waiters would get.
   */
  #flushNow(): Promise<void> | undefined | false {
    const key = this.#key;
    const sealer = this.#sealer;
    const head = this.#head;
    const sinks = this.#syncSinks;
    if (sinks === undefined || key === undefined || sealer === undefined || head === undefined) return false;
    if (this.#authority !== undefined || (this.#failed && this.#failClosed)) return false;
    const events = this.#pending;
    this.#pending = this.#spare ?? [];
    this.#spare = undefined;
    // Records made while this batch is written (a callback that records) wait for the next one.
    const waiters = this.#waiters.length > 0 ? this.#waiters : (NO_WAITERS as Waiter[]);
    if (waiters !== NO_WAITERS) this.#waiters = [];
    let batch: LazyAuditBatch;
    try {
      // The bytes stay in the sealer's buffer: the file sink writes them at once, a callback gets
      // the record objects (made before it returns), and no other batch is sealed before the sinks
      // are done (the log is busy until then).
      const sealed = sealer.sealBatch(events, head, false);
      batch = new LazyAuditBatch(sealed, events.length, true);
      this.#head = sealed.head;
      for (let i = 0; i < sinks.length; i++) {
        const r = (sinks[i] as SyncSink)[WRITE_NOW](batch, key);
        if (r !== undefined && typeof (r as Promise<void>).then === 'function') {
          const later = this.#finishLater(r as Promise<void>, batch, key, i + 1, waiters);
          this.#chain = later.then(noop, noop);
          return later;
        }
      }
    } catch (cause) {
      const err = this.#batchFailed(cause, events.length, waiters);
      return this.#failClosed ? Promise.reject(err) : undefined;
    }
    // Indexed: no iterator per call (the waiters are mostly none).
    for (let i = 0; i < waiters.length; i++) (waiters[i] as Waiter).resolve();
    this.#notify(batch);
    // Written and handed over: nothing refers to the events array any more (record objects made
    // from it are the callback's and subscribers').
    events.length = 0;
    this.#spare = events;
    return undefined;
  }

  /** The rest of #flushNow once a sink returned a promise: the later sinks, then the waiters. */
  async #finishLater(
    first: Promise<void>,
    batch: LazyAuditBatch,
    key: AuditKey,
    next: number,
    waiters: Waiter[],
  ): Promise<void> {
    this.#busy = true;
    try {
      try {
        await first;
        const sinks = this.#syncSinks as SyncSink[];
        for (let i = next; i < sinks.length; i++) await (sinks[i] as SyncSink).write(batch, key);
      } catch (cause) {
        const err = this.#batchFailed(cause, batch.count, waiters);
        if (this.#failClosed) throw err;
        return;
      }
      for (const w of waiters) w.resolve();
      this.#notify(batch);
    } finally {
      this.#busy = false;
    }
  }

  /** A batch the sinks did not take: the error its waiters get (and every later record, fail closed). */
  #batchFailed(cause: unknown, count: number, waiters: Waiter[]): AuditError {
    const err = new AuditError(`audit: ${count} audit record(s) could not be written`, { cause });
    if (this.#failClosed) this.#failed = err;
    for (const w of waiters)
      if (this.#failClosed) w.reject(err);
      else w.resolve();
    this.#onError?.(err);
    return err;
  }

  /** Hand a written batch's records to the subscribers. */
  #notify(batch: LazyAuditBatch): void {
    if (this.#listeners.size === 0) return;
    for (const rec of batch.records) {
      for (const l of this.#listeners) {
        try {
          l(rec);
        } catch {
          // A subscriber's failure is its own; the record is written.
        }
      }
    }
  }

  async #flushBatch(forceSync: boolean): Promise<void> {
    try {
      if (this.#pending.length === 0) {
        for (const w of this.#waiters.splice(0)) w.resolve();
        return;
      }
      const events = this.#pending;
      const waiters = this.#waiters;
      this.#pending = [];
      this.#waiters = [];
      if (this.#failed && this.#failClosed) {
        for (const w of waiters) w.reject(this.#failed);
        throw this.#failed;
      }
      let key: AuditKey;
      const authority = this.#authority;
      try {
        key = this.#key ?? (await this.key());
        // With an authority the chain's head is read under its lock at each append, not here.
        if (this.#head === undefined && !authority) this.#head = await this.#readHead(key);
      } catch (cause) {
        // The key is not available yet (a sealed root): keep the records, fail this batch's waiters.
        this.#pending = events.concat(this.#pending);
        // A typed error's message is one safe line (it never carries key material): name it, so a
        // busy or missing device is not reported as a sealed root.
        const why = KeywardenError.isInstance(cause) ? `: ${cause.message}` : ' (is the root sealed?)';
        const err = new AuditError(`audit: the audit key could not be loaded${why}`, { cause });
        for (const w of waiters) w.reject(err);
        this.#onError?.(err);
        throw err;
      }
      if (this.#sealer === undefined) this.#sealer = new RecordSealer(key);
      const sealer = this.#sealer;
      const sync = forceSync || this.#durability === 'each';
      let batch: LazyAuditBatch | undefined;
      try {
        if (authority?.appendChained) {
          // Several writers, one chain: the authority seals the batch on the head it holds the lock
          // of, so the seq numbers are the store's (a batch it refused leaves no gap in its chain).
          const sealed = await authority.appendChained((after) => sealer.sealBatch(events, after), key);
          batch = new LazyAuditBatch(sealed, events.length, sync);
          this.#head = sealed.head;
        } else {
          // With only the built-in file and callback sinks, the bytes stay in the sealer's buffer
          // (no copy), as on the synchronous path: each of them writes the bytes, or makes the
          // record objects, before its write() first awaits and keeps nothing, and no other batch
          // is sealed until this flush ends (the log is busy). A batch of 64 records into a file
          // cost ~0.85 µs of CPU more per record with the copy (a fresh ArrayBuffer per batch).
          const sealed = sealer.sealBatch(events, this.#head as AuditAnchor, this.#syncSinks === undefined);
          const head = sealed.head;
          batch = new LazyAuditBatch(sealed, events.length, sync);
          // The chain moves on whether or not the sinks take the batch: a dropped batch (fail open)
          // shows as a break in the chain, never as a silently renumbered log.
          this.#head = head;
        }
        for (const s of this.#sinks) if (s !== authority) await s.write(batch, key);
      } catch (cause) {
        const err = this.#batchFailed(cause, events.length, waiters);
        if (this.#failClosed) throw err;
        return;
      }
      for (const w of waiters) w.resolve();
      this.#notify(batch as LazyAuditBatch);
    } finally {
      this.#busy = false;
    }
  }

  async #readHead(key: AuditKey): Promise<AuditAnchor> {
    let best: AuditAnchor | undefined;
    for (const s of this.#sinks) {
      const h = await s.head?.(key);
      if (h && (best === undefined || h.seq > best.seq)) best = h;
    }
    return best ?? { seq: 0, mac: '' };
  }
}
