/**
 * Where audit records go (docs/audit.md §Sinks). Every sink receives the same records, in order,
 * batch by batch; a sink that throws fails the batch (and, fail closed, the operations waiting on it).
 *  - StoreAuditSink: the key store itself (meta records "audit/seg/N" and a MACed head "audit/head");
 *  - JsonlFileAuditSink: one record per line, appended; fdatasync when the durability mode asks;
 *  - CallbackAuditSink: hands each batch to the application (to ship to its logger).
 */
import { closeSync, fdatasyncSync, openSync, readFileSync, writeSync } from 'node:fs';
import { utf8 } from '../_bytes.js';
import { InvalidInputError, StoreCorruptError } from '../errors.js';
import type { KeyStore } from '../keystore.js';
import type { AuditKey } from './audit-key.js';
import { type AuditAnchor, type AuditRecord, recordOfLine } from './record.js';

export interface AuditBatch {
  readonly records: readonly AuditRecord[];
  /** The records as JSONL (each line ends with "\n"). */
  readonly text: string;
  /** The same JSONL as UTF-8 bytes (what the file and store sinks write). */
  readonly bytes?: Uint8Array;
  /** The chain's new head (the last record's seq and mac). */
  head: AuditAnchor;
  /** Whether this batch must be durable before write() resolves (durability "each", close). */
  sync: boolean;
}

/** A batch sealed on a given head: its JSONL bytes and the chain's new head. */
export interface SealedAuditBytes {
  bytes: Uint8Array;
  head: AuditAnchor;
  /** The records as objects (RecordSealer makes them without parsing the bytes); parsed when absent. */
  records?: () => AuditRecord[];
}

/**
 * Internal: a built-in sink that can take a batch synchronously (AuditLog's durability "each" path
 * when nothing else is being written). Returns what the sink's write would await, if anything.
 */
export const WRITE_NOW: unique symbol = Symbol('keywarden.audit.writeNow');

export interface AuditSink {
  /** Where the chain continues from, if this sink already holds records (read once, on open). */
  head?(key: AuditKey): Promise<AuditAnchor | undefined>;
  /**
   * A sink that several processes append to as ONE chain (the key store, when it has updateMeta):
   * it calls `seal` inside its store's lock with the chain's head as it is at that moment, writes
   * what `seal` returned (the last call's, if the transaction was retried) and returns it. The log
   * makes such a sink the chain's authority: it hands the same batch to its other sinks after.
   */
  appendChained?: (seal: (after: AuditAnchor) => SealedAuditBytes, key: AuditKey) => Promise<SealedAuditBytes>;
  write(batch: AuditBatch, key: AuditKey): Promise<void>;
  close?(): Promise<void>;
}

/**
 * The batch AuditLog hands to its sinks: the JSONL bytes are what the flush makes; the text and the
 * record objects are made from them only when a sink or subscriber reads `text` or `records` (the
 * file and store sinks never do), so a log without them pays for no object per record.
 */
export class LazyAuditBatch implements AuditBatch {
  readonly count: number;
  readonly head: AuditAnchor;
  readonly sync: boolean;
  #text: string | undefined;
  #records: AuditRecord[] | undefined;
  /** What sealed the batch: its records() makes the record objects (called as its method). */
  readonly #sealed: SealedAuditBytes;
  constructor(sealed: SealedAuditBytes, count: number, sync: boolean) {
    this.count = count;
    this.head = sealed.head;
    this.sync = sync;
    this.#sealed = sealed;
  }
  /** The JSONL bytes (read from the sealed batch when a sink first asks: a callback sink never does). */
  get bytes(): Uint8Array {
    return this.#sealed.bytes;
  }
  get text(): string {
    this.#text ??= Buffer.from(this.bytes.buffer, this.bytes.byteOffset, this.bytes.length).toString('utf8');
    return this.#text;
  }
  get records(): readonly AuditRecord[] {
    if (this.#records === undefined && this.#sealed.records !== undefined) this.#records = this.#sealed.records();
    if (this.#records === undefined) {
      const text = this.text;
      const records: AuditRecord[] = [];
      let at = 0;
      while (at < text.length) {
        const nl = text.indexOf('\n', at);
        records.push(recordOfLine(text.slice(at, nl)));
        at = nl + 1;
      }
      this.#records = records;
    }
    return this.#records;
  }
}

export const AUDIT_HEAD_META_NAME = 'audit/head';
export const AUDIT_SEGMENT_PREFIX = 'audit/seg/';

interface StoreHead {
  v: 1;
  seq: number;
  mac: string;
  segments: number;
  /** MAC of the three fields above: a forged head needs the audit key. */
  hmac: string;
}

function headMac(key: AuditKey, seq: number, mac: string, segments: number): string {
  return key.recordMac(`head:${seq}:${mac}:${segments}`);
}

export function segmentName(n: number): string {
  return `${AUDIT_SEGMENT_PREFIX}${String(n).padStart(10, '0')}`;
}

/** The store's audit head, checked under the audit key (undefined when nothing was audited). */
export async function readStoreAuditHead(
  store: KeyStore,
  key: AuditKey,
): Promise<(AuditAnchor & { segments: number }) | undefined> {
  const raw = await store.getMeta(AUDIT_HEAD_META_NAME);
  if (!raw) return undefined;
  return parseStoreHead(raw, key);
}

function encodeStoreHead(key: AuditKey, head: AuditAnchor, segments: number): Uint8Array {
  const doc: StoreHead = {
    v: 1,
    seq: head.seq,
    mac: head.mac,
    segments,
    hmac: headMac(key, head.seq, head.mac, segments),
  };
  return utf8.encode(JSON.stringify(doc));
}

function parseStoreHead(raw: Uint8Array, key: AuditKey): AuditAnchor & { segments: number } {
  let head: StoreHead;
  try {
    head = JSON.parse(Buffer.from(raw).toString('utf8')) as StoreHead;
  } catch {
    throw new StoreCorruptError('audit: the audit head record in the key store is unreadable');
  }
  if (
    head?.v !== 1 ||
    !Number.isSafeInteger(head.seq) ||
    !Number.isSafeInteger(head.segments) ||
    typeof head.mac !== 'string' ||
    head.hmac !== headMac(key, head.seq, head.mac, head.segments)
  ) {
    throw new StoreCorruptError('audit: the audit head record in the key store does not verify (altered)');
  }
  return { seq: head.seq, mac: head.mac, segments: head.segments };
}

/** Every audit record held in the store, as JSONL lines in chain order. */
export async function readStoreAuditLines(store: KeyStore, key: AuditKey): Promise<string[]> {
  const head = await readStoreAuditHead(store, key);
  if (!head) return [];
  const lines: string[] = [];
  for (let n = 1; n <= head.segments; n++) {
    const seg = await store.getMeta(segmentName(n));
    // A missing segment is reported by verification as the records that follow not chaining on.
    if (!seg) continue;
    const text = Buffer.from(seg).toString('utf8');
    for (const l of text.split('\n')) if (l !== '') lines.push(l);
  }
  return lines;
}

export class StoreAuditSink implements AuditSink {
  readonly #store: KeyStore;
  #segments = 0;
  readonly appendChained?: AuditSink['appendChained'];
  constructor(store: KeyStore) {
    this.#store = store;
    if (typeof store.updateMeta === 'function') {
      this.appendChained = (seal, key) => this.#appendChained(seal, key);
    }
  }

  /**
   * Many writers, one chain: the head is read, the batch sealed on it, and the next segment and the
   * new head written, all under the store's lock on the head record (updateMeta: SQLite's write
   * lock, PostgreSQL's advisory lock). Two processes never seal on the same head (no fork), and the
   * seq numbers are given out there (no gap).
   */
  async #appendChained(seal: (after: AuditAnchor) => SealedAuditBytes, key: AuditKey): Promise<SealedAuditBytes> {
    let done: { sealed: SealedAuditBytes; segments: number } | undefined;
    await (this.#store.updateMeta as NonNullable<KeyStore['updateMeta']>)(AUDIT_HEAD_META_NAME, (raw) => {
      const head = raw ? parseStoreHead(raw, key) : { seq: 0, mac: '', segments: 0 };
      const sealed = seal({ seq: head.seq, mac: head.mac });
      const segments = head.segments + 1;
      done = { sealed, segments };
      return [
        { name: segmentName(segments), value: sealed.bytes },
        { name: AUDIT_HEAD_META_NAME, value: encodeStoreHead(key, sealed.head, segments) },
      ];
    });
    const result = done as unknown as { sealed: SealedAuditBytes; segments: number };
    this.#segments = result.segments;
    return result.sealed;
  }
  async head(key: AuditKey): Promise<AuditAnchor | undefined> {
    const head = await readStoreAuditHead(this.#store, key);
    this.#segments = head?.segments ?? 0;
    return head && { seq: head.seq, mac: head.mac };
  }
  async write(batch: AuditBatch, key: AuditKey): Promise<void> {
    const n = this.#segments + 1;
    await this.#store.putMeta(segmentName(n), batch.bytes ?? utf8.encode(batch.text));
    await this.#store.putMeta(AUDIT_HEAD_META_NAME, encodeStoreHead(key, batch.head, n));
    this.#segments = n;
  }
}

export class JsonlFileAuditSink implements AuditSink {
  readonly path: string;
  #fd: number | undefined;
  /** False once fdatasync said the file cannot be synced (/dev/null, a pipe): not asked again. */
  #syncable = true;
  constructor(path: string) {
    if (typeof path !== 'string' || path.length === 0) throw new InvalidInputError('audit: a JSONL sink needs a path');
    this.path = path;
  }
  async head(): Promise<AuditAnchor | undefined> {
    let text: string;
    try {
      text = readFileSync(this.path, 'utf8');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
      throw err;
    }
    const lines = text.split('\n').filter((l) => l !== '');
    const lastLine = lines[lines.length - 1];
    if (lastLine === undefined) return undefined;
    try {
      const last = JSON.parse(lastLine) as AuditRecord;
      return { seq: last.seq, mac: last.mac };
    } catch {
      throw new StoreCorruptError(`audit: the last line of ${this.path} is not an audit record (run audit verify)`);
    }
  }
  async write(batch: AuditBatch): Promise<void> {
    this[WRITE_NOW](batch);
  }
  [WRITE_NOW](batch: AuditBatch): undefined {
    if (this.#fd === undefined) {
      this.#fd = openSync(this.path, 'a', 0o600);
      this.#syncable = true;
    }
    const bytes = batch.bytes ?? Buffer.from(batch.text, 'utf8');
    let off = 0;
    while (off < bytes.length) off += writeSync(this.#fd, bytes, off, bytes.length - off);
    if (batch.sync && this.#syncable) this.#syncable = syncFd(this.#fd);
    return undefined;
  }
  async close(): Promise<void> {
    if (this.#fd === undefined) return;
    const fd = this.#fd;
    this.#fd = undefined;
    try {
      if (this.#syncable) syncFd(fd);
    } finally {
      closeSync(fd);
    }
  }
}

/** fdatasync, except on what cannot be synced (a pipe, a terminal, /dev/null: EINVAL), which has nothing to flush. */
function syncFd(fd: number): boolean {
  try {
    fdatasyncSync(fd);
    return true;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EINVAL') throw err;
    return false;
  }
}

export class CallbackAuditSink implements AuditSink {
  readonly #fn: (records: readonly AuditRecord[]) => void | Promise<void>;
  constructor(fn: (records: readonly AuditRecord[]) => void | Promise<void>) {
    if (typeof fn !== 'function') throw new InvalidInputError('audit: a callback sink needs a function');
    this.#fn = fn;
  }
  async write(batch: AuditBatch): Promise<void> {
    await this.#fn(batch.records);
  }
  [WRITE_NOW](batch: AuditBatch): void | Promise<void> {
    return this.#fn(batch.records);
  }
}
