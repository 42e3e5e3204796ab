/**
 * One lock per process around loading a PKCS#11 module and its C_Initialize, for the threads of a
 * pool of kind "threads" (and any other thread of the process that does the same).
 *
 * SoftHSM2 2.6 creates its singleton (`SoftHSM::i()`) and tests its `isInitialised` flag without a
 * lock (SoftHSM.cpp), so two threads whose first calls into the module meet can build two
 * instances and delete one under the other. The workers of a thread pool open their sessions when
 * the pool's first requests reach them, possibly at once. Not reproduced here (80 fresh processes,
 * each a pool of 4 threads, none crashed with or without the lock); an unexplained SIGSEGV of
 * `bench:check`, whose process loads SoftHSM2 in three threads, is why it was looked for.
 *
 * The lock is an Int32 in a SharedArrayBuffer handed to every worker thread: 0 when free, else the
 * holder's threadId + 1. A thread ended while holding it (a worker terminated mid-C_Initialize by
 * the pool's deadline) is released by the pool, which knows its threadId (releaseInitLockOf), so no
 * later worker waits for ever. Child processes (pool kind "processes") load their own module and
 * need no lock.
 */
import { isMainThread, threadId } from 'node:worker_threads';

/** This process's lock (created in the main thread; worker threads get it through workerData). */
export const processInitLock: Int32Array | undefined = isMainThread
  ? new Int32Array(new SharedArrayBuffer(4))
  : undefined;

/** Run `f` holding `lock` (no lock: at once). Re-entrant calls from the holder do not wait. */
export function withInitLock<T>(lock: Int32Array | undefined, f: () => T): T {
  if (lock === undefined) return f();
  const me = threadId + 1;
  if (Atomics.load(lock, 0) === me) return f();
  for (;;) {
    const holder = Atomics.compareExchange(lock, 0, 0, me);
    if (holder === 0) break;
    // Woken by the release, or after 50 ms to look again (a release by the pool notifies too).
    Atomics.wait(lock, 0, holder, 50);
  }
  try {
    return f();
  } finally {
    Atomics.compareExchange(lock, 0, me, 0);
    Atomics.notify(lock, 0);
  }
}

/** Free `lock` if the thread `ownerThreadId` (ended) still holds it. */
export function releaseInitLockOf(lock: Int32Array | undefined, ownerThreadId: number): void {
  if (lock === undefined) return;
  if (Atomics.compareExchange(lock, 0, ownerThreadId + 1, 0) === ownerThreadId + 1) Atomics.notify(lock, 0);
}
