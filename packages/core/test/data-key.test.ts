/**
 * Wrapped data keys (src/data-key.ts, docs/format.md §2): suite 0x02 (XAES-256-GCM, every new
 * wrap) and suite 0x01 (AES-256-GCM, unwrap of old data). Strict parsing per suite, every
 * single-bit flip refused, wrong context / KEK / version refused, and the key manager's wraps
 * checked against the C2SP-vector-checked derivation (test/xaes.test.ts) from outside the code.
 */
import { randomBytes } from 'node:crypto';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { xaesOpen } from '../src/_xaes.js';
import { encodeContext } from '../src/context.js';
import {
  DEFAULT_WRAP_SUITE,
  MAX_WRAPPED_KEY_BYTES,
  MIN_WRAPPED_KEY_BYTES,
  parseWrappedKey,
  SUITE_DEK_AES256GCM,
  SUITE_DEK_XAES256GCM,
  unwrapDataKey,
  WRAP_NONCE_BYTES,
  type WrapSuite,
  wrapDataKey,
  wrappedKeyLength,
} from '../src/data-key.js';
import { decryptEnvelope, encryptEnvelope, headerLengthFromPrefix } from '../src/envelope.js';
import {
  DecryptionError,
  FormatError,
  InvalidInputError,
  KeyNotFoundError,
  UnexpectedKeyError,
} from '../src/errors.js';
import { Keywarden } from '../src/keywarden.js';
import { MemoryKeyStore } from '../src/memory-store.js';
import { SoftwareRoot } from '../src/software-root.js';
import { StaticKekProvider, wrapNonceBytes } from './vectors/make-golden.js';

const rand = (n: number) => new Uint8Array(randomBytes(n));
const SUITES: readonly WrapSuite[] = [SUITE_DEK_XAES256GCM, SUITE_DEK_AES256GCM];
const CONTEXT = { tenant: 'acme', table: 'users' };

/** Throws or returns; what it throws is the test's business. */
function outcome(f: () => unknown): unknown {
  try {
    f();
    return 'ok';
  } catch (e) {
    return e;
  }
}

function wrapFresh(suite: WrapSuite, keyId = 'kek_test', version = 7) {
  const kek = rand(32);
  const dek = rand(32);
  const nonce = rand(wrapNonceBytes(suite));
  const wrapped = wrapDataKey(kek, { keyId, version }, dek, CONTEXT, nonce, suite);
  return { kek, dek, nonce, wrapped, keyId, version };
}

describe('wrap suites and bounds (docs/format.md §2)', () => {
  it('new wraps use suite 0x02 with a 24-byte nonce unless 0x01 is asked for', () => {
    expect(DEFAULT_WRAP_SUITE).toBe(SUITE_DEK_XAES256GCM);
    expect(WRAP_NONCE_BYTES).toBe(24);
    const kek = rand(32);
    const wrapped = wrapDataKey(kek, { keyId: 'k', version: 1 }, rand(32), undefined, rand(24));
    expect(wrapped[4]).toBe(0x02);
    expect(wrapped.length).toBe(83);
  });

  it('a blob is exactly 82 + L bytes in suite 0x02 and 70 + L in suite 0x01: 71..146 overall', () => {
    for (const idLen of [1, 17, 64]) {
      expect(wrappedKeyLength(SUITE_DEK_XAES256GCM, idLen)).toBe(82 + idLen);
      expect(wrappedKeyLength(SUITE_DEK_AES256GCM, idLen)).toBe(70 + idLen);
      for (const suite of SUITES)
        expect(wrapFresh(suite, 'k'.repeat(idLen)).wrapped.length).toBe(wrappedKeyLength(suite, idLen));
    }
    expect([MIN_WRAPPED_KEY_BYTES, MAX_WRAPPED_KEY_BYTES]).toEqual([71, 146]);
  });

  it('the envelope header accepts W = 71 and 146 and refuses 70 and 147 from the first 8 bytes (§4.1)', () => {
    const prefix = (w: number) => Uint8Array.of(0x4b, 0x57, 0x45, 0x01, 0x01, 0x00, w >> 8, w & 0xff);
    expect(headerLengthFromPrefix(prefix(71))).toBe(72 + 71);
    expect(headerLengthFromPrefix(prefix(146))).toBe(72 + 146);
    for (const w of [70, 147])
      expect(FormatError.isInstance(outcome(() => headerLengthFromPrefix(prefix(w))))).toBe(true);
  });

  it('wrapDataKey refuses a nonce of the other suite length and an unknown suite (InvalidInputError)', () => {
    const kek = rand(32);
    const ref = { keyId: 'k', version: 1 };
    expect(() => wrapDataKey(kek, ref, rand(32), undefined, rand(12))).toThrow(InvalidInputError);
    expect(() => wrapDataKey(kek, ref, rand(32), undefined, rand(24), SUITE_DEK_AES256GCM)).toThrow(InvalidInputError);
    expect(() => wrapDataKey(kek, ref, rand(32), undefined, rand(24), 3 as WrapSuite)).toThrow(InvalidInputError);
    expect(() => wrapDataKey(kek, ref, rand(31), undefined, rand(24))).toThrow(InvalidInputError);
  });
});

for (const suite of SUITES) {
  describe(`suite 0x0${suite}: strict parsing and tamper resistance`, () => {
    it('round-trips any DEK, KEK id, version and context (property)', () => {
      fc.assert(
        fc.property(
          fc.uint8Array({ minLength: 32, maxLength: 32 }),
          fc.stringMatching(/^[A-Za-z0-9_-]{1,64}$/),
          fc.integer({ min: 1, max: 0xffffffff }),
          fc.dictionary(fc.string({ minLength: 1, maxLength: 8 }), fc.string({ maxLength: 8 }), { maxKeys: 4 }),
          (dek, keyId, version, context) => {
            const kek = rand(32);
            const wrapped = wrapDataKey(kek, { keyId, version }, dek, context, rand(wrapNonceBytes(suite)), suite);
            const parsed = parseWrappedKey(wrapped);
            expect([parsed.suite, parsed.keyId, parsed.version]).toEqual([suite, keyId, version]);
            expect(unwrapDataKey(kek, parsed, context)).toEqual(dek);
          },
        ),
        { numRuns: 200 },
      );
    });

    it('every single-bit flip is refused (FormatError or DecryptionError), never unwrapped', () => {
      const { kek, wrapped } = wrapFresh(suite);
      const counts = { format: 0, decrypt: 0 };
      for (let bit = 0; bit < wrapped.length * 8; bit++) {
        const bad = wrapped.slice();
        bad[bit >> 3]! ^= 1 << (bit & 7);
        const r = outcome(() => unwrapDataKey(kek, parseWrappedKey(bad), CONTEXT));
        if (FormatError.isInstance(r)) counts.format++;
        else if (DecryptionError.isInstance(r)) counts.decrypt++;
        else throw new Error(`bit ${bit}: not refused (${String(r)})`);
      }
      expect(counts.format + counts.decrypt).toBe(wrapped.length * 8);
      // Nonce and sealed DEK flips reach the AEAD, which is what refuses them.
      expect(counts.decrypt).toBeGreaterThanOrEqual((wrapped.length - 10 - 8) * 8);
    });

    it('every truncation and every extension is a FormatError before anything is unwrapped', () => {
      const { wrapped } = wrapFresh(suite);
      for (let n = 0; n < wrapped.length; n++) {
        expect(FormatError.isInstance(outcome(() => parseWrappedKey(wrapped.subarray(0, n))))).toBe(true);
      }
      for (const extra of [1, 12, 24]) {
        const longer = new Uint8Array(wrapped.length + extra);
        longer.set(wrapped);
        expect(FormatError.isInstance(outcome(() => parseWrappedKey(longer)))).toBe(true);
      }
    });

    it('the suite byte cannot be changed: another known suite has another exact length, an unknown one is refused', () => {
      const { wrapped } = wrapFresh(suite);
      for (const other of [0x00, 0x01, 0x02, 0x03, 0xff].filter((s) => s !== suite)) {
        const bad = wrapped.slice();
        bad[4] = other;
        expect(FormatError.isInstance(outcome(() => parseWrappedKey(bad)))).toBe(true);
      }
    });

    it('another context, KEK, KEK version or KEK id does not unwrap it (DecryptionError)', () => {
      const { kek, wrapped, keyId, version, dek } = wrapFresh(suite);
      const parsed = parseWrappedKey(wrapped);
      expect(unwrapDataKey(kek, parsed, CONTEXT)).toEqual(dek);
      const refused = (f: () => unknown) => expect(DecryptionError.isInstance(outcome(f))).toBe(true);
      refused(() => unwrapDataKey(kek, parsed, { ...CONTEXT, tenant: 'evil' }));
      refused(() => unwrapDataKey(kek, parsed, undefined));
      refused(() => unwrapDataKey(rand(32), parsed, CONTEXT));
      // The same sealed bytes relabelled with another version or id (same length) do not unwrap.
      const relabel = (mutate: (b: Uint8Array) => void) => {
        const b = wrapped.slice();
        mutate(b);
        return parseWrappedKey(b);
      };
      const versionOffset = 6 + keyId.length;
      refused(() =>
        unwrapDataKey(
          kek,
          relabel((b) => new DataView(b.buffer).setUint32(versionOffset, version + 1)),
          CONTEXT,
        ),
      );
      refused(() =>
        unwrapDataKey(
          kek,
          relabel((b) => b.set([0x4a], 6)),
          CONTEXT,
        ),
      ); // "kek_test" → "Kek_test"
    });
  });
}

describe('envelopes carry either suite (the envelope suite stays 0x01)', () => {
  for (const suite of SUITES) {
    it(`an envelope whose DEK is wrapped with suite 0x0${suite} decrypts, and not under another context`, async () => {
      const provider = StaticKekProvider.withRandomKek('kek_env', 3, suite);
      const plaintext = rand(100);
      const envelope = await encryptEnvelope(provider, plaintext, { key: 'kek_env', context: CONTEXT });
      expect(envelope[8 + 4]).toBe(suite); // "KWK" suite byte inside the header
      expect(await decryptEnvelope(provider, envelope, { key: 'kek_env', context: CONTEXT })).toEqual(plaintext);
      const wrong = await decryptEnvelope(provider, envelope, { key: 'kek_env', context: { tenant: 'evil' } }).catch(
        (e: unknown) => e,
      );
      expect(DecryptionError.isInstance(wrong)).toBe(true);
    });
  }

  it('every single-bit flip of an envelope with a suite 0x02 wrapped DEK is refused (format, expected key or authentication)', async () => {
    const provider = StaticKekProvider.withRandomKek('kek_env', 3, SUITE_DEK_XAES256GCM);
    const envelope = await encryptEnvelope(provider, rand(40), { key: 'kek_env', context: CONTEXT });
    let refused = 0;
    for (let bit = 0; bit < envelope.length * 8; bit++) {
      const bad = envelope.slice();
      bad[bit >> 3]! ^= 1 << (bit & 7);
      const r = await decryptEnvelope(provider, bad, { key: 'kek_env', context: CONTEXT }).catch((e: unknown) => e);
      // A flipped KEK id names a key that is not the expected one, a flipped version one the
      // provider does not have: both refused before any unwrap.
      const known = [FormatError, DecryptionError, UnexpectedKeyError, KeyNotFoundError];
      if (known.some((k) => k.isInstance(r))) refused++;
      else throw new Error(`bit ${bit}: not refused (${String(r)})`);
    }
    expect(refused).toBe(envelope.length * 8);
  });
});

describe('Keywarden wraps new data keys with suite 0x02 (no wrap budget to count)', () => {
  async function setup() {
    const store = new MemoryKeyStore();
    const root = await SoftwareRoot.initialize(store, { unsealKey: rand(32) });
    const kw = new Keywarden({ store, root });
    const material = rand(32);
    const info = await kw.importKey('tenant-a', material);
    return { store, root, kw, material, info };
  }

  it('generateDataKey returns a suite 0x02 blob that opens with XAES-256-GCM under the KEK, from outside data-key.ts', async () => {
    const { kw, material, info } = await setup();
    const dk = await kw.generateDataKey('tenant-a', CONTEXT);
    const w = dk.wrapped;
    const idLen = info.id.length;
    expect(w[4]).toBe(0x02);
    expect(w.length).toBe(82 + idLen);
    // docs/format.md §2 by hand: header [0, 10+L), nonce (24), sealed (48); AAD = header ‖ context.
    const header = w.subarray(0, 10 + idLen);
    const nonce = w.subarray(10 + idLen, 34 + idLen);
    const opened = xaesOpen(
      material,
      nonce,
      w.subarray(34 + idLen),
      new Uint8Array([...header, ...encodeContext(CONTEXT)]),
    );
    expect(opened).toEqual(dk.plaintext);
    expect(await kw.decryptDataKey(w, CONTEXT, { key: info.id })).toEqual(dk.plaintext);
    await kw.close();
  });

  it('data keys wrapped with suite 0x01 before the upgrade still decrypt, and only under their context', async () => {
    const { kw, material, info } = await setup();
    const dek = rand(32);
    const old = wrapDataKey(material, { keyId: info.id, version: 1 }, dek, CONTEXT, rand(12), SUITE_DEK_AES256GCM);
    expect(old[4]).toBe(0x01);
    expect(await kw.decryptDataKey(old, CONTEXT, { key: info.id })).toEqual(dek);
    const wrong = await kw.decryptDataKey(old, { tenant: 'evil' }, { key: info.id }).catch((e: unknown) => e);
    expect(DecryptionError.isInstance(wrong)).toBe(true);
    await kw.close();
  });

  it('two instances over one store (two processes, or one restarted) wrap with independent random nonces and read each other', async () => {
    const { store, root, kw, info } = await setup();
    const other = new Keywarden({ store, root });
    const a = await kw.generateDataKey(info.id, CONTEXT);
    const b = await other.generateDataKey(info.id, CONTEXT);
    expect(await other.decryptDataKey(a.wrapped, CONTEXT, { key: info.id })).toEqual(a.plaintext);
    expect(await kw.decryptDataKey(b.wrapped, CONTEXT, { key: info.id })).toEqual(b.plaintext);
    expect([a.wrapped[4], b.wrapped[4]]).toEqual([0x02, 0x02]);
    await other.close();
  });
});
