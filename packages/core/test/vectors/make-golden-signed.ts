/**
 * Generator of golden-signed-v1.json: envelopes of the signed suite 0x02 (docs/format.md §4.9, §9).
 *
 * TEST VECTORS ONLY. Every key, nonce, id and the signing key are counting patterns (00 01 02 …),
 * obviously fake; none of it is, or may ever be used as, a real key.
 *
 * Everything but the signature is deterministic: the DEK, wrap nonce, message id, P-384 signing key
 * and single-shot nonce come from the scripted source. ECDSA signing draws its per-signature nonce k
 * inside OpenSSL, so each run signs differently: the committed file pins DECRYPTION (the committed
 * bytes must decrypt and verify) and every byte before the signature, and test/golden.test.ts checks
 * that a rebuild differs from the committed envelope only in its last 96 bytes. Regenerate only
 * when docs/format.md changes on purpose (the signatures then change too), and review the diff:
 *
 *   cd packages/core
 *   npx tsc --outDir /tmp/kw-golden --rootDir . --module nodenext --moduleResolution nodenext \
 *     --target es2022 --types node --skipLibCheck test/vectors/make-golden-signed.ts
 *   node /tmp/kw-golden/test/vectors/make-golden-signed.js test/vectors/golden-signed-v1.json
 */
import { writeFileSync } from 'node:fs';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { pathToFileURL } from 'node:url';
import { SIGNATURE_BYTES } from '../../src/_signature.js';
import { createEncryptStreamForTestVectors, encryptEnvelopeForTestVectors } from '../../src/_testing.js';
import { SUITE_DEK_XAES256GCM } from '../../src/data-key.js';
import {
  deriveMessageKeys,
  ENVELOPE_VERSION_1,
  type EnvelopeFormatVersion,
  envelopeToText,
  parseHeader,
} from '../../src/envelope.js';
import { GOLDEN_KEK, type GoldenFile, StaticKekProvider, counting, fromHex, hex, scriptedRandom } from './make-golden.js';

export interface SignedGoldenInputs {
  name: string;
  mode: 'single-shot' | 'framed';
  frameSize?: number;
  context: Record<string, string>;
  plaintext: string;
  dek: string;
  /** 24 bytes: the DEK is wrapped with "KWK" suite 0x02. */
  wrapNonce: string;
  messageId: string;
  /** The P-384 private scalar d (48 bytes, 1 ≤ d < n). */
  signingKey: string;
  /** single-shot only */
  nonce?: string;
}

export interface SignedGoldenVector extends SignedGoldenInputs {
  /** SEC 1 compressed point of d·G (49 bytes), in the header and in the wrap context. */
  verificationKey: string;
  /** The context the DEK is wrapped under: the caller's plus "keywarden:verification-key". */
  wrapContext: Record<string, string>;
  wrappedKey: string;
  encKey: string;
  commitment: string;
  header: string;
  /** IEEE P1363 r ‖ s (96 bytes), low s; the last 96 bytes of `envelope`. Randomized: see above. */
  signature: string;
  envelope: string;
  text: string;
}

export interface SignedGoldenFile {
  description: string;
  spec: string;
  generator: string;
  kek: GoldenFile['kek'];
  vectors: SignedGoldenVector[];
}

function inputs(
  index: number,
  name: string,
  mode: 'single-shot' | 'framed',
  context: Record<string, string>,
  plaintext: Uint8Array,
  frameSize?: number,
): SignedGoldenInputs {
  const v: SignedGoldenInputs = {
    name,
    mode,
    context,
    plaintext: hex(plaintext),
    dek: hex(counting(0x48 + index, 32)),
    wrapNonce: hex(counting(0xa8 + index, 24)),
    messageId: hex(counting(0x88 + index, 32)),
    signingKey: hex(counting(0x10 + index, 48)),
  };
  if (mode === 'single-shot') v.nonce = hex(counting(0xc8 + index, 12));
  else v.frameSize = frameSize as number;
  return v;
}

const CONTEXT = { tenant: 'acme', purpose: 'golden-vector', 'table.column': 'payments.amount' };

export const SIGNED_GOLDEN_INPUTS: readonly SignedGoldenInputs[] = [
  inputs(0, 'signed, single-shot, with context', 'single-shot', CONTEXT, new TextEncoder().encode('Keywarden signed envelope')),
  inputs(1, 'signed, single-shot, empty context, empty plaintext', 'single-shot', {}, new Uint8Array(0)),
  inputs(2, 'signed, framed, with context, 2 regular frames + short final frame', 'framed', CONTEXT, counting(5, 2100), 1024),
  inputs(3, 'signed, framed, empty context, empty plaintext (one empty final frame)', 'framed', {}, new Uint8Array(0), 1024),
];

/** Build one vector with the real envelope code (deterministic up to the signature).
 * `formatVersion` 1 for golden-signed-v1.json; 2 for the signed vectors of golden-v2.json. */
export async function buildSignedVector(
  kek: GoldenFile['kek'],
  input: SignedGoldenInputs,
  formatVersion: EnvelopeFormatVersion = ENVELOPE_VERSION_1,
): Promise<SignedGoldenVector> {
  const provider = new StaticKekProvider(
    [{ keyId: kek.keyId, version: kek.version, material: fromHex(kek.material) }],
    scriptedRandom([fromHex(input.dek), fromHex(input.wrapNonce)]),
    SUITE_DEK_XAES256GCM,
  );
  const plaintext = fromHex(input.plaintext);
  const options = { key: kek.keyId, context: input.context, signed: true };
  let envelope: Uint8Array;
  if (input.mode === 'single-shot') {
    const random = scriptedRandom([fromHex(input.messageId), fromHex(input.signingKey), fromHex(input.nonce as string)]);
    envelope = await encryptEnvelopeForTestVectors(provider, plaintext, options, random, formatVersion);
  } else {
    const random = scriptedRandom([fromHex(input.messageId), fromHex(input.signingKey)]);
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
  const verificationKey = header.verificationKey as Uint8Array;
  const keys = deriveMessageKeys(
    fromHex(input.dek),
    fromHex(input.messageId),
    header.suite,
    header.formatVersion,
    header.keyId,
  );
  return {
    ...input,
    verificationKey: hex(verificationKey),
    wrapContext: {
      ...input.context,
      'keywarden:verification-key': Buffer.from(verificationKey).toString('base64url'),
    },
    wrappedKey: hex(header.wrappedKey),
    encKey: hex(keys.encKey),
    commitment: hex(keys.commitment),
    header: hex(header.bytes),
    signature: hex(envelope.subarray(envelope.length - SIGNATURE_BYTES)),
    envelope: hex(envelope),
    text: envelopeToText(envelope),
  };
}

export async function buildSignedGoldenFile(): Promise<SignedGoldenFile> {
  const vectors: SignedGoldenVector[] = [];
  for (const input of SIGNED_GOLDEN_INPUTS) vectors.push(await buildSignedVector(GOLDEN_KEK, input));
  return {
    description:
      'Keywarden envelope format v1, signed suite 0x02, golden vectors. TEST VECTORS ONLY: every key, nonce, id ' +
      'and signing key is an obviously fake counting pattern, not a real key. ECDSA signatures are randomized: ' +
      'everything before the last 96 bytes of each envelope is reproducible, the signature is not. Made by ' +
      'make-golden-signed.ts; checked by test/golden.test.ts. Do not edit by hand.',
    spec: 'docs/format.md',
    generator: 'packages/core/test/vectors/make-golden-signed.ts',
    kek: GOLDEN_KEK,
    vectors,
  };
}

const entry = process.argv[1];
if (entry !== undefined && import.meta.url === pathToFileURL(entry).href) {
  const out = process.argv[2];
  if (!out) {
    console.error('usage: node make-golden-signed.js <path/to/golden-signed-v1.json>');
    process.exit(2);
  }
  writeFileSync(out, `${JSON.stringify(await buildSignedGoldenFile(), null, 2)}\n`);
  console.log(`wrote ${out}`);
}
