/**
 * Anomaly detection driven by synthetic traffic: each kind is flagged when it happens, and steady
 * traffic is not flagged at all.
 */
import { describe, expect, it } from 'vitest';
import { type Anomaly, AnomalyDetector, type ObservedRecord, auditLogOf, Keywarden } from '../../src/index.js';
import { storeAndRoot } from './_setup.js';

const T0 = Date.parse('2026-11-02T09:00:00Z');
const MIN = 60_000;

function rec(t: number, over: Partial<ObservedRecord> = {}): ObservedRecord {
  return {
    principal: 'app',
    op: 'decrypt',
    outcome: 'ok',
    key: 'kek_a',
    version: 1,
    time: new Date(t).toISOString(),
    ...over,
  };
}

/** `perMinute` records a minute for `minutes` minutes from `start`, evenly spread. */
function steady(
  start: number,
  minutes: number,
  perMinute: number,
  over: Partial<ObservedRecord> = {},
): ObservedRecord[] {
  const out: ObservedRecord[] = [];
  for (let m = 0; m < minutes; m++) {
    for (let i = 0; i < perMinute; i++) out.push(rec(start + m * MIN + Math.floor((i * MIN) / perMinute), over));
  }
  return out;
}

function run(d: AnomalyDetector, records: ObservedRecord[]): Anomaly[] {
  return records.flatMap((r) => d.observe(r));
}

describe('steady traffic', () => {
  it('is not flagged: two hours of even use, two principals, two keys, a few scattered failures', () => {
    const d = new AnomalyDetector();
    const traffic = [
      ...steady(T0, 120, 10),
      ...steady(T0, 120, 4, { principal: 'batch', key: 'kek_b', op: 'encrypt' }),
      ...[5, 40, 95].map((m) => rec(T0 + m * MIN + 7, { outcome: 'error', code: 'KW_DECRYPT' })),
    ].sort((a, b) => Date.parse(a.time) - Date.parse(b.time));
    expect(run(d, traffic)).toEqual([]);
  });
});

describe('each anomaly is flagged', () => {
  it('rate spike: 20× the baseline in one minute, reported once for that minute', () => {
    const d = new AnomalyDetector();
    expect(run(d, steady(T0, 30, 10))).toEqual([]);
    const found = run(d, steady(T0 + 30 * MIN, 1, 200));
    expect(found.map((a) => [a.kind, a.principal, a.key])).toEqual([['rate-spike', 'app', 'kek_a']]);
    expect(found[0]?.detail).toMatch(/50 uses in 60 s against a baseline of 10\.0/);
    // Back to steady: nothing more.
    expect(run(d, steady(T0 + 31 * MIN, 10, 10))).toEqual([]);
  });

  it('a principal touching a key it has never used', () => {
    const d = new AnomalyDetector({ learnRecords: 50 });
    expect(run(d, steady(T0, 10, 10))).toEqual([]);
    const found = run(d, [rec(T0 + 10 * MIN, { key: 'kek_payroll' }), rec(T0 + 10 * MIN + 1, { key: 'kek_payroll' })]);
    expect(found.map((a) => [a.kind, a.key])).toEqual([['new-principal-key', 'kek_payroll']]);
  });

  it('use of a disabled, compromised, retired or destroyed version', () => {
    const d = new AnomalyDetector();
    const found = run(
      d,
      ['KW_KEY_STATE', 'KW_KEY_COMPROMISED', 'KW_KEY_RETIRED', 'KW_KEY_DESTROYED'].map((code, i) =>
        rec(T0 + i, { outcome: 'error', code, version: 3 }),
      ),
    );
    expect(found.map((a) => [a.kind, a.version, a.detail])).toEqual([
      ['retired-version-use', 3, 'decrypt refused with KW_KEY_STATE'],
      ['retired-version-use', 3, 'decrypt refused with KW_KEY_COMPROMISED'],
      ['retired-version-use', 3, 'decrypt refused with KW_KEY_RETIRED'],
      ['retired-version-use', 3, 'decrypt refused with KW_KEY_DESTROYED'],
    ]);
  });

  it('a burst of decrypt failures (probing with tampered envelopes), once per window', () => {
    const d = new AnomalyDetector();
    const burst = Array.from({ length: 25 }, (_, i) => rec(T0 + i * 1000, { outcome: 'error', code: 'KW_DECRYPT' }));
    const found = run(d, burst);
    expect(found.map((a) => a.kind)).toEqual(['decrypt-failure-burst']);
    expect(found[0]?.detail).toBe('10 failed decryptions within 60 s');
  });

  it('use outside the usual hours: learned, or configured', () => {
    const d = new AnomalyDetector({ learnHoursMs: 60 * MIN });
    expect(run(d, steady(T0, 60, 5))).toEqual([]);
    // The hour next to a usual one is not unusual.
    expect(run(d, [rec(T0 + 70 * MIN)])).toEqual([]);
    const night = Date.parse('2026-11-03T03:12:00Z');
    const found = run(d, [rec(night), rec(night + 1000)]);
    expect(found.map((a) => [a.kind, a.detail])).toEqual([
      ['off-hours', 'app active at 03:00 UTC, outside its usual hours'],
    ]);
    const c = new AnomalyDetector({ usualHours: { batch: [1, 5] } });
    expect(run(c, [rec(Date.parse('2026-11-03T02:00:00Z'), { principal: 'batch' })])).toEqual([]);
    expect(run(c, [rec(Date.parse('2026-11-03T12:00:00Z'), { principal: 'batch' })]).map((a) => a.kind)).toEqual([
      'off-hours',
    ]);
  });
});

describe('events an application subscribes to', () => {
  it('a Keywarden audit log feeds the detector live: tampered envelopes raise a decrypt-failure burst', async () => {
    const s = await storeAndRoot();
    const kw = new Keywarden({
      store: s.store,
      root: s.root,
      principal: 'app',
      audit: { toStore: false, callback: () => {} },
    });
    const detector = new AnomalyDetector({ failures: { count: 5 } });
    const seen: Anomaly[] = [];
    detector.subscribe((a) => seen.push(a));
    auditLogOf(kw)?.subscribe((r) => detector.observe(r));
    await kw.createKey('orders');
    const env = await kw.encrypt(new TextEncoder().encode('x'), { key: 'orders' });
    for (let i = 0; i < 6; i++) {
      const bad = env.slice();
      bad[bad.length - 1 - i] = (bad[bad.length - 1 - i] as number) ^ 1;
      await kw.decrypt(bad, { key: 'orders' }).catch(() => {});
    }
    await kw.close();
    expect(seen.map((a) => [a.kind, a.principal])).toEqual([['decrypt-failure-burst', 'app']]);
  });
});
