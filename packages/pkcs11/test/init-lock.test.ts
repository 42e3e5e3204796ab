/**
 * The process's lock around a module's load and C_Initialize (src/_init-lock.ts), from real worker
 * threads: one thread at a time inside it (SoftHSM2 2.6 crashes when two threads make their first
 * call at once), the same workers without it do overlap (so the check can fail), and a thread that
 * ends while holding it is released by its threadId, as the pool does when a worker exits.
 * Runs the built module (dist/_init-lock.js): workers load JavaScript, and `test` builds first.
 */
import { Worker } from 'node:worker_threads';
import { describe, expect, it } from 'vitest';
import { processInitLock, releaseInitLockOf, withInitLock } from '../src/_init-lock.js';

const LOCK_MODULE = new URL('../dist/_init-lock.js', import.meta.url).href;

function worker(body: string, workerData: unknown): Worker {
  const code = `import { parentPort, workerData } from 'node:worker_threads';
import { withInitLock } from ${JSON.stringify(LOCK_MODULE)};
${body}`;
  return new Worker(new URL(`data:text/javascript,${encodeURIComponent(code)}`), { workerData });
}

const once = (w: Worker, what: string, ms: number) =>
  new Promise<boolean>((resolve, reject) => {
    const timer = setTimeout(() => resolve(false), ms);
    w.on('error', reject);
    w.on('message', (m) => {
      if (m === what) {
        clearTimeout(timer);
        resolve(true);
      }
    });
  });

/** Four threads released at once, each entering the section `rounds` times for ~5 ms of busy work;
 * stats: [inside now, most inside at once, entries, start gate]. */
async function contend(lock: Int32Array | undefined): Promise<{ most: number; entries: number }> {
  const stats = new Int32Array(new SharedArrayBuffer(16));
  const body = `const { lock, stats, rounds } = workerData;
Atomics.wait(stats, 3, 0);
for (let i = 0; i < rounds; i++) {
  withInitLock(lock, () => {
    const inside = Atomics.add(stats, 0, 1) + 1;
    for (;;) {
      const most = Atomics.load(stats, 1);
      if (inside <= most || Atomics.compareExchange(stats, 1, most, inside) === most) break;
    }
    const end = Date.now() + 5;
    while (Date.now() < end) {}
    Atomics.sub(stats, 0, 1);
    Atomics.add(stats, 2, 1);
  });
}
parentPort.postMessage('done');`;
  const workers = Array.from({ length: 4 }, () => worker(body, { lock, stats, rounds: 8 }));
  const done = workers.map((w) => once(w, 'done', 30_000));
  await new Promise((r) => setTimeout(r, 200)); // every thread waits at the gate
  Atomics.store(stats, 3, 1);
  Atomics.notify(stats, 3);
  expect(await Promise.all(done)).toEqual([true, true, true, true]);
  await Promise.all(workers.map((w) => w.terminate()));
  return { most: Atomics.load(stats, 1), entries: Atomics.load(stats, 2) };
}

describe('the module initialisation lock', () => {
  it('lets one thread at a time through; without it the same threads overlap', async () => {
    const lock = new Int32Array(new SharedArrayBuffer(4));
    expect(await contend(lock)).toEqual({ most: 1, entries: 32 });
    expect(Atomics.load(lock, 0)).toBe(0);
    const unlocked = await contend(undefined);
    expect(unlocked.entries).toBe(32);
    expect(unlocked.most).toBeGreaterThan(1);
  });

  it('a thread ended while holding it is released by its threadId; until then the next one waits', async () => {
    const lock = new Int32Array(new SharedArrayBuffer(4));
    const block = new Int32Array(new SharedArrayBuffer(4));
    const holder = worker(
      `withInitLock(workerData.lock, () => { parentPort.postMessage('holding'); Atomics.wait(workerData.block, 0, 0); });`,
      { lock, block },
    );
    expect(await once(holder, 'holding', 10_000)).toBe(true);
    const tid = holder.threadId;
    await holder.terminate();
    expect(Atomics.load(lock, 0)).toBe(tid + 1);

    const next = worker(
      `withInitLock(workerData.lock, () => parentPort.postMessage('got it')); parentPort.postMessage('out');`,
      { lock },
    );
    const got = once(next, 'got it', 10_000);
    const out = once(next, 'out', 10_000);
    // Still held by the ended thread: the next one waits.
    expect(await Promise.race([got, new Promise((r) => setTimeout(() => r('waiting'), 300))])).toBe('waiting');
    releaseInitLockOf(lock, tid + 7); // not the holder: nothing changes
    expect(Atomics.load(lock, 0)).toBe(tid + 1);
    releaseInitLockOf(lock, tid);
    expect(await got).toBe(true);
    expect(await out).toBe(true);
    await next.terminate();
    expect(Atomics.load(lock, 0)).toBe(0);
  });

  it('the main thread takes the process lock too, and a call from inside it does not wait for itself', () => {
    expect(processInitLock).toBeInstanceOf(Int32Array);
    const seen = withInitLock(processInitLock, () => {
      const held = Atomics.load(processInitLock as Int32Array, 0);
      return [held, withInitLock(processInitLock, () => 'inner')];
    });
    expect(seen).toEqual([1, 'inner']); // the main thread's threadId is 0
    expect(Atomics.load(processInitLock as Int32Array, 0)).toBe(0);
  });
});
