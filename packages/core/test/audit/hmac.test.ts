/**
 * The audit log's HMAC-SHA256 (src/audit/_hmac.ts: RFC 2104 §2 as two one-shot hashes over a kept
 * padded key) against Project Wycheproof's HMAC-SHA256 vectors (every group, every key size) and
 * against node:crypto's createHmac on messages of every shape the log gives it.
 */
import { createHmac, randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { AuditHmac } from '../../src/audit/_hmac.js';

interface MacFile {
  numberOfTests: number;
  testGroups: Array<{
    keySize: number;
    tagSize: number;
    tests: Array<{ tcId: number; key: string; msg: string; tag: string; result: string }>;
  }>;
}
const hex = (s: string) => new Uint8Array(Buffer.from(s, 'hex'));

describe('AuditHmac', () => {
  it('agrees with every Wycheproof HMAC-SHA256 case (valid tags match, invalid ones do not)', () => {
    const file = JSON.parse(
      readFileSync(new URL('../vectors/wycheproof/hmac_sha256_test.json', import.meta.url), 'utf8'),
    ) as MacFile;
    let valid = 0;
    let invalid = 0;
    for (const g of file.testGroups) {
      for (const t of g.tests) {
        const mac = new AuditHmac(hex(t.key));
        const tag = mac.mac(hex(t.msg)).subarray(0, g.tagSize / 8);
        const same = tag.length === t.tag.length / 2 && Buffer.from(tag).equals(Buffer.from(hex(t.tag)));
        expect(same, `tcId ${t.tcId} (${t.result}, keySize ${g.keySize})`).toBe(t.result === 'valid');
        if (t.result === 'valid') valid++;
        else invalid++;
        mac.destroy();
      }
    }
    expect(valid + invalid).toBe(file.numberOfTests);
    expect({ valid, invalid }).toEqual({ valid: 66, invalid: 108 });
  });

  it('equals createHmac of domain ‖ message for text, bytes, multi-byte UTF-8 and messages longer than its buffer', () => {
    const key = new Uint8Array(randomBytes(32));
    const domain = 'keywarden-audit-record-v1\n';
    const mac = new AuditHmac(key, domain);
    const ref = (m: string | Uint8Array) => createHmac('sha256', key).update(domain).update(m);
    const messages = [
      '',
      'abc',
      'é"\\ ☃ 𝄞',
      '𝄞'.repeat(3000), // 12 000 bytes of UTF-8: grows the buffer
      'x'.repeat(5000),
      'abc', // after growing
    ];
    for (const m of messages) {
      expect(mac.macBase64Url(m)).toBe(ref(m).digest('base64url'));
      expect(mac.mac(m).equals(ref(m).digest())).toBe(true);
    }
    const bytes = new Uint8Array(randomBytes(9000));
    expect(mac.mac(bytes).equals(ref(bytes).digest())).toBe(true);
    expect(mac.macRangeBase64Url(bytes, 100, 700)).toBe(ref(bytes.subarray(100, 700)).digest('base64url'));
    // A key longer than the block is hashed first (RFC 2104 §2).
    const long = new Uint8Array(randomBytes(100));
    expect(new AuditHmac(long).macBase64Url('m')).toBe(createHmac('sha256', long).update('m').digest('base64url'));
  });
});
