/**
 * Root rotation and root destruction, for any RootOfTrust: the software root today, and the same
 * code moves a store onto an HSM or TPM root later (`newRoot` is then the hardware root).
 *
 * Rotation: every KEK version that still has material is unwrapped by the old root and wrapped
 * by the new one, and all the new wraps are written together with the new root's meta record in
 * ONE store transaction (`KeyStore.replaceRoot`). A crash leaves the old root with the old wraps
 * or the new root with the new wraps, never a mix. The KEK material itself does not change, so
 * every data key and envelope made before still decrypts — under the new root.
 *
 * Destruction: consent first (the unseal key must open the sealed root); then a tombstone is
 * written (root-tombstone.ts), then the root's meta record (the sealed root) is deleted; from that
 * instant nothing wrapped by the root can be unwrapped from this store — crypto-shredding of every
 * KEK, and so of every data key and envelope, at once. Then every version is marked destroyed,
 * which erases its wrapped material: hygiene, so the store no longer holds material that a copy of
 * the sealed root (a backup) and its unseal secret could open. A store with neither a root nor a
 * tombstone is damaged, not destroyed: destruction refuses it (RootMissingError).
 *
 * Other processes: a `Keywarden` still holding the OLD root refuses any KEK version it has not
 * cached, because `#loadKek` checks the version's root id (KeyStateError "wrapped by another
 * root"); KEK versions it has already cached keep working until the entry expires (`cache.ttlMs`)
 * or it is sealed. So after a rotation or destruction every such process must be sealed or
 * stopped (the CLI seals the agent); in the rotating process, `clearCache()` or `seal()` any
 * Keywarden that used the old root.
 */
import { finishAuditKeyMove, finishAuditKeyMoveTo, stageAuditKeyMove } from './audit/audit-key.js';
import { constantTimeEqual, wipe } from './_bytes.js';
import { InvalidInputError, KeyStateError, RootMissingError } from './errors.js';
import type { KeyStore, RootRewrap, RootUpdate } from './keystore.js';
import { kekAad } from './keywarden.js';
import { checkedRoot, isKekInRootRecord, requireDestroyable, ROOT_MISSING_MESSAGE, type RootOfTrust } from './root.js';
import { recordedRootBackend } from './root-registry.js';
import {
  finishKeyPairKeyMove,
  finishKeyPairKeyMoveTo,
  KEY_PAIR_KEY_META_NAME,
  KEY_PAIR_KEY_NEXT_META_NAME,
  stageKeyPairKeyMove,
} from './sealed-key-pairs.js';

export interface RewrapResult {
  /** KEK versions moved to the new root. */
  rewrapped: number;
  /** Destroyed versions, left as they are (they have no material). */
  skippedDestroyed: number;
}

export interface DestroyRootOptions {
  /**
   * The consent: the unlocking secret of the root being destroyed (the software root's unseal key
   * — the development-mode key, or the key a quorum of shares combines into —, an HSM's PIN). The
   * root checks it (for the software root: it must open the sealed root, or, when an earlier
   * destruction already deleted the root, match the tombstone). The caller wipes it.
   */
  unsealKey: Uint8Array;
  /**
   * The root to destroy, when the caller has it open (it must be `Destroyable`). Default: the
   * backend that recognises the root record `store` holds (root-registry.ts root-record hooks),
   * which also finishes a destruction interrupted after the root could no longer be opened.
   */
  root?: RootOfTrust;
  /** Time recorded in the tombstone and on every version. Default: now. */
  now?: Date;
}

export interface DestroyRootResult {
  /** Versions whose material this call erased. */
  destroyed: number;
  /** Versions that were already destroyed. */
  alreadyDestroyed: number;
}

/**
 * Move every KEK version of `store` from `oldRoot` to `newRoot`.
 *
 * Pre (checked before anything is written): both roots can wrap and unwrap (unsealed); the new
 * root has another id; every non-destroyed version was wrapped by `oldRoot` (its rootId), else
 * KeyStateError; every old wrap opens (else the root's DecryptionError).
 * Post: in one `replaceRoot` transaction, every non-destroyed version carries a wrap by `newRoot`
 * (checked to unwrap to the same material before the write) and its rootId, and the new root's
 * own record is written: `newRootMeta` when given, else the root's `storeRecord()` (for the
 * software root, meta "root", the new sealed document). On any
 * failure, nothing has changed and the old root keeps working.
 *
 * Each version's plaintext material is wiped as soon as it is rewrapped. A version added by
 * another process while this runs makes `replaceRoot` refuse (nothing changes): run it again.
 */
export async function rewrapUnderNewRoot(
  store: KeyStore,
  oldRoot: RootOfTrust,
  newRoot: RootOfTrust,
  newRootMeta?: { name: string; value: Uint8Array },
  now: Date = new Date(),
): Promise<RewrapResult> {
  // Through the checked wrappers: blob bounds, material length and stable ids hold for any backend.
  const from = checkedRoot(oldRoot);
  const to = checkedRoot(newRoot);
  const oldId = from.describe().id;
  const newId = to.describe().id;
  if (oldId === newId) {
    throw new InvalidInputError('root: rotation needs a new root; the new root has the id of the old one');
  }
  // The new root's record is the root's own (root-record hook); a caller may still pass it.
  const meta = newRootMeta ?? to.storeRecord();
  if (!meta) {
    throw new InvalidInputError(
      'root: the new root keeps no record in the store; pass the record to write (newRootMeta)',
    );
  }

  // Compare-and-swap (issue 10): the root record as read now; replaceRoot refuses to commit if
  // another rotation or rekey replaced it (or moved a version) in the meantime.
  const expectedMeta = (await store.getMeta(meta.name)) ?? null;

  // First pass, no unwrap yet: which versions move, and are they all the old root's?
  const live: Array<{ keyId: string; version: number; wrapped: Uint8Array }> = [];
  let skippedDestroyed = 0;
  for (const key of await store.listKeys()) {
    for (const v of await store.listVersions(key.id)) {
      if (v.state === 'destroyed') {
        skippedDestroyed++;
        continue;
      }
      if (isKekInRootRecord(v.wrappedMaterial)) {
        throw new KeyStateError(
          `root: key ${key.id} v${v.version} is held inside the root (KEK mode "root") and cannot leave it for another root; nothing was changed`,
        );
      }
      if (v.rootId !== oldId) {
        throw new KeyStateError(
          `root: key ${key.id} v${v.version} is wrapped by root ${v.rootId}, not by the root being rotated (${oldId}); nothing was changed`,
        );
      }
      live.push({ keyId: key.id, version: v.version, wrapped: v.wrappedMaterial });
    }
  }

  // Second pass: rewrap, one version's plaintext in memory at a time.
  const versions: RootRewrap[] = [];
  for (const v of live) {
    const aad = kekAad(v.keyId, v.version);
    const material = await from.unwrapKey(v.wrapped, aad);
    try {
      const wrapped = await to.wrapKey(material, aad);
      // Verify before commit: a new root that cannot give the material back (a misconfigured
      // hardware root) must be caught while the old wraps are still in the store.
      const back = await to.unwrapKey(wrapped, aad);
      const same = constantTimeEqual(back, material);
      wipe(back);
      if (!same) {
        throw new InvalidInputError('root: the new root did not unwrap what it wrapped; nothing was changed');
      }
      versions.push({ keyId: v.keyId, version: v.version, rootId: newId, wrappedMaterial: wrapped });
    } finally {
      wipe(material);
    }
  }

  // The audit key (docs/audit.md §3) moves with the KEKs: staged under the new root first, so a
  // crash anywhere leaves a key that the root in use can unwrap.
  const auditKeyStaged = await stageAuditKeyMove(store, oldRoot, newRoot);
  // So does the key that seals the software root's key pairs (sealed-key-pairs.ts), the same way.
  const keyPairKeyStaged = await stageKeyPairKeyMove(store, oldRoot, newRoot);
  const update: RootUpdate = { versions, meta, at: now, expectedRootId: oldId, expectedMeta };
  await store.replaceRoot(update);
  if (auditKeyStaged) await finishAuditKeyMove(store, newRoot);
  // A first key pair made by another process while this ran: its key is under the old root (still
  // unsealed here), move it now (that process re-checks the store's root after writing it).
  if (!keyPairKeyStaged) await stageKeyPairKeyMove(store, oldRoot, newRoot);
  await finishKeyPairKeyMove(store, newRoot);
  return { rewrapped: versions.length, skippedDestroyed };
}

/**
 * Finish what a root rotation stopped between its commit and its promotions left staged under the
 * root now in use (`rootId`): the audit key and the software root's key-pair key. Idempotent, and
 * it needs only the root's id, so it runs while the root is sealed. runRootRotationJob and the
 * CLI's root rotate call it before deciding what is left to do.
 */
export async function finishStagedRootMoves(store: KeyStore, rootId: string): Promise<void> {
  await finishAuditKeyMoveTo(store, rootId);
  await finishKeyPairKeyMoveTo(store, rootId);
}

/**
 * Destroy the root of `store`: crypto-shredding of every key in it.
 *
 * Pre: the store has a root or the record of a destruction (else RootMissingError: a store with
 * neither is damaged or was never initialized, and nothing is changed); the root accepts the
 * consent (else UnsealError, nothing changed). Consent is asked for even when the root is already
 * gone: finishing an interrupted destruction erases material too.
 * Steps 1 and 2 are the root's own (`Destroyable.destroy`, or the root-record hook of the backend
 * whose record the store holds). For the software root: write the tombstone (meta
 * "root-tombstone"), authenticated under the unseal key — from here on the store reads as
 * destroyed and the root refuses to load —, then, the step that matters, delete the sealed root
 * (meta "root"): from that instant nothing under the root can be recovered from this store,
 * whoever holds the unseal secret.
 * Step 3, hygiene: delete the wrap of the software root's key-pair key (sealed-key-pairs.ts), and
 * mark every version that is not yet destroyed `destroyed`, which erases its wrapped material in
 * the store.
 *
 * Idempotent: when interrupted between or during the steps, call it again (with the same consent)
 * to finish. What it cannot reach: backups of the store (which hold the sealed root and the wraps;
 * §5.5 of docs/threat-model.md), and processes that still hold the unsealed root or cached KEKs —
 * seal or stop them. A hardware root's key lives in the device and is destroyed there.
 *
 * @keywarden/split-knowledge's `destroyRootWithQuorum` combines a quorum into the unseal key and
 * calls this.
 */
export async function destroyRoot(store: KeyStore, options: DestroyRootOptions): Promise<DestroyRootResult> {
  const now = options.now ?? new Date();
  // Steps 1 and 2 belong to the root: its record is its own (software: tombstone, then the sealed
  // root deleted; an HSM: C_DestroyObject). Generic code names no backend.
  if (options.root) {
    await requireDestroyable(checkedRoot(options.root)).destroy(store, options.unsealKey, now);
  } else {
    const recorded = await recordedRootBackend(store);
    if (!recorded) throw new RootMissingError(ROOT_MISSING_MESSAGE);
    await recorded.destroyRecorded(store, options.unsealKey, now);
  }
  // Hygiene too: the wraps of the key that seals the software root's key pairs (sealed-key-pairs.ts).
  await store.deleteMeta(KEY_PAIR_KEY_NEXT_META_NAME);
  await store.deleteMeta(KEY_PAIR_KEY_META_NAME);
  let destroyed = 0;
  let alreadyDestroyed = 0;
  for (const key of await store.listKeys()) {
    for (const v of await store.listVersions(key.id)) {
      wipe(v.wrappedMaterial);
      if (v.state === 'destroyed') {
        alreadyDestroyed++;
        continue;
      }
      await store.setVersionState(key.id, v.version, 'destroyed', now);
      destroyed++;
    }
  }
  return { destroyed, alreadyDestroyed };
}
