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

/**
 * The canonical JSON of a record without `mac` (what the MAC covers): keys in sorted order, as
 * canonicalJson would write them, built directly because it runs once per operation. verifyAuditLog
 * recomputes it with the generic canonicalJson, so the two must agree (tested on every record).
 */
function canonicalBody(r: Omit<AuditRecord, 'mac'>): string {
  let s = '{';
  if (r.code !== undefined) s += `"code":${q(r.code)},`;
  if (r.ctx !== undefined) s += `"ctx":${q(r.ctx)},`;
  if (r.detail !== undefined) s += `"detail":${canonicalJson(r.detail)},`;
  if (r.ids !== undefined) s += `"ids":${canonicalJson(r.ids)},`;
  if (r.key !== undefined) s += `"key":${q(r.key)},`;
  s += `"kid":${q(r.kid)},"op":${q(r.op)},"outcome":${q(r.outcome)},"prev":${q(r.prev)},"principal":${q(r.principal)},"seq":${r.seq},"time":${q(r.time)},"v":1`;
  if (r.version !== undefined) s += `,"version":${q(r.version)}`;
  return `${s}}`;
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

/** Turn an event into the next record of the chain; `line` is its JSONL text. */
export function sealRecordLine(
  key: AuditKey,
  event: AuditEvent,
  seq: number,
  prev: string,
): { record: AuditRecord; line: string } {
  const rec = buildRecord(key, event, seq, prev);
  const body = canonicalBody(rec);
  const mac = key.recordMac(body);
  (rec as AuditRecord).mac = mac;
  return { record: rec as AuditRecord, line: `${body.slice(0, -1)},"mac":${q(mac)}}` };
}

/** Turn an event into the next record of the chain. */
export function sealRecord(key: AuditKey, event: AuditEvent, seq: number, prev: string): AuditRecord {
  return sealRecordLine(key, event, seq, prev).record;
}

function buildRecord(
  key: AuditKey,
  event: AuditEvent,
  seq: number,
  prev: string,
): Omit<AuditRecord, 'mac'> & { mac?: string } {
  const rec: Omit<AuditRecord, 'mac'> & { mac?: string } = {
    v: 1,
    seq,
    time: isoTime(event.at ?? Date.now()),
    principal: event.principal,
    op: event.op,
    outcome: event.outcome,
    kid: key.kid,
    prev,
  };
  if (event.keyId !== undefined) rec.key = event.keyId;
  if (event.version !== undefined) rec.version = event.version;
  if (event.code !== undefined) rec.code = event.code;
  const canonical =
    event.contextCanonical ??
    (event.context !== undefined && Object.keys(event.context).length > 0
      ? canonicalContext(event.context)
      : undefined);
  if (canonical !== undefined && canonical !== '{}') rec.ctx = key.contextDigest(canonical);
  if (event.ids !== undefined) {
    const ids: Record<string, string> = {};
    for (const [k, v] of Object.entries(event.ids)) if (typeof v === 'string') ids[k] = key.digest(v);
    rec.ids = ids;
  }
  if (event.detail !== undefined) rec.detail = { ...event.detail };
  return rec;
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
