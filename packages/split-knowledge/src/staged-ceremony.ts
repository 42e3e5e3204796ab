/**
 * Crash-safe ceremonies (docs/split-knowledge.md §7.1): a new share set is STAGED beside the
 * current one and ACTIVATED only once the caller has handed every new share out durably. No crash
 * at any instant leaves a store without a working share set in someone's hands:
 *
 *   rekey:  current root R(old) ─record→ R(old) + pending{R(new), hand-out digests}
 *           ─(caller writes + fsyncs every share)→ ─activate→ R(new) [+ stale pending] ─→ R(new)
 *   init:   (nothing) ─record→ pending{R(new)} + R(new) in a store the caller keeps out of place
 *           ─(hand-out)→ the caller moves the store into place (its activation) ─→ R(new)
 *
 * Until activation the current sealed root is untouched, so the old shares keep working; the
 * activation is one store write (the sealed root), so a crash leaves either the old or the new
 * root, never neither. The pending record is resumable (`verifyPendingCeremony` with a quorum of
 * either set, then `activatePendingCeremony`) and abortable (`abortPendingCeremony`).
 *
 * The pending record (meta `split/pending-ceremony`, JSON) carries the new sealed root as it will
 * be activated, the caller's description of where the shares went (with a SHA-256 digest of each
 * hand-out text, so a resume can tell a complete hand-out from a torn one), and an authenticator:
 * the SHA-256 of the record, wrapped (AES-256-GCM) by the root key itself. Only a holder of the
 * root key can make one, and a quorum of the old set or of the new set can check it.
 */
import {
  ConflictError,
  constantTimeEqual,
  decodeSealedRoot,
  encodeSealedRoot,
  FormatError,
  InvalidInputError,
  type KeyStore,
  KeyStoreError,
  MemoryKeyStore,
  ROOT_META_NAME,
  type SealedRootDocument,
  SoftwareRoot,
  toBase64Url,
  UNSEAL_KEY_BYTES,
  wipe,
} from '@keywarden/core';
import { fromBase64UrlStrict, randomBytes, sha256, utf8 } from './_bytes.js';
import { checkShareCommitment, isCommitmentList } from './commitment.js';
import {
  expectationOf,
  newShareSet,
  PENDING_CEREMONY_META,
  requireShamir,
  resolveParameters,
  type ShareSetOptions,
  type ShamirUnseal,
  storedDocument,
  unsealOrForged,
} from './ceremony.js';
import {
  checkSameParameters,
  checkSamePurpose,
  combineShares,
  type ParsedShare,
  parseShare,
  type ShareSetInfo,
} from './share.js';

export { PENDING_CEREMONY_META };

const AUTH_AAD = utf8.encode('keywarden/split/pending-ceremony/v1');
const DIGEST_DOMAIN = utf8.encode('keywarden/split/hand-out/v1');

export type CeremonyKind = 'init' | 'rekey';

/** Where the caller put the shares: free-form JSON of the caller's, plus what this module checks. */
export interface HandOutRecord {
  [key: string]: unknown;
  /** Set when activation must wait for a test quorum of the NEW shares (`--verify-quorum`). */
  requireNewQuorum?: boolean;
}

/** The pending record as stored (non-secret). */
export interface PendingCeremony {
  format: 1;
  kind: CeremonyKind;
  createdAt: string;
  /** The new share set. */
  shareSet: ShareSetInfo;
  /** Rekey: the sealed root the new one replaces (its id, nonce and wrap: compared at activation). */
  previous?: { shareSetId: string; threshold: number; shares: number; nonce: string; wrappedRoot: string };
  /** The new sealed root, written as is at activation. */
  document: SealedRootDocument;
  /** SHA-256 of each hand-out text, in share order (base64url). */
  digests: string[];
  handOut: HandOutRecord;
  /** base64url: root.wrapKey(SHA-256(the record without this field), AUTH_AAD). */
  authenticator: string;
}

/** Where a pending ceremony stands against the store's current root. */
export type PendingState =
  | { state: 'none' }
  | { state: 'pending'; pending: PendingCeremony }
  /** The new root is already the store's: the crash came between activation and clean-up. */
  | { state: 'activated'; pending: PendingCeremony };

/** The digest recorded for one hand-out text (the share text, or the armored encrypted share). */
export function handOutDigest(text: string): string {
  return toBase64Url(sha256(DIGEST_DOMAIN, Uint8Array.of(0), utf8.encode(text.trim())));
}

function recordBody(p: Omit<PendingCeremony, 'authenticator'>): Uint8Array {
  return utf8.encode(
    JSON.stringify([p.format, p.kind, p.createdAt, p.shareSet, p.previous ?? null, p.document, p.digests, p.handOut]),
  );
}

function sameSealedRoot(a: SealedRootDocument, b: SealedRootDocument): boolean {
  return a.rootId === b.rootId && a.nonce === b.nonce && a.wrappedRoot === b.wrappedRoot;
}

function decodePending(bytes: Uint8Array): PendingCeremony {
  let p: Partial<PendingCeremony>;
  try {
    p = JSON.parse(Buffer.from(bytes).toString('utf8')) as Partial<PendingCeremony>;
  } catch {
    throw new FormatError('ceremony: the pending ceremony record is not valid JSON');
  }
  if (
    typeof p !== 'object' ||
    p === null ||
    p.format !== 1 ||
    (p.kind !== 'init' && p.kind !== 'rekey') ||
    typeof p.createdAt !== 'string' ||
    typeof p.shareSet !== 'object' ||
    p.shareSet === null ||
    !Array.isArray(p.digests) ||
    typeof p.handOut !== 'object' ||
    p.handOut === null ||
    typeof p.authenticator !== 'string'
  ) {
    throw new FormatError('ceremony: the pending ceremony record is malformed');
  }
  const document = decodeSealedRoot(utf8.encode(JSON.stringify(p.document)));
  const u = requireShamir(document, 'ceremony');
  if (u.shareSetId !== p.shareSet.shareSetId || p.digests.length !== u.shares) {
    throw new FormatError('ceremony: the pending ceremony record does not match its sealed root');
  }
  return { ...(p as PendingCeremony), document };
}

/** The pending ceremony record, if any (parsed, NOT authenticated: for display and routing). */
export async function readPendingCeremony(store: KeyStore): Promise<PendingCeremony | undefined> {
  const bytes = await store.getMeta(PENDING_CEREMONY_META);
  return bytes ? decodePending(bytes) : undefined;
}

/** Where the pending ceremony (if any) stands against the store's current root. */
export async function pendingCeremonyState(store: KeyStore): Promise<PendingState> {
  const pending = await readPendingCeremony(store);
  if (!pending) return { state: 'none' };
  const current = await store.getMeta(ROOT_META_NAME);
  if (current && sameSealedRoot(decodeSealedRoot(current), pending.document)) return { state: 'activated', pending };
  return { state: 'pending', pending };
}

/**
 * A ceremony staged in memory: the new share set, its hand-out texts and the new sealed root,
 * with the root key held (unsealed) to authenticate the pending record. Nothing is written until
 * `record`. `close()` wipes the root key; call it whatever happens.
 */
export class StagedCeremony {
  readonly kind: CeremonyKind;
  readonly shareSet: ShareSetInfo;
  /** What to give custodian i (0-based), as `rekey`/`initSplitRoot` return it. Drop after hand-out. */
  readonly handOut: string[];
  readonly document: SealedRootDocument;
  readonly #root: SoftwareRoot;
  readonly #previous: SealedRootDocument | undefined;
  #recorded: PendingCeremony | undefined;

  /** @internal */
  constructor(
    kind: CeremonyKind,
    parts: { shareSet: ShareSetInfo; handOut: string[]; document: SealedRootDocument },
    root: SoftwareRoot,
    previous: SealedRootDocument | undefined,
  ) {
    this.kind = kind;
    this.shareSet = parts.shareSet;
    this.handOut = parts.handOut;
    this.document = parts.document;
    this.#root = root;
    this.#previous = previous;
  }

  /** The digest of each hand-out text, as recorded (share order). */
  get digests(): string[] {
    return this.handOut.map(handOutDigest);
  }

  /**
   * Write the pending record (and, for init, the new sealed root after it: an init's store is
   * activated by the caller moving it into place). Pre (rekey): no other ceremony is pending and
   * the store's root is still the one this was staged from.
   */
  async record(store: KeyStore, handOut: HandOutRecord): Promise<PendingCeremony> {
    if (this.#recorded) throw new InvalidInputError('ceremony: this ceremony was already recorded');
    const existing = await store.getMeta(PENDING_CEREMONY_META);
    if (existing) {
      // Staging refused a pending ceremony, so this one was recorded since: a concurrent ceremony.
      const other = decodePending(existing);
      throw new ConflictError(
        `ceremony: another ${other.kind} (to share set ${other.shareSet.shareSetId}) was recorded since this one was staged; nothing was changed`,
      );
    }
    if (this.kind === 'rekey') {
      const current = await storedDocument(store);
      if (!this.#previous || !sameSealedRoot(current, this.#previous)) throw rootChangedError();
    } else if (await store.getMeta(ROOT_META_NAME)) {
      throw new KeyStoreError('root: this key store already has a root');
    }
    const prev = this.#previous;
    const pu = prev ? requireShamir(prev, 'rekey') : undefined;
    const body: Omit<PendingCeremony, 'authenticator'> = {
      format: 1,
      kind: this.kind,
      createdAt: new Date().toISOString(),
      shareSet: { ...this.shareSet },
      ...(prev && pu
        ? {
            previous: {
              shareSetId: pu.shareSetId,
              threshold: pu.threshold,
              shares: pu.shares,
              nonce: prev.nonce,
              wrappedRoot: prev.wrappedRoot,
            },
          }
        : {}),
      document: this.document,
      digests: this.digests,
      handOut: structuredClone(handOut),
    };
    const digest = sha256(recordBody(body));
    const authenticator = toBase64Url(await this.#root.wrapKey(digest, AUTH_AAD));
    const pending: PendingCeremony = { ...body, authenticator };
    // Compare-and-swap: of two ceremonies staged at the same moment, one records, the other gets
    // ConflictError here, before any of its shares is handed out.
    await swapMeta(store, PENDING_CEREMONY_META, null, utf8.encode(JSON.stringify(pending)));
    if (this.kind === 'init') await store.putMeta(ROOT_META_NAME, encodeSealedRoot(this.document));
    this.#recorded = pending;
    return structuredClone(pending);
  }

  /**
   * Rekey: make the new share set the store's (one write of the sealed root), then drop the
   * pending record. Pre: `record` was called and every share was handed out durably.
   */
  async activate(store: KeyStore): Promise<void> {
    if (!this.#recorded) throw new InvalidInputError('ceremony: record the ceremony before activating it');
    if (this.kind !== 'rekey') throw new InvalidInputError('ceremony: an init is activated by moving its store');
    await activate(store, this.#recorded);
  }

  async close(): Promise<void> {
    await this.#root.close();
  }
}

/**
 * Stage an init: a new root key and unseal key from the CSPRNG; the unseal key split M-of-N (and
 * each share encrypted to its custodian when given); the root sealed under it, with a commitment
 * to every share. Nothing is written; the unseal key is wiped before returning.
 */
export async function stageInit(options: ShareSetOptions = {}): Promise<StagedCeremony> {
  const { shares, threshold, recipients } = resolveParameters(options);
  const unsealKey = randomBytes(UNSEAL_KEY_BYTES);
  try {
    const { unseal, ...out } = await newShareSet(unsealKey, shares, threshold, recipients);
    const { root, document } = await SoftwareRoot.createForRotation({ unsealKey, unseal });
    return new StagedCeremony('init', { ...out, document }, root, undefined);
  } finally {
    wipe(unsealKey);
  }
}

/**
 * Stage a rekey: a quorum of the CURRENT shares opens the store's root (separation of duties: even
 * if some process holds it unsealed); the root key is resealed under a new unseal key, split into
 * the new set (N and M default to the current ones). Nothing is written. Refuses while a ceremony
 * is pending.
 */
export async function stageRekey(
  store: KeyStore,
  currentShares: readonly string[] | readonly ParsedShare[],
  options: ShareSetOptions = {},
): Promise<StagedCeremony> {
  const state = await pendingCeremonyState(store);
  if (state.state === 'pending') throw pendingError(state.pending);
  const stored = await storedDocument(store);
  const current = requireShamir(stored, 'rekey');
  // N and M default to the current ones (M capped at a smaller new N).
  const n = options.shares ?? current.shares;
  const { shares, threshold, recipients } = resolveParameters({
    ...options,
    shares: n,
    threshold: options.threshold ?? Math.min(current.threshold, n),
  });
  const oldKey = await combineShares(currentShares, expectationOf(current));
  const root = await scratchRoot(stored);
  const newKey = randomBytes(UNSEAL_KEY_BYTES);
  try {
    try {
      await unsealOrForged(root, oldKey);
    } finally {
      wipe(oldKey);
    }
    const { unseal, ...out } = await newShareSet(newKey, shares, threshold, recipients);
    const document = await root.reseal(new MemoryKeyStore(), newKey, unseal);
    return new StagedCeremony('rekey', { ...out, document }, root, stored);
  } catch (err) {
    await root.close();
    throw err;
  } finally {
    wipe(newKey);
  }
}

/**
 * Resume, step 1: authenticate the pending record with a quorum of EITHER share set — the current
 * one (the rekey's own quorum, again) or the new one (which also proves the new shares were
 * received: the test quorum). Returns which set the quorum belonged to. Throws when the quorum
 * does not open the corresponding root, or the record was not made by a holder of the root key.
 */
export async function verifyPendingCeremony(
  store: KeyStore,
  shares: readonly string[] | readonly ParsedShare[],
): Promise<{ pending: PendingCeremony; quorumOf: 'current' | 'new' }> {
  const pending = await readPendingCeremony(store);
  if (!pending) throw new InvalidInputError('ceremony: no ceremony is pending in this key store');
  const first = shares[0];
  const setId = typeof first === 'string' ? /\.(ss_[A-Za-z0-9_-]{16})\./.exec(first)?.[1] : first?.shareSetId;
  const quorumOf = setId === pending.shareSet.shareSetId ? 'new' : 'current';
  let doc: SealedRootDocument;
  if (quorumOf === 'new') doc = pending.document;
  else {
    if (pending.kind !== 'rekey') {
      throw new InvalidInputError(
        `ceremony: a pending init is confirmed with a quorum of its own shares (share set ${pending.shareSet.shareSetId})`,
      );
    }
    doc = await storedDocument(store);
    if (!pending.previous || doc.nonce !== pending.previous.nonce || doc.wrappedRoot !== pending.previous.wrappedRoot) {
      throw rootChangedError();
    }
  }
  const key = await combineShares(shares, expectationOf(requireShamir(doc, 'ceremony')));
  const root = await scratchRoot(doc);
  try {
    try {
      await unsealOrForged(root, key);
    } finally {
      wipe(key);
    }
    const { authenticator, ...body } = pending;
    const wrapped = fromBase64UrlStrict(authenticator);
    let recovered: Uint8Array | undefined;
    try {
      recovered = wrapped ? await root.unwrapKey(wrapped, AUTH_AAD) : undefined;
    } catch {
      recovered = undefined;
    }
    const expected = sha256(recordBody(body));
    const ok = recovered !== undefined && constantTimeEqual(recovered, expected);
    wipe(recovered);
    if (!ok) {
      throw new KeyStoreError(
        'ceremony: the pending ceremony record does not authenticate under this root (altered, or not made by this key store); abort it',
      );
    }
    return { pending, quorumOf };
  } finally {
    await root.close();
  }
}

/**
 * Resume, step 2 (rekey): activate an authenticated pending record — the caller has checked that
 * every share is durably handed out. A record that asks for a test quorum is activated only after
 * `verifyPendingCeremony` with the new shares (pass `quorumOf`).
 */
export async function activatePendingCeremony(
  store: KeyStore,
  verified: { pending: PendingCeremony; quorumOf: 'current' | 'new' },
): Promise<void> {
  const { pending, quorumOf } = verified;
  if (pending.handOut.requireNewQuorum === true && quorumOf !== 'new') {
    throw new InvalidInputError(
      `ceremony: this ceremony waits for a test quorum of the NEW shares (share set ${pending.shareSet.shareSetId}) before it is activated`,
    );
  }
  if (pending.kind !== 'rekey') throw new InvalidInputError('ceremony: an init is activated by moving its store');
  await activate(store, pending);
}

/** Drop the pending record (if any) and return it; the current share set is unaffected. */
export async function abortPendingCeremony(store: KeyStore): Promise<PendingCeremony | undefined> {
  const bytes = await store.getMeta(PENDING_CEREMONY_META);
  if (!bytes) return undefined;
  let pending: PendingCeremony | undefined;
  try {
    pending = decodePending(bytes);
  } catch {
    pending = undefined;
  }
  await store.deleteMeta(PENDING_CEREMONY_META);
  return pending;
}

/** Drop a pending record whose root is already active (a crash between activation and clean-up). */
export async function finishActivatedCeremony(store: KeyStore): Promise<boolean> {
  const state = await pendingCeremonyState(store);
  if (state.state !== 'activated') return false;
  await store.deleteMeta(PENDING_CEREMONY_META);
  return true;
}

async function activate(store: KeyStore, pending: PendingCeremony): Promise<void> {
  const stored = await store.getMeta(PENDING_CEREMONY_META);
  if (!stored || decodePending(stored).authenticator !== pending.authenticator) {
    throw new ConflictError('ceremony: the pending ceremony changed in the key store meanwhile; nothing was activated');
  }
  const currentBytes = await store.getMeta(ROOT_META_NAME);
  const current = await storedDocument(store);
  if (sameSealedRoot(current, pending.document)) {
    await swapMeta(store, PENDING_CEREMONY_META, stored, null);
    return;
  }
  if (
    !currentBytes ||
    !pending.previous ||
    current.nonce !== pending.previous.nonce ||
    current.wrappedRoot !== pending.previous.wrappedRoot
  ) {
    throw rootChangedError();
  }
  // The one write that switches share sets: the old set works up to here, the new one from here.
  // Compare-and-swap on the sealed root: a rekey or root rotation that committed since it was read
  // makes this one a ConflictError that changes nothing.
  await swapMeta(store, ROOT_META_NAME, currentBytes, encodeSealedRoot(pending.document));
  await swapMeta(store, PENDING_CEREMONY_META, stored, null);
}

/**
 * The store's compare-and-swap on one meta record (KeyStore.swapMeta). A store without one gets a
 * read, a comparison and a write: safe against everything but a second process in between.
 */
async function swapMeta(
  store: KeyStore,
  name: string,
  expected: Uint8Array | null,
  value: Uint8Array | null,
): Promise<void> {
  if (typeof store.swapMeta === 'function') {
    await store.swapMeta(name, expected, value);
    return;
  }
  const current = await store.getMeta(name);
  const same =
    expected === null
      ? current === undefined
      : current !== undefined && current.length === expected.length && constantTimeEqual(current, expected);
  if (!same) {
    throw new ConflictError(
      `ceremony: meta record "${name}" changed since it was read (another rekey or root rotation committed first); nothing was changed`,
    );
  }
  if (value === null) await store.deleteMeta(name);
  else await store.putMeta(name, value);
}

async function scratchRoot(doc: SealedRootDocument): Promise<SoftwareRoot> {
  const scratch = new MemoryKeyStore();
  await scratch.putMeta(ROOT_META_NAME, encodeSealedRoot(doc));
  return SoftwareRoot.load(scratch);
}

function pendingError(p: PendingCeremony): InvalidInputError {
  return new InvalidInputError(
    `ceremony: a ${p.kind} to share set ${p.shareSet.shareSetId} is pending since ${p.createdAt}: finish it (resume) or abort it first`,
  );
}

function rootChangedError(): ConflictError {
  return new ConflictError(
    "ceremony: the key store's root changed since this ceremony was staged (another rekey or a root rotation); abort the pending ceremony",
  );
}

/** @internal For tests and the format docs: the commitments recorded in a sealed root. */
export function recordedCommitments(doc: SealedRootDocument): string[] | undefined {
  const u = doc.unseal as ShamirUnseal;
  return u.method === 'shamir' && isCommitmentList(u.commitments, u.shares) ? [...u.commitments] : undefined;
}

/**
 * Check one share against a key store BEFORE it is used (`keywarden share decrypt`): when it
 * names the store's current share set or a pending one, it must agree with that set's N and M and
 * match the commitment recorded for its index in that set's sealed root. A share made by someone
 * else with identical labels (anyone with a custodian's public key can make an encrypted share with
 * byte-identical headers) is refused here, naming its index, instead of at the first unseal.
 * Returns which set it belongs to ('unknown' when the store has no such set: nothing to check
 * against), and whether a commitment was there to check (roots sealed before commitments have none).
 */
export async function checkShareAgainstStore(
  store: KeyStore,
  share: string | ParsedShare,
): Promise<{ set: 'current' | 'pending' | 'unknown'; committed: boolean; storeShareSetId: string }> {
  const parsed = typeof share === 'string' ? parseShare(share) : share;
  try {
    const current = await storedDocument(store);
    const cu = requireShamir(current, 'share');
    const pending = await readPendingCeremony(store);
    const candidates: [SealedRootDocument, 'current' | 'pending'][] = [[current, 'current']];
    if (pending) candidates.push([pending.document, 'pending']);
    for (const [doc, set] of candidates) {
      const u = requireShamir(doc, 'share');
      if (u.shareSetId !== parsed.shareSetId) continue;
      const expected = expectationOf(u);
      const info: ShareSetInfo = {
        shareSetId: u.shareSetId,
        threshold: u.threshold,
        shares: u.shares,
        purpose: 'unseal-key',
      };
      checkSamePurpose(parsed, info);
      checkSameParameters(parsed, info);
      if (expected.commitments) checkShareCommitment(parsed, expected.commitments);
      return { set, committed: expected.commitments !== undefined, storeShareSetId: cu.shareSetId };
    }
    return { set: 'unknown', committed: false, storeShareSetId: cu.shareSetId };
  } finally {
    if (parsed !== share) parsed.wipe();
  }
}
