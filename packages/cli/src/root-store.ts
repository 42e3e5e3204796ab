/**
 * Root rotation and root destruction on a key-store directory (`keywarden root rotate|destroy`;
 * docs/split-knowledge.md, "Rotating and destroying the root").
 *
 * Who must consent:
 *  - split knowledge: a quorum of the CURRENT shares (files, else the hidden prompt, else stdin),
 *    even when an agent is unsealed — a running process is not a quorum (separation of duties).
 *    The quorum is checked by @keywarden/split-knowledge (`rotateRoot`, `destroyRootWithQuorum`)
 *    against the sealed root in the store before anything changes;
 *  - development mode: the unseal key (environment or file, as for every command), which must open
 *    the root before anything changes.
 * Destruction also needs the explicit `--yes-destroy-every-key` (checked by the command first).
 *
 * The commands do not go through the agent: they open the key store themselves, and afterwards
 * tell a running agent to seal, because an unsealed agent still holds the old root and its cached
 * KEKs. Nothing secret is printed: root ids, counts, the share-set id.
 */
import {
  consentMethodOf,
  encodeSealedRoot,
  type KeyStore,
  ROOT_META_NAME,
  readRootState,
  rewrapUnderNewRoot,
  SoftwareRoot,
  destroyRoot,
  wipe,
} from '@keywarden/core';
import { destroyRootWithQuorum, rotateRoot, type ShareSetInfo } from '@keywarden/split-knowledge';
import { AgentClient, isAgentUnavailable } from '@keywarden/agent';
import { UsageError } from './errors.js';
import type { CliIO } from './io.js';
import { collectCurrentShares, type QuorumRequest } from './split-store.js';
import {
  openStoreFile,
  readUnsealKey,
  requireStore,
  resolveAgentSocket,
  resolveUnsealSource,
  type SocketLocation,
  type StoreLocation,
} from './store-dir.js';

export interface RootOperationOptions {
  /** Files holding current plaintext shares (split knowledge). */
  shareFiles?: readonly string[];
  /** --unseal-key-file (development mode). */
  unsealKeyFile?: string;
  /** --socket: the agent to seal afterwards (split knowledge). */
  socket?: string;
}

/** What became of a running agent after the operation. */
export type AgentOutcome =
  | { state: 'sealed'; socket: SocketLocation }
  | { state: 'none'; socket: SocketLocation }
  | { state: 'unreachable'; socket: SocketLocation; reason: string }
  /** Development mode: there is never an agent. */
  | { state: 'not-applicable' };

export interface RootRotateResult {
  mode: 'development' | 'split-knowledge';
  previousRootId: string;
  rootId: string;
  rewrapped: number;
  /** Split knowledge: the share set that still unseals the (new) root. */
  shareSet?: ShareSetInfo;
  agent: AgentOutcome;
}

export interface RootDestroyResult {
  mode: 'development' | 'split-knowledge';
  /** True when an earlier destruction had already deleted the root (its tombstone says so): this one finished the erasing. */
  resumed: boolean;
  /** The destroyed root's id (from the root, or from its tombstone). */
  rootId: string;
  destroyed: number;
  alreadyDestroyed: number;
  agent: AgentOutcome;
}

const ROTATE: QuorumRequest = { operation: 'root rotate', title: 'Root rotation' };
const DESTROY: QuorumRequest = { operation: 'root destroy', title: 'Root destruction' };

/** A new root key and root id; every KEK version rewrapped under it in one transaction. */
export async function rotateRootStoreDir(
  io: CliIO,
  loc: StoreLocation,
  options: RootOperationOptions,
): Promise<RootRotateResult> {
  return withStoreRoot(loc, async (store, root) => {
    const doc = root.document;
    const u = doc.unseal;
    if (u.method === 'shamir') {
      // Refuses an explicit --unseal-key-file: a split-knowledge store has no unseal key to give.
      resolveUnsealSource(io, loc, options.unsealKeyFile, { method: 'shamir' });
      const shareSet = shareSetOf(u);
      const shares = await collectCurrentShares(io, shareSet, options.shareFiles ?? [], ROTATE);
      let result: { rootId: string; rewrapped: number };
      try {
        result = await rotateRoot(store, shares);
      } finally {
        shares.length = 0;
      }
      await store.close();
      return {
        mode: 'split-knowledge',
        previousRootId: doc.rootId,
        ...result,
        shareSet,
        agent: await sealAgent(io, loc, options.socket),
      };
    }
    refuseShareFiles(options, 'root rotate');
    const source = resolveUnsealSource(io, loc, options.unsealKeyFile, { method: 'key' });
    const unsealKey = await readUnsealKey(source, io);
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
      return {
        mode: 'development',
        previousRootId: doc.rootId,
        rootId: created.document.rootId,
        rewrapped,
        agent: { state: 'not-applicable' },
      };
    } finally {
      wipe(unsealKey);
      await next?.close();
    }
  });
}

/**
 * Crypto-shred the whole store: tombstone, delete the sealed root, then destroy every key version.
 * Always with consent — a quorum of the current shares, or the development-mode unseal key — even
 * when an earlier, interrupted destruction already deleted the root (the tombstone names the share
 * set and is checked against the key). A store with neither a root nor a tombstone is damaged, not
 * destroyed: refused before anything is asked or changed (core's RootMissingError).
 */
export async function destroyRootStoreDir(
  io: CliIO,
  loc: StoreLocation,
  options: RootOperationOptions,
): Promise<RootDestroyResult> {
  await requireStore(loc);
  const store = openStoreFile(loc, 'write');
  let closed = false;
  try {
    const state = await readRootState(store);
    const unseal = consentMethodOf(state); // RootMissingError on a damaged store
    const rootId =
      state.state === 'present' ? state.document.rootId : state.state === 'destroyed' ? state.tombstone.rootId : '';
    const resumed = state.state === 'destroyed';
    if (unseal.method === 'shamir') {
      resolveUnsealSource(io, loc, options.unsealKeyFile, { method: 'shamir' });
      const shares = await collectCurrentShares(io, shareSetOf(unseal), options.shareFiles ?? [], DESTROY);
      let r: Awaited<ReturnType<typeof destroyRootWithQuorum>>;
      try {
        r = await destroyRootWithQuorum(store, shares);
      } finally {
        shares.length = 0;
      }
      await store.close();
      closed = true;
      return { mode: 'split-knowledge', resumed, rootId, ...r, agent: await sealAgent(io, loc, options.socket) };
    }
    refuseShareFiles(options, 'root destroy');
    const source = resolveUnsealSource(io, loc, options.unsealKeyFile, { method: 'key' });
    const unsealKey = await readUnsealKey(source, io);
    let r: Awaited<ReturnType<typeof destroyRoot>>;
    try {
      // Whoever destroys must be able to open the root (or match its tombstone): the bar of using it.
      r = await destroyRoot(store, { unsealKey });
    } finally {
      wipe(unsealKey);
    }
    return { mode: 'development', resumed, rootId, ...r, agent: { state: 'not-applicable' } };
  } finally {
    if (!closed) await store.close().catch(() => {});
  }
}

// ── Helpers ────────────────────────────────────────────────────────────────────────────────────

/** Open D's store and its root (sealed), run `fn`, and close both (closing twice is harmless). */
async function withStoreRoot<T>(
  loc: StoreLocation,
  fn: (store: KeyStore, root: SoftwareRoot) => Promise<T>,
): Promise<T> {
  await requireStore(loc);
  const store = openStoreFile(loc, 'write');
  let root: SoftwareRoot | undefined;
  try {
    root = await SoftwareRoot.load(store);
    return await fn(store, root);
  } finally {
    await root?.close().catch(() => {});
    await store.close().catch(() => {});
  }
}

function shareSetOf(u: { shareSetId: string; threshold: number; shares: number }): ShareSetInfo {
  return { shareSetId: u.shareSetId, threshold: u.threshold, shares: u.shares, purpose: 'unseal-key' };
}

function refuseShareFiles(options: RootOperationOptions, command: string): void {
  if (options.shareFiles?.length) {
    throw new UsageError(
      `--share-file does not apply: this key store is in development mode (${command} uses its unseal key, from $KEYWARDEN_UNSEAL_KEY or the unseal key file)`,
    );
  }
}

/**
 * Tell the agent on the store's socket, if one runs, to seal: it still holds the old root (and
 * cached KEKs) unsealed. On seal it reloads the root from the store — the new one after a
 * rotation, none after a destruction.
 */
async function sealAgent(io: CliIO, loc: StoreLocation, socketOption: string | undefined): Promise<AgentOutcome> {
  const socket = resolveAgentSocket(io, loc, socketOption);
  let client: AgentClient;
  try {
    client = await AgentClient.connect(socket, { connectTimeoutMs: 2000, requestTimeoutMs: 10_000 });
  } catch (err) {
    if (isAgentUnavailable(err)) return { state: 'none', socket };
    return { state: 'unreachable', socket, reason: reasonOf(err) };
  }
  try {
    await client.seal();
    return { state: 'sealed', socket };
  } catch (err) {
    return { state: 'unreachable', socket, reason: reasonOf(err) };
  } finally {
    await client.close();
  }
}

function reasonOf(err: unknown): string {
  return err instanceof Error ? err.message : 'unknown error';
}

/** For the command: the one-line refusal without the confirmation flag. */
export function destroyNeedsConfirmation(): UsageError {
  return new UsageError(
    'root destroy makes every key in this store, and all data encrypted under them, unrecoverable for good; pass --yes-destroy-every-key to confirm',
  );
}
