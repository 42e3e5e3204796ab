/**
 * The pool's record of a worker's requests in flight (src/_pool.ts InFlight): a ring kept in the
 * order sent, which a worker's replies take from the front (issue #8: a Map emptied and refilled
 * every batch shrank and regrew its table under full load). It must answer exactly what the Map
 * did: each request by its sequence number once, nothing for one already gone (expired or taken),
 * the oldest for the deadline timer, all of them, oldest first, when a worker dies.
 */
import { describe, expect, it } from 'vitest';
import { InFlight, type Pending } from '../src/_pool.js';

function pending(seq: number): Pending {
  return {
    seq,
    request: { op: 'random', length: 1 },
    resolve: () => undefined,
    reject: () => undefined,
    deadline: seq,
    retried: false,
    value: undefined,
    failed: undefined,
    sent: false,
  };
}

describe('InFlight (a worker requests in flight, oldest first)', () => {
  it('takes replies in order, and across the ring growing and wrapping around', () => {
    const f = new InFlight();
    let next = 1;
    let expect1 = 1;
    // 10 rounds of 150 in, 140 out: the ring grows past its first 64 entries and wraps.
    for (let round = 0; round < 10; round++) {
      for (let i = 0; i < 150; i++) f.push(pending(next++));
      for (let i = 0; i < 140; i++) expect(f.take(expect1)?.seq).toBe(expect1++);
      expect(f.size).toBe(next - expect1);
      expect(f.first()?.seq).toBe(expect1);
    }
    expect(f.values().map((p) => p.seq)).toEqual(Array.from({ length: next - expect1 }, (_, i) => expect1 + i));
  });

  it('takes out of turn, answers nothing twice, and nothing for a sequence number it does not hold', () => {
    const f = new InFlight();
    for (const seq of [3, 5, 8, 9, 12]) f.push(pending(seq));
    expect(f.take(8)?.seq).toBe(8);
    expect(f.take(8)).toBeUndefined();
    expect(f.take(4)).toBeUndefined();
    expect(f.take(1)).toBeUndefined();
    expect(f.take(99)).toBeUndefined();
    expect(f.size).toBe(4);
    expect(f.first()?.seq).toBe(3);
    expect(f.take(3)?.seq).toBe(3);
    // The hole left by 8 is skipped: the oldest is 5, then 9.
    expect(f.first()?.seq).toBe(5);
    expect(f.take(5)?.seq).toBe(5);
    expect(f.first()?.seq).toBe(9);
    expect(f.values().map((p) => p.seq)).toEqual([9, 12]);
    f.clear();
    expect(f.size).toBe(0);
    expect(f.first()).toBeUndefined();
    expect(f.values()).toEqual([]);
    f.push(pending(20));
    expect(f.take(20)?.seq).toBe(20);
    expect(f.size).toBe(0);
  });
});
