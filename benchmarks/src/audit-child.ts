/**
 * The audit group (_audit-groups.ts) measured in a process of its own, as run.ts measures its other
 * groups (_groups.ts: interleaved rounds, a settle period before each case, CPU time) but with a
 * minor GC before each case where they get a full one, and printed as one JSON array of rows:
 *
 *   node --expose-gc dist/audit-child.js <rounds> <ms> <warmupMs> <settleMs> [group name …]
 *
 * With group names, only those groups (exact names) are measured.
 *
 * Why a process of its own, with a minor GC before each case (README §Method): a record costs ~2 µs
 * against a ~9–12 µs data-key call. In the process that also holds every other group (an agent,
 * the PKCS#11 pool, the ESDK, many Keywarden instances), after a full GC per case, the same cases
 * read ×1.25–1.42 for decryptDataKey; in a steady loop with no forced GC (what a service runs) they
 * cost ×1.13–1.21 and decrypt 1 KiB ×1.08–1.11, which is what this process reads.
 */
import { randomBytes } from 'node:crypto';
import { MemoryKeyStore, SoftwareRoot } from '@keywarden/core';
import { auditGroups } from './_audit-groups.js';
import { measureGroups } from './_groups.js';

const [rounds, ms, warmupMs, settleMs] = process.argv.slice(2, 6).map(Number) as [number, number, number, number];
const only = process.argv.length > 6 ? new Set(process.argv.slice(6)) : undefined;
if (![rounds, ms, warmupMs, settleMs].every((n) => Number.isFinite(n) && n >= 0)) {
  throw new Error('usage: audit-child.js <rounds> <ms> <warmupMs> <settleMs> [group name …]');
}
const store = new MemoryKeyStore();
const root = await SoftwareRoot.initialize(store, { unsealKey: new Uint8Array(randomBytes(32)) });
const audit = await auditGroups(store, root, { tenant: 'bench', purpose: 'benchmark' });
try {
  const groups = only ? audit.groups.filter((g) => only.has(g.name)) : audit.groups;
  // A minor GC before each case, not a full one: it empties the young generation (the previous
  // case's garbage, which is all that case leaves: this heap holds nothing else), without a full
  // collection's aftermath, which here outlasted the settle period (README §Method).
  const gc = (globalThis as { gc?: (options?: { type: 'minor' | 'major' }) => void }).gc;
  const rows = await measureGroups(groups, rounds, ms, warmupMs, settleMs, () => gc?.({ type: 'minor' }));
  process.stdout.write(`${JSON.stringify(rows)}\n`);
} finally {
  await audit.close();
}
