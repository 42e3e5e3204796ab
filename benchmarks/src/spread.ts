/**
 * Run-to-run spread of the gated ratios, for choosing the regression gate's tolerance
 * (README.md §Regression gate). Give it the JSON of several check runs made one after another:
 *
 *   for i in 1 2 3 4 5; do node --expose-gc dist/run.js --profile check --out /tmp/spread/$i; done
 *   node dist/spread.js /tmp/spread/{1,2,3,4,5}/check.json
 *
 * For each gated row: the ratios of the runs, and the worst excess of one run over the median of the
 * runs, (max ÷ median − 1). That excess is what a run would show as a "regression" with no code
 * change; the tolerance must sit clearly above it.
 */
import { readFileSync } from 'node:fs';
import { median } from './_measure.js';
import type { Row } from './_report.js';

const files = process.argv.slice(2);
if (files.length < 2) throw new Error('spread: give two or more check.json files');
const runs = files.map((f) => (JSON.parse(readFileSync(f, 'utf8')) as { rows: Row[] }).rows);
const ids = (runs[0] as Row[]).filter((r) => r.gated).map((r) => r.id);
const excesses: number[] = [];
const w = Math.max(...ids.map((id) => id.length));
for (const id of ids) {
  const ratios = runs.map((rows) => rows.find((r) => r.id === id)?.ratio).filter((x): x is number => x !== undefined);
  const m = median(ratios);
  const excess = Math.max(...ratios) / m - 1;
  excesses.push(excess);
  console.log(
    `${id.padEnd(w)}  ${ratios.map((r) => r.toFixed(2).padStart(6)).join(' ')}   worst excess over median ${(excess * 100).toFixed(0).padStart(3)}%`,
  );
}
const sorted = [...excesses].sort((a, b) => a - b);
const p90 = sorted[Math.min(sorted.length - 1, Math.floor(sorted.length * 0.9))] as number;
console.log(
  `\n${files.length} runs, ${ids.length} gated rows: median worst excess ${(median(excesses) * 100).toFixed(0)}%, 90th percentile ${(p90 * 100).toFixed(0)}%, largest ${(Math.max(...excesses) * 100).toFixed(0)}%`,
);
