/**
 * Envelope format v1, single-shot API, header codec, text form and inspection (src/envelope.ts).
 * Test names repeat the contract of docs/format.md §4–§7. Framed streaming is in stream.test.ts,
 * tampering properties in envelope.property.test.ts, golden vectors in golden.test.ts.
 */
import { randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { concatBytes } from '../src/_bytes.js';
import { encryptEnvelopeForTestVectors } from '../src/_testing.js';
import { gcmSeal } from '../src/aead.js';
import { encodeContext, type EncryptionContext } from '../src/context.js';
import type { DataKey, DataKeyProvider } from '../src/data-key.js';
import type { KeyExpectation } from '../src/key-expectation.js';
import {
  MAX_SINGLE_SHOT_PLAINTEXT,
  decryptEnvelope,
  deriveMessageKeys,
  encryptEnvelope,
  envelopeFromText,
  envelopeToText,
  inspectEnvelope,
  parseHeader,
} from '../src/envelope.js';
import { DecryptionError, FormatError, InvalidInputError, KeyNotFoundError } from '../src/errors.js';
import { createEncryptStream } from '../src/stream.js';
import { StaticKekProvider, counting, scriptedRandom } from './vectors/make-golden.js';

const KEY = 'orders-kek';

/** Wraps a real provider, counts calls and keeps every DEK it hands out (to check wiping). */
class RecordingProvider implements DataKeyProvider {
  generated = 0;
  unwrapped = 0;
  readonly deks: Uint8Array[] = [];
  constructor(readonly inner: DataKeyProvider) {}
  async generateDataKey(key: string, context?: EncryptionContext): Promise<DataKey> {
    this.generated++;
    const dk = await this.inner.generateDataKey(key, context);
    this.deks.push(dk.plaintext);
    return dk;
  }
  async decryptDataKey(
    wrapped: Uint8Array,
    context: EncryptionContext | undefined,
    expected: KeyExpectation,
  ): Promise<Uint8Array> {
    this.unwrapped++;
    const dek = await this.inner.decryptDataKey(wrapped, context, expected);
    this.deks.push(dek);
    return dek;
  }
}

const provider = StaticKekProvider.withRandomKek(KEY);

async function rejection(p: Promise<unknown>): Promise<unknown> {
  try {
    await p;
  } catch (err) {
    return err;
  }
  throw new Error('expected a rejection');
}

function expectFormatError(err: unknown, pattern?: RegExp): void {
  expect(FormatError.isInstance(err)).toBe(true);
  const message = (err as Error).message;
  expect(message).toMatch(/^envelope: /);
  expect(message).not.toMatch(/\n/);
  if (pattern) expect(message).toMatch(pattern);
}

function withByte(bytes: Uint8Array, index: number, value: number): Uint8Array {
  const copy = bytes.slice();
  copy[index] = value;
  return copy;
}

describe('encryptEnvelope / decryptEnvelope (single-shot)', () => {
  it.each([0, 1, 15, 16, 17, 1000, 100_000])('round-trips %i bytes', async (n) => {
    const plaintext = counting(n, n);
    const envelope = await encryptEnvelope(provider, plaintext, { key: KEY, context: { tenant: 't1' } });
    const back = await decryptEnvelope(provider, envelope, { key: KEY, context: { tenant: 't1' } });
    expect(Buffer.compare(back, plaintext)).toBe(0); // (toEqual is slow on large arrays)
  });

  it('envelope size is header + 12-byte nonce + plaintext + 16-byte tag (no padding)', async () => {
    const envelope = await encryptEnvelope(provider, new Uint8Array(100), { key: KEY });
    const header = parseHeader(envelope);
    expect(header.bytes.length).toBe(72 + 70 + KEY.length);
    expect(envelope.length).toBe(header.bytes.length + 12 + 100 + 16);
  });

  it('every message gets a fresh DEK, message id and nonce', async () => {
    const a = await encryptEnvelope(provider, new Uint8Array(32), { key: KEY });
    const b = await encryptEnvelope(provider, new Uint8Array(32), { key: KEY });
    const ha = parseHeader(a);
    const hb = parseHeader(b);
    expect(ha.wrappedKey).not.toEqual(hb.wrappedKey);
    expect(ha.messageId).not.toEqual(hb.messageId);
    expect(ha.commitment).not.toEqual(hb.commitment);
  });

  it('an absent context and an empty context are the same context', async () => {
    const envelope = await encryptEnvelope(provider, Uint8Array.of(1, 2, 3), { key: KEY, context: {} });
    expect(await decryptEnvelope(provider, envelope, { key: KEY })).toEqual(Uint8Array.of(1, 2, 3));
    expect(await decryptEnvelope(provider, envelope, { key: KEY })).toEqual(Uint8Array.of(1, 2, 3));
  });

  it('the order in which context pairs are written does not matter (canonical encoding)', async () => {
    const envelope = await encryptEnvelope(provider, Uint8Array.of(9), { key: KEY, context: { a: '1', b: '2' } });
    expect(await decryptEnvelope(provider, envelope, { key: KEY, context: { b: '2', a: '1' } })).toEqual(
      Uint8Array.of(9),
    );
  });
});

describe('the encryption context is authenticated and not stored', () => {
  const context = { tenant: 'acme', table: 'users' };

  it('is not stored in the envelope', async () => {
    const envelope = await encryptEnvelope(provider, new Uint8Array(8), { key: KEY, context });
    expect(Buffer.from(envelope).includes(Buffer.from('acme'))).toBe(false);
    expect(Buffer.from(envelope).includes(Buffer.from('tenant'))).toBe(false);
  });

  it.each([
    ['a wrong value', { tenant: 'acme', table: 'orders' }],
    ['a missing pair', { tenant: 'acme' }],
    ['an extra pair', { tenant: 'acme', table: 'users', region: 'eu' }],
    ['no context at all', undefined],
    ['a renamed key', { tenant: 'acme', Table: 'users' }],
  ])('decrypting with %s is a DecryptionError', async (_what, other) => {
    const envelope = await encryptEnvelope(provider, new Uint8Array(8), { key: KEY, context });
    const err = await rejection(decryptEnvelope(provider, envelope, { key: KEY, context: other }));
    expect(DecryptionError.isInstance(err)).toBe(true);
  });

  it('a context given only at decryption is a DecryptionError', async () => {
    const envelope = await encryptEnvelope(provider, new Uint8Array(8), { key: KEY });
    expect(
      DecryptionError.isInstance(await rejection(decryptEnvelope(provider, envelope, { key: KEY, context }))),
    ).toBe(true);
  });
});

describe('keys', () => {
  it('another KEK under the same id and version is a DecryptionError', async () => {
    const envelope = await encryptEnvelope(provider, new Uint8Array(8), { key: KEY });
    const other = StaticKekProvider.withRandomKek(KEY);
    expect(DecryptionError.isInstance(await rejection(decryptEnvelope(other, envelope, { key: KEY })))).toBe(true);
  });

  it('a provider that does not know the KEK reports that (operational errors pass through)', async () => {
    const envelope = await encryptEnvelope(provider, new Uint8Array(8), { key: KEY });
    const other = StaticKekProvider.withRandomKek('another-kek');
    expect(KeyNotFoundError.isInstance(await rejection(decryptEnvelope(other, envelope, { key: KEY })))).toBe(true);
  });

  it('every authentication failure has the same DecryptionError message', async () => {
    const envelope = await encryptEnvelope(provider, new Uint8Array(64), { key: KEY, context: { a: 'b' } });
    const h = parseHeader(envelope).bytes.length;
    const failures = [
      decryptEnvelope(provider, envelope, { key: KEY, context: { a: 'c' } }), // DEK unwrap
      decryptEnvelope(StaticKekProvider.withRandomKek(KEY), envelope, { key: KEY, context: { a: 'b' } }), // other KEK
      decryptEnvelope(provider, withByte(envelope, h - 1, envelope[h - 1]! ^ 1), { key: KEY, context: { a: 'b' } }), // commitment
      decryptEnvelope(provider, withByte(envelope, h + 20, envelope[h + 20]! ^ 1), { key: KEY, context: { a: 'b' } }), // body
      decryptEnvelope(provider, withByte(envelope, envelope.length - 1, envelope.at(-1)! ^ 1), {
        key: KEY,
        context: { a: 'b' },
      }), // tag
    ];
    const messages = new Set<string>();
    for (const p of failures) {
      const err = await rejection(p);
      expect(DecryptionError.isInstance(err)).toBe(true);
      messages.add((err as Error).message);
    }
    expect([...messages]).toEqual([new DecryptionError('envelope').message]);
  });
});

describe('key commitment (docs/format.md §4.2)', () => {
  const dek = counting(0x40, 32);
  const messageId = counting(0x80, 32);
  const nonce = counting(0xc0, 12);
  const fixedProvider = () =>
    new StaticKekProvider([{ keyId: KEY, version: 1, material: counting(0, 32) }], scriptedRandom([dek, nonce]));

  /** Re-seal the body under the real message key with `header` as AAD: only the commitment can object. */
  async function resealWithHeader(mutate: (header: Uint8Array) => void): Promise<Uint8Array> {
    const random = scriptedRandom([messageId, nonce]);
    // Format v1, whose AAD is the header itself (v2: test/envelope.v2.test.ts).
    const good = await encryptEnvelopeForTestVectors(fixedProvider(), Uint8Array.of(1, 2, 3), { key: KEY }, random, 1);
    const header = parseHeader(good).bytes.slice();
    mutate(header);
    const { encKey } = deriveMessageKeys(dek, messageId, 1);
    const sealed = gcmSeal(encKey, nonce, Uint8Array.of(1, 2, 3), concatBytes(header, encodeContext(undefined)));
    return concatBytes(header, nonce, sealed);
  }

  it('control: a re-sealed envelope with the true commitment decrypts', async () => {
    const envelope = await resealWithHeader(() => {});
    expect(await decryptEnvelope(fixedProvider(), envelope, { key: KEY })).toEqual(Uint8Array.of(1, 2, 3));
  });

  it('a correctly sealed body under a header with a wrong commitment is a DecryptionError', async () => {
    const envelope = await resealWithHeader((h) => {
      h[h.length - 1]! ^= 0x01;
    });
    expect(DecryptionError.isInstance(await rejection(decryptEnvelope(fixedProvider(), envelope, { key: KEY })))).toBe(
      true,
    );
  });

  it('the commitment is HKDF(DEK, message id, "keywarden/v1/commit" ‖ suite) and differs from the data key', () => {
    const keys = deriveMessageKeys(dek, messageId, 1);
    expect(keys.commitment).not.toEqual(keys.encKey);
    expect(deriveMessageKeys(dek, messageId, 2).commitment).not.toEqual(keys.commitment);
    expect(deriveMessageKeys(dek, counting(0x81, 32), 1).encKey).not.toEqual(keys.encKey);
  });
});

describe('secrets are wiped', () => {
  it('the DEK handed out by the provider is zeroed after encryption and after decryption', async () => {
    const recording = new RecordingProvider(provider);
    const envelope = await encryptEnvelope(recording, new Uint8Array(10), { key: KEY });
    await decryptEnvelope(recording, envelope, { key: KEY });
    expect(recording.deks).toHaveLength(2);
    for (const dek of recording.deks) expect(dek.every((b) => b === 0)).toBe(true);
  });

  it('the DEK is zeroed when the commitment check fails', async () => {
    const recording = new RecordingProvider(provider);
    const envelope = await encryptEnvelope(provider, new Uint8Array(10), { key: KEY });
    const h = parseHeader(envelope).bytes.length;
    await rejection(decryptEnvelope(recording, withByte(envelope, h - 1, envelope[h - 1]! ^ 1), { key: KEY }));
    expect(recording.deks).toHaveLength(1);
    expect(recording.deks[0]!.every((b) => b === 0)).toBe(true);
  });
});

describe('strict header parsing (docs/format.md §4.1)', () => {
  let sample: Uint8Array;
  const sampleOf = async () => (sample ??= await encryptEnvelope(provider, new Uint8Array(4), { key: KEY }));

  it.each([
    ['a bad magic', 0, 0x58, /bad magic/],
    ['an unknown format version', 3, 0x03, /unsupported format version 3/],
    ['format version 0', 3, 0x00, /unsupported format version 0/],
    ['an unknown suite', 4, 0x03, /unsupported suite 3/],
    ['suite 0', 4, 0x00, /unsupported suite 0/],
    ['an unknown mode', 5, 0x02, /unknown mode 2/],
  ])('%s is a FormatError', async (_what, index, value, pattern) => {
    const envelope = withByte(await sampleOf(), index, value);
    const recording = new RecordingProvider(provider);
    expectFormatError(await rejection(decryptEnvelope(recording, envelope, { key: KEY })), pattern);
    expectFormatError(
      rejectionSync(() => inspectEnvelope(envelope)),
      pattern,
    );
    expect(recording.unwrapped).toBe(0);
  });

  it.each([0, 1, 70, 147, 0x0100, 0xffff])(
    'a wrapped-DEK length of %i is a FormatError read from the first 8 bytes alone',
    async (w) => {
      const prefix = Uint8Array.of(0x4b, 0x57, 0x45, 0x01, 0x01, 0x00, w >> 8, w & 0xff);
      // Only 8 bytes: the length must be refused from the prefix, not reported as a truncation.
      expectFormatError(await rejection(decryptEnvelope(provider, prefix, { key: KEY })), /wrapped data key length/);
      expectFormatError(
        rejectionSync(() => inspectEnvelope(prefix)),
        /wrapped data key length/,
      );
    },
  );

  it('a wrapped-DEK length that disagrees with the wrapped key inside is a FormatError', async () => {
    const envelope = await sampleOf();
    const w = (envelope[6]! << 8) | envelope[7]!;
    for (const claimed of [w - 1, w + 1]) {
      const bad = concatBytes(
        envelope.subarray(0, 6),
        Uint8Array.of(claimed >> 8, claimed & 0xff),
        envelope.subarray(8),
      );
      expectFormatError(await rejection(decryptEnvelope(provider, bad, { key: KEY })));
    }
  });

  it('a malformed wrapped key inside the header is a FormatError', async () => {
    const envelope = withByte(await sampleOf(), 8, 0x00); // "KWK" magic of the wrapped key
    expectFormatError(await rejection(decryptEnvelope(provider, envelope, { key: KEY })), /invalid wrapped data key/);
  });

  it('every truncation of the header is a FormatError', async () => {
    const envelope = await sampleOf();
    const h = parseHeader(envelope).bytes.length;
    for (let n = 0; n < h; n++) {
      expectFormatError(await rejection(decryptEnvelope(provider, envelope.subarray(0, n), { key: KEY })), /truncated/);
    }
  });

  it('a single-shot body shorter than nonce + tag is a FormatError, without asking the provider', async () => {
    const envelope = await sampleOf();
    const h = parseHeader(envelope).bytes.length;
    const recording = new RecordingProvider(provider);
    for (const n of [0, 1, 27]) {
      expectFormatError(
        await rejection(decryptEnvelope(recording, envelope.subarray(0, h + n), { key: KEY })),
        /truncated/,
      );
    }
    expect(recording.unwrapped).toBe(0);
  });

  it.each([0, 1, 1023, 4 * 1024 * 1024 + 1, 0xffffffff])(
    'a framed header with frame size %i is a FormatError',
    async (frameSize) => {
      const single = await sampleOf();
      const h = parseHeader(single).bytes.length;
      const size = new Uint8Array(4);
      new DataView(size.buffer).setUint32(0, frameSize);
      const framed = concatBytes(withByte(single.subarray(0, h), 5, 0x01), size);
      expectFormatError(await rejection(decryptEnvelope(provider, framed, { key: KEY })), /frame size/);
    },
  );
});

function rejectionSync(fn: () => unknown): unknown {
  try {
    fn();
  } catch (err) {
    return err;
  }
  throw new Error('expected a throw');
}

describe('inspectEnvelope (docs/format.md §7)', () => {
  it('reads the non-secret header fields of a single-shot envelope without a key', async () => {
    const p = new StaticKekProvider([{ keyId: 'kek_01', version: 7, material: counting(3, 32) }]);
    const envelope = await encryptEnvelope(p, new Uint8Array(5), { key: 'kek_01', context: { a: 'b' } });
    expect(inspectEnvelope(envelope)).toEqual({
      formatVersion: 2,
      suite: 1,
      mode: 'single-shot',
      keyId: 'kek_01',
      keyVersion: 7,
    });
  });

  it('needs only the header bytes', async () => {
    const envelope = await encryptEnvelope(provider, new Uint8Array(5000), { key: KEY });
    const h = parseHeader(envelope).bytes.length;
    expect(inspectEnvelope(envelope.subarray(0, h)).keyId).toBe(KEY);
  });
});

describe('text form (docs/format.md §6)', () => {
  it('is "kw1." + unpadded base64url and round-trips', async () => {
    const envelope = await encryptEnvelope(provider, counting(0, 100), { key: KEY });
    const text = envelopeToText(envelope);
    expect(text).toMatch(/^kw1\.[A-Za-z0-9_-]+$/);
    expect(envelopeFromText(text)).toEqual(envelope);
    expect(await decryptEnvelope(provider, envelopeFromText(text), { key: KEY })).toEqual(counting(0, 100));
  });

  it.each([
    ['a wrong prefix', 'kw2.AAAA'],
    ['an upper-case prefix', 'KW1.AAAA'],
    ['no prefix', 'AAAA'],
    ['an empty body', 'kw1.'],
    ['padding', 'kw1.AA=='],
    ['standard base64 characters', 'kw1.AA+/'],
    ['whitespace', 'kw1.AAAA '],
    ['an impossible length', 'kw1.AAAAA'],
    ['non-zero unused bits', 'kw1.AB'],
  ])('rejects %s with a FormatError', (_what, text) => {
    expectFormatError(rejectionSync(() => envelopeFromText(text)));
  });

  it('rejects a non-string with InvalidInputError', () => {
    expect(InvalidInputError.isInstance(rejectionSync(() => envelopeFromText(42 as unknown as string)))).toBe(true);
  });
});

describe('caller input (InvalidInputError, checked before a DEK is generated)', () => {
  it.each([
    ['a string plaintext', () => encryptEnvelope(provider, 'secret' as unknown as Uint8Array, { key: KEY })],
    ['a missing key', () => encryptEnvelope(provider, new Uint8Array(1), {} as { key: string })],
    ['an empty key', () => encryptEnvelope(provider, new Uint8Array(1), { key: '' })],
    [
      'a context with a non-string value',
      () =>
        encryptEnvelope(provider, new Uint8Array(1), { key: KEY, context: { n: 1 } as unknown as EncryptionContext }),
    ],
    [
      'a random source returning the wrong length',
      () => encryptEnvelopeForTestVectors(provider, new Uint8Array(1), { key: KEY }, () => new Uint8Array(3)),
    ],
    ['a non-bytes envelope', () => decryptEnvelope(provider, 'kw1.AAAA' as unknown as Uint8Array, { key: KEY })],
  ])('%s', async (_what, run) => {
    expect(InvalidInputError.isInstance(await rejection(run()))).toBe(true);
  });

  it('plaintext over the single-shot limit is refused with a pointer to streaming', async () => {
    const recording = new RecordingProvider(provider);
    const err = await rejection(
      encryptEnvelope(recording, new Uint8Array(MAX_SINGLE_SHOT_PLAINTEXT + 1), { key: KEY }),
    );
    expect(InvalidInputError.isInstance(err)).toBe(true);
    expect((err as Error).message).toMatch(/createEncryptStream/);
    expect(recording.generated).toBe(0);
  });

  it('an unknown key name surfaces the provider error', async () => {
    expect(
      KeyNotFoundError.isInstance(await rejection(encryptEnvelope(provider, new Uint8Array(1), { key: 'nope' }))),
    ).toBe(true);
  });
});

describe('provider postconditions', () => {
  const base = StaticKekProvider.withRandomKek(KEY);
  it('a malformed wrapped key from the provider is a FormatError and the DEK is wiped', async () => {
    let dek: Uint8Array | undefined;
    const bad: DataKeyProvider = {
      async generateDataKey(key, context) {
        const dk = await base.generateDataKey(key, context);
        dek = dk.plaintext;
        return { ...dk, wrapped: dk.wrapped.subarray(1) };
      },
      decryptDataKey: (w, c, e) => base.decryptDataKey(w, c, e),
    };
    expectFormatError(await rejection(encryptEnvelope(bad, new Uint8Array(1), { key: KEY })), /provider/);
    expect(dek?.every((b) => b === 0)).toBe(true);
  });

  it('a DEK that is not 32 bytes is refused', async () => {
    const bad: DataKeyProvider = {
      async generateDataKey(key, context) {
        const dk = await base.generateDataKey(key, context);
        return { ...dk, plaintext: dk.plaintext.subarray(0, 16) };
      },
      async decryptDataKey(w, c, e) {
        return (await base.decryptDataKey(w, c, e)).subarray(0, 16);
      },
    };
    expect(InvalidInputError.isInstance(await rejection(encryptEnvelope(bad, new Uint8Array(1), { key: KEY })))).toBe(
      true,
    );
    const envelope = await encryptEnvelope(base, new Uint8Array(1), { key: KEY });
    expect(InvalidInputError.isInstance(await rejection(decryptEnvelope(bad, envelope, { key: KEY })))).toBe(true);
  });
});

describe('with the Keywarden key manager as the provider', () => {
  /** Loosely typed so that this file does not depend on the key manager's full API. */
  interface KeywardenLike extends DataKeyProvider {
    createKey(name: string): Promise<{ id: string }>;
  }
  interface CoreLike {
    Keywarden?: new (options: { store: unknown; root: unknown }) => KeywardenLike;
    SoftwareRoot?: { initialize(store: unknown, options: { unsealKey: Uint8Array }): Promise<unknown> };
    MemoryKeyStore?: new () => unknown;
  }

  it('round-trips, binds the context and names the KEK id and version in the header', async (ctx) => {
    const core = (await import('../src/index.js')) as unknown as CoreLike;
    if (!core.Keywarden || !core.SoftwareRoot || !core.MemoryKeyStore) return ctx.skip();
    const store = new core.MemoryKeyStore();
    const root = await core.SoftwareRoot.initialize(store, { unsealKey: new Uint8Array(randomBytes(32)) });
    const kw = new core.Keywarden({ store, root });
    const { id } = await kw.createKey('billing/tenant-a');
    const context = { tenant: 'a' };
    const envelope = await encryptEnvelope(kw, counting(0, 100), { key: 'billing/tenant-a', context });
    expect(await decryptEnvelope(kw, envelope, { key: 'billing/tenant-a', context })).toEqual(counting(0, 100));
    expect(inspectEnvelope(envelope)).toMatchObject({ keyId: id, keyVersion: 1 });
    expect(
      DecryptionError.isInstance(
        await rejection(decryptEnvelope(kw, envelope, { key: 'billing/tenant-a', context: { tenant: 'b' } })),
      ),
    ).toBe(true);
  });
});

describe('nonces and message ids come only from the CSPRNG in the published API (issue 16, item 6)', () => {
  const constant = (length: number) => new Uint8Array(length).fill(0x5a);
  type Loose = (...args: unknown[]) => unknown;

  it('encryptEnvelope has no random parameter: a constant source passed anyway is ignored', async () => {
    const a = await (encryptEnvelope as Loose)(provider, Uint8Array.of(1, 2, 3), { key: KEY }, constant);
    const b = await (encryptEnvelope as Loose)(provider, Uint8Array.of(1, 2, 3), { key: KEY }, constant);
    const ha = parseHeader(a as Uint8Array);
    const hb = parseHeader(b as Uint8Array);
    expect(ha.messageId).not.toEqual(constant(32));
    expect(ha.messageId).not.toEqual(hb.messageId);
    const nonceOf = (e: Uint8Array, h: { bytes: Uint8Array }) => e.subarray(h.bytes.length, h.bytes.length + 12);
    expect(nonceOf(a as Uint8Array, ha)).not.toEqual(constant(12));
  });

  it('createEncryptStream has no random parameter: a constant source passed anyway is ignored', async () => {
    const { Readable } = await import('node:stream');
    const { pipeline } = await import('node:stream/promises');
    const encryptOnce = async () => {
      const out: Buffer[] = [];
      const stream = (createEncryptStream as Loose)(provider, { key: KEY }, constant) as NodeJS.ReadWriteStream;
      await pipeline(Readable.from([Buffer.from('x')]), stream, async (src) => {
        for await (const c of src) out.push(c as Buffer);
      });
      return parseHeader(new Uint8Array(Buffer.concat(out))).messageId;
    };
    const [m1, m2] = [await encryptOnce(), await encryptOnce()];
    expect(m1).not.toEqual(constant(32));
    expect(m1).not.toEqual(m2);
  });

  it('the package index exports no deterministic encryption (the test-only module is internal)', async () => {
    const index = await import('../src/index.js');
    const names = Object.keys(index);
    expect(names.filter((n) => /ForTestVectors|WithRandom|defaultRandom|scripted/i.test(n))).toEqual([]);
    expect((index.encryptEnvelope as Loose).length).toBe(3);
    expect((index.createEncryptStream as Loose).length).toBe(2);
  });
});
