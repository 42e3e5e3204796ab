// One writer process of test/audit-chain.test.ts: opens the PostgreSQL store (built dist, as an
// application would), unseals the software root with the key from the first stdin line (hex, never
// argv or the environment), and makes COUNT audited data keys as PRINCIPAL, a few at a time
// (durability "each"), then closes cleanly.
//   node _audit-writer.mjs SCHEMA PRINCIPAL COUNT
import { createInterface } from 'node:readline';
import { Keywarden, SoftwareRoot } from '@keywarden/core';
import { PostgresKeyStore } from '../dist/index.js';

const [schema, principal, count] = process.argv.slice(2);
const lines = createInterface({ input: process.stdin })[Symbol.asyncIterator]();
const unsealKey = Uint8Array.from(Buffer.from((await lines.next()).value, 'hex'));
const store = await PostgresKeyStore.open({ schema, create: false });
const root = await SoftwareRoot.load(store);
await root.unseal(unsealKey);
unsealKey.fill(0);
const kw = new Keywarden({ store, root, principal, audit: {}, ownsStore: true, ownsRoot: true });
for (let done = 0; done < Number(count); done += 4) {
  await Promise.all(Array.from({ length: Math.min(4, Number(count) - done) }, () => kw.generateDataKey('orders')));
}
await kw.close();
process.stdout.write('done\n');
process.exit(0);
