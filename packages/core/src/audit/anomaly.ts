/**
 * Anomaly detection over audit records (docs/audit.md §Anomalies). Feed it records (live, from
 * AuditLog.subscribe, or a whole log) and subscribe to what it flags:
 *  - rate-spike: a principal's use of a key in one window is far above its own baseline (the mean of
 *    its previous windows): at least `spike.factor` × baseline and at least `spike.minCount`;
 *  - new-principal-key: an established principal (past its learning period) touches a key it never
 *    used before;
 *  - retired-version-use: an operation refused because the key version is disabled, compromised,
 *    retired or destroyed (someone still holds data or a client still points at it);
 *  - decrypt-failure-burst: `failures.count` failed decryptions by one principal within
 *    `failures.windowMs` (someone probing with tampered or foreign envelopes);
 *  - off-hours: a principal acting in an hour of the day (UTC) in which it was never seen (nor in the
 *    hour before or after) during its first `learnHoursMs` (default a week), or outside the hours
 *    configured for it.
 * Each kind is reported once per principal (and key) per window, not once per record.
 */
import type { AuditRecord } from './record.js';

export type AnomalyKind =
  | 'rate-spike'
  | 'new-principal-key'
  | 'retired-version-use'
  | 'decrypt-failure-burst'
  | 'off-hours';

export interface Anomaly {
  kind: AnomalyKind;
  principal: string;
  key?: string;
  version?: number;
  /** When the record that raised it was made. */
  at: Date;
  /** The record's seq, when it has one. */
  seq?: number;
  /** One line: what was seen against what was expected. */
  detail: string;
}

export interface AnomalyOptions {
  /** Rate windows: their length, how many past windows make the baseline, and the thresholds. */
  spike?: {
    windowMs?: number;
    baselineWindows?: number;
    minBaselineWindows?: number;
    factor?: number;
    minCount?: number;
  };
  failures?: { count?: number; windowMs?: number };
  /** Records of a principal before it is "established" (a new key is then flagged). Default 100. */
  learnRecords?: number;
  /** How long from a principal's first record its usual hours are learned. Default 7 days. */
  learnHoursMs?: number;
  /** Usual hours per principal, UTC, [from, to) e.g. { batch: [1, 5] }; overrides what is learned. */
  usualHours?: Readonly<Record<string, readonly [number, number]>>;
}

/** The fields a record needs for detection (a full AuditRecord fits). */
export type ObservedRecord = Pick<AuditRecord, 'principal' | 'op' | 'outcome' | 'time'> &
  Partial<Pick<AuditRecord, 'key' | 'version' | 'code' | 'seq'>>;

const DATA_OPS = new Set([
  'encrypt',
  'decrypt',
  'generate-data-key',
  'decrypt-data-key',
  'encrypt-stream',
  'decrypt-stream',
  'rewrap',
]);
const DECRYPT_OPS = new Set(['decrypt', 'decrypt-data-key', 'decrypt-stream']);
const RETIRED_CODES = new Set(['KW_KEY_STATE', 'KW_KEY_COMPROMISED', 'KW_KEY_RETIRED', 'KW_KEY_DESTROYED']);

interface RateState {
  bucket: number;
  count: number;
  history: number[];
  flagged: number;
}
interface PrincipalState {
  seen: number;
  firstAt: number;
  keys: Set<string>;
  hours: number[];
  failures: number[];
  failureFlaggedAt: number;
  offHoursFlagged: Set<number>;
}

export class AnomalyDetector {
  readonly #windowMs: number;
  readonly #baselineWindows: number;
  readonly #minBaselineWindows: number;
  readonly #factor: number;
  readonly #minCount: number;
  readonly #failCount: number;
  readonly #failWindowMs: number;
  readonly #learn: number;
  readonly #learnHoursMs: number;
  readonly #usualHours: Readonly<Record<string, readonly [number, number]>>;
  readonly #rates = new Map<string, RateState>();
  readonly #principals = new Map<string, PrincipalState>();
  readonly #listeners = new Set<(a: Anomaly) => void>();

  constructor(options: AnomalyOptions = {}) {
    this.#windowMs = options.spike?.windowMs ?? 60_000;
    this.#baselineWindows = options.spike?.baselineWindows ?? 10;
    this.#minBaselineWindows = options.spike?.minBaselineWindows ?? 3;
    this.#factor = options.spike?.factor ?? 5;
    this.#minCount = options.spike?.minCount ?? 20;
    this.#failCount = options.failures?.count ?? 10;
    this.#failWindowMs = options.failures?.windowMs ?? 60_000;
    this.#learn = options.learnRecords ?? 100;
    this.#learnHoursMs = options.learnHoursMs ?? 7 * 86_400_000;
    this.#usualHours = options.usualHours ?? {};
  }

  /** Be told of every anomaly; returns the unsubscribe function. */
  subscribe(listener: (a: Anomaly) => void): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }

  /** Learn from history without reporting (prime a detector with the log so far). */
  prime(records: Iterable<ObservedRecord>): void {
    for (const r of records) this.#observe(r);
  }

  /** Observe one record; returns (and publishes) what it flags. */
  observe(record: ObservedRecord): Anomaly[] {
    const found = this.#observe(record);
    for (const a of found) {
      for (const l of this.#listeners) {
        try {
          l(a);
        } catch {
          // A subscriber's failure is its own.
        }
      }
    }
    return found;
  }

  #observe(r: ObservedRecord): Anomaly[] {
    const t = Date.parse(r.time);
    if (!Number.isFinite(t)) return [];
    const at = new Date(t);
    const found: Anomaly[] = [];
    const base = {
      principal: r.principal,
      at,
      ...(r.key !== undefined ? { key: r.key } : {}),
      ...(r.version !== undefined ? { version: r.version } : {}),
      ...(r.seq !== undefined ? { seq: r.seq } : {}),
    };
    let p = this.#principals.get(r.principal);
    if (!p) {
      p = {
        seen: 0,
        firstAt: t,
        keys: new Set(),
        hours: new Array(24).fill(0),
        failures: [],
        failureFlaggedAt: -Infinity,
        offHoursFlagged: new Set(),
      };
      this.#principals.set(r.principal, p);
    }
    const established = p.seen >= this.#learn;
    const hour = at.getUTCHours();

    // Use of a version that is not enabled.
    if (r.code !== undefined && RETIRED_CODES.has(r.code) && DATA_OPS.has(r.op)) {
      found.push({ kind: 'retired-version-use', ...base, detail: `${r.op} refused with ${r.code}` });
    }

    // Decrypt failures: a sliding window per principal, reported once per window.
    if (DECRYPT_OPS.has(r.op) && r.outcome === 'error') {
      p.failures.push(t);
      while (p.failures.length > 0 && (p.failures[0] as number) <= t - this.#failWindowMs) p.failures.shift();
      if (p.failures.length >= this.#failCount && t - p.failureFlaggedAt >= this.#failWindowMs) {
        p.failureFlaggedAt = t;
        found.push({
          kind: 'decrypt-failure-burst',
          ...base,
          detail: `${p.failures.length} failed decryptions within ${this.#failWindowMs / 1000} s`,
        });
      }
    }

    if (r.key !== undefined && DATA_OPS.has(r.op)) {
      // A key never used by an established principal.
      if (!p.keys.has(r.key)) {
        if (established) {
          found.push({ kind: 'new-principal-key', ...base, detail: `first use of ${r.key} by ${r.principal}` });
        }
        p.keys.add(r.key);
      }
      // Rate per principal and key against its own baseline.
      const id = `${r.principal}\u0000${r.key}`;
      const bucket = Math.floor(t / this.#windowMs);
      let s = this.#rates.get(id);
      if (!s) {
        s = { bucket, count: 0, history: [], flagged: -1 };
        this.#rates.set(id, s);
      }
      if (bucket > s.bucket) {
        s.history.push(s.count);
        // Empty windows in between count as zero use.
        for (let b = s.bucket + 1; b < bucket && s.history.length <= this.#baselineWindows; b++) s.history.push(0);
        while (s.history.length > this.#baselineWindows) s.history.shift();
        s.bucket = bucket;
        s.count = 0;
      }
      s.count++;
      if (s.history.length >= this.#minBaselineWindows && s.flagged !== bucket) {
        const baseline = s.history.reduce((a, b) => a + b, 0) / s.history.length;
        if (s.count >= this.#minCount && s.count >= this.#factor * Math.max(baseline, 1)) {
          s.flagged = bucket;
          found.push({
            kind: 'rate-spike',
            ...base,
            detail: `${s.count} uses in ${this.#windowMs / 1000} s against a baseline of ${baseline.toFixed(1)}`,
          });
        }
      }
    }

    // Hours: configured, or learned during the learning period.
    const usual = this.#usualHours[r.principal];
    const learningHours = t - p.firstAt < this.#learnHoursMs;
    const h = p.hours;
    const offHours = usual
      ? !(usual[0] <= usual[1] ? hour >= usual[0] && hour < usual[1] : hour >= usual[0] || hour < usual[1])
      : !learningHours && h[hour] === 0 && h[(hour + 23) % 24] === 0 && h[(hour + 1) % 24] === 0;
    const day = Math.floor(t / 86_400_000) * 24 + hour;
    if (offHours && !p.offHoursFlagged.has(day)) {
      p.offHoursFlagged.add(day);
      if (p.offHoursFlagged.size > 1000) p.offHoursFlagged.clear();
      found.push({
        kind: 'off-hours',
        ...base,
        detail: `${r.principal} active at ${String(hour).padStart(2, '0')}:00 UTC, outside its usual hours`,
      });
    }
    if (learningHours) h[hour] = (h[hour] as number) + 1;
    p.seen++;
    return found;
  }
}

/** Run a detector over a whole log: the first `primeRecords` only teach it, the rest are judged. */
export function detectAnomalies(
  records: Iterable<ObservedRecord>,
  options: AnomalyOptions & { primeRecords?: number } = {},
): Anomaly[] {
  const d = new AnomalyDetector(options);
  const out: Anomaly[] = [];
  let i = 0;
  for (const r of records) {
    if (i++ < (options.primeRecords ?? 0)) d.prime([r]);
    else out.push(...d.observe(r));
  }
  return out;
}
