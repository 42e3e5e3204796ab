/**
 * Shamir M-of-N shares of a secret and their self-describing text form
 * (docs/split-knowledge.md §"Share format").
 *
 *     kwshare1.<purpose>.<share-set id>.<index>-of-<N>.need-<M>.<payload>.<checksum>
 *     kwshare1.unseal-key.ss_q3Vh0yJ2mZk8c1aP.2-of-5.need-3.Jq…Ag.5c1e09a4
 *
 * The arithmetic is the audited `shamir-secret-sharing` package (Cure53 and Zellic audits); this
 * module only chooses the parameters, encodes, and checks everything it can before combining:
 * a mistyped, corrupted, duplicated, wrong-set or wrong-purpose share gets its own precise
 * `ShareError`. What no encoding can catch — a well-formed share whose payload was altered — is
 * caught after combining, by the secret failing to authenticate (the sealed root's AES-GCM tag,
 * or the hardware-secret verifier in hardware-secret.ts).
 *
 * Error messages may name a share's index, share-set id, threshold and purpose (all printed on
 * the share in clear) but never its payload or checksum, nor anything derived from the secret.
 */
import { combine, split } from 'shamir-secret-sharing';
import { constantTimeEqual, InvalidInputError, ShareError, wipe } from '@keywarden/core';
import { checkShareCommitment } from './commitment.js';
import { fromBase64UrlStrict, randomBytes, sha256, toBase64Url, utf8 } from './_bytes.js';

/** What a share set protects. Custom purposes are lowercase words (`[a-z][a-z0-9-]{0,31}`). */
export type SharePurpose = 'unseal-key' | 'hsm-pin' | 'tpm-auth' | (string & {});

/** Purposes whose secret is padded and carries a verifier; only hardware-secret.ts splits them. */
export const HARDWARE_PURPOSES: ReadonlySet<string> = new Set(['hsm-pin', 'tpm-auth']);

/** Non-secret description of a share set: what the sealed root records and a share repeats. */
export interface ShareSetInfo {
  /** `ss_` + 16 base64url characters (12 random bytes). */
  shareSetId: string;
  /** M: how many shares recombine the secret. */
  threshold: number;
  /** N: how many shares were made. */
  shares: number;
  purpose: SharePurpose;
}

/** A fresh split: the description plus the N share texts, in index order (share i is encoded[i-1]). */
export interface ShareSet extends ShareSetInfo {
  encoded: string[];
}

/** Expected properties of the shares given to `combineShares` (for example from a sealed root). */
export interface ShareExpectation {
  shareSetId?: string;
  threshold?: number;
  shares?: number;
  purpose?: SharePurpose;
  /**
   * The commitment to each share of the set (commitment.ts), from the sealed root: a share that
   * does not match its commitment is refused before combining.
   */
  commitments?: readonly string[];
}

export const SHARE_FORMAT_VERSION = 1;
export const MIN_SHARES = 2;
/** GF(2^8) has 255 non-zero x-coordinates. */
export const MAX_SHARES = 255;
/** A 1-of-N "split" would make every share the secret itself, so the threshold is at least 2. */
export const MIN_THRESHOLD = 2;
/** Largest secret splitSecret accepts (unseal keys are 32 bytes, hardware secrets ≤ 272). */
export const MAX_SECRET_BYTES = 1024;
/** Unseal-key shares carry exactly a 32-byte key (core's UNSEAL_KEY_BYTES). */
const UNSEAL_KEY_SECRET_BYTES = 32;
/**
 * Hardware secrets are padded into one of these sizes (hardware-secret.ts; see there for why):
 * block ‖ key ‖ tag (version 2: 64..256 + 32 + 16) or block ‖ tag (version 1, still parsed so it
 * can be refused with its own message).
 */
export const HARDWARE_ENCODED_LENGTHS: readonly number[] = [112, 176, 240, 304, 80, 144, 208, 272];

const PREFIX = 'kwshare';
const FIELD_COUNT = 7;
/** Generous bound on the text form (a 1024-byte secret encodes to about 1450 characters). */
const MAX_SHARE_TEXT = 4096;
const PURPOSE_RE = /^[a-z][a-z0-9-]{0,31}$/;
const SHARE_SET_ID_RE = /^ss_[A-Za-z0-9_-]{16}$/;
const POSITION_RE = /^([1-9][0-9]{0,2})-of-([1-9][0-9]{0,2})$/;
const THRESHOLD_RE = /^need-([1-9][0-9]{0,2})$/;
const CHECKSUM_RE = /^[0-9a-f]{8}$/;
const INSPECT = Symbol.for('nodejs.util.inspect.custom');

/** The fields of one share; `payload` is the shamir-secret-sharing share (y-bytes ‖ x). */
export interface ShareFields {
  purpose: SharePurpose;
  shareSetId: string;
  /** 1..N; also the Shamir x-coordinate, which is the payload's last byte. */
  index: number;
  shares: number;
  threshold: number;
  payload: Uint8Array;
}

/**
 * One parsed share. The payload is secret: it is kept in a private field, left out of
 * `toString`, `toJSON` and `util.inspect`, and zeroed by `wipe()`.
 */
export class ParsedShare implements ShareFields {
  readonly version = SHARE_FORMAT_VERSION;
  readonly purpose: SharePurpose;
  readonly shareSetId: string;
  readonly index: number;
  readonly shares: number;
  readonly threshold: number;
  readonly #payload: Uint8Array;
  #wiped = false;

  /** Use `parseShare` or `ParsedShare.fromFields`, which validate. */
  private constructor(fields: ShareFields) {
    this.purpose = fields.purpose;
    this.shareSetId = fields.shareSetId;
    this.index = fields.index;
    this.shares = fields.shares;
    this.threshold = fields.threshold;
    this.#payload = fields.payload;
  }

  /**
   * A share from its fields (checked like a parsed share; InvalidInputError otherwise). The
   * payload buffer is taken, not copied: the share wipes it in `wipe()`.
   */
  static fromFields(fields: ShareFields): ParsedShare {
    const problem = shareFieldProblem(fields);
    if (problem) throw new InvalidInputError(`share: ${problem}`);
    return new ParsedShare(fields);
  }

  /** The share bytes (secret). Throws once wiped, so a zeroed share is never combined. */
  get payload(): Uint8Array {
    if (this.#wiped) throw new InvalidInputError(`share: share ${this.index} was wiped`);
    return this.#payload;
  }

  get wiped(): boolean {
    return this.#wiped;
  }

  /** An independent copy (its own payload buffer), for holders that wipe what they keep. */
  clone(): ParsedShare {
    return new ParsedShare({ ...this.#fields(), payload: this.payload.slice() });
  }

  /** The canonical text form. */
  encode(): string {
    return encodeShare(this);
  }

  wipe(): void {
    wipe(this.#payload);
    this.#wiped = true;
  }

  toString(): string {
    return `share ${this.index} of ${this.shares} (share set ${this.shareSetId}, ${this.purpose}, need ${this.threshold})`;
  }

  toJSON(): Omit<ShareFields, 'payload'> {
    return this.#fields();
  }

  [INSPECT](): string {
    return `ParsedShare { ${this.toString()} }`;
  }

  #fields(): Omit<ShareFields, 'payload'> {
    const { purpose, shareSetId, index, shares, threshold } = this;
    return { purpose, shareSetId, index, shares, threshold };
  }
}

// ── Parameters ─────────────────────────────────────────────────────────────────────────────────

/** Checks N and M for a new split; InvalidInputError with the reason otherwise. */
export function checkSplitParameters(shares: number, threshold: number): void {
  if (!Number.isInteger(shares) || shares < MIN_SHARES || shares > MAX_SHARES) {
    throw new InvalidInputError(`share: the number of shares must be an integer from ${MIN_SHARES} to ${MAX_SHARES}`);
  }
  if (!Number.isInteger(threshold) || threshold < MIN_THRESHOLD) {
    throw new InvalidInputError(
      'share: the threshold must be an integer of at least 2 (a 1-of-N split would make every share the secret itself)',
    );
  }
  if (threshold > shares) {
    throw new InvalidInputError(`share: the threshold (${threshold}) cannot exceed the number of shares (${shares})`);
  }
}

function checkPurpose(purpose: unknown): asserts purpose is SharePurpose {
  if (typeof purpose !== 'string' || !PURPOSE_RE.test(purpose)) {
    throw new InvalidInputError('share: purpose must be a lowercase word such as "unseal-key" ([a-z][a-z0-9-]{0,31})');
  }
}

/** Secret lengths each purpose allows; a share whose payload has another length is malformed. */
function secretLengthProblem(purpose: string, length: number): string | undefined {
  if (purpose === 'unseal-key') {
    return length === UNSEAL_KEY_SECRET_BYTES ? undefined : `an unseal-key secret is ${UNSEAL_KEY_SECRET_BYTES} bytes`;
  }
  if (HARDWARE_PURPOSES.has(purpose)) {
    return HARDWARE_ENCODED_LENGTHS.includes(length) ? undefined : `a ${purpose} secret is padded to a fixed size`;
  }
  return length >= 1 && length <= MAX_SECRET_BYTES ? undefined : `a secret is 1..${MAX_SECRET_BYTES} bytes`;
}

/** A new random share-set id: `ss_` + base64url of 12 bytes from the CSPRNG. */
export function newShareSetId(): string {
  return `ss_${toBase64Url(randomBytes(12))}`;
}

export function isShareSetId(value: unknown): value is string {
  return typeof value === 'string' && SHARE_SET_ID_RE.test(value);
}

/** Why these fields are not a valid share, or undefined. Never mentions payload bytes. */
function shareFieldProblem(f: ShareFields): string | undefined {
  if (typeof f.purpose !== 'string' || !PURPOSE_RE.test(f.purpose)) return 'invalid purpose field';
  if (!isShareSetId(f.shareSetId)) return 'invalid share-set id';
  if (!Number.isInteger(f.shares) || f.shares < MIN_SHARES || f.shares > MAX_SHARES) {
    return `invalid number of shares (must be ${MIN_SHARES}..${MAX_SHARES})`;
  }
  if (!Number.isInteger(f.threshold) || f.threshold < MIN_THRESHOLD || f.threshold > f.shares) {
    return `invalid threshold for ${f.shares} shares (must be ${MIN_THRESHOLD}..${f.shares})`;
  }
  if (!Number.isInteger(f.index) || f.index < 1 || f.index > f.shares) {
    return `invalid index for ${f.shares} shares (must be 1..${f.shares})`;
  }
  if (!(f.payload instanceof Uint8Array)) return 'payload is not bytes';
  const lengthProblem = secretLengthProblem(f.purpose, f.payload.length - 1);
  if (lengthProblem) return `share ${f.index} has a payload of the wrong length (${lengthProblem})`;
  // The payload's last byte is its Shamir x-coordinate; splitSecret makes it equal to the index.
  if (f.payload[f.payload.length - 1] !== f.index) return `share ${f.index}'s x-coordinate does not match its index`;
  return undefined;
}

// ── Text form ──────────────────────────────────────────────────────────────────────────────────

/** First 4 bytes of SHA-256 over the text before the checksum, as 8 lowercase hex digits. */
function checksum(body: string): string {
  return Buffer.from(sha256(utf8.encode(body)).subarray(0, 4)).toString('hex');
}

/** The canonical text form of a share. Throws InvalidInputError for fields that are not a share. */
export function encodeShare(share: ShareFields): string {
  const problem = shareFieldProblem(share);
  if (problem) throw new InvalidInputError(`share: cannot encode: ${problem}`);
  const body = [
    `${PREFIX}${SHARE_FORMAT_VERSION}`,
    share.purpose,
    share.shareSetId,
    `${share.index}-of-${share.shares}`,
    `need-${share.threshold}`,
    toBase64Url(share.payload),
  ].join('.');
  return `${body}.${checksum(body)}`;
}

/**
 * Parse one share. Whitespace anywhere (leading, trailing, a line break where the share was
 * wrapped or pasted over two lines) is ignored; nothing else is forgiven. Checks, in order:
 * prefix, version, field count, checksum (so a typo anywhere is reported as a typo), then each
 * field. Every failure is a ShareError that never echoes the input.
 */
export function parseShare(text: string): ParsedShare {
  if (typeof text !== 'string') throw new ShareError('share: not a Keywarden share');
  if (text.length > MAX_SHARE_TEXT * 2) throw new ShareError('share: too long to be a Keywarden share');
  const t = text.replace(/\s+/g, '');
  if (t.length > MAX_SHARE_TEXT) throw new ShareError('share: too long to be a Keywarden share');
  const head = /^kwshare([0-9]+)\./.exec(t);
  if (!t.startsWith(PREFIX) || !head) throw new ShareError('share: not a Keywarden share');
  if (head[1] !== String(SHARE_FORMAT_VERSION)) {
    const v = head[1]!.length <= 6 ? head[1] : 'unknown';
    throw new ShareError(`share: unsupported share format version ${v}`);
  }
  const fields = t.split('.');
  if (fields.length !== FIELD_COUNT) {
    throw new ShareError(
      `share: malformed share (expected ${FIELD_COUNT} fields separated by ".", found ${Math.min(fields.length, 99)}; part of it is missing or repeated)`,
    );
  }
  const [, purpose, shareSetId, position, need, payloadText, check] = fields as [
    string,
    string,
    string,
    string,
    string,
    string,
    string,
  ];
  const givenChecksum = check.toLowerCase();
  if (!CHECKSUM_RE.test(givenChecksum)) throw new ShareError('share: malformed checksum field (8 hex digits expected)');
  const body = fields.slice(0, FIELD_COUNT - 1).join('.');
  if (!constantTimeEqual(utf8.encode(checksum(body)), utf8.encode(givenChecksum))) {
    throw new ShareError('share: checksum mismatch (mistyped or corrupted share)');
  }
  // The checksum matched, so what follows is what was written: a failure below means the share
  // was produced by something other than splitSecret, or altered and re-checksummed.
  const pos = POSITION_RE.exec(position);
  if (!pos) throw new ShareError('share: malformed position field (expected "<index>-of-<N>")');
  const need_ = THRESHOLD_RE.exec(need);
  if (!need_) throw new ShareError('share: malformed threshold field (expected "need-<M>")');
  const payload = fromBase64UrlStrict(payloadText);
  if (!payload) throw new ShareError('share: payload is not canonical base64url');
  const f: ShareFields = {
    purpose,
    shareSetId,
    index: Number(pos[1]),
    shares: Number(pos[2]),
    threshold: Number(need_[1]),
    payload,
  };
  const problem = shareFieldProblem(f);
  if (problem) {
    wipe(payload);
    throw new ShareError(`share: ${problem}`);
  }
  return ParsedShare.fromFields(f);
}

// ── Split ──────────────────────────────────────────────────────────────────────────────────────

/**
 * Split `secret` into `shares` shares, any `threshold` of which recombine it; fewer reveal
 * nothing about it (Shamir 1979, information-theoretic). The caller's secret is not modified.
 *
 * For an HSM PIN or a TPM auth value use `splitHardwareSecret`, which pads the secret (so a share
 * does not reveal the PIN's length) and adds a verifier (so a forged share never reaches the
 * device's retry counter); this function refuses those purposes.
 */
export async function splitSecret(
  secret: Uint8Array,
  options: { shares: number; threshold: number; purpose: SharePurpose },
): Promise<ShareSet> {
  if (HARDWARE_PURPOSES.has(options?.purpose as string)) {
    throw new InvalidInputError(
      `share: split an ${options.purpose} with splitHardwareSecret (it pads and verifies it)`,
    );
  }
  return splitWithPurpose(secret, options);
}

/** @internal splitSecret without the hardware-purpose guard (used by hardware-secret.ts). */
export async function splitWithPurpose(
  secret: Uint8Array,
  options: { shares: number; threshold: number; purpose: SharePurpose },
): Promise<ShareSet> {
  if (!(secret instanceof Uint8Array)) throw new InvalidInputError('share: secret must be a Uint8Array');
  const { shares, threshold, purpose } = options ?? ({} as typeof options);
  checkPurpose(purpose);
  checkSplitParameters(shares, threshold);
  const lengthProblem = secretLengthProblem(purpose, secret.length);
  if (lengthProblem) throw new InvalidInputError(`share: wrong secret length (${lengthProblem})`);
  const shareSetId = newShareSetId();
  // shamir-secret-sharing gives each share a random x-coordinate (a shuffle of 1..255) and has no
  // way to choose them. Asking it for all 255 points of the degree M-1 polynomial and keeping the
  // points x = 1..N makes a share's index its x-coordinate, so a share whose payload disagrees
  // with its printed index is caught before combining. The other 255-N points are secret shares
  // too: they are wiped here, before this function returns.
  const copy = new Uint8Array(secret); // the library wants a plain Uint8Array, not a Buffer
  let all: Uint8Array[] = [];
  try {
    all = await split(copy, MAX_SHARES, threshold);
    const byX = new Map<number, Uint8Array>();
    for (const s of all) byX.set(s[s.length - 1]!, s);
    const encoded: string[] = [];
    for (let index = 1; index <= shares; index++) {
      const payload = byX.get(index);
      if (!payload) throw new ShareError('share: the Shamir library did not return every x-coordinate');
      encoded.push(encodeShare({ purpose, shareSetId, index, shares, threshold, payload }));
    }
    return { shareSetId, threshold, shares, purpose, encoded };
  } finally {
    wipe(copy, ...all);
  }
}

// ── Combine ────────────────────────────────────────────────────────────────────────────────────

/**
 * Recombine a secret from shares (texts or parsed shares). Before any arithmetic, in this order,
 * each failure with its own ShareError:
 *  1. every input parses (the message names its position: "share: input 3: checksum mismatch …");
 *  2. every share has the expected purpose (`expect.purpose`, else the first share's);
 *  3. every share belongs to the same share set ("share: share 4 belongs to share set ss_B,
 *     expected ss_A") — the expected one when `expect.shareSetId` is given;
 *  4. every share agrees on the threshold and the number of shares;
 *  5. no index appears twice ("share: share 2 was given twice");
 *  6. there are at least `threshold` shares ("share: 2 of 3 shares, need 1 more").
 * Then every given share is used (so a forged extra share is never silently ignored).
 *
 * The result is only as good as the shares: a share with a valid encoding but an altered payload
 * combines into a wrong secret. Authenticate the result (unsealWithShares and
 * combineHardwareSecret do). Parsed copies made here are wiped; the caller's ParsedShare objects
 * are left to the caller.
 */
export async function combineShares(
  shares: readonly string[] | readonly ParsedShare[],
  expect: ShareExpectation = {},
): Promise<Uint8Array> {
  return combineWithPurpose(shares, expect, false);
}

/** @internal combineShares without the hardware-purpose guard (hardware-secret.ts, UnsealSession). */
export async function combineWithPurpose(
  shares: readonly string[] | readonly ParsedShare[],
  expect: ShareExpectation,
  allowHardware: boolean,
): Promise<Uint8Array> {
  if (!Array.isArray(shares) || shares.length === 0) throw new ShareError('share: no shares given');
  if (shares.length > MAX_SHARES) throw new ShareError(`share: more than ${MAX_SHARES} shares given`);
  const owned: ParsedShare[] = [];
  try {
    const parsed: ParsedShare[] = [];
    shares.forEach((s: string | ParsedShare, i: number) => {
      if (s instanceof ParsedShare) {
        parsed.push(s);
        return;
      }
      try {
        const p = parseShare(s);
        owned.push(p);
        parsed.push(p);
      } catch (err) {
        if (ShareError.isInstance(err)) {
          throw new ShareError(err.message.replace(/^share: /, `share: input ${i + 1}: `));
        }
        throw err;
      }
    });
    const first = parsed[0]!;
    const reference: ShareSetInfo = {
      purpose: expect.purpose ?? first.purpose,
      shareSetId: expect.shareSetId ?? first.shareSetId,
      threshold: expect.threshold ?? first.threshold,
      shares: expect.shares ?? first.shares,
    };
    if (!allowHardware && HARDWARE_PURPOSES.has(reference.purpose)) {
      throw new InvalidInputError(`share: combine ${reference.purpose} shares with combineHardwareSecret`);
    }
    for (const p of parsed) checkSamePurpose(p, reference);
    for (const p of parsed) checkSameSet(p, reference);
    for (const p of parsed) checkSameParameters(p, reference);
    if (expect.commitments) for (const p of parsed) checkShareCommitment(p, expect.commitments);
    const seen = new Map<number, ParsedShare>();
    for (const p of parsed) {
      const earlier = seen.get(p.index);
      if (earlier) throw duplicateError(earlier, p);
      seen.set(p.index, p);
    }
    checkEnough(parsed.length, reference.threshold);
    const payloads = parsed.map((p) => p.payload);
    try {
      return await combine(payloads);
    } catch {
      throw new ShareError('share: the shares could not be combined');
    }
  } finally {
    for (const p of owned) p.wipe();
  }
}

/** @internal Step 2 of combineShares, shared with UnsealSession so both say the same thing. */
export function checkSamePurpose(share: ParsedShare, reference: ShareSetInfo): void {
  if (share.purpose !== reference.purpose) {
    throw new ShareError(
      `share: share ${share.index} is for ${share.purpose}, expected a share for ${reference.purpose}`,
    );
  }
}

/** @internal Step 3. */
export function checkSameSet(share: ParsedShare, reference: ShareSetInfo): void {
  if (share.shareSetId !== reference.shareSetId) {
    throw new ShareError(
      `share: share ${share.index} belongs to share set ${share.shareSetId}, expected ${reference.shareSetId}`,
    );
  }
}

/** @internal Step 4: same set id but other parameters means a share was altered. */
export function checkSameParameters(share: ParsedShare, reference: ShareSetInfo): void {
  if (share.threshold !== reference.threshold || share.shares !== reference.shares) {
    throw new ShareError(
      `share: share ${share.index} says it is one of ${share.shares} needing ${share.threshold}, but share set ` +
        `${reference.shareSetId} has ${reference.shares} needing ${reference.threshold} (the share was altered)`,
    );
  }
}

/** @internal Step 5: the same share twice, or two different shares claiming one index. */
export function duplicateError(earlier: ParsedShare, later: ParsedShare): ShareError {
  if (constantTimeEqual(earlier.payload, later.payload)) {
    return new ShareError(`share: share ${later.index} was given twice`);
  }
  return new ShareError(
    `share: two different shares claim to be share ${later.index} of share set ${later.shareSetId} (one was altered)`,
  );
}

/** @internal Step 6. */
export function checkEnough(have: number, threshold: number): void {
  if (have < threshold) {
    throw new ShareError(`share: ${have} of ${threshold} shares, need ${threshold - have} more`);
  }
}

/** The non-secret description of a share set. */
export function shareSetInfo(set: ShareSetInfo): ShareSetInfo {
  return { shareSetId: set.shareSetId, threshold: set.threshold, shares: set.shares, purpose: set.purpose };
}
