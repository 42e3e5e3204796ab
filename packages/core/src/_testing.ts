/**
 * TEST VECTORS ONLY — never in an application.
 *
 * Envelope encryption with a caller-chosen source for the message id and the single-shot nonce,
 * so that golden vectors (test/vectors/make-golden.ts, docs/format.md §9) are reproducible byte for
 * byte. Handing the same values to two messages under one data key would reuse an AES-GCM nonce
 * (C₁ ⊕ C₂ = P₁ ⊕ P₂, and forgeries): that is why the published API has no such parameter
 * (issue 16, item 6).
 *
 * Internal module ("_" prefix): it is not re-exported from the package index and the package's
 * `exports` map has no entry for it, so `@keywarden/core` users cannot import it.
 */
export {
  type RandomBytes,
  encryptEnvelopeWithRandom as encryptEnvelopeForTestVectors,
} from './envelope.js';
export { createEncryptStreamWithRandom as createEncryptStreamForTestVectors } from './stream.js';
