/**
 * Tamper tests (issue 12, Proof): every kind of edit to an audit file is detected, and the first bad
 * record is named.
 */
import { createHmac } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { canonicalJson } from '../../src/software-root.js';
import { type AuditKey, AuditLog, loadAuditKey, readStoreAuditHead, verifyAuditLog } from '../../src/audit/index.js';
import type { MemoryKeyStore } from '../../src/memory-store.js';
import { storeAndRoot, tempDir } from './_setup.js';

let key: AuditKey;
let lines: string[];
let store: MemoryKeyStore;
let file: string;
let cleanup: () => void;

beforeAll(async () => {
  const s = await storeAndRoot();
  store = s.store;
  const t = tempDir();
  cleanup = t.cleanup;
  file = join(t.dir, 'audit.jsonl');
  const log = new AuditLog({ store: s.store, root: s.root, file });
  for (let i = 1; i <= 10; i++) {
    await log.record({
      op: i % 2 ? 'encrypt' : 'decrypt',
      principal: 'svc',
      keyId: 'kek_a',
      version: 1,
      outcome: 'ok',
    });
  }
  await log.close();
  key = await loadAuditKey(s.store, s.root);
  lines = readFileSync(file, 'utf8').trim().split('\n');
});
afterAll(() => cleanup());

const parse = (l: string) => JSON.parse(l) as Record<string, unknown>;

describe('verifyAuditLog names the first bad record', () => {
  it('an intact log verifies, against the store head too', async () => {
    expect(verifyAuditLog(key, lines, { anchor: await readStoreAuditHead(store, key) })).toEqual({
      ok: true,
      verified: 10,
      last: { seq: 10, mac: parse(lines[9] as string).mac },
    });
  });

  it('edit: a changed field is detected at that record', () => {
    const edited = [...lines];
    edited[4] = JSON.stringify({ ...parse(lines[4] as string), principal: 'attacker' });
    expect(verifyAuditLog(key, edited).firstBad).toMatchObject({
      line: 5,
      seq: 5,
      reason: expect.stringMatching(/MAC/),
    });
    const outcome = [...lines];
    outcome[6] = (lines[6] as string).replace('"outcome":"ok"', '"outcome":"denied"');
    expect(verifyAuditLog(key, outcome).firstBad).toMatchObject({ line: 7, seq: 7 });
  });

  it('delete: the record after the gap is named', () => {
    const deleted = lines.filter((_, i) => i !== 3);
    const r = verifyAuditLog(key, deleted);
    expect(r).toMatchObject({
      ok: false,
      verified: 3,
      firstBad: { line: 4, seq: 5, reason: expect.stringMatching(/deleted/) },
    });
  });

  it('reorder: the first record out of place is named', () => {
    const swapped = [...lines];
    [swapped[2], swapped[3]] = [swapped[3] as string, swapped[2] as string];
    expect(verifyAuditLog(key, swapped).firstBad).toMatchObject({ line: 3, seq: 4 });
  });

  it('truncate: a log cut short is detected against the anchor (store head)', async () => {
    const anchor = await readStoreAuditHead(store, key);
    const r = verifyAuditLog(key, lines.slice(0, 7), { anchor });
    expect(r).toMatchObject({
      ok: false,
      verified: 7,
      firstBad: { seq: 8, reason: expect.stringMatching(/truncated/) },
    });
    // Without an anchor a prefix is still a valid chain: that is why the head is kept apart.
    expect(verifyAuditLog(key, lines.slice(0, 7)).ok).toBe(true);
  });

  it('insert: a copied record, or a forged one, is named', () => {
    const dup = [...lines.slice(0, 5), lines[2] as string, ...lines.slice(5)];
    expect(verifyAuditLog(key, dup).firstBad).toMatchObject({
      line: 6,
      seq: 3,
      reason: expect.stringMatching(/reordered or repeated/),
    });
    const forged = { ...parse(lines[4] as string), seq: 6, prev: parse(lines[4] as string).mac };
    const ins = [...lines.slice(0, 5), JSON.stringify(forged), ...lines.slice(5)];
    expect(verifyAuditLog(key, ins).firstBad).toMatchObject({ line: 6, seq: 6, reason: expect.stringMatching(/MAC/) });
  });

  it('re-MAC without the key: an edit re-MACed under another key is named', () => {
    const wrongKey = Buffer.alloc(32, 7);
    const rec = parse(lines[5] as string);
    const { mac: _m, ...body } = { ...rec, outcome: 'error' } as Record<string, unknown>;
    const remac = createHmac('sha256', wrongKey)
      .update(`keywarden-audit-record-v1\n${canonicalJson(body)}`)
      .digest('base64url');
    const tampered = [...lines];
    tampered[5] = JSON.stringify({ ...body, mac: remac });
    expect(verifyAuditLog(key, tampered).firstBad).toMatchObject({
      line: 6,
      seq: 6,
      reason: expect.stringMatching(/MAC/),
    });
    // Re-chaining every later record does not help either: the first edited record stays bad.
    expect(verifyAuditLog(key, tampered.slice(0, 6)).firstBad?.seq).toBe(6);
  });

  it('a blanked line, garbage, and an unknown field are named', () => {
    const blank = [...lines];
    blank[1] = '';
    expect(verifyAuditLog(key, blank).firstBad).toMatchObject({ line: 2 });
    const garbage = [...lines];
    garbage[8] = '{not json';
    expect(verifyAuditLog(key, garbage).firstBad).toMatchObject({ line: 9, reason: 'not a JSON record' });
    const extra = [...lines];
    extra[0] = JSON.stringify({ ...parse(lines[0] as string), note: 'x' });
    expect(verifyAuditLog(key, extra).firstBad).toMatchObject({ line: 1, seq: 1 });
  });

  it('the tail replaced by a different valid-looking tail is caught by the anchor', async () => {
    const anchor = await readStoreAuditHead(store, key);
    const r = verifyAuditLog(key, lines, { anchor: { seq: 10, mac: 'x'.repeat(43) } });
    expect(r.firstBad).toMatchObject({ seq: 10 });
    expect(verifyAuditLog(key, lines, { anchor }).ok).toBe(true);
  });

  it('the file on disk edited in place is detected', () => {
    const text = readFileSync(file, 'utf8').replace('"op":"decrypt"', '"op":"encrypt"');
    writeFileSync(file, text);
    const r = verifyAuditLog(key, readFileSync(file, 'utf8').trim().split('\n'));
    expect(r.firstBad).toMatchObject({ line: 2, seq: 2 });
  });
});
