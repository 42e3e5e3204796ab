/**
 * The audit record and its chain (docs/audit.md §Record, §Chain).
 *
 * One record per operation, one JSON object per line. `mac` is HMAC-SHA256 under the audit MAC key
 * of the record's canonical JSON without `mac` (sorted keys), and that JSON includes `prev`, the
 * previous record's `mac` ("" for seq 1), and `seq`, which counts up by one. So:
 *  - editing a record breaks its MAC;
 *  - deleting, inserting or reordering records breaks `seq` or `prev` at the first record after;
 *  - re-MACing an edit without the audit key gives a MAC that does not verify;
 *  - truncating the tail is found against an anchor (the store's head record, or any later seq/mac
 *    the verifier was given), since a shorter chain is otherwise still a valid chain.
 * Nothing in a record is key material or plaintext: caller-supplied identifiers and the context are
 * keyed digests (AuditKey.digest).
 */
import { canonicalJson } from '../software-root.js';
import type { AuditKey } from './audit-key.js';

export const AUDIT_RECORD_VERSION = 1;

export type AuditOutcome = 'ok' | 'denied' | 'error';

/** What Keywarden, the agent or an application hands to AuditLog.record(). */
export interface AuditEvent {
  /** encrypt, decrypt, generate-data-key, rewrap, rotate, disable, compromise, destroy, administer,
   *  create-key, seal, unseal, policy-change, principal-issue, principal-revoke … */
  op: string;
  principal: string;
  /** Key id (kek_…) when known. */
  keyId?: string;
  version?: number;
  outcome: AuditOutcome;
  /** KW_* code of a denial or failure. */
  code?: string;
  /** The encryption context: recorded only as one keyed digest. */
  context?: Readonly<Record<string, string>>;
  /** Caller-supplied identifiers (a key name as typed, a request id): recorded as keyed digests. */
  ids?: Readonly<Record<string, string>>;
  /** Non-secret details chosen by Keywarden (a key name, a state, a policy version). */
  detail?: Readonly<Record<string, string | number | boolean>>;
  /** Milliseconds since the epoch; default: when recorded. */
  at?: number;
  /** Internal: the context's canonical JSON, taken by AuditLog.record() when the event is handed
   * over, so that a caller who reuses and changes its context object afterwards changes nothing. */
  contextCanonical?: string;
}

export interface AuditRecord {
  v: 1;
  seq: number;
  time: string;
  principal: string;
  op: string;
  outcome: AuditOutcome;
  key?: string;
  version?: number;
  code?: string;
  ctx?: string;
  ids?: Record<string, string>;
  detail?: Record<string, string | number | boolean>;
  kid: string;
  prev: string;
  mac: string;
}

const q = JSON.stringify;

/** Records of one batch are mostly stamped in the same millisecond: format each millisecond once. */
let lastMs = -1;
let lastIso = '';
function isoTime(ms: number): string {
  if (ms !== lastMs) {
    lastMs = ms;
    lastIso = new Date(ms).toISOString();
  }
  return lastIso;
}

/** canonicalJson of an encryption context (string values), without its generic machinery. */
export function canonicalContext(context: Readonly<Record<string, string>>): string {
  const keys = Object.keys(context).sort();
  let s = '{';
  for (const k of keys) {
    const v = context[k];
    if (v === undefined) continue;
    s += `${s.length > 1 ? ',' : ''}${q(k)}:${typeof v === 'string' ? q(v) : canonicalJson(v)}`;
  }
  return `${s}}`;
}

/** A record's MAC is base64url of 32 bytes: 43 characters. */
const MAC_CHARS = 43;

/**
 * Seals events into records of the chain under one audit key, as JSONL bytes (docs/audit.md §2).
 *
 * Each record's canonical body — sorted keys, as canonicalJson writes them; verifyAuditLog
 * recomputes it with the generic canonicalJson, so the two must agree (tested on every kind of
 * record) — is written once, as UTF-8, into the batch's buffer, MACed where it lies, and completed
 * into its line by putting the `mac` member in place of the closing brace. No record object and no
 * per-record line string are made (the objects are parsed from the bytes only for sinks or
 * subscribers that ask for them). The body is assembled from parts that consecutive records share,
 * each remembered while it stays the same:
 *   `{"code":…,"ctx":…,"key":…,"kid":…,"op":…,"outcome":…,"prev":` (one per kind of operation),
 *   the previous MAC (copied from the line before it in the same buffer),
 *   `,"principal":…,"seq":` (one per principal), the seq digits,
 *   `,"time":…,"v":1,"version":…}` (one per millisecond and version).
 * Why: text built by concatenation and then encoded cost more than the MACs (V8 flattens a rope
 * each time it is written; a batch's text is a rope of thousands of pieces), and the garbage of
 * two dozen small strings per record was a sixth of the audit log's time.
 * Everything a caller supplied goes through JSON.stringify; `kid`, `ctx`, `time` and the MACs are
 * base64url or ISO 8601 text made here and are written as they are.
 */
export class RecordSealer {
  readonly #key: AuditKey;
  #headValid = false;
  #headCode: string | undefined;
  #headCanonical: string | undefined;
  #headKeyId: string | undefined;
  #headOp = '';
  #headOutcome = '';
  #head: Uint8Array = new Uint8Array(0);
  readonly #principals = new Map<string, Uint8Array>();
  #tailMs = -1;
  #tailVersion: number | undefined;
  #tail: Uint8Array = new Uint8Array(0);
  #scratch = Buffer.allocUnsafeSlow(64 * 1024);
  /** The MAC the last batch sealed here ended on, and its JSON text `"<mac>"` as bytes. */
  #lastMac: string | undefined;
  readonly #lastMacQuoted = new Uint8Array(MAC_CHARS + 2);
  /** The MAC and line-end arrays of an uncopied batch of one record, reused (see sealBatch). */
  readonly #macs: string[] = [];
  readonly #ends: number[] = [];

  constructor(key: AuditKey) {
    this.#key = key;
  }

  /**
   * Seal `events` as the records after `after`; returns their JSONL bytes and the new head. With
   * `copy` false the bytes are a view of this sealer's scratch buffer, valid only until its next
   * batch (AuditLog's synchronous path, whose sinks write them at once and keep nothing).
   */
  sealBatch(events: readonly AuditEvent[], after: AuditAnchor, copy = true): SealedBatch {
    // Sealed into this sealer's scratch buffer (kept between batches: a batch of one record, as in
    // durability "each", costs no large allocation), then copied out to bytes of its own, since a
    // sink may keep them (a store's putMeta).
    let buf = this.#scratch;
    let len = 0;
    let { seq, mac } = after;
    let macAt = -1;
    // An uncopied batch is read (its records made) before the next one is sealed, as its bytes
    // are: for a batch of one record (durability "each") the arrays of MACs and line ends are this
    // sealer's, reused and written by index (recordsOfBatch reads as many as there are events). A
    // larger batch gets fresh ones: strings held by a long-lived array outlive the young generation.
    const reuse = !copy && events.length === 1;
    const macs: string[] = reuse ? this.#macs : [];
    const ends: number[] = reuse ? this.#ends : [];
    let k = 0;
    for (const ev of events) {
      seq++;
      const head = this.#headPart(ev);
      const principal = this.#principalPart(ev.principal);
      const tail = this.#tailPart(ev);
      // The prev MAC (escaped, at most 6 bytes per UTF-16 unit, when not from this buffer), 16 seq
      // digits, and `,"mac":"` + 43 + `"}\n`.
      const worst = head.length + principal.length + tail.length + (macAt < 0 ? mac.length * 6 + 2 : 45) + 70;
      if (len + worst > buf.length) {
        const next = Buffer.allocUnsafeSlow(Math.max(buf.length * 2, len + worst));
        buf.copy(next, 0, 0, len);
        buf = next;
        this.#scratch = next;
      }
      const start = len;
      buf.set(head, start);
      let p = start + head.length;
      if (macAt >= 0) {
        buf[p++] = 0x22;
        buf.copyWithin(p, macAt, macAt + MAC_CHARS);
        p += MAC_CHARS;
        buf[p++] = 0x22;
      } else if (mac === this.#lastMac) {
        // The head this sealer's previous batch ended on (durability "each": every batch).
        buf.set(this.#lastMacQuoted, p);
        p += MAC_CHARS + 2;
      } else p += buf.write(q(mac), p, 'utf8');
      buf.set(principal, p);
      p = putDigits(buf, p + principal.length, seq);
      buf.set(tail, p);
      p += tail.length;
      mac = this.#key.recordMacOfBytes(buf, start, p);
      // `}` → `,"mac":"<mac>"}` and the newline.
      p = putAscii(buf, p - 1, ',"mac":"');
      macAt = p;
      p = putAscii(buf, p, mac);
      buf[p++] = 0x22;
      buf[p++] = 0x7d;
      buf[p++] = 0x0a;
      len = p;
      macs[k] = mac;
      ends[k] = p;
      k++;
    }
    if (macAt >= 0) {
      this.#lastMac = mac;
      this.#lastMacQuoted.set(buf.subarray(macAt - 1, macAt + MAC_CHARS + 1));
    }
    let bytes: Buffer = buf;
    if (copy) {
      // Bytes of its own, since a sink may keep them (a store's putMeta); all of it is written.
      bytes = Buffer.allocUnsafe(len);
      buf.copy(bytes, 0, 0, len);
    }
    // A batch with a huge record (a large detail) does not keep its buffer for ever (without a
    // copy, the batch's view keeps it alive only as long as the batch).
    if (buf.length > 1 << 20) this.#scratch = Buffer.allocUnsafeSlow(64 * 1024);
    return new Sealed(this.#key, events, after, macs, bytes, len, ends, { seq, mac });
  }

  /** `{` … `"prev":` — the members before prev (UTF-8), remembered for consecutive records of one kind. */
  #headPart(ev: AuditEvent): Uint8Array {
    const canonical =
      ev.contextCanonical ??
      (ev.context !== undefined && Object.keys(ev.context).length > 0 ? canonicalContext(ev.context) : undefined);
    const cacheable = ev.detail === undefined && ev.ids === undefined;
    if (
      cacheable &&
      this.#headValid &&
      ev.code === this.#headCode &&
      canonical === this.#headCanonical &&
      ev.keyId === this.#headKeyId &&
      ev.op === this.#headOp &&
      ev.outcome === this.#headOutcome
    ) {
      return this.#head;
    }
    const key = this.#key;
    let s = '{';
    if (ev.code !== undefined) s += `"code":${q(ev.code)},`;
    if (canonical !== undefined && canonical !== '{}') s += `"ctx":"${key.contextDigest(canonical)}",`;
    if (ev.detail !== undefined) s += `"detail":${canonicalJson({ ...ev.detail })},`;
    if (ev.ids !== undefined) {
      const ids: Record<string, string> = {};
      for (const [k, v] of Object.entries(ev.ids)) if (typeof v === 'string') ids[k] = key.digest(v);
      s += `"ids":${canonicalJson(ids)},`;
    }
    if (ev.keyId !== undefined) s += `"key":${q(ev.keyId)},`;
    s += `"kid":"${key.kid}","op":${q(ev.op)},"outcome":${q(ev.outcome)},"prev":`;
    const bytes = utf8Bytes(s);
    if (cacheable) {
      this.#headValid = true;
      this.#headCode = ev.code;
      this.#headCanonical = canonical;
      this.#headKeyId = ev.keyId;
      this.#headOp = ev.op;
      this.#headOutcome = ev.outcome;
      this.#head = bytes;
    }
    return bytes;
  }

  /** `,"principal":…,"seq":` */
  #principalPart(principal: string): Uint8Array {
    let s = this.#principals.get(principal);
    if (s === undefined) {
      s = utf8Bytes(`,"principal":${q(principal)},"seq":`);
      if (this.#principals.size >= 1024) this.#principals.clear();
      this.#principals.set(principal, s);
    }
    return s;
  }

  /** `,"time":…,"v":1` [`,"version":…`] `}` */
  #tailPart(ev: AuditEvent): Uint8Array {
    const ms = ev.at ?? Date.now();
    if (ms === this.#tailMs && ev.version === this.#tailVersion) return this.#tail;
    this.#tailMs = ms;
    this.#tailVersion = ev.version;
    this.#tail = utf8Bytes(
      `,"time":"${isoTime(ms)}","v":1${ev.version !== undefined ? `,"version":${q(ev.version)}` : ''}}`,
    );
    return this.#tail;
  }
}

/** What sealBatch returns: the batch's JSONL bytes, the chain's new head, and its record objects on demand. */
export interface SealedBatch {
  bytes: Uint8Array;
  head: AuditAnchor;
  /** The records as objects, equal member for member (and in member order) to JSON.parse of each line. */
  records(): AuditRecord[];
}

/**
 * A sealed batch: an object rather than a closure and its result (one allocation less per batch).
 * Its lines are buf[0, len): the batch's own copy, or the sealer's buffer, whose view is made only
 * when a sink reads `bytes` (a callback sink never does: it gets the record objects).
 */
class Sealed implements SealedBatch {
  #bytes: Uint8Array | undefined;
  constructor(
    readonly key: AuditKey,
    readonly events: readonly AuditEvent[],
    readonly after: AuditAnchor,
    readonly macs: readonly string[],
    readonly buf: Buffer,
    readonly len: number,
    readonly ends: readonly number[],
    readonly head: AuditAnchor,
  ) {}
  get bytes(): Uint8Array {
    this.#bytes ??= this.buf.length === this.len ? this.buf : this.buf.subarray(0, this.len);
    return this.#bytes;
  }
  records(): AuditRecord[] {
    // Every line lies at the offsets `ends` gives from the start of buf.
    return recordsOfBatch(this.key, this.key.kid, this.events, this.after, this.macs, this.buf, this.ends);
  }
}

/**
 * The record objects of a sealed batch, for callback sinks and subscribers: made from the events
 * and the MACs rather than parsed back from the bytes (JSON.parse of each line was the largest
 * cost of a callback sink), for every event whose members JSON text gives back unchanged; an event
 * with ids or detail, or with a member of an unexpected type, is parsed from its line. The
 * members are put in the line's order (sorted, then mac), so that the object is the same value
 * as the parsed line, JSON.stringify included (record-sealer.test.ts checks every kind of record).
 */
function recordsOfBatch(
  key: AuditKey,
  kid: string,
  events: readonly AuditEvent[],
  after: AuditAnchor,
  macs: readonly string[],
  bytes: Uint8Array,
  ends: readonly number[],
): AuditRecord[] {
  // Sized at once (a batch of one record is an array of one, not a grown array's spare room).
  const out = new Array<AuditRecord>(events.length);
  let prev = after.mac;
  let seq = after.seq;
  let start = 0;
  for (let i = 0; i < events.length; i++) {
    const ev = events[i] as AuditEvent;
    const mac = macs[i] as string;
    const end = ends[i] as number;
    seq++;
    const v = ev.version;
    const canonical = ev.contextCanonical;
    if (
      ev.detail === undefined &&
      ev.ids === undefined &&
      typeof ev.at === 'number' &&
      typeof ev.op === 'string' &&
      typeof ev.principal === 'string' &&
      typeof ev.outcome === 'string' &&
      (ev.code === undefined || typeof ev.code === 'string') &&
      (ev.keyId === undefined || typeof ev.keyId === 'string') &&
      (v === undefined || (typeof v === 'number' && Number.isFinite(v) && !Object.is(v, -0))) &&
      (ev.context === undefined || canonical !== undefined)
    ) {
      const ctx = canonical !== undefined && canonical !== '{}' ? key.contextDigest(canonical) : undefined;
      if (ev.code === undefined && ctx !== undefined && ev.keyId !== undefined && v !== undefined) {
        // The common shape (a data operation that succeeded) as one literal in the line's member
        // order: the object is made with its final shape at once instead of growing member by member.
        out[i] = {
          ctx,
          key: ev.keyId,
          kid,
          op: ev.op,
          outcome: ev.outcome as AuditOutcome,
          prev,
          principal: ev.principal,
          seq,
          time: isoTime(ev.at),
          v: AUDIT_RECORD_VERSION,
          version: v,
          mac,
        } as AuditRecord;
        prev = mac;
        start = end;
        continue;
      }
      const rec = {} as Record<string, unknown>;
      if (ev.code !== undefined) rec.code = ev.code;
      if (ctx !== undefined) rec.ctx = ctx;
      if (ev.keyId !== undefined) rec.key = ev.keyId;
      rec.kid = kid;
      rec.op = ev.op;
      rec.outcome = ev.outcome;
      rec.prev = prev;
      rec.principal = ev.principal;
      rec.seq = seq;
      rec.time = isoTime(ev.at);
      rec.v = AUDIT_RECORD_VERSION;
      if (v !== undefined) rec.version = v;
      rec.mac = mac;
      out[i] = rec as unknown as AuditRecord;
    } else {
      out[i] = recordOfLine(Buffer.from(bytes.buffer, bytes.byteOffset + start, end - 1 - start).toString('utf8'));
    }
    prev = mac;
    start = end;
  }
  return out;
}

function utf8Bytes(text: string): Uint8Array {
  return Buffer.from(text, 'utf8');
}

/** Write the decimal digits of a non-negative safe integer at p; returns the end. */
function putDigits(buf: Buffer, p: number, n: number): number {
  if (n < 10) {
    buf[p] = 0x30 + n;
    return p + 1;
  }
  if (n < 0x80000000) {
    // Small integer arithmetic (a seq below 2^31: every log for a long time).
    let digits = 1;
    for (let x = n; x >= 10; x = (x / 10) | 0) digits++;
    let x = n;
    for (let i = p + digits - 1; i >= p; i--) {
      const d = (x / 10) | 0;
      buf[i] = 0x30 + x - d * 10;
      x = d;
    }
    return p + digits;
  }
  let digits = 1;
  for (let x = n; x >= 10; x = Math.floor(x / 10)) digits++;
  let x = n;
  for (let i = p + digits - 1; i >= p; i--) {
    buf[i] = 0x30 + (x % 10);
    x = Math.floor(x / 10);
  }
  return p + digits;
}

/** Write ASCII text at p; returns the end. */
function putAscii(buf: Buffer, p: number, text: string): number {
  for (let i = 0; i < text.length; i++) buf[p + i] = text.charCodeAt(i);
  return p + text.length;
}

/** Turn an event into the next record of the chain, as its JSONL line (without the newline) and its MAC. */
export function sealLine(key: AuditKey, event: AuditEvent, seq: number, prev: string): { line: string; mac: string } {
  const { bytes, head } = new RecordSealer(key).sealBatch([event], { seq: seq - 1, mac: prev });
  return { line: Buffer.from(bytes.buffer, bytes.byteOffset, bytes.length - 1).toString('utf8'), mac: head.mac };
}

/** The record a line written by sealLine holds. */
export function recordOfLine(line: string): AuditRecord {
  return JSON.parse(line) as AuditRecord;
}

/** Turn an event into the next record of the chain; `line` is its JSONL text. */
export function sealRecordLine(
  key: AuditKey,
  event: AuditEvent,
  seq: number,
  prev: string,
): { record: AuditRecord; line: string } {
  const { line } = sealLine(key, event, seq, prev);
  return { record: recordOfLine(line), line };
}

/** Turn an event into the next record of the chain. */
export function sealRecord(key: AuditKey, event: AuditEvent, seq: number, prev: string): AuditRecord {
  return sealRecordLine(key, event, seq, prev).record;
}

/** The keyed digest a record holds for `context` (search by context). */
export function contextDigest(key: AuditKey, context: Readonly<Record<string, string>>): string {
  return key.digest(canonicalJson(context));
}

export interface AuditAnchor {
  /** The last record's seq and mac as known from elsewhere (the store head, a shipped copy). */
  seq: number;
  mac: string;
}

export interface AuditVerifyResult {
  ok: boolean;
  /** Records that verified before the first bad one (all of them when ok). */
  verified: number;
  /** The last good record's seq and mac (an anchor for the next verification). */
  last?: AuditAnchor;
  /** The first bad record: its position (1-based line), its seq when readable, and why. */
  firstBad?: { line: number; seq?: number; reason: string };
}

export interface VerifyOptions {
  /** The log must reach at least this record, with this MAC (catches truncation). */
  anchor?: AuditAnchor;
  /** Verify a log that continues an earlier verified part: its first record follows this one. */
  after?: AuditAnchor;
}

const FIELDS = new Set([
  'v',
  'seq',
  'time',
  'principal',
  'op',
  'outcome',
  'key',
  'version',
  'code',
  'ctx',
  'ids',
  'detail',
  'kid',
  'prev',
  'mac',
]);

/**
 * Verify a chain of records (JSONL lines or parsed records), stopping at the first bad one and
 * naming it. Checks, in order for each record: readable JSON of the record shape; MAC under the
 * audit key; seq one more than the previous; prev equal to the previous MAC. Then the anchor.
 */
export function verifyAuditLog(
  key: AuditKey,
  lines: Iterable<string | AuditRecord>,
  options: VerifyOptions = {},
): AuditVerifyResult {
  let expectSeq = (options.after?.seq ?? 0) + 1;
  let prev = options.after?.mac ?? '';
  let verified = 0;
  let line = 0;
  let last: AuditAnchor | undefined = options.after ? { ...options.after } : undefined;
  const bad = (reason: string, seq?: number): AuditVerifyResult => ({
    ok: false,
    verified,
    ...(last ? { last } : {}),
    firstBad: { line, ...(seq !== undefined ? { seq } : {}), reason },
  });
  for (const item of lines) {
    line++;
    if (typeof item === 'string' && item.trim() === '') {
      return bad('empty line (a record was blanked out)');
    }
    let rec: AuditRecord;
    try {
      rec = typeof item === 'string' ? (JSON.parse(item) as AuditRecord) : item;
    } catch {
      return bad('not a JSON record');
    }
    if (typeof rec !== 'object' || rec === null || Array.isArray(rec)) return bad('not a JSON record');
    const seq = Number.isSafeInteger(rec.seq) ? rec.seq : undefined;
    if (rec.v !== AUDIT_RECORD_VERSION || typeof rec.mac !== 'string' || typeof rec.prev !== 'string') {
      return bad('not an audit record of version 1', seq);
    }
    for (const k of Object.keys(rec)) if (!FIELDS.has(k)) return bad(`unknown field "${k.slice(0, 32)}"`, seq);
    const { mac, ...body } = rec;
    if (rec.kid !== key.kid) return bad('MACed under another audit key (kid does not match)', seq);
    if (key.recordMac(canonicalJson(body)) !== mac) {
      return bad('MAC does not verify (the record was edited, or MACed without the audit key)', seq);
    }
    if (seq !== expectSeq) {
      return bad(
        seq !== undefined && seq < expectSeq
          ? `seq ${seq} where ${expectSeq} was expected (records reordered or repeated)`
          : `seq ${seq} where ${expectSeq} was expected (records deleted before this one)`,
        seq,
      );
    }
    if (rec.prev !== prev) return bad('prev does not match the previous record (records inserted or reordered)', seq);
    if (options.anchor && rec.seq === options.anchor.seq && mac !== options.anchor.mac) {
      return bad('this record is not the one the anchor names (the log was rewritten from here)', seq);
    }
    prev = mac;
    expectSeq++;
    verified++;
    last = { seq: rec.seq, mac };
  }
  if (options.anchor) {
    const lastSeq = last?.seq ?? 0;
    if (lastSeq < options.anchor.seq) {
      line++;
      return bad(`truncated: the log ends at seq ${lastSeq} but seq ${options.anchor.seq} was written`, lastSeq + 1);
    }
  }
  return { ok: true, verified, ...(last ? { last } : {}) };
}
