/**
 * Measurement core shared by the suites. These machines are shared and noisy (2 cores, other jobs
 * running), so nothing here is an absolute claim: every case is run in the same rounds as the raw
 * ceiling of its group, interleaved case by case, and the kept figure is the median over rounds of
 * the per-round ratio (raw ops/s ÷ case ops/s: 1.00 = as fast as raw, 2.00 = twice as slow).
 *
 * Rates are per second of this process's CPU time (user + system, all threads: process.cpuUsage),
 * not of wall time: when another job takes the core, our CPU clock stops with us, so a burst of
 * load elsewhere does not show up as a slowdown here. Everything measured is CPU-bound work on the
 * calling thread (and the thread pool, which cpuUsage counts too).
 */

export type Fn = () => unknown;

/** Operations per CPU second of `fn` over about `ms` of CPU time, in batches so that the clock is
 * read rarely. */
export async function opsPerSecond(fn: Fn, ms: number, batch: number): Promise<number> {
  let n = 0;
  const start = process.cpuUsage();
  let used = 0;
  while (used < ms * 1000) {
    for (let i = 0; i < batch; i++) await fn();
    n += batch;
    const d = process.cpuUsage(start);
    used = d.user + d.system;
  }
  return n / (used / 1e6);
}

/** A batch size that takes about 5 ms (1 for slow operations), measured after a short warm-up. */
export async function calibrate(fn: Fn, warmupMs: number): Promise<number> {
  const ops = await opsPerSecond(fn, warmupMs, 1);
  return Math.max(1, Math.min(256, Math.floor(ops / 200)));
}

export function median(xs: readonly number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const mid = Math.floor(s.length / 2);
  return s.length % 2 ? (s[mid] as number) : ((s[mid - 1] as number) + (s[mid] as number)) / 2;
}

/** Relative spread of a sample: (max − min) ÷ median. */
export function relativeSpread(xs: readonly number[]): number {
  if (xs.length < 2) return 0;
  return (Math.max(...xs) - Math.min(...xs)) / median(xs);
}

export const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
