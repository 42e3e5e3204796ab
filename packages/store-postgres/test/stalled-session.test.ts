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

/**
 * A child that opens the store and blocks inside updateMeta('stalled', …) for `stallMs` (the first
 * call of the callback only, when `once`), then prints the outcome and how often the callback ran.
 */
function stalledHolder(
  schema: string,
  idleMs: number,
  { retryForMs = 0, stallMs = 60_000, once = false }: { retryForMs?: number; stallMs?: number; once?: boolean } = {},
): ChildProcess {
  const code = `import { PostgresKeyStore } from ${JSON.stringify(DIST)};
const store = await PostgresKeyStore.open({ schema: ${JSON.stringify(schema)}, idleInTransactionTimeoutMs: ${idleMs}, retryForMs: ${retryForMs} });
let calls = 0;
try {
  await store.updateMeta('stalled', () => {
    calls++;
    process.stdout.write('inside\\n');
    if (calls === 1 || !${once}) Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ${stallMs});
    return [{ name: 'stalled', value: new Uint8Array([3]) }];
  });
  process.stdout.write(JSON.stringify({ ok: true, calls }) + '\\n');
} catch (err) {
  process.stdout.write(JSON.stringify({ ok: false, calls, code: err.code, message: err.message }) + '\\n');
} finally {
  await store.close();
}`;
  return spawn(process.execPath, ['--input-type=module', '-e', code], { stdio: ['ignore', 'pipe', 'pipe'] });
}

/** The child's closing line (its outcome), once it has exited. */
function outcome(child: ChildProcess): Promise<{ ok: boolean; calls: number; code?: string; message?: string }> {
  return new Promise((resolve, reject) => {
    let out = '';
    child.stdout?.on('data', (d) => {
      out += String(d);
    });
    child.on('close', () => {
      const last = out.trim().split('\n').at(-1) ?? '';
      try {
        resolve(JSON.parse(last));
      } catch {
        reject(new Error(`the stalled holder printed no outcome: ${out}`));
      }
    });
  });
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

  it('the stalled process itself, once it runs again, repeats its rolled-back write although the stall outlasted retryForMs', async () => {
    const schema = freshSchema();
    schemas.push(schema);
    const store = await openStore(schema, { retryForMs: 0 });
    stores.push(store);
    await store.putMeta('stalled', new Uint8Array([1]));
    // Its session is ended after 1 s; it wakes after 3 s, past its 1.5 s of retrying counted from
    // the call, but its first failure comes only then.
    const holder = stalledHolder(schema, 1000, { retryForMs: 1500, stallMs: 3000, once: true });
    children.push(holder);
    const result = outcome(holder);
    await inside(holder);
    expect(await result).toEqual({ ok: true, calls: 2 });
    expect(await store.getMeta('stalled')).toEqual(new Uint8Array([3]));
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
