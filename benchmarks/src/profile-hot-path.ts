/**
 * The hot path under the V8 profiler (issue 11): run one operation in a loop, then summarize the
 * .cpuprofile by self time per function.
 *
 *   node --cpu-prof --cpu-prof-dir=/tmp/kw-prof dist/profile-hot-path.js generateDataKey 3000
 *   node dist/profile-hot-path.js --summarize /tmp/kw-prof/<file>.cpuprofile
 *
 * Operations: generateDataKey, decryptDataKey, encrypt1k, decrypt1k. The second argument is how
 * long to run, in ms.
 */
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { Keywarden, MemoryKeyStore, SoftwareRoot } from '@keywarden/core';

interface Node {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber: number };
  hitCount: number;
  children?: number[];
}

function summarize(file: string): void {
  const prof = JSON.parse(readFileSync(file, 'utf8')) as { nodes: Node[] };
  const total = prof.nodes.reduce((s, n) => s + n.hitCount, 0);
  const self = new Map<string, number>();
  for (const n of prof.nodes) {
    const url = n.callFrame.url.replace(/^.*\/(packages|node_modules|benchmarks)\//, '$1/');
    const key = `${n.callFrame.functionName || '(anonymous)'}  ${url}:${n.callFrame.lineNumber + 1}`;
    self.set(key, (self.get(key) ?? 0) + n.hitCount);
  }
  const rows = [...self.entries()].sort((a, b) => b[1] - a[1]).slice(0, 30);
  for (const [k, v] of rows) console.log(`${((100 * v) / total).toFixed(1).padStart(5)}%  ${k}`);
}

async function run(op: string, ms: number): Promise<void> {
  const store = new MemoryKeyStore();
  const root = await SoftwareRoot.initialize(store, { unsealKey: new Uint8Array(randomBytes(32)) });
  const kw = new Keywarden({ store, root });
  await kw.createKey('bench');
  const context = { tenant: 'bench', purpose: 'benchmark' };
  const payload = new Uint8Array(randomBytes(1024));
  const dk = await kw.generateDataKey('bench', context);
  const env = await kw.encrypt(payload, { key: 'bench', context });
  const ops: Record<string, () => Promise<unknown>> = {
    generateDataKey: () => kw.generateDataKey('bench', context),
    decryptDataKey: () => kw.decryptDataKey(dk.wrapped, context, { key: 'bench' }),
    encrypt1k: () => kw.encrypt(payload, { key: 'bench', context }),
    decrypt1k: () => kw.decrypt(env, { key: 'bench', context }),
  };
  const fn = ops[op];
  if (!fn) throw new Error(`profile: unknown operation ${op}`);
  const end = Date.now() + ms;
  let n = 0;
  while (Date.now() < end) {
    for (let i = 0; i < 100; i++) await fn();
    n += 100;
  }
  console.log(`${op}: ${n} operations`);
  await kw.close();
}

const [a, b] = process.argv.slice(2);
if (a === '--summarize') summarize(b as string);
else await run(a as string, Number(b ?? 3000));
