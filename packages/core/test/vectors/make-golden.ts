/**
 * Generator of golden-v1.json: envelope format v1 and wrapped-key test vectors (docs/format.md §9).
 *
 * TEST VECTORS ONLY. Every key, nonce and id here is a counting pattern (00 01 02 …), chosen to be
 * obviously fake; none of it is, or may ever be used as, a real key.
 *
 * The test (test/golden.test.ts) compares the implementation against the COMMITTED json file and
 * never writes it. Regenerate only when docs/format.md changes on purpose, then review the diff:
 *
 *   cd packages/core
 *   npx tsc --outDir /tmp/kw-golden --rootDir . --module nodenext --moduleResolution nodenext \
 *     --target es2022 --types node --skipLibCheck test/vectors/make-golden.ts
 *   node /tmp/kw-golden/test/vectors/make-golden.js test/vectors/golden-v1.json
 *
 * This module also exports StaticKekProvider, the DataKeyProvider the envelope tests use: it holds
 * raw KEK material per key id and calls the real wrapDataKey/unwrapDataKey of data-key.ts.
 */
import { randomBytes } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { pathToFileURL } from 'node:url';
import type { EncryptionContext } from '../../src/context.js';
import { xaesDeriveKey } from '../../src/_xaes.js';
import { encodeContext } from '../../src/context.js';
import {
  parseWrappedKey,
  SUITE_DEK_AES256GCM,
  SUITE_DEK_XAES256GCM,
  unwrapDataKey,
  wrapDataKey,
  type DataKey,
  type DataKeyProvider,
  type KekRef,
  type WrapSuite,
} from '../../src/data-key.js';
import { createEncryptStreamForTestVectors, encryptEnvelopeForTestVectors } from '../../src/_testing.js';
import {
  deriveMessageKeys,
  ENVELOPE_VERSION_1,
  ENVELOPE_VERSION_2,
  type EnvelopeFormatVersion,
  envelopeToText,
  parseHeader,
} from '../../src/envelope.js';
import { KeyNotFoundError, UnexpectedKeyError } from '../../src/errors.js';
import { checkKeyExpectation, type KeyExpectation } from '../../src/key-expectation.js';

type Random = (length: number) => Uint8Array;

const osRandom: Random = (n) => new Uint8Array(randomBytes(n));

export interface TestKek extends KekRef {
  material: Uint8Array;
}

/**
 * A real DataKeyProvider over fixed KEK material (one version per key id). DEKs and wrap nonces
 * come from `random` (the OS CSPRNG unless a test injects fixed values). Unknown key ids or
 * versions throw KeyNotFoundError, as a key manager would.
 *
 * It wraps with `suite`, by default 0x01: the envelope tests and the first golden vectors pin
 * header lengths and scripted 12-byte wrap nonces of that suite. Keywarden itself wraps with 0x02
 * (test/data-key.test.ts runs the envelope through both); unwrapping accepts either suite.
 */
export class StaticKekProvider implements DataKeyProvider {
  private readonly keks = new Map<string, TestKek>();

  constructor(
    keks: readonly TestKek[],
    private readonly random: Random = osRandom,
    private readonly suite: WrapSuite = SUITE_DEK_AES256GCM,
  ) {
    for (const k of keks) this.keks.set(k.keyId, k);
  }

  /** A provider with one fresh random 32-byte KEK. */
  static withRandomKek(keyId = 'test-kek', version = 1, suite: WrapSuite = SUITE_DEK_AES256GCM): StaticKekProvider {
    return new StaticKekProvider([{ keyId, version, material: osRandom(32) }], osRandom, suite);
  }

  async generateDataKey(key: string, context?: EncryptionContext): Promise<DataKey> {
    const kek = this.keks.get(key);
    if (!kek) throw new KeyNotFoundError(`test provider: no key "${key}"`);
    const dek = this.random(32);
    const nonce = this.random(wrapNonceBytes(this.suite));
    const wrapped = wrapDataKey(kek.material, kek, dek, context, nonce, this.suite);
    return { plaintext: dek, wrapped, keyId: kek.keyId, version: kek.version };
  }

  /** Honours the DataKeyProvider contract: `expected` is checked before any KEK is used. Key ids
   * are this provider's only names. */
  async decryptDataKey(
    wrapped: Uint8Array,
    context: EncryptionContext | undefined,
    expected: KeyExpectation,
  ): Promise<Uint8Array> {
    const allowed = checkKeyExpectation(expected, 'test provider');
    const parsed = parseWrappedKey(wrapped);
    if (allowed !== null && !allowed.includes(parsed.keyId)) {
      throw new UnexpectedKeyError(`test provider: the data key is wrapped under ${parsed.keyId}, not an expected key`);
    }
    const kek = this.keks.get(parsed.keyId);
    if (!kek || kek.version !== parsed.version) {
      throw new KeyNotFoundError(`test provider: no key "${parsed.keyId}" version ${parsed.version}`);
    }
    return unwrapDataKey(kek.material, parsed, context);
  }
}

// ---------------------------------------------------------------------------------------------

export const hex = (b: Uint8Array): string => Buffer.from(b).toString('hex');

/** docs/format.md §2: the nonce length of each wrap suite. */
export function wrapNonceBytes(suite: WrapSuite): number {
  return suite === SUITE_DEK_XAES256GCM ? 24 : 12;
}
export const fromHex = (s: string): Uint8Array => new Uint8Array(Buffer.from(s, 'hex'));

/** start, start+1, … (mod 256): obviously not random, obviously not a real key. */
export function counting(start: number, length: number): Uint8Array {
  return Uint8Array.from({ length }, (_, i) => (start + i) & 0xff);
}

/**
 * A random source that hands out exactly the given values, in order, each as a fresh copy (the
 * code under test wipes what it is given). Any other request is a bug in the vector definition.
 */
export function scriptedRandom(values: readonly Uint8Array[]): Random {
  let i = 0;
  return (length) => {
    const next = values[i++];
    if (!next || next.length !== length) throw new Error(`scripted random: unexpected request #${i} for ${length} bytes`);
    return next.slice();
  };
}

/** The inputs of one vector. */
export interface GoldenInputs {
  name: string;
  mode: 'single-shot' | 'framed';
  frameSize?: number;
  context: Record<string, string>;
  plaintext: string;
  dek: string;
  /** 12 bytes for wrap suite 0x01, 24 for 0x02. */
  wrapNonce: string;
  messageId: string;
  /** single-shot only */
  nonce?: string;
  /** The "KWK" suite of the wrapped DEK; absent in the first vectors, which are suite 0x01. */
  wrapSuite?: WrapSuite;
}

/** Inputs plus every expected output and intermediate value. */
export interface GoldenVector extends GoldenInputs {
  wrappedKey: string;
  encKey: string;
  commitment: string;
  header: string;
  /** Format v2 only (golden-v2.json): the authenticated header of docs/format.md §4.10. */
  authHeader?: string;
  envelope: string;
  text: string;
}

/** One wrapped data key ("KWK", docs/format.md §2) under the golden KEK material. */
export interface WrappedKeyInputs {
  name: string;
  suite: WrapSuite;
  keyId: string;
  version: number;
  context: Record<string, string>;
  dek: string;
  nonce: string;
}

export interface WrappedKeyVector extends WrappedKeyInputs {
  /** bytes [0, 10+L) ‖ encodeContext(context) */
  aad: string;
  /** Suite 0x02 only: the XAES-256-GCM subkey Kₓ, derived from the KEK and nonce[0, 12). */
  derivedKey?: string;
  wrapped: string;
}

export interface GoldenFile {
  description: string;
  spec: string;
  generator: string;
  kek: { keyId: string; version: number; material: string };
  vectors: GoldenVector[];
  wrappedKeys: WrappedKeyVector[];
}

export const GOLDEN_KEK = { keyId: 'golden-test_kek', version: 3, material: hex(counting(0x00, 32)) };

function inputs(
  index: number,
  name: string,
  mode: 'single-shot' | 'framed',
  context: Record<string, string>,
  plaintext: Uint8Array,
  frameSize?: number,
  wrapSuite: WrapSuite = SUITE_DEK_AES256GCM,
): GoldenInputs {
  const v: GoldenInputs = {
    name,
    mode,
    context,
    plaintext: hex(plaintext),
    dek: hex(counting(0x40 + index, 32)),
    wrapNonce: hex(counting(0xa0 + index, wrapNonceBytes(wrapSuite))),
    messageId: hex(counting(0x80 + index, 32)),
  };
  if (mode === 'single-shot') v.nonce = hex(counting(0xc0 + index, 12));
  else v.frameSize = frameSize as number;
  // Only the suite 0x02 vectors carry the field, so the first five stay byte-identical.
  if (wrapSuite !== SUITE_DEK_AES256GCM) v.wrapSuite = wrapSuite;
  return v;
}

const CONTEXT = { tenant: 'acme', purpose: 'golden-vector', 'table.column': 'users.ssn' };

export const GOLDEN_INPUTS: readonly GoldenInputs[] = [
  inputs(0, 'single-shot, with context', 'single-shot', CONTEXT, new TextEncoder().encode('Keywarden envelope v1')),
  inputs(1, 'single-shot, empty context, empty plaintext', 'single-shot', {}, new Uint8Array(0)),
  inputs(2, 'framed, with context, 2 regular frames + short final frame', 'framed', CONTEXT, counting(0, 2500), 1024),
  inputs(3, 'framed, empty context, plaintext exactly 2 frames (full final frame)', 'framed', {}, counting(7, 2048), 1024),
  inputs(4, 'framed, empty context, empty plaintext (one empty final frame)', 'framed', {}, new Uint8Array(0), 1024),
  inputs(
    5,
    'single-shot, with context, DEK wrapped with suite 0x02 (XAES-256-GCM)',
    'single-shot',
    CONTEXT,
    new TextEncoder().encode('Keywarden envelope v1, wrap suite 0x02'),
    undefined,
    SUITE_DEK_XAES256GCM,
  ),
  inputs(
    6,
    'framed, empty context, 2 regular frames + short final frame, DEK wrapped with suite 0x02 (XAES-256-GCM)',
    'framed',
    {},
    counting(3, 2100),
    1024,
    SUITE_DEK_XAES256GCM,
  ),
];

function wrappedKeyInputs(
  index: number,
  suite: WrapSuite,
  keyId: string,
  version: number,
  context: Record<string, string>,
): WrappedKeyInputs {
  const ctx = Object.keys(context).length > 0 ? 'with context' : 'empty context';
  return {
    name: `suite 0x0${suite}, ${keyId.length}-character KEK id, version ${version}, ${ctx}`,
    suite,
    keyId,
    version,
    context,
    dek: hex(counting(0x50 + index, 32)),
    nonce: hex(counting(0xe0 + index, wrapNonceBytes(suite))),
  };
}

const LONGEST_KEY_ID = 'kek_ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456-';

/** Both suites at both ends of the KEK id length (1 and 64 bytes): the 83, 146, 71 and 134-byte
 * lengths of docs/format.md §2. */
export const WRAPPED_KEY_INPUTS: readonly WrappedKeyInputs[] = [
  wrappedKeyInputs(0, SUITE_DEK_XAES256GCM, 'k', 1, CONTEXT),
  wrappedKeyInputs(1, SUITE_DEK_XAES256GCM, LONGEST_KEY_ID, 0xffffffff, {}),
  wrappedKeyInputs(2, SUITE_DEK_AES256GCM, 'k', 1, CONTEXT),
  wrappedKeyInputs(3, SUITE_DEK_AES256GCM, LONGEST_KEY_ID, 0xffffffff, {}),
];

function kekFromFile(kek: GoldenFile['kek']): TestKek {
  return { keyId: kek.keyId, version: kek.version, material: fromHex(kek.material) };
}

/** Deterministically build one vector from its inputs with the real envelope code. */
/** `formatVersion` 1 for golden-v1.json (byte-identical to the published file), 2 for golden-v2.json. */
export async function buildVector(
  kek: GoldenFile['kek'],
  input: GoldenInputs,
  formatVersion: EnvelopeFormatVersion = ENVELOPE_VERSION_1,
): Promise<GoldenVector> {
  const dek = fromHex(input.dek);
  const provider = new StaticKekProvider(
    [kekFromFile(kek)],
    scriptedRandom([dek, fromHex(input.wrapNonce)]),
    input.wrapSuite ?? SUITE_DEK_AES256GCM,
  );
  const plaintext = fromHex(input.plaintext);
  const options = { key: kek.keyId, context: input.context };
  let envelope: Uint8Array;
  if (input.mode === 'single-shot') {
    const random = scriptedRandom([fromHex(input.messageId), fromHex(input.nonce as string)]);
    envelope = await encryptEnvelopeForTestVectors(provider, plaintext, options, random, formatVersion);
  } else {
    const random = scriptedRandom([fromHex(input.messageId)]);
    const encryptor = createEncryptStreamForTestVectors(
      provider,
      { ...options, frameSize: input.frameSize as number },
      random,
      formatVersion,
    );
    const chunks: Uint8Array[] = [];
    await pipeline(Readable.from(plaintext.length > 0 ? [Buffer.from(plaintext)] : []), encryptor, async (source) => {
      for await (const chunk of source) chunks.push(chunk as Uint8Array);
    });
    envelope = new Uint8Array(Buffer.concat(chunks));
  }
  const header = parseHeader(envelope);
  const keys = deriveMessageKeys(
    fromHex(input.dek),
    fromHex(input.messageId),
    header.suite,
    header.formatVersion,
    header.keyId,
  );
  return {
    ...input,
    wrappedKey: hex(header.wrappedKey),
    encKey: hex(keys.encKey),
    commitment: hex(keys.commitment),
    header: hex(header.bytes),
    // Format v2 only: what the body authenticates in place of the header (docs/format.md §4.10).
    ...(formatVersion === ENVELOPE_VERSION_2 ? { authHeader: hex(header.authBytes) } : {}),
    envelope: hex(envelope),
    text: envelopeToText(envelope),
  };
}

/** Deterministically build one wrapped-key vector with the real data-key.ts. */
export function buildWrappedKeyVector(kek: GoldenFile['kek'], input: WrappedKeyInputs): WrappedKeyVector {
  const material = fromHex(kek.material);
  const ref = { keyId: input.keyId, version: input.version };
  const nonce = fromHex(input.nonce);
  const wrapped = wrapDataKey(material, ref, fromHex(input.dek), input.context, nonce, input.suite);
  const header = parseWrappedKey(wrapped).header;
  return {
    ...input,
    aad: hex(header) + hex(encodeContext(input.context)),
    ...(input.suite === SUITE_DEK_XAES256GCM ? { derivedKey: hex(xaesDeriveKey(material, nonce)) } : {}),
    wrapped: hex(wrapped),
  };
}

export async function buildGoldenFile(): Promise<GoldenFile> {
  const vectors: GoldenVector[] = [];
  for (const input of GOLDEN_INPUTS) vectors.push(await buildVector(GOLDEN_KEK, input));
  const wrappedKeys = WRAPPED_KEY_INPUTS.map((input) => buildWrappedKeyVector(GOLDEN_KEK, input));
  return {
    description:
      'Keywarden envelope format v1 golden vectors. TEST VECTORS ONLY: every key, nonce and id is an ' +
      'obviously fake counting pattern, not a real key. Made by make-golden.ts with the real envelope code; ' +
      'the layout is checked independently (raw node:crypto) by test/golden.test.ts. Do not edit by hand.',
    spec: 'docs/format.md',
    generator: 'packages/core/test/vectors/make-golden.ts',
    kek: GOLDEN_KEK,
    vectors,
    wrappedKeys,
  };
}

export function serializeGoldenFile(file: GoldenFile): string {
  return `${JSON.stringify(file, null, 2)}\n`;
}

const entry = process.argv[1];
if (entry !== undefined && import.meta.url === pathToFileURL(entry).href) {
  const out = process.argv[2];
  if (!out) {
    console.error('usage: node make-golden.js <path/to/golden-v1.json>');
    process.exit(2);
  }
  writeFileSync(out, serializeGoldenFile(await buildGoldenFile()));
  console.log(`wrote ${out}`);
}
