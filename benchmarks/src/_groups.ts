/**
 * The measurement of groups of cases shared by run.ts and audit-child.ts: interleaved rounds, a
 * forced GC and a settle period before each case, CPU time (README §Method).
 */
import { calibrate, type Fn, median, opsPerSecond } from './_measure.js';
import type { Kind, Row } from './_report.js';

export interface Case {
  label: string;
  kind: Kind;
  fn: Fn;
  /** Messages per call (the concurrency cases run N callers per call). */
  perCall?: number;
  /** Gate a row of another kind too (the PKCS#11 rows that are stable enough: _pkcs11-groups.ts). */
  gate?: boolean;
}
export interface Group {
  name: string;
  /** cases[0] is the raw ceiling. */
  cases: Case[];
}

/** Two decimals; four below 0.1 (rewrap rows are ~0.02 of their ceiling: two decimals would hide ±25 %). */
export const round2 = (v: number) => (v < 0.1 ? Math.round(v * 10_000) / 10_000 : Math.round(v * 100) / 100);
/** global.gc when node runs with --expose-gc (the package scripts do). */
export const collectGarbage = (globalThis as { gc?: () => void }).gc ?? (() => {});

/** Interleaved rounds over every case of every group; one Row per case. */
export async function measureGroups(
  groups: readonly Group[],
  rounds: number,
  ms: number,
  warmupMs: number,
  settleMs: number,
  collect: () => void = collectGarbage,
): Promise<Row[]> {
  const all = groups.flatMap((g) => g.cases.map((c) => ({ g, c })));
  const batch = new Map<Case, number>();
  for (const { c } of all) batch.set(c, await calibrate(c.fn, warmupMs));
  const ops = new Map<Case, number[]>(all.map(({ c }) => [c, []]));
  const ratios = new Map<Case, number[]>(all.map(({ c }) => [c, []]));
  for (let r = 0; r < rounds; r++) {
    for (const g of groups) {
      const round = new Map<Case, number>();
      for (const c of g.cases) {
        // Collect the previous case's garbage now, so that its GC is not charged to this case; then
        // run this case untimed until the forced collection's aftermath is over (README §Method:
        // the shrunk new space regrowing and the heap's pages faulted back cost 2-4x the CPU per
        // operation for ~4 000 data-key calls, more for the cases that allocate more).
        collect();
        if (settleMs > 0) await opsPerSecond(c.fn, settleMs, batch.get(c) as number);
        round.set(c, await opsPerSecond(c.fn, ms, batch.get(c) as number));
      }
      const raw = round.get(g.cases[0] as Case) as number;
      for (const c of g.cases) {
        ops.get(c)?.push(round.get(c) as number);
        ratios.get(c)?.push(raw / (round.get(c) as number));
      }
    }
  }
  return all.map(({ g, c }) => {
    const rs = ratios.get(c) as number[];
    return {
      id: `${g.name} | ${c.label}`,
      group: g.name,
      label: c.label,
      kind: c.kind,
      gated: c.kind === 'keywarden' || c.kind === 'keywarden-cached' || c.gate === true,
      ratio: round2(median(rs)),
      ratioMin: round2(Math.min(...rs)),
      ratioMax: round2(Math.max(...rs)),
      absolute: median(ops.get(c) as number[]) * (c.perCall ?? 1),
      unit: c.perCall ? 'msg/s' : 'ops/s',
    };
  });
}
