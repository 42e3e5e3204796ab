/**
 * Bulk rewrap of the caller's own records (issue 10, docs/lifecycle.md §Rewrap): an iterable of
 * records in, one update per record out, in input order, with at most `concurrency` records in
 * flight, progress events, and a checkpoint in the key store so that a job killed half-way resumes
 * where it stopped.
 *
 * The checkpoint counts the records whose update the consumer has taken: an update is counted once
 * the consumer asks for the next one (`for await` finished its loop body, e.g. wrote the update to
 * its database), so a crash never skips a record whose update was not written. It is saved every
 * `checkpointEvery` records; after a crash at most that many records are done again, which is
 * harmless: a record already under the primary comes back `unchanged`. Records must come in the
 * same order on every run of one job (e.g. ordered by primary key), and the checkpoint is removed
 * when the job completes.
 */
import { utf8, utf8Decoder } from './_bytes.js';
import type { EncryptionContext } from './context.js';
import { InvalidInputError, KeywardenError } from './errors.js';
import type { KeyExpectation } from './key-expectation.js';
import type { Keywarden } from './keywarden.js';

export interface RewrapRecord {
  /** The caller's identifier of the record (returned with its update; never stored). */
  id: string;
  /** A wrapped data key (generateDataKey's `wrapped`): one unwrap and one wrap. */
  wrappedKey?: Uint8Array;
  /** Or an envelope (Keywarden.rewrapEnvelope): format v2, its header replaced and its body kept;
   * format v1, decrypted and re-encrypted into v2. */
  envelope?: Uint8Array;
  /** The encryption context the record was made with. */
  context?: EncryptionContext;
}

export interface RewrapUpdate {
  id: string;
  /** rewrapped: write `wrappedKey` / `envelope` back; unchanged: already under the primary;
   * failed: the record cannot be rewrapped (`error`: its version is compromised, destroyed or
   * retired, the context is wrong, …) and is left as it is. */
  status: 'rewrapped' | 'unchanged' | 'failed';
  wrappedKey?: Uint8Array;
  envelope?: Uint8Array;
  fromVersion?: number;
  toVersion?: number;
  error?: KeywardenError;
}

export interface RewrapProgress {
  /** Records taken by the consumer so far in this job, counting those done before a resume. */
  done: number;
  rewrapped: number;
  unchanged: number;
  failed: number;
  /** Records skipped at the start because an earlier run had done them. */
  resumedFrom: number;
}

export interface RewrapJobOptions extends KeyExpectation {
  /** Names the job's checkpoint (meta record "rewrap-job/<jobId>"). Without it, no checkpoint. */
  jobId?: string;
  /** Records in flight at once. Default 8. */
  concurrency?: number;
  /** Save the checkpoint every this many records. Default 100. */
  checkpointEvery?: number;
  onProgress?: (progress: RewrapProgress) => void;
  /**
   * A lease held on the job (core's JobLease, docs/fleet.md): the checkpoint is written and removed
   * only while it holds, and no update is handed out once it may have expired (ConflictError) —
   * so two instances resuming one job cannot both run it.
   */
  lease?: RewrapJobLease;
}

/** What the job needs of a lease (JobLease has it). */
export interface RewrapJobLease {
  check(): void;
  putMeta(name: string, value: Uint8Array): Promise<void>;
  deleteMeta(name: string): Promise<void>;
}

const JOB_ID_RE = /^[A-Za-z0-9._:-]{1,64}$/;

/** Run a bulk rewrap through `kw`; iterate the result and write each `rewrapped` update back. */
export async function* rewrapRecords(
  kw: Keywarden,
  records: AsyncIterable<RewrapRecord> | Iterable<RewrapRecord>,
  options: RewrapJobOptions,
): AsyncGenerator<RewrapUpdate> {
  const concurrency = options.concurrency ?? 8;
  const every = options.checkpointEvery ?? 100;
  if (!Number.isSafeInteger(concurrency) || concurrency < 1 || concurrency > 1024) {
    throw new InvalidInputError('rewrap: concurrency must be an integer in 1..1024');
  }
  if (!Number.isSafeInteger(every) || every < 1) throw new InvalidInputError('rewrap: checkpointEvery must be ≥ 1');
  if (options.jobId !== undefined && !JOB_ID_RE.test(options.jobId)) {
    throw new InvalidInputError('rewrap: jobId must be 1..64 characters of [A-Za-z0-9._:-]');
  }
  const expected: KeyExpectation =
    options.anyKeyInStore === true ? { anyKeyInStore: true } : { key: options.key as KeyExpectation['key'] };
  const meta = options.jobId === undefined ? undefined : `rewrap-job/${options.jobId}`;
  const resumedFrom = meta === undefined ? 0 : await readCheckpoint(kw, meta);
  const progress: RewrapProgress = { done: resumedFrom, rewrapped: 0, unchanged: 0, failed: 0, resumedFrom };
  let savedAt = resumedFrom;

  const one = async (record: RewrapRecord): Promise<RewrapUpdate> => {
    try {
      if (record.wrappedKey !== undefined) {
        const r = await kw.rewrapDataKey(record.wrappedKey, record.context, expected);
        return {
          id: record.id,
          status: r.changed ? 'rewrapped' : 'unchanged',
          wrappedKey: r.wrapped,
          fromVersion: r.fromVersion,
          toVersion: r.toVersion,
        };
      }
      if (record.envelope !== undefined) {
        const r = await kw.rewrapEnvelope(record.envelope, {
          ...expected,
          ...(record.context !== undefined ? { context: record.context } : {}),
        });
        return {
          id: record.id,
          status: r.changed ? 'rewrapped' : 'unchanged',
          envelope: r.envelope,
          fromVersion: r.fromVersion,
          toVersion: r.toVersion,
        };
      }
      throw new InvalidInputError('rewrap: a record needs wrappedKey or envelope');
    } catch (err) {
      // The record's own problem is reported and the job goes on; anything else stops the job.
      if (KeywardenError.isInstance(err) && RECORD_ERRORS.has(err.code))
        return { id: record.id, status: 'failed', error: err };
      throw err;
    }
  };

  const window: Array<Promise<RewrapUpdate>> = [];
  const take = async function* (): AsyncGenerator<RewrapUpdate> {
    const update = await (window.shift() as Promise<RewrapUpdate>);
    progress[update.status === 'rewrapped' ? 'rewrapped' : update.status === 'unchanged' ? 'unchanged' : 'failed']++;
    options.lease?.check();
    yield update;
    // The consumer asked for the next update: it has handled this one.
    progress.done++;
    options.onProgress?.({ ...progress });
    if (meta !== undefined && progress.done - savedAt >= every) {
      await (options.lease ?? kw.store).putMeta(meta, utf8.encode(JSON.stringify({ done: progress.done })));
      savedAt = progress.done;
    }
  };

  let index = 0;
  try {
    for await (const record of records) {
      if (index++ < resumedFrom) continue;
      const pending = one(record);
      // Awaited in order below; this only keeps a rejection from being reported as unhandled meanwhile.
      pending.catch(() => undefined);
      window.push(pending);
      if (window.length >= concurrency) yield* take();
    }
    while (window.length > 0) yield* take();
  } finally {
    // Abandoned (consumer broke out, or an error): settle what is in flight, keep the checkpoint.
    await Promise.allSettled(window);
  }
  if (meta !== undefined) await (options.lease ?? kw.store).deleteMeta(meta);
}

const RECORD_ERRORS: ReadonlySet<string> = new Set([
  'KW_KEY_COMPROMISED',
  'KW_KEY_DESTROYED',
  'KW_KEY_RETIRED',
  'KW_KEY_STATE',
  'KW_DECRYPT',
  'KW_FORMAT',
  'KW_UNEXPECTED_KEY',
  'KW_KEY_NOT_FOUND',
  'KW_BAD_INPUT',
]);

async function readCheckpoint(kw: Keywarden, meta: string): Promise<number> {
  const bytes = await kw.store.getMeta(meta);
  if (bytes === undefined) return 0;
  try {
    const done = (JSON.parse(utf8Decoder.decode(bytes)) as { done?: unknown }).done;
    if (typeof done === 'number' && Number.isSafeInteger(done) && done >= 0) return done;
  } catch {
    // Fall through: a damaged checkpoint restarts the job (redoing records is harmless).
  }
  return 0;
}
