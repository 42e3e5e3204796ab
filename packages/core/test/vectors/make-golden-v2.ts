/**
 * Generator of golden-v2.json: envelope format v2 test vectors (docs/format.md §4.10, §9).
 *
 * TEST VECTORS ONLY. Every key, nonce and id here is a counting pattern (00 01 02 …), chosen to be
 * obviously fake; none of it is, or may ever be used as, a real key.
 *
 * The envelopes use the inputs of golden-v1.json (same KEK, DEKs, nonces, message ids, contexts), so
 * their wrapped DEKs equal the v1 vectors' byte for byte and only the version byte, the key
 * schedule and the authenticated header differ. `rewraps` replace the wrapped DEK of two of them by a
 * wrap of the same DEK under another version of the same KEK id: the body must stay byte-identical.
 * The signed vector is deterministic up to its ECDSA signature (see make-golden-signed.ts).
 *
 * test/golden-v2.test.ts compares the implementation with the COMMITTED file and never writes it.
 * Regenerate only when docs/format.md changes on purpose, then review the diff:
 *
 *   cd packages/core
 *   npx tsc --outDir /tmp/kw-golden --rootDir . --module nodenext --moduleResolution nodenext \
 *     --target es2022 --types node --skipLibCheck test/vectors/make-golden-v2.ts
 *   node /tmp/kw-golden/test/vectors/make-golden-v2.js test/vectors/golden-v2.json
 */
import { writeFileSync } from 'node:fs';
import { pathToFileURL } from 'node:url';
import { SUITE_DEK_XAES256GCM, wrapDataKey } from '../../src/data-key.js';
import { ENVELOPE_VERSION_2, envelopeToText, parseHeader, replaceWrappedKey } from '../../src/envelope.js';
import {
  GOLDEN_INPUTS,
  GOLDEN_KEK,
  type GoldenFile,
  type GoldenInputs,
  type GoldenVector,
  buildVector,
  counting,
  fromHex,
  hex,
} from './make-golden.js';
import { SIGNED_GOLDEN_INPUTS, type SignedGoldenVector, buildSignedVector } from './make-golden-signed.js';

/** The version a rewrap moves the golden envelopes to (same KEK id, other material). */
export const GOLDEN_KEK_NEXT = { keyId: GOLDEN_KEK.keyId, version: 4, material: hex(counting(0x20, 32)) };

export interface RewrapInputs {
  name: string;
  /** Index into `vectors`: the envelope being rewrapped. */
  from: number;
  /** 24 bytes: the new wrap is "KWK" suite 0x02 under GOLDEN_KEK_NEXT. */
  wrapNonce: string;
}

export interface RewrapVector extends RewrapInputs {
  wrappedKey: string;
  header: string;
  envelope: string;
  text: string;
}

export interface GoldenV2File {
  description: string;
  spec: string;
  generator: string;
  kek: GoldenFile['kek'];
  kekNext: GoldenFile['kek'];
  vectors: GoldenVector[];
  signed: SignedGoldenVector[];
  rewraps: RewrapVector[];
}

export const V2_INPUTS: readonly GoldenInputs[] = GOLDEN_INPUTS.map((v) => ({ ...v, name: `v2, ${v.name}` }));

export const REWRAP_INPUTS: readonly RewrapInputs[] = [
  { name: 'rewrap of "v2, single-shot, with context" to version 4', from: 0, wrapNonce: hex(counting(0x30, 24)) },
  {
    name: 'rewrap of "v2, framed, with context, 2 regular frames + short final frame" to version 4',
    from: 2,
    wrapNonce: hex(counting(0x31, 24)),
  },
];

/** The rewrap of docs/format.md §4.10 with the real code: the same DEK wrapped under the next
 * version and the same context, the header rebuilt around it, the body appended unchanged. */
export function buildRewrapVector(vectors: readonly GoldenVector[], input: RewrapInputs): RewrapVector {
  const source = vectors[input.from] as GoldenVector;
  const envelope = fromHex(source.envelope);
  const header = parseHeader(envelope);
  const wrapped = wrapDataKey(
    fromHex(GOLDEN_KEK_NEXT.material),
    GOLDEN_KEK_NEXT,
    fromHex(source.dek),
    source.context,
    fromHex(input.wrapNonce),
    SUITE_DEK_XAES256GCM,
  );
  const next = replaceWrappedKey(header, wrapped);
  const out = new Uint8Array([...next, ...envelope.subarray(header.bytes.length)]);
  return { ...input, wrappedKey: hex(wrapped), header: hex(next), envelope: hex(out), text: envelopeToText(out) };
}

export async function buildGoldenV2File(): Promise<GoldenV2File> {
  const vectors: GoldenVector[] = [];
  for (const input of V2_INPUTS) vectors.push(await buildVector(GOLDEN_KEK, input, ENVELOPE_VERSION_2));
  const signed: SignedGoldenVector[] = [];
  for (const input of SIGNED_GOLDEN_INPUTS.slice(0, 1)) {
    signed.push(await buildSignedVector(GOLDEN_KEK, { ...input, name: `v2, ${input.name}` }, ENVELOPE_VERSION_2));
  }
  return {
    description:
      'Keywarden envelope format v2 golden vectors. TEST VECTORS ONLY: every key, nonce and id is an ' +
      'obviously fake counting pattern, not a real key. Made by make-golden-v2.ts with the real envelope code; ' +
      'the layout is checked independently (raw node:crypto) by test/golden-v2.test.ts. Do not edit by hand.',
    spec: 'docs/format.md §4.10',
    generator: 'packages/core/test/vectors/make-golden-v2.ts',
    kek: GOLDEN_KEK,
    kekNext: GOLDEN_KEK_NEXT,
    vectors,
    signed,
    rewraps: REWRAP_INPUTS.map((input) => buildRewrapVector(vectors, input)),
  };
}

export function serializeGoldenV2File(file: GoldenV2File): string {
  return `${JSON.stringify(file, null, 2)}\n`;
}

const entry = process.argv[1];
if (entry !== undefined && import.meta.url === pathToFileURL(entry).href) {
  const out = process.argv[2];
  if (!out) {
    console.error('usage: node make-golden-v2.js <path/to/golden-v2.json>');
    process.exit(2);
  }
  writeFileSync(out, serializeGoldenV2File(await buildGoldenV2File()));
  console.log(`wrote ${out}`);
}
