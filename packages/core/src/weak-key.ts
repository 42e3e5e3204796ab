/**
 * Refusal of weak imported key material.
 *
 * Keys Keywarden generates come from a CSPRNG (random.ts) and never pass through here. This check
 * is for material a person brings in (`import`, restoring a backup, a test fixture that leaked
 * into production): it catches the common mistakes — a password or passphrase, the hex or base64
 * *text* of a key instead of its bytes, zero padding, `0x00 0x01 0x02 …`, a key of the wrong
 * length — and refuses them with a typed WeakKeyMaterialError.
 *
 * What it cannot do: prove that material is random. SHA-256("password") or an AES key generated
 * with a seeded PRNG pass every test below. A refusal means "certainly not a uniformly random key";
 * acceptance means only "none of the tell-tale signs".
 *
 * False-positive budget (a uniformly random key refused by mistake). Every statistical threshold is
 * the tightest one whose check fires with probability at most 2^-40 on n uniformly random bytes;
 * the tails are exact (computed below, and by enumerating count profiles for the entropy table) and
 * test/weak-key.test.ts recomputes them. Per check, log2 of the probability for random input:
 *
 *   check                                          n = 16   n = 24   n = 32   n = 64
 *   repeating pattern, period p ≤ min(16, n−8)      −64      −64     −128     −384
 *   run of ≥ 7 identical bytes, (n−6)·256^−6        −44.7    −43.8    −43.3    −42.1
 *   arithmetic sequence (constant step), 256^−(n−2)  −112     −176     −240     −496
 *   text: printable ASCII, tab, LF, CR, (98/256)^n  −22.2    −33.2    −44.3    −88.7
 *   too few distinct bytes (exact)                  −40.5    −41.9    −43.0    −42.9
 *   low empirical Shannon entropy (exact)           −40.3    −40.4    −40.2    −40.4
 *   too few distinct steps, near-arithmetic (exact)  −43.4    −44.2    −45.0    −40.6
 *   union bound per key                             2.1e-7   9.9e-11  1.1e-12  1.6e-12
 *
 * The 16-byte text rule is kept on purpose: a 16-character string is far more likely a password
 * than a random key, and even a random printable string carries at most 16·log2(98) ≈ 106 bits.
 * A caller that hits it with generated material simply draws again.
 * Measured once (node 20, crypto.randomBytes, 1,000,000 keys at each length): 0 refused at 16, 24,
 * 32 and 64 bytes (expected at 16 bytes: ≈ 0.21).
 *
 * The checks branch on the material, so their timing depends on it. They run once per import, not
 * in a loop an attacker can drive, and reveal at most which check refused; the scratch arrays that
 * hold derived values (byte and step histograms) are wiped before returning.
 */
import { assertBytes, wipe } from './_bytes.js';
import { InvalidInputError, WeakKeyMaterialError } from './errors.js';

export type WeakKeyReason =
  | 'wrong-length'
  | 'repeating-pattern'
  | 'arithmetic-sequence'
  | 'hex-text'
  | 'base64-text'
  | 'printable-text'
  | 'few-distinct-bytes'
  | 'low-entropy';

export interface StrongKeyOptions {
  /** Required length in bytes, 16..64. Default 32 (AES-256, the only key size Keywarden uses). */
  expectedLength?: number;
  /** What the material is, for the message ("KEK material", "imported key"). Default "key material". */
  what?: string;
}

export const MIN_CHECKED_KEY_BYTES = 16;
export const MAX_CHECKED_KEY_BYTES = 64;
const DEFAULT_KEY_BYTES = 32;

/** Per-check false-positive target for the statistical thresholds. */
export const WEAK_KEY_FALSE_POSITIVE_TARGET = 2 ** -40;

/** Longest pattern period looked for; the pattern must also repeat over at least 8 bytes. */
const MAX_PERIOD = 16;
const MIN_REPEATED_BYTES = 8;
/** A run of this many identical bytes (zero padding, a truncated key filled with 0xff) is refused. */
const MAX_RUN = 7;

/**
 * Minimum empirical Shannon entropy (bits per byte, in hundredths) for n = 16..64, index n - 16.
 * Each entry is floor(100·h*) where h* is the smallest entropy value whose inclusion would take
 * P[H < h*] over 2^-40 for n uniformly random bytes. Computed exactly by enumerating every count
 * profile (integer partition of n; 12.3 million of them for n = 16..64) with its multinomial
 * probability; test/weak-key.test.ts recomputes the tail for several lengths. For reference, the mean entropy of
 * random bytes is 3.94 (n = 16), 4.88 (n = 32) and 5.77 (n = 64) bits.
 */
const MIN_ENTROPY_CENTIBITS: readonly number[] = [
  260, 269, 282, 294, 303, 313, 322, 330, 340, 347, 354, 361, 368, 374, 380, 386, 392, 397, 402, 407, 412, 417, 421,
  426, 430, 434, 438, 442, 446, 449, 453, 456, 460, 463, 466, 469, 472, 475, 478, 481, 484, 486, 489, 492, 494, 497,
  499, 502, 504,
];

const REASON_TEXT: Record<Exclude<WeakKeyReason, 'wrong-length'>, string> = {
  'repeating-pattern': 'repeats a short pattern or a run of identical bytes',
  'arithmetic-sequence': 'is a counting or arithmetic sequence',
  'hex-text': 'is hex text, not raw key bytes (decode it first)',
  'base64-text': 'looks like base64 text, not raw key bytes (decode it first)',
  'printable-text': 'is printable text, like a password or passphrase',
  'few-distinct-bytes': 'has too few distinct byte values',
  'low-entropy': 'has too little entropy to be a random key',
};

const distinctThresholdCache = new Map<number, number>();

/**
 * Smallest number of distinct values allowed among `count` uniformly random bytes: the largest k
 * with P[D < k] ≤ 2^-40. Exact, by the occupancy recurrence
 *   P_{i+1}(k) = P_i(k)·k/256 + P_i(k-1)·(257-k)/256,
 * summed from the low end so tiny tails are added, never subtracted (no cancellation).
 */
function minDistinct(count: number): number {
  const cached = distinctThresholdCache.get(count);
  if (cached !== undefined) return cached;
  let p = new Float64Array(count + 2);
  p[0] = 1;
  for (let i = 0; i < count; i++) {
    const next = new Float64Array(count + 2);
    for (let k = 0; k <= i; k++) {
      const pk = p[k] as number;
      if (pk === 0) continue;
      next[k] = (next[k] as number) + (pk * k) / 256;
      next[k + 1] = (next[k + 1] as number) + (pk * (256 - k)) / 256;
    }
    p = next;
  }
  let tail = 0;
  let k = 0;
  while (k <= count && tail + (p[k] as number) <= WEAK_KEY_FALSE_POSITIVE_TARGET) tail += p[k++] as number;
  distinctThresholdCache.set(count, k);
  return k;
}

/** The thresholds applied to material of `length` bytes (exported for the tests and for audit). */
export function weakKeyThresholds(length: number): {
  minDistinctBytes: number;
  minDistinctSteps: number;
  minEntropyBits: number;
} {
  checkLength(length);
  return {
    minDistinctBytes: minDistinct(length),
    minDistinctSteps: minDistinct(length - 1),
    minEntropyBits: (MIN_ENTROPY_CENTIBITS[length - MIN_CHECKED_KEY_BYTES] as number) / 100,
  };
}

function checkLength(length: number): void {
  if (!Number.isSafeInteger(length) || length < MIN_CHECKED_KEY_BYTES || length > MAX_CHECKED_KEY_BYTES) {
    throw new InvalidInputError(
      `weak-key: expectedLength must be an integer in ${MIN_CHECKED_KEY_BYTES}..${MAX_CHECKED_KEY_BYTES}`,
    );
  }
}

/** 1..64 characters, none of them a control character or DEL (which would break one-line messages). */
function isLabel(what: unknown): what is string {
  if (typeof what !== 'string' || what.length < 1 || what.length > 64) return false;
  for (let i = 0; i < what.length; i++) {
    const c = what.charCodeAt(i);
    if (c < 0x20 || c === 0x7f) return false;
  }
  return true;
}

function resolveOptions(options: StrongKeyOptions | undefined): { length: number; what: string } {
  const length = options?.expectedLength ?? DEFAULT_KEY_BYTES;
  checkLength(length);
  const what = options?.what ?? 'key material';
  if (!isLabel(what)) {
    throw new InvalidInputError('weak-key: what must be 1..64 characters without control characters');
  }
  return { length, what };
}

/** True when the material has a period p ≤ 16 that repeats over at least 8 bytes, or a run of 7+. */
function hasRepeatingPattern(m: Uint8Array): boolean {
  const maxPeriod = Math.min(MAX_PERIOD, m.length - MIN_REPEATED_BYTES);
  for (let p = 1; p <= maxPeriod; p++) {
    let i = p;
    while (i < m.length && m[i] === m[i - p]) i++;
    if (i === m.length) return true;
  }
  let run = 1;
  for (let i = 1; i < m.length; i++) {
    run = m[i] === m[i - 1] ? run + 1 : 1;
    if (run >= MAX_RUN) return true;
  }
  return false;
}

function isArithmetic(m: Uint8Array): boolean {
  const step = ((m[1] as number) - (m[0] as number)) & 0xff;
  for (let i = 2; i < m.length; i++) if ((((m[i] as number) - (m[i - 1] as number)) & 0xff) !== step) return false;
  return true;
}

const isHexChar = (b: number) => (b >= 0x30 && b <= 0x39) || (b >= 0x41 && b <= 0x46) || (b >= 0x61 && b <= 0x66);
const isUpper = (b: number) => b >= 0x41 && b <= 0x5a;
const isLower = (b: number) => b >= 0x61 && b <= 0x7a;
const isDigit = (b: number) => b >= 0x30 && b <= 0x39;
/** Printable ASCII (0x20..0x7e) plus tab, LF and CR (a password read from a file with its newline). */
const isTextByte = (b: number) => (b >= 0x20 && b <= 0x7e) || b === 0x09 || b === 0x0a || b === 0x0d;

function textReason(m: Uint8Array): WeakKeyReason | undefined {
  let hex = true;
  let base64 = true;
  let padding = 0;
  let upper = false;
  let lower = false;
  let digit = false;
  for (const b of m) {
    if (!isTextByte(b)) return undefined;
    if (!isHexChar(b)) hex = false;
    upper ||= isUpper(b);
    lower ||= isLower(b);
    digit ||= isDigit(b);
    if (b === 0x3d)
      padding++; // '=' is only allowed at the end
    else if (
      padding > 0 ||
      !(isUpper(b) || isLower(b) || isDigit(b) || b === 0x2b || b === 0x2f || b === 0x2d || b === 0x5f)
    ) {
      base64 = false;
    }
  }
  if (hex) return 'hex-text';
  // Base64 of random bytes mixes upper case, lower case and digits; an all-lower-case word is a
  // password. A mixed-case alphanumeric password still lands here: the reason is only a hint.
  if (base64 && padding <= 2 && upper && lower && digit) return 'base64-text';
  return 'printable-text';
}

/** Increments a histogram bin and returns its previous count. */
function bump(histogram: Uint8Array, bin: number): number {
  const previous = histogram[bin] as number;
  histogram[bin] = previous + 1;
  return previous;
}

/**
 * Returns why `material` is weak, or undefined when no check fires. Length first, then structure
 * (patterns, sequences), then text, then statistics (distinct values, entropy, distinct steps).
 */
export function isWeakKeyMaterial(material: Uint8Array, options?: StrongKeyOptions): WeakKeyReason | undefined {
  assertBytes(material, 'weak-key: material');
  const { length } = resolveOptions(options);
  return weakness(material, length);
}

function weakness(m: Uint8Array, length: number): WeakKeyReason | undefined {
  if (m.length !== length) return 'wrong-length';
  if (hasRepeatingPattern(m)) return 'repeating-pattern';
  if (isArithmetic(m)) return 'arithmetic-sequence';
  const text = textReason(m);
  if (text) return text;

  const counts = new Uint8Array(256);
  const seenSteps = new Uint8Array(256);
  try {
    let distinct = 0;
    for (const b of m) if (bump(counts, b) === 0) distinct++;
    const t = weakKeyThresholds(length);
    if (distinct < t.minDistinctBytes) return 'few-distinct-bytes';

    // Empirical Shannon entropy H = log2(n) − (1/n)·Σ c·log2(c) over the byte counts c.
    let sum = 0;
    for (const c of counts) if (c > 1) sum += c * Math.log2(c);
    if (Math.log2(m.length) - sum / m.length < t.minEntropyBits) return 'low-entropy';

    // The steps m[i] − m[i−1] mod 256 of random bytes are themselves n−1 independent uniform bytes
    // (the map to (m[0], steps) is a bijection), so the same exact threshold applies to them. This
    // catches a counting sequence with a few bytes changed, which the exact check above misses.
    let distinctSteps = 0;
    for (let i = 1; i < m.length; i++) {
      if (bump(seenSteps, ((m[i] as number) - (m[i - 1] as number)) & 0xff) === 0) distinctSteps++;
    }
    if (distinctSteps < t.minDistinctSteps) return 'arithmetic-sequence';
    return undefined;
  } finally {
    wipe(counts, seenSteps);
  }
}

/**
 * Throws WeakKeyMaterialError unless `material` has the expected length (default 32 bytes) and
 * shows none of the signs of weak key material listed at the top of this file. The message names
 * the reason and never the bytes or any statistic computed from them.
 */
export function assertStrongKeyMaterial(material: Uint8Array, options?: StrongKeyOptions): void {
  assertBytes(material, 'weak-key: material');
  const { length, what } = resolveOptions(options);
  const reason = weakness(material, length);
  if (reason === undefined) return;
  if (reason === 'wrong-length') {
    throw new WeakKeyMaterialError(`weak-key: ${what} must be ${length} bytes, got ${material.length} [${reason}]`);
  }
  throw new WeakKeyMaterialError(`weak-key: ${what} refused: it ${REASON_TEXT[reason]} [${reason}]`);
}
