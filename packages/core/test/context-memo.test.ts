/**
 * encodeContextShared (context.ts): the data-key wrap and unwrap take a context object's encoding
 * from a one-entry memo when the caller passes the same object again. A hit must only ever give
 * what encodeContext gives for the object as it is now: every change made to the object between
 * two calls (a value, a key added, deleted or reordered, a non-string value, an inherited key, a
 * prototype, a symbol key) is seen, and a wrap made with a changed context does not open with the
 * old one.
 */
import { randomBytes } from 'node:crypto';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { ContextMemo, encodeContext, encodeContextShared } from '../src/context.js';
import { parseWrappedKey, unwrapDataKey, wrapDataKey } from '../src/data-key.js';
import { DecryptionError, InvalidInputError } from '../src/errors.js';

/** Either the bytes or the error's class and message: what a call gives. */
function outcome(f: () => Uint8Array): { bytes: string } | { error: string } {
  try {
    return { bytes: Buffer.from(f()).toString('hex') };
  } catch (err) {
    return { error: `${(err as Error).name}: ${(err as Error).message}` };
  }
}

type Mutation = (ctx: Record<string, unknown>) => void;

const mutations: Array<[string, Mutation]> = [
  ['a value changed', (c) => void (c.tenant = 'other')],
  ['a value changed to an equal-length string', (c) => void (c.tenant = 'acmf')],
  ['a key added', (c) => void (c.region = 'eu')],
  ['a key deleted', (c) => void delete c.purpose],
  [
    'the keys reordered',
    (c) => {
      const v = c.tenant;
      delete c.tenant;
      c.tenant = v;
    },
  ],
  ['a value that is not a string', (c) => void (c.tenant = 7)],
  ['a lone surrogate', (c) => void (c.tenant = '\ud800')],
  ['an empty key', (c) => void (c[''] = 'x')],
  ['a symbol key', (c) => void (c[Symbol('s') as unknown as string] = 'x')],
  ['a Map prototype', (c) => void Object.setPrototypeOf(c, Map.prototype)],
  ['an inherited enumerable key', (c) => void Object.setPrototypeOf(c, { inherited: 'x' })],
  ['a null prototype (still a plain context)', (c) => void Object.setPrototypeOf(c, null)],
  ['nothing', () => {}],
];

describe('encodeContextShared', () => {
  for (const [name, mutate] of mutations) {
    it(`sees ${name} between two calls with the same object`, () => {
      const ctx: Record<string, unknown> = { tenant: 'acme', purpose: 'billing' };
      expect(encodeContextShared(ctx as Record<string, string>)).toEqual(encodeContext(ctx as Record<string, string>));
      mutate(ctx);
      const shared = outcome(() => encodeContextShared(ctx as Record<string, string>));
      expect(shared).toEqual(outcome(() => encodeContext(ctx as Record<string, string>)));
      // And again (a second hit after the change).
      expect(outcome(() => encodeContextShared(ctx as Record<string, string>))).toEqual(shared);
    });
  }

  it('gives encodeContext’s bytes for random contexts, reused and fresh objects interleaved', () => {
    const value = fc.oneof(fc.string({ maxLength: 12 }), fc.constantFrom('acme', 'é', '🔑'));
    const ctx = fc.dictionary(fc.string({ minLength: 1, maxLength: 8 }), value, { maxKeys: 6 });
    fc.assert(
      fc.property(fc.array(fc.tuple(ctx, fc.boolean()), { minLength: 1, maxLength: 20 }), (steps) => {
        let kept: Record<string, string> = {};
        for (const [next, reuse] of steps) {
          if (reuse) {
            // The same object, its contents replaced in place.
            for (const k of Object.keys(kept)) delete kept[k];
            Object.assign(kept, next);
          } else kept = { ...next };
          expect(outcome(() => encodeContextShared(kept))).toEqual(outcome(() => encodeContext(kept)));
        }
      }),
      { numRuns: 500 },
    );
  });

  it('undefined is the empty context; a non-object is refused as by encodeContext', () => {
    expect(encodeContextShared(undefined)).toEqual(encodeContext(undefined));
    expect(() => encodeContextShared('tenant=acme' as unknown as Record<string, string>)).toThrow(InvalidInputError);
  });

  it('a data key wrapped under a context changed in place does not open with the context before', () => {
    const kek = new Uint8Array(randomBytes(32));
    const dek = new Uint8Array(randomBytes(32));
    const ctx: Record<string, string> = { tenant: 'acme', purpose: 'billing' };
    const ref = { keyId: 'kek_memo', version: 1 };
    const first = wrapDataKey(kek, ref, dek, ctx, new Uint8Array(randomBytes(24)));
    ctx.tenant = 'globex';
    const second = wrapDataKey(kek, ref, dek, ctx, new Uint8Array(randomBytes(24)));
    expect(unwrapDataKey(kek, parseWrappedKey(second), ctx)).toEqual(dek);
    expect(() => unwrapDataKey(kek, parseWrappedKey(first), ctx)).toThrow(DecryptionError);
    ctx.tenant = 'acme';
    expect(unwrapDataKey(kek, parseWrappedKey(first), ctx)).toEqual(dek);
    expect(() => unwrapDataKey(kek, parseWrappedKey(second), ctx)).toThrow(DecryptionError);
  });
});

describe('ContextMemo', () => {
  it('keeps nothing for a context holding a value that is not a string', () => {
    const memo = new ContextMemo<string>();
    const ctx = { a: 'x', b: 1 };
    memo.set(ctx, 'computed');
    expect(memo.get(ctx)).toBeUndefined();
  });

  it('holds one entry: another object is a miss, and replaces it once set', () => {
    const memo = new ContextMemo<string>();
    const a = { t: 'x' };
    const b = { t: 'x' };
    memo.set(a, 'A');
    expect(memo.get(a)).toBe('A');
    expect(memo.get(b)).toBeUndefined();
    memo.set(b, 'B');
    expect(memo.get(a)).toBeUndefined();
    expect(memo.get(b)).toBe('B');
  });
});
