/**
 * encodeContext's ASCII fast path (context.ts, utf8Bytes; issue 11 hot path) gives the same bytes as
 * the TextEncoder path: checked against a reference encoder written from docs/format.md §3 for
 * random contexts mixing ASCII, non-ASCII, astral characters and strings around the 64-unit
 * fast-path limit.
 */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { encodeContext } from '../src/context.js';

/** docs/format.md §3, with TextEncoder for every string. */
function reference(ctx: Record<string, string>): Uint8Array {
  const enc = new TextEncoder();
  const pairs = Object.entries(ctx)
    .map(([k, v]) => [enc.encode(k), enc.encode(v)] as const)
    .sort((a, b) => Buffer.compare(a[0], b[0]));
  const parts: number[] = [pairs.length >>> 8, pairs.length & 0xff];
  for (const [k, v] of pairs) parts.push(k.length >>> 8, k.length & 0xff, ...k, v.length >>> 8, v.length & 0xff, ...v);
  return Uint8Array.from(parts);
}

const text = fc.oneof(
  fc.string({ maxLength: 80 }),
  fc.string({ unit: 'grapheme', maxLength: 70 }),
  fc.constantFrom('a'.repeat(64), 'a'.repeat(65), `${'a'.repeat(63)}é`, 'tenant', '🔑', '\u007f', '\u0080'),
);

describe('encodeContext: ASCII fast path', () => {
  it('encodes exactly as the reference (TextEncoder) encoder, 2 000 random contexts', () => {
    fc.assert(
      fc.property(
        fc.dictionary(
          text.filter((k) => k.length > 0),
          text,
          { maxKeys: 6 },
        ),
        (ctx) => {
          const plain = Object.assign({}, ctx);
          expect(Buffer.from(encodeContext(plain)).toString('hex')).toBe(Buffer.from(reference(plain)).toString('hex'));
        },
      ),
      { numRuns: 2000 },
    );
  });
});
