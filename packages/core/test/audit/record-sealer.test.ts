/**
 * RecordSealer (src/audit/record.ts) writes each record's canonical body from remembered parts
 * straight into the batch's bytes: whatever the sequence of events, every line must be exactly what
 * verifyAuditLog recomputes with the generic canonicalJson, and the batch must verify as a chain.
 */
import { randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { AuditKey } from '../../src/audit/audit-key.js';
import { type AuditEvent, RecordSealer, sealLine, verifyAuditLog } from '../../src/audit/record.js';
import { canonicalJson } from '../../src/software-root.js';

const at = Date.parse('2026-11-29T10:00:00.000Z');

/** Events that hit and miss every remembered part, in an order that alternates them. */
function events(): AuditEvent[] {
  const ctx = { tenant: 'acme', purpose: 'orders' };
  const base = {
    op: 'generate-data-key',
    principal: 'billing-api',
    outcome: 'ok' as const,
    keyId: 'kek_a',
    version: 1,
  };
  return [
    { ...base, context: ctx, at },
    { ...base, context: ctx, at }, // same head, principal and tail
    { ...base, context: ctx, at: at + 1 }, // new millisecond
    { ...base, context: ctx, at: at + 1, version: 2 }, // new version
    { ...base, context: { tenant: 'other' }, at: at + 1 }, // new context
    { ...base, principal: 'p@x', context: ctx, at: at + 1 }, // new principal
    { ...base, op: 'decrypt', outcome: 'error', code: 'KW_DECRYPT', context: ctx, at: at + 2 },
    { ...base, op: 'decrypt', outcome: 'error', code: 'KW_DECRYPT', context: ctx, at: at + 2 }, // cached error head
    { ...base, ids: { key: 'orders/main' }, keyId: undefined, outcome: 'error', code: 'KW_NOT_FOUND', at: at + 2 },
    { ...base, detail: { name: 'orders/main', toVersion: 3, changed: true }, at: at + 2 },
    { op: 'seal', principal: 'agent', outcome: 'ok', at: at + 3 }, // no key, no version, no context
    { op: 'é"\\ ☃', principal: '𝄞 "quoted"', outcome: 'ok', keyId: 'kek_\u2028', context: { é: '"\\', a: '𝄞' }, at },
    { ...base, version: 1.5, context: {}, at: at + 4 }, // an empty context: no ctx member
    { ...base, context: ctx, at: at + 4, detail: { big: 'é'.repeat(3000) } }, // longer than the first buffer estimate
    { ...base, context: ctx, at: at + 4 },
  ] as AuditEvent[];
}

describe('RecordSealer', () => {
  it('every line is the canonical JSON of its record plus its MAC, and the batch verifies as one chain', () => {
    const key = new AuditKey(new Uint8Array(randomBytes(32)));
    const sealer = new RecordSealer(key);
    const evs = events();
    // Two batches through one sealer: the remembered parts carry over, the chain continues.
    const first = sealer.sealBatch(evs.slice(0, 7), { seq: 0, mac: '' });
    const second = sealer.sealBatch(evs.slice(7), first.head);
    const text = Buffer.from(first.bytes).toString('utf8') + Buffer.from(second.bytes).toString('utf8');
    expect(text.endsWith('\n')).toBe(true);
    const lines = text.slice(0, -1).split('\n');
    expect(lines).toHaveLength(evs.length);
    for (const [i, line] of lines.entries()) {
      const { mac, ...body } = JSON.parse(line) as Record<string, unknown>;
      expect(line, `record ${i + 1}`).toBe(`${canonicalJson(body).slice(0, -1)},"mac":${JSON.stringify(mac)}}`);
      expect(body.seq).toBe(i + 1);
      expect(key.recordMac(canonicalJson(body))).toBe(mac);
      // Each record on its own (sealLine) is byte for byte the same line.
      const prev = i === 0 ? '' : (JSON.parse(lines[i - 1] as string) as { mac: string }).mac;
      expect(sealLine(key, evs[i] as AuditEvent, i + 1, prev).line).toBe(line);
    }
    expect(JSON.parse(lines[4] as string).ctx).not.toBe(JSON.parse(lines[0] as string).ctx);
    expect(JSON.parse(lines[12] as string).ctx).toBeUndefined();
    expect(verifyAuditLog(key, lines)).toEqual({ ok: true, verified: evs.length, last: second.head });
  });

  it('the record objects of a batch are the parsed lines, member for member and in member order', () => {
    const key = new AuditKey(new Uint8Array(randomBytes(32)));
    const sealer = new RecordSealer(key);
    const evs: AuditEvent[] = events().map((ev) => {
      // As AuditLog.record() hands them over: the context's canonical JSON taken.
      if (ev.context === undefined) return ev;
      return { ...ev, contextCanonical: canonicalJson(ev.context) };
    });
    // Members JSON text does not give back as they were, and an event sealed without its
    // canonical context: parsed from the line.
    evs.push({ op: 'x', principal: 'p', outcome: 'ok', version: -0, at } as AuditEvent);
    evs.push({ op: 'x', principal: 'p', outcome: 'ok', version: Number.NaN, at } as AuditEvent);
    evs.push({ op: 'x', principal: 'p', outcome: 'ok', context: { a: 'b' }, at } as AuditEvent);
    evs.push({ op: '\ud800', principal: 'p', outcome: 'ok', code: 'KW_X', at } as AuditEvent);
    const first = sealer.sealBatch(evs.slice(0, 5), { seq: 41, mac: 'a"b' });
    const second = sealer.sealBatch(evs.slice(5), first.head);
    for (const batch of [first, second]) {
      const lines = Buffer.from(batch.bytes).toString('utf8').slice(0, -1).split('\n');
      const records = batch.records();
      expect(records).toHaveLength(lines.length);
      for (const [i, line] of lines.entries()) {
        expect(JSON.stringify(records[i]), `record ${i + 1}`).toBe(line);
        expect(records[i]).toStrictEqual(JSON.parse(line));
      }
    }
    expect(first.records()[0]).toMatchObject({ seq: 42, prev: 'a"b' });
  });

  it('a previous MAC from elsewhere (a head read back) is escaped, never written raw', () => {
    const key = new AuditKey(new Uint8Array(randomBytes(32)));
    const { bytes } = new RecordSealer(key).sealBatch([{ op: 'x', principal: 'p', outcome: 'ok', at }], {
      seq: 4,
      mac: 'a"b',
    });
    const rec = JSON.parse(Buffer.from(bytes).toString('utf8')) as { prev: string; seq: number };
    expect(rec).toMatchObject({ prev: 'a"b', seq: 5 });
  });
});
