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
import { constantTimeEqual, wipe } from './_bytes.js';
import { InvalidInputError, KeyStateError, RootMissingError } from './errors.js';
import type { KeyStore, RootRewrap, RootUpdate } from './keystore.js';
import { kekAad } from './keywarden.js';
import { MemoryKeyStore } from './memory-store.js';
import type { RootOfTrust } from './root.js';
import { encodeRootTombstone, makeRootTombstone, readRootState, verifyRootTombstone } from './root-tombstone.js';
import {
  encodeSealedRoot,
  ROOT_META_NAME,
  ROOT_MISSING_MESSAGE,
  ROOT_TOMBSTONE_META_NAME,
  type SealedRootDocument,
  SoftwareRoot,
} from './software-root.js';

export interface RewrapResult {
  /** KEK versions moved to the new root. */
  rewrapped: number;
  /** Destroyed versions, left as they are (they have no material). */
  skippedDestroyed: number;
}

export interface DestroyRootOptions {
  /**
   * The consent: the unseal key of the root being destroyed (the development-mode key, or the key
   * a quorum of shares combines into). It must open the sealed root, or, when an earlier
   * destruction already deleted the root, match the tombstone. The caller wipes it.
   */
  unsealKey: Uint8Array;
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
 * (checked to unwrap to the same material before the write) and its rootId, and the meta record
 * `newRootMeta` is written (for the software root: "root", the new sealed document). On any
 * failure, nothing has changed and the old root keeps working.
 *
 * Each version's plaintext material is wiped as soon as it is rewrapped. A version added by
 * another process while this runs makes `replaceRoot` refuse (nothing changes): run it again.
 */
export async function rewrapUnderNewRoot(
  store: KeyStore,
  oldRoot: RootOfTrust,
  newRoot: RootOfTrust,
  newRootMeta: { name: string; value: Uint8Array },
  now: Date = new Date(),
): Promise<RewrapResult> {
  const oldId = oldRoot.describe().id;
  const newId = newRoot.describe().id;
  if (oldId === newId) {
    throw new InvalidInputError('root: rotation needs a new root; the new root has the id of the old one');
  }

  // First pass, no unwrap yet: which versions move, and are they all the old root's?
  const live: Array<{ keyId: string; version: number; wrapped: Uint8Array }> = [];
  let skippedDestroyed = 0;
  for (const key of await store.listKeys()) {
    for (const v of await store.listVersions(key.id)) {
      if (v.state === 'destroyed') {
        skippedDestroyed++;
        continue;
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
    const material = await oldRoot.unwrapKey(v.wrapped, aad);
    try {
      const wrapped = await newRoot.wrapKey(material, aad);
      // Verify before commit: a new root that cannot give the material back (a misconfigured
      // hardware root) must be caught while the old wraps are still in the store.
      const back = await newRoot.unwrapKey(wrapped, aad);
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

  const update: RootUpdate = { versions, meta: newRootMeta, at: now };
  await store.replaceRoot(update);
  return { rewrapped: versions.length, skippedDestroyed };
}

/**
 * Destroy the root of `store`: crypto-shredding of every key in it.
 *
 * Pre: the store has a root or the tombstone of one (else RootMissingError: a store with neither
 * is damaged or was never initialized, and nothing is changed); `unsealKey` opens the sealed root,
 * or matches the tombstone (else UnsealError, nothing changed). Consent is asked for even when the
 * root is already gone: finishing an interrupted destruction erases material too.
 * Step 1: write the tombstone (meta "root-tombstone"), authenticated under the unseal key. From
 * here on the store reads as destroyed and SoftwareRoot.load refuses the root.
 * Step 2, the one that matters: delete the sealed root (meta "root"). From that instant nothing
 * under the root can be recovered from this store, whoever holds the unseal secret.
 * Step 3, hygiene: mark every version that is not yet destroyed `destroyed`, which erases its
 * wrapped material in the store.
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
  const state = await readRootState(store);
  if (state.state === 'missing') throw new RootMissingError(ROOT_MISSING_MESSAGE);
  if (state.state === 'present') {
    await checkUnsealKeyOpens(state.document, options.unsealKey);
    const tombstone = makeRootTombstone(state.document, options.unsealKey, now);
    await store.putMeta(ROOT_TOMBSTONE_META_NAME, encodeRootTombstone(tombstone));
    await store.deleteMeta(ROOT_META_NAME);
  } else {
    verifyRootTombstone(state.tombstone, options.unsealKey);
  }
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

/** UnsealError unless `unsealKey` opens `doc`; a private in-memory copy, nothing in use is touched. */
async function checkUnsealKeyOpens(doc: SealedRootDocument, unsealKey: Uint8Array): Promise<void> {
  const scratch = new MemoryKeyStore();
  await scratch.putMeta(ROOT_META_NAME, encodeSealedRoot(doc));
  const probe = await SoftwareRoot.load(scratch);
  try {
    await probe.unseal(unsealKey);
  } finally {
    await probe.close();
    await scratch.close();
  }
}
