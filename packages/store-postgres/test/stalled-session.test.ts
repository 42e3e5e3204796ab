/**
 * A process stalled inside one of the store's transactions (here: a child process whose event loop
 * is blocked inside updateMeta's callback, after the advisory lock on the record's name is taken):
 * with `idleInTransactionTimeoutMs` the server ends that session and its lock goes with it, so
 * another instance's write on the same record goes through; with the timeout far away, the other
 * instance's lock wait runs into its own lock_timeout instead. This is what a lease holder frozen
 * mid-write (a GC pause, a frozen VM, SIGSTOP) would otherwise do to the instance taking over.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { afterEach, describe, expect, it } from 'vitest';
import type { PostgresKeyStore } from '../src/index.js';
import { dropSchema, freshSchema, openStore, unavailable } from './_pg.js';

const DIST = new URL('../dist/index.js', import.meta.url).href;

/** A child that opens the store and blocks inside updateMeta('stalled', …) for a minute. */
function stalledHolder(schema: string, idleMs: number): ChildProcess {
  const code = `import { PostgresKeyStore } from ${JSON.stringify(DIST)};
const store = await PostgresKeyStore.open({ schema: ${JSON.stringify(schema)}, idleInTransactionTimeoutMs: ${idleMs}, retryForMs: 0 });
await store.updateMeta('stalled', () => {
  process.stdout.write('inside\\n');
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 60_000);
  return [];
});`;
  return spawn(process.execPath, ['--input-type=module', '-e', code], { stdio: ['ignore', 'pipe', 'pipe'] });
}

function inside(child: ChildProcess): Promise<void> {
  return new Promise((resolve, reject) => {
    let out = '';
    let err = '';
    child.stdout?.on('data', (d) => {
      out += String(d);
      if (out.includes('inside\n')) resolve();
    });
    child.stderr?.on('data', (d) => {
      err += String(d);
    });
    child.on('exit', (code) => reject(new Error(`stalled holder exited (${code}) before its transaction: ${err}`)));
  });
}

describe.skipIf(unavailable)('a session stalled inside a transaction', () => {
  const children: ChildProcess[] = [];
  const stores: PostgresKeyStore[] = [];
  const schemas: string[] = [];
  afterEach(async () => {
    for (const c of children.splice(0)) c.kill('SIGKILL');
    for (const s of stores.splice(0)) await s.close();
    for (const s of schemas.splice(0)) await dropSchema(s);
  });

  async function waiter(lockWaitMs: number): Promise<PostgresKeyStore> {
    const schema = freshSchema();
    schemas.push(schema);
    const store = await openStore(schema, { statementTimeoutMs: lockWaitMs, retryForMs: 0 });
    stores.push(store);
    await store.putMeta('stalled', new Uint8Array([1]));
    return store;
  }

  const write = (store: PostgresKeyStore) =>
    store.updateMeta('stalled', () => [{ name: 'stalled', value: new Uint8Array([2]) }]);

  it('is ended by the server after idleInTransactionTimeoutMs: another instance then writes the record', async () => {
    const store = await waiter(8000);
    const holder = stalledHolder(store.schema, 1000);
    children.push(holder);
    await inside(holder);
    await write(store); // waits for the advisory lock until the server ends the holder's session
    expect(await store.getMeta('stalled')).toEqual(new Uint8Array([2]));
  }, 30_000);

  it('without it (the timeout a minute away), the other instance runs into its own lock timeout', async () => {
    const store = await waiter(3000);
    const holder = stalledHolder(store.schema, 60_000);
    children.push(holder);
    await inside(holder);
    await expect(write(store)).rejects.toThrow();
    expect(await store.getMeta('stalled')).toEqual(new Uint8Array([1]));
  }, 30_000);
});
