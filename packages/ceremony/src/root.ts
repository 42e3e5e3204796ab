/**
 * Root rotation and root destruction on a key-store folder (`keywarden root rotate|destroy`;
 * docs/split-knowledge.md, "Rotating and destroying the root").
 *
 * Who must consent:
 *  - split knowledge: a quorum of the CURRENT shares (the caller's `quorum` callback), even when an
 *    agent is unsealed — a running process is not a quorum (separation of duties). The quorum is
 *    checked by @keywarden/split-knowledge (`rotateRoot`, `destroyRootWithQuorum`) against the
 *    sealed root in the store before anything changes;
 *  - development mode: the unseal key (the caller's `unsealKey` callback), which must open the
 *    root before anything changes. The key is wiped after use.
 *
 * An agent that holds the root unsealed is not this module's business: after a split-knowledge
 * rotation or destruction the caller tells it to seal (the CLI does, through @keywarden/agent).
 * Nothing secret is returned: root ids, counts, the share-set id.
 */
import {
  consentMethodOf,
  destroyRoot,
  encodeSealedRoot,
  InvalidInputError,
  type KeyStore,
  ROOT_META_NAME,
  readRootState,
  rewrapUnderNewRoot,
  SoftwareRoot,
  wipe,
} from '@keywarden/core';
import { destroyRootWithQuorum, rotateRoot, type ShareSetInfo } from '@keywarden/split-knowledge';
import { openFolderStore, requireSoftwareRoot, requireStore, type StoreLocation } from './layout.js';
import type { QuorumSource } from './split.js';

export interface RootCeremonyOptions {
  /** Split knowledge: supplies a quorum of the CURRENT shares. */
  quorum?: QuorumSource;
  /** Development mode: supplies the 32-byte unseal key; it is wiped after use. */
  unsealKey?: () => Promise<Uint8Array>;
}

export interface RootRotateResult {
  mode: 'development' | 'split-knowledge';
  previousRootId: string;
  rootId: string;
  rewrapped: number;
  /** Split knowledge: the share set that still unseals the (new) root. */
  shareSet?: ShareSetInfo;
}

export interface RootDestroyResult {
  mode: 'development' | 'split-knowledge';
  /** True when an earlier destruction had already deleted the root (its tombstone says so): this one finished the erasing. */
  resumed: boolean;
  /** The destroyed root's id (from the root, or from its tombstone). */
  rootId: string;
  destroyed: number;
  alreadyDestroyed: number;
}

/**
 * A new root key and root id, sealed under the same unseal secret (the shares or the unseal key
 * keep working); every KEK version rewrapped under it in one transaction.
 */
export async function rotateRootStoreDir(loc: StoreLocation, options: RootCeremonyOptions): Promise<RootRotateResult> {
  await requireStore(loc);
  await requireSoftwareRoot(loc);
  const store: KeyStore = await openFolderStore(loc, 'write');
  let root: SoftwareRoot | undefined;
  try {
    root = await SoftwareRoot.load(store);
    const doc = root.document;
    const u = doc.unseal;
    if (u.method === 'shamir') {
      const shareSet = shareSetOf(u);
      const shares = await quorumOf(options, {
        operation: 'root rotate',
        title: 'Root rotation',
        which: 'current',
        shareSet,
      });
      let result: { rootId: string; rewrapped: number };
      try {
        result = await rotateRoot(store, shares);
      } finally {
        shares.length = 0;
      }
      return { mode: 'split-knowledge', previousRootId: doc.rootId, ...result, shareSet };
    }
    const unsealKey = await unsealKeyOf(options, 'root rotate');
    let next: SoftwareRoot | undefined;
    try {
      // A wrong key is refused here (UnsealError), before anything is made or written.
      await root.unseal(unsealKey);
      // The same unseal key and description: the key file or variable keeps working.
      const created = await SoftwareRoot.createForRotation({ unsealKey, unseal: doc.unseal });
      next = created.root;
      const { rewrapped } = await rewrapUnderNewRoot(store, root, next, {
        name: ROOT_META_NAME,
        value: encodeSealedRoot(created.document),
      });
      return { mode: 'development', previousRootId: doc.rootId, rootId: created.document.rootId, rewrapped };
    } finally {
      wipe(unsealKey);
      await next?.close();
    }
  } finally {
    await root?.close().catch(() => {});
    await store.close().catch(() => {});
  }
}

/**
 * Crypto-shred the whole store: tombstone, delete the sealed root, then destroy every key version.
 * Always with consent — a quorum of the current shares, or the development-mode unseal key — even
 * when an earlier, interrupted destruction already deleted the root (the tombstone names the share
 * set and is checked against the key). A store with neither a root nor a tombstone is damaged, not
 * destroyed: refused before anything is asked or changed (core's RootMissingError).
 */
export async function destroyRootStoreDir(
  loc: StoreLocation,
  options: RootCeremonyOptions,
): Promise<RootDestroyResult> {
  await requireStore(loc);
  await requireSoftwareRoot(loc);
  const store = await openFolderStore(loc, 'write');
  try {
    const state = await readRootState(store);
    const unseal = consentMethodOf(state); // RootMissingError on a damaged store
    const rootId =
      state.state === 'present' ? state.document.rootId : state.state === 'destroyed' ? state.tombstone.rootId : '';
    const resumed = state.state === 'destroyed';
    if (unseal.method === 'shamir') {
      const shares = await quorumOf(options, {
        operation: 'root destroy',
        title: 'Root destruction',
        which: 'current',
        shareSet: shareSetOf(unseal),
      });
      let r: Awaited<ReturnType<typeof destroyRootWithQuorum>>;
      try {
        r = await destroyRootWithQuorum(store, shares);
      } finally {
        shares.length = 0;
      }
      return { mode: 'split-knowledge', resumed, rootId, ...r };
    }
    const unsealKey = await unsealKeyOf(options, 'root destroy');
    let r: Awaited<ReturnType<typeof destroyRoot>>;
    try {
      // Whoever destroys must be able to open the root (or match its tombstone): the bar of using it.
      r = await destroyRoot(store, { unsealKey });
    } finally {
      wipe(unsealKey);
    }
    return { mode: 'development', resumed, rootId, ...r };
  } finally {
    await store.close().catch(() => {});
  }
}

function shareSetOf(u: { shareSetId: string; threshold: number; shares: number }): ShareSetInfo {
  return { shareSetId: u.shareSetId, threshold: u.threshold, shares: u.shares, purpose: 'unseal-key' };
}

async function quorumOf(options: RootCeremonyOptions, request: Parameters<QuorumSource>[0]): Promise<string[]> {
  if (typeof options.quorum !== 'function') {
    throw new InvalidInputError(
      `${request.operation}: this key store is sealed by split knowledge; pass a quorum callback for ${request.shareSet.threshold} current shares`,
    );
  }
  const shares = await options.quorum(request);
  if (!Array.isArray(shares) || shares.some((s) => typeof s !== 'string')) {
    throw new InvalidInputError(`${request.operation}: the quorum callback must return an array of share texts`);
  }
  return shares;
}

async function unsealKeyOf(options: RootCeremonyOptions, operation: string): Promise<Uint8Array> {
  if (typeof options.unsealKey !== 'function') {
    throw new InvalidInputError(
      `${operation}: this key store is in development mode; pass an unsealKey callback for its unseal key`,
    );
  }
  const key = await options.unsealKey();
  if (!(key instanceof Uint8Array)) {
    throw new InvalidInputError(`${operation}: the unsealKey callback must return a Uint8Array`);
  }
  return key;
}
