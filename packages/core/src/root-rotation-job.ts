/**
 * A root rotation that any instance of a fleet can start, and another can resume after a crash
 * (docs/fleet.md §Jobs started on one instance and resumed on another).
 *
 * The rotation itself is one store transaction (rewrapUnderNewRoot → KeyStore.replaceRoot, a
 * compare-and-swap on the root): a crash leaves the old root or the new one. What a crash can
 * leave half-done is around it — the audit key staged under the new root but not yet promoted —,
 * and what another instance cannot tell without a record is whether the job it was asked to
 * resume has already rotated (running a second rotation is not a resume). So:
 *
 *  1. the job takes the lease "root-rotation" (one instance at a time; JobLease);
 *  2. it reads its record (meta "root-rotation-job/<jobId>"): "done" → nothing to do; "started
 *     from R" while the caller's root is R (the store's root has not moved) → the crash came
 *     before the commit: rotate now; "started from R" while the root is another one → the crash
 *     came after the commit: check every live version is under the root, finish the audit key's
 *     move, record "done";
 *  3. a new job records "started from <root id>" (fenced by the lease), finishes any earlier
 *     rotation's audit key move, rotates, and records "done" (fenced).
 *
 * `root` is the store's current root, opened and unsealed by this instance (for the software
 * root: `SoftwareRoot.load(store)` then `unseal`). `rotate` does the rotation — core's
 * `rewrapUnderNewRoot(store, root, newRoot, meta)` or @keywarden/split-knowledge's
 * `rotateRoot(store, shares)` — and returns the new root's id; it is called at most once per call.
 */
import { utf8, utf8Decoder } from './_bytes.js';
import { InvalidInputError, KeyStateError } from './errors.js';
import { JobLease, type JobLeaseOptions } from './job-lease.js';
import type { KeyStore } from './keystore.js';
import { checkedRoot, type RootOfTrust } from './root.js';
import { finishStagedRootMoves } from './root-rotation.js';

export const ROOT_ROTATION_LEASE = 'root-rotation';

export interface RootRotationJobOptions extends JobLeaseOptions {
  /** Names the job; the same id resumes it. 1..64 characters of [A-Za-z0-9._:-]. */
  jobId: string;
  /** The store's current root, unsealed. */
  root: RootOfTrust;
  /** Rotate the store from `root` to a new root; returns the new root's id. */
  rotate: () => Promise<{ rootId: string }>;
  /** Called once the job's "started" record is written, before rotating (tests use it as a crash point). */
  onStarted?: () => void | Promise<void>;
}

export interface RootRotationJobResult {
  /** rotated: this call rotated; finished: an earlier run had rotated, this call finished it; done: nothing left. */
  outcome: 'rotated' | 'finished' | 'done';
  fromRootId: string;
  rootId: string;
}

interface JobRecord {
  v: 1;
  state: 'started' | 'done';
  from: string;
  to?: string;
}

const JOB_ID_RE = /^[A-Za-z0-9._:-]{1,64}$/;

export async function runRootRotationJob(
  store: KeyStore,
  options: RootRotationJobOptions,
): Promise<RootRotationJobResult> {
  if (typeof options.jobId !== 'string' || !JOB_ID_RE.test(options.jobId)) {
    throw new InvalidInputError('root: jobId must be 1..64 characters of [A-Za-z0-9._:-]');
  }
  const meta = `root-rotation-job/${options.jobId}`;
  const currentId = checkedRoot(options.root).describe().id;
  const lease = await JobLease.acquire(store, ROOT_ROTATION_LEASE, options);
  try {
    const record = await readJob(store, meta);
    if (record?.state === 'done') {
      return { outcome: 'done', fromRootId: record.from, rootId: record.to ?? currentId };
    }
    if (record && record.from !== currentId) {
      // The earlier run committed its rotation (the store's root moved from `from` to this one).
      for (const key of await store.listKeys()) {
        for (const v of await store.listVersions(key.id)) {
          if (v.state !== 'destroyed' && v.rootId !== currentId) {
            throw new KeyStateError(
              `root: job ${options.jobId} started from root ${record.from}, but key ${key.id} v${v.version} is under root ${v.rootId}, not the root given (${currentId}); nothing was changed`,
            );
          }
        }
      }
      await finishStagedRootMoves(store, currentId);
      await lease.putMeta(meta, encodeJob({ v: 1, state: 'done', from: record.from, to: currentId }));
      return { outcome: 'finished', fromRootId: record.from, rootId: currentId };
    }
    if (!record) await lease.putMeta(meta, encodeJob({ v: 1, state: 'started', from: currentId }));
    await options.onStarted?.();
    // An earlier rotation that stopped between its commit and its promotions (audit key, key-pair key).
    await finishStagedRootMoves(store, currentId);
    lease.check();
    const { rootId } = await options.rotate();
    await lease.putMeta(meta, encodeJob({ v: 1, state: 'done', from: currentId, to: rootId }));
    return { outcome: 'rotated', fromRootId: currentId, rootId };
  } finally {
    await lease.release();
  }
}

function encodeJob(record: JobRecord): Uint8Array {
  return utf8.encode(JSON.stringify(record));
}

async function readJob(store: KeyStore, meta: string): Promise<JobRecord | undefined> {
  const bytes = await store.getMeta(meta);
  if (bytes === undefined) return undefined;
  try {
    const r = JSON.parse(utf8Decoder.decode(bytes)) as Partial<JobRecord>;
    if (r.v === 1 && (r.state === 'started' || r.state === 'done') && typeof r.from === 'string') {
      return { v: 1, state: r.state, from: r.from, ...(typeof r.to === 'string' ? { to: r.to } : {}) };
    }
  } catch {
    // Fall through.
  }
  throw new KeyStateError(`root: the record of rotation job ${meta.slice('root-rotation-job/'.length)} is damaged`);
}
