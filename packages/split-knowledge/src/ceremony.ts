/**
 * The split-knowledge ceremony on a software root (docs/split-knowledge.md): init with the unseal
 * key split into shares, unseal by quorum, rekey to a new share set, and the quorum-gated root
 * operations: root rotation and root destruction. The CLI (`keywarden init/unseal/seal/rekey`,
 * `keywarden root rotate|destroy`) and applications call these; they are built on core's
 * `SoftwareRoot`, `rewrapUnderNewRoot` and `destroyRoot`.
 *
 * Invariants:
 *  - the unseal key comes from the CSPRNG (node:crypto), exists only in memory, and is wiped as
 *    soon as it has sealed (or opened) the root; neither it nor the root key is ever written in
 *    plaintext — the key store receives only the sealed root document;
 *  - a quorum is verified cryptographically, against the sealed root document in the store: the
 *    combined key must authenticate the AES-GCM-wrapped root. A forged share, or a share from
 *    another ceremony with a matching label, fails there with an error that says only that;
 *  - rekey, rotateRoot, destroyRootWithQuorum and requireQuorum demand a quorum of the current
 *    shares even when the root is already unsealed in this process (separation of duties: an
 *    operator with a running process is not a quorum).
 */
import {
  consentMethodOf,
  type DestroyRootResult,
  destroyRoot,
  encodeSealedRoot,
  InvalidInputError,
  type KeyStore,
  MemoryKeyStore,
  ROOT_META_NAME,
  readRootState,
  RootDestroyedError,
  RootMissingError,
  ROOT_DESTROYED_MESSAGE,
  ROOT_MISSING_MESSAGE,
  rewrapUnderNewRoot,
  type SealedRootDocument,
  SoftwareRoot,
  UNSEAL_KEY_BYTES,
  UnsealError,
  wipe,
} from '@keywarden/core';
import { randomBytes } from './_bytes.js';
import { isCommitmentList, shareCommitment } from './commitment.js';
import { type CustodianPublicKey, custodianPublicKey, encryptShareForCustodian } from './custodian.js';
import {
  checkSplitParameters,
  combineShares,
  type ParsedShare,
  type ShareExpectation,
  type ShareSetInfo,
  shareSetInfo,
  splitSecret,
} from './share.js';
import { UnsealSession, type UnsealSessionOptions } from './unseal-session.js';

export const DEFAULT_SHARES = 5;
/** The store meta record of a staged (not yet activated) init or rekey: staged-ceremony.ts. */
export const PENDING_CEREMONY_META = 'split/pending-ceremony';
export const DEFAULT_THRESHOLD = 3;

export interface ShareSetOptions {
  /** N, 2..255. Default 5. */
  shares?: number;
  /** M, 2..N. Default 3. */
  threshold?: number;
  /**
   * One custodian public key (PEM: X25519, or RSA ≥ 2048 bits) per share, in share order. When
   * given, every share is handed out encrypted, so whoever runs the ceremony never sees one.
   */
  custodians?: readonly string[];
}

export interface HandOut {
  /** The share set (not secret). */
  shareSet: ShareSetInfo;
  /**
   * What to give custodian i (0-based): the share text, or the armored encrypted share when
   * custodians were given. Each is handed out once and then dropped (JavaScript strings cannot
   * be wiped; keep them out of logs and let them go out of scope).
   */
  handOut: string[];
}

export interface SplitRoot extends HandOut {
  /** The new root, unsealed. */
  root: SoftwareRoot;
}

type ShamirMethod = Extract<SealedRootDocument['unseal'], { method: 'shamir' }>;

/**
 * The unseal description of a split root as this package writes it: core's, plus the commitment
 * to each share (commitment.ts). Core keeps fields it does not know and binds the whole
 * description as associated data, so the commitments are authenticated with the sealed root.
 */
export type ShamirUnseal = ShamirMethod & { commitments?: string[] };

// ── Preconditions ──────────────────────────────────────────────────────────────────────────────

/** @internal */
export function resolveParameters(options: ShareSetOptions): {
  shares: number;
  threshold: number;
  recipients: CustodianPublicKey[] | undefined;
} {
  const shares = options.shares ?? DEFAULT_SHARES;
  const threshold = options.threshold ?? DEFAULT_THRESHOLD;
  checkSplitParameters(shares, threshold);
  if (options.custodians === undefined) return { shares, threshold, recipients: undefined };
  if (!Array.isArray(options.custodians) || options.custodians.length !== shares) {
    throw new InvalidInputError(
      `ceremony: ${Array.isArray(options.custodians) ? options.custodians.length : 'no'} custodian keys for ${shares} shares; give one public key per share`,
    );
  }
  const recipients = options.custodians.map((pem) => custodianPublicKey(pem));
  // One person holding two shares lowers the real threshold: refuse it.
  const seen = new Map<string, number>();
  recipients.forEach((r, i) => {
    const earlier = seen.get(r.fingerprint);
    if (earlier !== undefined) {
      throw new InvalidInputError(
        `ceremony: custodians ${earlier + 1} and ${i + 1} have the same public key; each share must go to a different custodian`,
      );
    }
    seen.set(r.fingerprint, i);
  });
  return { shares, threshold, recipients };
}

/** @internal */
export function requireShamir(doc: SealedRootDocument, component: string): ShamirMethod {
  if (doc.unseal.method !== 'shamir') {
    throw new InvalidInputError(
      `${component}: this root is not split into shares (it is unsealed with a development-mode key)`,
    );
  }
  return doc.unseal;
}

/**
 * @internal What a share of this root's set must look like; with the commitments when the root
 * records them (roots sealed before commitments existed have none, and are checked as before).
 */
export function expectationOf(method: ShamirMethod): ShareExpectation {
  const commitments = (method as ShamirUnseal).commitments;
  return {
    shareSetId: method.shareSetId,
    threshold: method.threshold,
    shares: method.shares,
    purpose: 'unseal-key',
    ...(isCommitmentList(commitments, method.shares) ? { commitments } : {}),
  };
}

/** @internal */
export async function storedDocument(store: KeyStore): Promise<SealedRootDocument> {
  // "Destroyed" only when the store records it (core's root-tombstone.ts); no root and no
  // tombstone is a damaged or uninitialized store.
  const state = await readRootState(store);
  if (state.state === 'destroyed') throw new RootDestroyedError(ROOT_DESTROYED_MESSAGE);
  if (state.state === 'missing') throw new RootMissingError(ROOT_MISSING_MESSAGE);
  return state.document;
}

function forgedShareError(): UnsealError {
  return new UnsealError(
    'unseal: the shares combined into a key that does not open the root: at least one share is forged or altered, ' +
      'or comes from another ceremony; the root stays sealed',
  );
}

/** Open `root` with `key`, turning core's "wrong unseal key" into the forged-share error. */
/** @internal */
export async function unsealOrForged(root: SoftwareRoot, key: Uint8Array): Promise<void> {
  try {
    await root.unseal(key);
  } catch (err) {
    if (UnsealError.isInstance(err)) throw forgedShareError();
    throw err;
  }
}

/**
 * Check that `key` opens the sealed document `doc`, without touching any root in use: a throwaway
 * SoftwareRoot is loaded from a private in-memory copy of the document, unsealed, and closed.
 */
/** @internal */
export async function verifyUnsealKey(doc: SealedRootDocument, key: Uint8Array): Promise<void> {
  const scratch = new MemoryKeyStore();
  await scratch.putMeta(ROOT_META_NAME, encodeSealedRoot(doc));
  const probe = await SoftwareRoot.load(scratch);
  try {
    await unsealOrForged(probe, key);
  } finally {
    await probe.close();
    await scratch.close();
  }
}

function handOutShares(encoded: string[], recipients: CustodianPublicKey[] | undefined): string[] {
  if (!recipients) return [...encoded];
  return encoded.map((share, i) => encryptShareForCustodian(share, recipients[i]!));
}

/** @internal A new share set of `unsealKey`, its hand-out, and the unseal description to seal with. */
export async function newShareSet(
  unsealKey: Uint8Array,
  shares: number,
  threshold: number,
  recipients: CustodianPublicKey[] | undefined,
): Promise<HandOut & { unseal: ShamirUnseal }> {
  const set = await splitSecret(unsealKey, { shares, threshold, purpose: 'unseal-key' });
  const commitments = set.encoded.map((s) => shareCommitment(s));
  return {
    shareSet: shareSetInfo(set),
    handOut: handOutShares(set.encoded, recipients),
    unseal: { method: 'shamir', shareSetId: set.shareSetId, threshold, shares, commitments },
  };
}

// ── Ceremony ───────────────────────────────────────────────────────────────────────────────────

/**
 * Init: create a software root whose unseal key is split M-of-N (default 3 of 5).
 * Pre: the store has no root; N, M and the custodian keys are valid (all checked before anything
 * is written). Post: the store holds only the sealed root document (unseal method "shamir", the
 * new share-set id, M, N); the unseal key has been wiped; `handOut[i]` is share i+1, encrypted to
 * custodian i when custodians were given. The returned root is unsealed.
 */
export async function initSplitRoot(store: KeyStore, options: ShareSetOptions = {}): Promise<SplitRoot> {
  const { shares, threshold, recipients } = resolveParameters(options);
  const unsealKey = randomBytes(UNSEAL_KEY_BYTES);
  try {
    // Split and encrypt first: if anything fails, nothing has been written.
    const { unseal, ...out } = await newShareSet(unsealKey, shares, threshold, recipients);
    const root = await SoftwareRoot.initialize(store, { unsealKey, unseal });
    return { root, ...out };
  } finally {
    wipe(unsealKey);
  }
}

/**
 * Unseal `root` with a quorum of shares (texts or parsed). The shares are checked against the
 * root's share set before combining (wrong set, wrong purpose, duplicate, too few: ShareError);
 * a combined key that does not open the root is an UnsealError saying a share is forged or from
 * another ceremony. On an already unsealed root the quorum is still verified.
 */
export async function unsealWithShares(
  root: SoftwareRoot,
  shares: readonly string[] | readonly ParsedShare[],
): Promise<void> {
  const doc = root.document;
  const method = requireShamir(doc, 'unseal');
  const key = await combineShares(shares, expectationOf(method));
  try {
    if (root.isSealed()) await unsealOrForged(root, key);
    else await verifyUnsealKey(doc, key);
  } finally {
    wipe(key);
  }
}

/** An UnsealSession for this root's current share set. */
export function unsealSessionFor(
  root: SoftwareRoot,
  options: Omit<UnsealSessionOptions, 'expected'> = {},
): UnsealSession {
  const method = requireShamir(root.document, 'unseal');
  return new UnsealSession({ ...options, expected: expectationOf(method) as UnsealSessionOptions['expected'] });
}

/** Unseal `root` with the quorum collected by `session` (which is wiped whatever happens). */
export async function unsealWithSession(root: SoftwareRoot, session: UnsealSession): Promise<void> {
  const method = requireShamir(root.document, 'unseal');
  const e = session.expected;
  if (e.purpose !== 'unseal-key' || e.shareSetId !== method.shareSetId) {
    session.reset();
    throw new InvalidInputError("unseal: this session collects shares of another share set than the root's");
  }
  const key = await session.takeSecret();
  try {
    if (root.isSealed()) await unsealOrForged(root, key);
    else await verifyUnsealKey(root.document, key);
  } finally {
    wipe(key);
  }
}

/**
 * The quorum gate: resolves when `shares` are a quorum of the store's current share set (they
 * combine into the key that opens the sealed root), throws otherwise. rotateRoot and
 * destroyRootWithQuorum call it first (separation of duties), whatever the state of the root in
 * the calling process; so must any other operation that needs the custodians' consent.
 */
export async function requireQuorum(
  store: KeyStore,
  shares: readonly string[] | readonly ParsedShare[],
): Promise<void> {
  const doc = await storedDocument(store);
  const key = await combineShares(shares, expectationOf(requireShamir(doc, 'quorum')));
  try {
    await verifyUnsealKey(doc, key);
  } finally {
    wipe(key);
  }
}

/**
 * Rekey: replace the share set (N and M may change) — when a share is lost, a custodian leaves,
 * or on a schedule. Requires a quorum of the CURRENT shares even if `root` is already unsealed.
 * The root key itself does not change (KEKs stay valid); it is resealed under a new unseal key
 * from the CSPRNG, split into the new set. Once the store write commits, the old shares no longer
 * open the root: they name the old share set (refused before combining), and their key no longer
 * authenticates the sealed root.
 *
 * Pre: `root` is the root in `store` (same sealed document); the new N, M and custodians are
 * valid; `currentShares` are a quorum of the current set. A root that was sealed on entry is
 * unsealed by the quorum and sealed again before returning.
 * Limit: the key store has no compare-and-swap, so two rekeys racing on one store are not
 * detected; run one ceremony at a time.
 */
export async function rekey(
  store: KeyStore,
  root: SoftwareRoot,
  currentShares: readonly string[] | readonly ParsedShare[],
  options: ShareSetOptions = {},
): Promise<HandOut> {
  const { shares, threshold, recipients } = resolveParameters(options);
  const stored = await storedDocument(store);
  const mine = root.document;
  if (stored.rootId !== mine.rootId || stored.nonce !== mine.nonce || stored.wrappedRoot !== mine.wrappedRoot) {
    throw new InvalidInputError(
      'rekey: the root in this process is not the one in the key store (it was rekeyed or replaced); load it again',
    );
  }
  const current = requireShamir(stored, 'rekey');
  const oldKey = await combineShares(currentShares, expectationOf(current));
  const wasSealed = root.isSealed();
  try {
    if (wasSealed) await unsealOrForged(root, oldKey);
    else await verifyUnsealKey(stored, oldKey);
  } finally {
    wipe(oldKey);
  }
  const newKey = randomBytes(UNSEAL_KEY_BYTES);
  try {
    const { unseal, ...out } = await newShareSet(newKey, shares, threshold, recipients);
    await root.reseal(store, newKey, unseal);
    return out;
  } finally {
    wipe(newKey);
    if (wasSealed) await root.seal();
  }
}

export interface RotateRootResult {
  /** The new root's id (every KEK version now names it). */
  rootId: string;
  /** KEK versions rewrapped under the new root (destroyed ones have nothing to rewrap). */
  rewrapped: number;
}

/**
 * Root rotation with a quorum: a new root key (and root id) replaces the old one, and every KEK
 * version is rewrapped under it in one store transaction (core's `rewrapUnderNewRoot`).
 *
 * Pre: `shares` are a quorum of the store's current share set (`requireQuorum`, checked first,
 * before anything else happens; too few, forged or foreign shares change nothing).
 * Post: the store holds the new root, sealed under the SAME unseal key with the SAME unseal
 * description (share-set id, M, N): the custodians' shares stay valid and unseal the new root;
 * no share is handed out. KEK material does not change, so every data key and envelope made
 * before decrypts under the new root. The unseal key and both root keys are wiped before
 * returning. On failure nothing has changed.
 *
 * Processes that hold the old root unsealed (an agent) must be sealed: they refuse versions they
 * have not cached (wrapped by another root) and would keep using cached ones until they expire.
 * Limit: like rekey, one ceremony at a time (the store has no compare-and-swap on the root).
 */
export async function rotateRoot(
  store: KeyStore,
  shares: readonly string[] | readonly ParsedShare[],
): Promise<RotateRootResult> {
  await requireQuorum(store, shares);
  if (await store.getMeta(PENDING_CEREMONY_META)) {
    // Activating that rekey later would put back a seal of the OLD root key: refuse instead.
    throw new InvalidInputError(
      'rotate: a rekey is pending in this key store; finish it (`keywarden rekey --resume`) or abort it (`keywarden rekey --abort`) first',
    );
  }
  const stored = await storedDocument(store);
  const method = requireShamir(stored, 'rotate');
  const unsealKey = await combineShares(shares, expectationOf(method));
  const oldRoot = await SoftwareRoot.load(store);
  let newRoot: SoftwareRoot | undefined;
  try {
    await unsealOrForged(oldRoot, unsealKey);
    const created = await SoftwareRoot.createForRotation({ unsealKey, unseal: oldRoot.document.unseal });
    newRoot = created.root;
    const { rewrapped } = await rewrapUnderNewRoot(store, oldRoot, newRoot, {
      name: ROOT_META_NAME,
      value: encodeSealedRoot(created.document),
    });
    return { rootId: created.document.rootId, rewrapped };
  } finally {
    wipe(unsealKey);
    await oldRoot.close();
    await newRoot?.close();
  }
}

/**
 * Root destruction with a quorum: crypto-shredding of every key in the store (core's
 * `destroyRoot`: the sealed root is deleted first — from then on nothing under it can be
 * recovered from this store, whatever shares anyone holds — then every version is destroyed).
 *
 * Pre: `shares` are a quorum of the store's current share set (checked first; on failure nothing
 * changes). Irreversible. Backups of the store are not reached: a backup and a quorum of the
 * shares of its time still open it. Seal or stop every process holding the root.
 */
export async function destroyRootWithQuorum(
  store: KeyStore,
  shares: readonly string[] | readonly ParsedShare[],
): Promise<DestroyRootResult> {
  // Consent even when an earlier, interrupted destruction already deleted the root: core checks the
  // combined key against the root, else its tombstone, and refuses a store with neither (damaged).
  const method = requireShamir({ unseal: consentMethodOf(await readRootState(store)) } as SealedRootDocument, 'quorum');
  const key = await combineShares(shares, expectationOf(method));
  let result: DestroyRootResult;
  try {
    result = await destroyRoot(store, { unsealKey: key });
  } catch (err) {
    throw UnsealError.isInstance(err) ? forgedShareError() : err;
  } finally {
    wipe(key);
  }
  // A pending rekey of a destroyed root has nothing left to activate.
  await store.deleteMeta(PENDING_CEREMONY_META);
  return result;
}
