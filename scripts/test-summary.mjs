// Sums the JSON reports vitest wrote in each package and prints one closing line.
// Exits non-zero if any test failed or if no test ran at all.
import { readFileSync, readdirSync, existsSync } from 'node:fs';
import { join } from 'node:path';
import { stripVTControlCharacters } from 'node:util';

let passed = 0;
let failed = 0;
let skipped = 0;
let suites = 0;
const failedSuites = [];
// Each package's vitest report, plus the extra runs in .test-results/ (the suites on Node 22 and 24).
const reports = readdirSync('packages').map((dir) => join('packages', dir, '.vitest-results.json'));
if (existsSync('.test-results')) {
  for (const f of readdirSync('.test-results')) if (f.endsWith('.json')) reports.push(join('.test-results', f));
}
for (const file of reports) {
  if (!existsSync(file)) continue;
  const r = JSON.parse(readFileSync(file, 'utf8'));
  suites += (r.testResults ?? []).length;
  passed += r.numPassedTests ?? 0;
  failed += r.numFailedTests ?? 0;
  skipped += (r.numPendingTests ?? 0) + (r.numTodoTests ?? 0);
  for (const s of r.testResults ?? []) {
    if (s.status !== 'failed') continue;
    // What failed and why, here at the end: a CI log that keeps only its tail still says it.
    const why = (s.assertionResults ?? [])
      .filter((a) => a.status === 'failed')
      .map((a) => `  ${a.fullName}\n${excerpt(a.failureMessages?.[0])}`);
    if (why.length === 0 && s.message) why.push(excerpt(s.message));
    failedSuites.push(why.length > 0 ? `${s.name}\n${why.join('\n')}` : s.name);
  }
}
for (const s of failedSuites) console.log(`failed: ${s}`);
console.log(`test files: ${suites}`);
console.log(`tests: ${passed} passed, ${failed} failed, ${skipped} skipped`);
/** The first lines of a failure message, without colour codes, indented. */
function excerpt(message) {
  if (typeof message !== 'string') return '    (no message)';
  const lines = stripVTControlCharacters(message)
    .split('\n')
    .filter((l) => l.trim() !== '');
  return lines
    .slice(0, 6)
    .map((l) => `    ${l.length > 400 ? `${l.slice(0, 400)}…` : l}`)
    .join('\n');
}
if (failed > 0 || failedSuites.length > 0 || passed === 0) process.exit(1);
