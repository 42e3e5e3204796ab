/**
 * Encryption context encoding (docs/format.md §3), contract: "two equal contexts always encode
 * identically, and two different contexts never do". Issue 16 items 4 and 5: a context must be a
 * plain object of well-formed strings.
 */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { encodeContext, type EncryptionContext, parseContextPairs } from '../src/context.js';
import { decryptEnvelope, encryptEnvelope } from '../src/envelope.js';
import { InvalidInputError } from '../src/errors.js';
import { createEncryptStream } from '../src/stream.js';
import { StaticKekProvider } from './vectors/make-golden.js';

const KEY = 'ctx-kek';
const isWellFormed = (s: string) => (s as string & { isWellFormed(): boolean }).isWellFormed();
const hex = (b: Uint8Array) => Buffer.from(b).toString('hex');
const refused = (context: unknown) => () => encodeContext(context as EncryptionContext);

class TenantContext {
  tenant = 'acme';
}

describe('a context is a plain object of string values (item 5: no fail-open on other objects)', () => {
  const notPlain: Array<[string, unknown]> = [
    ['a Map', new Map([['tenant', 'acme']])],
    ['an empty Map', new Map()],
    ['a class instance', new TenantContext()],
    ['an array', ['tenant', 'acme']],
    ['a function', Object.assign(() => 0, { tenant: 'acme' })],
    ['a Date', new Date(0)],
    ['a boxed string', Object('acme')],
    ['a Set', new Set(['tenant'])],
    ['an object whose prototype is another plain object', Object.create({ tenant: 'acme' })],
    ['null', null],
    ['a string', 'tenant=acme'],
  ];
  for (const [what, value] of notPlain) {
    it(`refuses ${what} with InvalidInputError`, () => {
      expect(refused(value)).toThrow(InvalidInputError);
    });
  }

  it('refuses symbol keys (they would be skipped and the context would encode as less than given)', () => {
    expect(refused({ tenant: 'acme', [Symbol('x')]: 'y' })).toThrow(InvalidInputError);
  });

  it('accepts a plain object, a null-prototype object (parseContextPairs) and a frozen object', () => {
    const expected = hex(encodeContext({ tenant: 'acme' }));
    const bare = Object.assign(Object.create(null), { tenant: 'acme' }) as EncryptionContext;
    expect(hex(encodeContext(bare))).toBe(expected);
    expect(hex(encodeContext(parseContextPairs(['tenant=acme'])))).toBe(expected);
    expect(hex(encodeContext(Object.freeze({ tenant: 'acme' })))).toBe(expected);
  });

  it('an envelope cannot be made with a Map as context (it used to encode as the empty context)', async () => {
    const provider = StaticKekProvider.withRandomKek(KEY);
    const context = new Map([['tenant', 'acme']]) as unknown as EncryptionContext;
    await expect(encryptEnvelope(provider, Uint8Array.of(1), { key: KEY, context })).rejects.toSatisfy(
      InvalidInputError.isInstance,
    );
    expect(() => createEncryptStream(provider, { key: KEY, context })).toThrow(InvalidInputError);
    // …nor opened with one: a Map would otherwise match an envelope made with no context.
    const envelope = await encryptEnvelope(provider, Uint8Array.of(1), { key: KEY });
    await expect(decryptEnvelope(provider, envelope, { context, key: KEY })).rejects.toSatisfy(
      InvalidInputError.isInstance,
    );
  });
});

describe('context strings are well-formed UTF-16 (item 4: no collisions through U+FFFD)', () => {
  it('two contexts that differ only in a lone surrogate are refused, not encoded alike', () => {
    expect(refused({ tenant: '\ud800' })).toThrow(InvalidInputError);
    expect(refused({ tenant: '\udc00' })).toThrow(InvalidInputError);
    expect(refused({ tenant: 'a\ud83d' })).toThrow(InvalidInputError); // high surrogate at the end
    // The same text with U+FFFD itself is fine (well-formed) and is its own context.
    expect(encodeContext({ tenant: '\ufffd' }).length).toBe(2 + 2 + 6 + 2 + 3);
  });

  it('keys with lone surrogates are refused (they would encode as duplicate keys)', () => {
    expect(refused({ '\ud800': 'x', '\udc00': 'y' })).toThrow(InvalidInputError);
    expect(refused({ ['k\udfff']: 'v' })).toThrow(InvalidInputError);
  });

  it('a surrogate pair (an astral character) is well-formed and accepted', () => {
    expect(encodeContext({ emoji: '\ud83d\udd11' })).toEqual(encodeContext({ emoji: '🔑' }));
  });

  it('NFC and NFD spellings are different contexts: strings are not normalized', async () => {
    const nfc = 'caf\u00e9';
    const nfd = 'cafe\u0301';
    expect(nfc.normalize('NFD')).toBe(nfd);
    expect(hex(encodeContext({ name: nfc }))).not.toBe(hex(encodeContext({ name: nfd })));
    const provider = StaticKekProvider.withRandomKek(KEY);
    const envelope = await encryptEnvelope(provider, Uint8Array.of(7), { key: KEY, context: { name: nfc } });
    await expect(decryptEnvelope(provider, envelope, { context: { name: nfd }, key: KEY })).rejects.toThrow(
      /decryption failed/,
    );
    expect(await decryptEnvelope(provider, envelope, { context: { name: nfc }, key: KEY })).toEqual(Uint8Array.of(7));
  });

  it('property: a context of arbitrary UTF-16 code units is refused exactly when a string is not well-formed', () => {
    const codeUnit = fc.integer({ min: 0, max: 0xffff }).map((c) => String.fromCharCode(c));
    const str = fc.string({ unit: codeUnit, minLength: 1, maxLength: 6 });
    fc.assert(
      fc.property(fc.dictionary(str, fc.string({ unit: codeUnit, maxLength: 6 }), { maxKeys: 4 }), (ctx) => {
        const wellFormed = Object.entries(ctx).every(([k, v]) => isWellFormed(k) && isWellFormed(v));
        if (wellFormed) expect(() => encodeContext(ctx)).not.toThrow();
        else expect(() => encodeContext(ctx)).toThrow(InvalidInputError);
      }),
      { numRuns: 500 },
    );
  });

  it('property: two well-formed contexts encode alike exactly when they are equal', () => {
    const str = fc.string({ unit: 'binary', maxLength: 5 });
    const ctx = fc.dictionary(
      str.filter((k) => k.length > 0),
      str,
      { maxKeys: 3 },
    );
    const canonical = (c: Record<string, string>) =>
      JSON.stringify(Object.entries(c).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)));
    fc.assert(
      fc.property(ctx, ctx, (a, b) => {
        expect(hex(encodeContext(a)) === hex(encodeContext(b))).toBe(canonical(a) === canonical(b));
      }),
      { numRuns: 500 },
    );
  });
});
