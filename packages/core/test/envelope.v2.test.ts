/**
 * Envelope format v2 (docs/format.md §4.10): the wrapped DEK is outside what the body
 * authenticates, so a header can be replaced (rewrap) while the body stays byte-identical; the body
 * stays bound to the context, to the DEK (key commitment) and to the KEK id. Each test splices
 * headers by hand (raw bytes, not replaceWrappedKey) to play the attacker who may wrap data keys.
 */
import { randomBytes } from 'node:crypto';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { describe, expect, it } from 'vitest';
import { concatBytes } from '../src/_bytes.js';
import { encryptEnvelopeForTestVectors } from '../src/_testing.js';
import type { EncryptionContext } from '../src/context.js';
import { type DataKey, type DataKeyProvider, SUITE_DEK_XAES256GCM, wrapDataKey } from '../src/data-key.js';
import { decryptEnvelope, encryptEnvelope, inspectEnvelope, parseHeader, replaceWrappedKey } from '../src/envelope.js';
import { verificationKeyContextValue } from '../src/_signature.js';
import { DecryptionError, FormatError, UnexpectedKeyError } from '../src/errors.js';
import type { KeyExpectation } from '../src/key-expectation.js';
import { createDecryptStream, createEncryptStream } from '../src/stream.js';
import { StaticKekProvider, type TestKek } from './vectors/make-golden.js';

const CONTEXT = { tenant: 'acme', table: 'orders' };
const rnd = (n: number) => new Uint8Array(randomBytes(n));

/** A provider over several KEK versions (id:version → material), keeping a copy of every DEK it
 * hands out, as an attacker who may unwrap would have. */
class MultiVersionProvider implements DataKeyProvider {
  readonly keks = new Map<string, TestKek>();
  readonly primary = new Map<string, number>();
  readonly deks: Uint8Array[] = [];
  add(keyId: string, version: number): TestKek {
    const kek = { keyId, version, material: rnd(32) };
    this.keks.set(`${keyId}:${version}`, kek);
    this.primary.set(keyId, version);
    return kek;
  }
  wrap(keyId: string, version: number, dek: Uint8Array, context: EncryptionContext | undefined): Uint8Array {
    const kek = this.keks.get(`${keyId}:${version}`) as TestKek;
    return wrapDataKey(kek.material, kek, dek, context, rnd(24), SUITE_DEK_XAES256GCM);
  }
  async generateDataKey(key: string, context?: EncryptionContext): Promise<DataKey> {
    const version = this.primary.get(key) as number;
    const dek = rnd(32);
    this.deks.push(dek.slice());
    return { plaintext: dek, wrapped: this.wrap(key, version, dek, context), keyId: key, version };
  }
  async decryptDataKey(
    wrapped: Uint8Array,
    context: EncryptionContext | undefined,
    expected: KeyExpectation,
  ): Promise<Uint8Array> {
    const { keyId, version } = (await import('../src/data-key.js')).parseWrappedKey(wrapped);
    const allowed = 'key' in expected ? [expected.key].flat() : null;
    if (allowed && !allowed.includes(keyId)) throw new UnexpectedKeyError(`test provider: ${keyId} not expected`);
    const kek = this.keks.get(`${keyId}:${version}`) as TestKek;
    const single = new StaticKekProvider([kek]);
    return single.decryptDataKey(wrapped, context, { key: keyId });
  }
}

/** The header with its wrapped DEK replaced, spliced by hand (u16 W ‖ wrapped DEK at offset 6). */
function splice(envelope: Uint8Array, wrapped: Uint8Array): Uint8Array {
  const w = (envelope[6]! << 8) | envelope[7]!;
  return concatBytes(
    envelope.subarray(0, 6),
    Uint8Array.of(wrapped.length >> 8, wrapped.length & 0xff),
    wrapped,
    envelope.subarray(8 + w),
  );
}

function bodyOf(envelope: Uint8Array): Uint8Array {
  return envelope.subarray(parseHeader(envelope).bytes.length);
}

async function rejection(p: Promise<unknown>): Promise<unknown> {
  try {
    await p;
  } catch (err) {
    return err;
  }
  throw new Error('expected a rejection');
}

async function run(stream: NodeJS.ReadWriteStream, input: Uint8Array): Promise<Uint8Array> {
  const out: Buffer[] = [];
  await pipeline(Readable.from([Buffer.from(input)]), stream, async (source) => {
    for await (const c of source) out.push(c as Buffer);
  });
  return new Uint8Array(Buffer.concat(out));
}

function setup() {
  const p = new MultiVersionProvider();
  p.add('ka', 1);
  p.add('kb', 1);
  return p;
}

describe('format v2 is what encrypt writes (docs/format.md §4.10)', () => {
  it('encrypt and the encrypt stream write version byte 0x02 in the v1 layout; inspect says formatVersion 2', async () => {
    const p = setup();
    const env = await encryptEnvelope(p, rnd(10), { key: 'ka', context: CONTEXT });
    expect(env[3]).toBe(0x02);
    expect(inspectEnvelope(env).formatVersion).toBe(2);
    expect(parseHeader(env).bytes.length).toBe(72 + parseHeader(env).wrappedKey.length);
    const framed = await run(createEncryptStream(p, { key: 'ka', context: CONTEXT, frameSize: 1024 }), rnd(3000));
    expect(framed[3]).toBe(0x02);
    expect(await run(createDecryptStream(p, { key: 'ka', context: CONTEXT }), framed)).toHaveLength(3000);
  });

  it('format v1 still decrypts beside it (written here by the test-vector encoder)', async () => {
    const p = setup();
    const plain = rnd(50);
    const v1 = await encryptEnvelopeForTestVectors(p, plain, { key: 'ka', context: CONTEXT }, rnd, 1);
    expect(v1[3]).toBe(0x01);
    expect(await decryptEnvelope(p, v1, { key: 'ka', context: CONTEXT })).toEqual(plain);
  });
});

describe('the wrapped DEK can be replaced; the body is byte-identical (docs/format.md §4.10)', () => {
  it('single-shot: a wrap of the same DEK under another version of the same KEK decrypts, body unchanged', async () => {
    const p = setup();
    const plain = rnd(100);
    const env = await encryptEnvelope(p, plain, { key: 'ka', context: CONTEXT });
    p.add('ka', 2);
    const moved = splice(env, p.wrap('ka', 2, p.deks[0]!, CONTEXT));
    expect(inspectEnvelope(moved).keyVersion).toBe(2);
    expect(bodyOf(moved)).toEqual(bodyOf(env));
    expect(await decryptEnvelope(p, moved, { key: 'ka', context: CONTEXT })).toEqual(plain);
  });

  it('framed: the same through the decrypt stream, every frame unchanged', async () => {
    const p = setup();
    const plain = rnd(5000);
    const env = await run(createEncryptStream(p, { key: 'ka', context: CONTEXT, frameSize: 1024 }), plain);
    p.add('ka', 2);
    const moved = splice(env, p.wrap('ka', 2, p.deks[0]!, CONTEXT));
    expect(bodyOf(moved)).toEqual(bodyOf(env));
    expect(await run(createDecryptStream(p, { key: 'ka', context: CONTEXT }), moved)).toEqual(plain);
  });

  it('signed: the signature still verifies when the DEK is wrapped again under the context plus the same verification key', async () => {
    const p = setup();
    const plain = rnd(40);
    const env = await encryptEnvelope(p, plain, { key: 'ka', context: CONTEXT, signed: true });
    const vk = parseHeader(env).verificationKey as Uint8Array;
    p.add('ka', 2);
    const wrapContext = { ...CONTEXT, 'keywarden:verification-key': verificationKeyContextValue(vk) };
    const moved = splice(env, p.wrap('ka', 2, p.deks[0]!, wrapContext));
    expect(await decryptEnvelope(p, moved, { key: 'ka', context: CONTEXT, requireSigned: true })).toEqual(plain);
    // Without the verification-key pair the wrap does not name vk (§4.9): refused.
    const unbound = splice(env, p.wrap('ka', 2, p.deks[0]!, CONTEXT));
    expect(
      DecryptionError.isInstance(await rejection(decryptEnvelope(p, unbound, { key: 'ka', context: CONTEXT }))),
    ).toBe(true);
  });

  it('replaceWrappedKey keeps every other header field and refuses a v1 header or a wrap under another KEK id', async () => {
    const p = setup();
    const env = await encryptEnvelope(p, rnd(10), { key: 'ka', context: CONTEXT });
    p.add('ka', 2);
    const header = parseHeader(env);
    const next = parseHeader(replaceWrappedKey(header, p.wrap('ka', 2, p.deks[0]!, CONTEXT)));
    expect(next.authBytes).toEqual(header.authBytes);
    expect(next.keyVersion).toBe(2);
    expect(() => replaceWrappedKey(header, p.wrap('kb', 1, p.deks[0]!, CONTEXT))).toThrow(/another KEK/);
    const v1 = parseHeader(await encryptEnvelopeForTestVectors(p, rnd(3), { key: 'ka' }, rnd, 1));
    expect(() => replaceWrappedKey(v1, p.wrap('ka', 2, p.deks[1]!, undefined))).toThrow(FormatError);
  });
});

describe('what a replaced header cannot do (docs/format.md §4.10, threat model A7/A8)', () => {
  it('a wrap of ANOTHER DEK under the same KEK (anyone who may encrypt can make one) is a DecryptionError: the commitment binds the DEK', async () => {
    const p = setup();
    const env = await encryptEnvelope(p, rnd(30), { key: 'ka', context: CONTEXT });
    const other = await p.generateDataKey('ka', CONTEXT);
    const forged = splice(env, other.wrapped);
    expect(
      DecryptionError.isInstance(await rejection(decryptEnvelope(p, forged, { key: 'ka', context: CONTEXT }))),
    ).toBe(true);
  });

  it('a wrap of the SAME DEK under another KEK id is a DecryptionError even when both keys are expected: the KEK id is bound', async () => {
    const p = setup();
    const env = await encryptEnvelope(p, rnd(30), { key: 'ka', context: CONTEXT });
    const moved = splice(env, p.wrap('kb', 1, p.deks[0]!, CONTEXT));
    const err = await rejection(decryptEnvelope(p, moved, { key: ['ka', 'kb'], context: CONTEXT }));
    expect(DecryptionError.isInstance(err)).toBe(true);
    // And with only the original key expected, it is refused before any KEK is used.
    const unexpected = await rejection(decryptEnvelope(p, moved, { key: 'ka', context: CONTEXT }));
    expect(UnexpectedKeyError.isInstance(unexpected)).toBe(true);
  });

  it('the same DEK wrapped under another context is a DecryptionError under either context: the body binds the context', async () => {
    const p = setup();
    const env = await encryptEnvelope(p, rnd(30), { key: 'ka', context: CONTEXT });
    const other = { tenant: 'evil', table: 'orders' };
    const moved = splice(env, p.wrap('ka', 1, p.deks[0]!, other));
    for (const context of [CONTEXT, other]) {
      expect(DecryptionError.isInstance(await rejection(decryptEnvelope(p, moved, { key: 'ka', context })))).toBe(true);
    }
  });

  it('the version byte changed (2 → 1 on a v2 envelope, 1 → 2 on a v1 one) is a DecryptionError: v1 and v2 never share a key', async () => {
    const p = setup();
    const plain = rnd(30);
    const v2 = await encryptEnvelope(p, plain, { key: 'ka', context: CONTEXT });
    const v1 = await encryptEnvelopeForTestVectors(p, plain, { key: 'ka', context: CONTEXT }, rnd, 1);
    for (const [env, to] of [
      [v2, 1],
      [v1, 2],
    ] as const) {
      const changed = env.slice();
      changed[3] = to;
      expect(
        DecryptionError.isInstance(await rejection(decryptEnvelope(p, changed, { key: 'ka', context: CONTEXT }))),
      ).toBe(true);
    }
  });

  it("another envelope's header on this body is a DecryptionError (message id and commitment differ)", async () => {
    const p = setup();
    const a = await encryptEnvelope(p, rnd(30), { key: 'ka', context: CONTEXT });
    const b = await encryptEnvelope(p, rnd(30), { key: 'ka', context: CONTEXT });
    const mixed = concatBytes(a.subarray(0, parseHeader(a).bytes.length), bodyOf(b));
    expect(
      DecryptionError.isInstance(await rejection(decryptEnvelope(p, mixed, { key: 'ka', context: CONTEXT }))),
    ).toBe(true);
  });
});
