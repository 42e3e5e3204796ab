/**
 * NodeRandomSource (random.ts): small requests come from a pool refilled by randomFillSync. Contract:
 * every request gets exactly its length, in a buffer of its own; no bytes are ever handed out twice
 * (across pool refills too); the bytes handed out are zeroed in the pool; large requests bypass it.
 */
import { describe, expect, it } from 'vitest';
import { InvalidInputError, NodeRandomSource } from '../src/index.js';

const hex = (b: Uint8Array) => Buffer.from(b).toString('hex');

describe('NodeRandomSource', () => {
  it('hands out exactly the requested length, a fresh buffer each time, never the same bytes twice (20 000 draws, many refills)', () => {
    const r = new NodeRandomSource();
    const seen = new Set<string>();
    const buffers = new Set<ArrayBufferLike>();
    for (let i = 0; i < 20_000; i++) {
      const n = [12, 24, 32, 64, 7][i % 5] as number;
      const b = r.randomBytesSync(n);
      expect(b).toBeInstanceOf(Uint8Array);
      expect(b.length).toBe(n);
      expect(b.byteOffset).toBe(0);
      expect(b.buffer.byteLength).toBe(n); // its own buffer, not a view into the pool
      buffers.add(b.buffer);
      if (n >= 12) seen.add(hex(b));
    }
    expect(buffers.size).toBe(20_000);
    expect(seen.size).toBe(16_000);
  });

  it('wiping a buffer that was handed out changes no other output', () => {
    const r = new NodeRandomSource();
    const a = r.randomBytesSync(32);
    const b = r.randomBytesSync(32);
    const before = hex(b);
    a.fill(0);
    expect(hex(b)).toBe(before);
    expect(hex(r.randomBytesSync(32))).not.toBe('00'.repeat(32));
  });

  it('output is not all zeros and looks uniform (byte frequencies over 64 KiB of 32-byte draws)', () => {
    const r = new NodeRandomSource();
    const counts = new Array(256).fill(0);
    for (let i = 0; i < 2048; i++) for (const x of r.randomBytesSync(32)) counts[x]++;
    // 65 536 bytes: 256 per value expected; a working CSPRNG stays far inside 128..400.
    expect(Math.min(...counts)).toBeGreaterThan(128);
    expect(Math.max(...counts)).toBeLessThan(400);
  });

  it('large requests and the async form work; lengths are checked', async () => {
    const r = new NodeRandomSource();
    expect(r.randomBytesSync(65_536).length).toBe(65_536);
    expect((await r.randomBytes(24)).length).toBe(24);
    expect(() => r.randomBytesSync(0)).toThrow(InvalidInputError);
    expect(() => r.randomBytesSync(65_537)).toThrow(InvalidInputError);
  });
});
