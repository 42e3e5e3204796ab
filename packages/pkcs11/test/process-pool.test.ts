/**
 * What only a pool of worker processes has (the suites shared with the thread pool run against
 * both kinds: conformance, faults): a child SIGKILLed from outside mid-request is replaced and its
 * requests retried; the PIN never appears in a child's argv or environment; closing the root stops
 * the children; and a parent killed by SIGKILL leaves no orphan (each child exits when its IPC
 * channel closes); workerNice lowers the children's CPU priority. Every wait has a deadline.
 */
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { getPriority } from 'node:os';
import { fileURLToPath } from 'node:url';
import { KeywardenError, MemoryKeyStore } from '@keywarden/core';
import { describe, expect, it } from 'vitest';
import { Pkcs11Root } from '../src/index.js';
import { createRoot, hsm, pin, rootUri, uniqueLabel, unavailable } from './_hsm.js';

function alive(pid: number): boolean {
  // A zombie (exited, not yet reaped) is gone for our purpose; /proc/PID/stat says which.
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return !/\) Z /.test(stat);
  } catch {
    return false;
  }
}

async function goneWithin(pids: number[], ms: number): Promise<number[]> {
  const until = Date.now() + ms;
  while (Date.now() < until) {
    const left = pids.filter(alive);
    if (left.length === 0) return [];
    await new Promise((r) => setTimeout(r, 50));
  }
  return pids.filter(alive);
}

async function roundTrip(root: Pkcs11Root, i: number): Promise<boolean> {
  const m = new Uint8Array(randomBytes(32));
  const aad = new TextEncoder().encode(`proc-${i}`);
  const back = await root.unwrapKey(await root.wrapKey(m, aad), aad);
  return Buffer.from(back).equals(Buffer.from(m));
}

describe.skipIf(unavailable)('pool of worker processes on SoftHSM2', () => {
  it('workerNice: the children run that much nicer than the host (a replacement too); by default they run at its priority', async () => {
    const host = getPriority();
    const { root, store, object } = await createRoot({ poolSize: 1, pool: 'processes' });
    expect(root.pool.pids().map((pid) => getPriority(pid))).toEqual([host]);
    await root.close();
    const nicer = await Pkcs11Root.open(rootUri(object), { store, poolSize: 2, pool: 'processes', workerNice: 10 });
    const want = Math.min(19, host + 10);
    expect(nicer.pool.pids().map((pid) => getPriority(pid))).toEqual([want, want]);
    const [first] = nicer.pool.pids();
    process.kill(first as number, 'SIGKILL');
    expect(await roundTrip(nicer, 0)).toBe(true);
    expect(nicer.pool.pids()).not.toContain(first);
    expect(nicer.pool.pids().map((pid) => getPriority(pid))).toEqual([want, want]);
    await nicer.close();
  }, 60_000);

  it('a child SIGKILLed mid-request: requests are retried on its replacement (or fail typed), nothing hangs', async () => {
    const { root } = await createRoot({ pool: 'processes', poolSize: 2 });
    try {
      await root.randomBytes(8);
      const pids = root.pool.pids();
      expect(pids).toHaveLength(2);
      const calls = Array.from({ length: 200 }, (_, i) => roundTrip(root, i));
      await new Promise((r) => setTimeout(r, 5));
      process.kill(pids[0] as number, 'SIGKILL');
      const results = await Promise.race([
        Promise.allSettled(calls),
        new Promise<never>((_, reject) => setTimeout(() => reject(new Error('requests hang')), 20_000).unref()),
      ]);
      for (const r of results) {
        if (r.status === 'fulfilled') expect(r.value).toBe(true);
        else expect(KeywardenError.isInstance(r.reason), String(r.reason)).toBe(true);
      }
      expect(root.pool.replaced).toBe(1);
      expect(root.pool.pids()).not.toContain(pids[0]);
      const again = await Promise.all(Array.from({ length: 20 }, (_, i) => roundTrip(root, i)));
      expect(again.every(Boolean)).toBe(true);
    } finally {
      await root.close();
    }
  }, 40_000);

  it('seal logs out every child (each child process is a PKCS#11 application of its own, with its own login state); unseal logs each in again', async () => {
    const { root } = await createRoot({ pool: 'processes', poolSize: 2 });
    try {
      const state = () =>
        Promise.all(
          [0, 1].map((i) => root.pool.callOn<{ loggedIn: boolean }>(i, { op: 'info' }).then((x) => x.loggedIn)),
        );
      expect(await state()).toEqual([true, true]);
      await root.seal();
      expect(await state()).toEqual([false, false]);
      await root.unseal(pin());
      expect(await state()).toEqual([true, true]);
    } finally {
      await root.close();
    }
  }, 40_000);

  it('the PIN is in no child argv or environment (pin-source=env: is left out of the children); close stops them', async () => {
    const object = uniqueLabel();
    const name = `KW_TEST_PIN_${randomBytes(4).toString('hex')}`;
    const secret = Buffer.from(pin()).toString();
    const uri = rootUri(object, false).replace('?', `?pool=processes&pin-source=env:${name}&`);
    const root = await Pkcs11Root.open(uri, {
      store: new MemoryKeyStore(),
      create: true,
      poolSize: 2,
      env: { ...process.env, [name]: secret },
    });
    let pids: number[] = [];
    try {
      expect(root.pool.kind).toBe('processes');
      pids = root.pool.pids();
      expect(pids).toHaveLength(2);
      expect(await roundTrip(root, 0)).toBe(true);
      for (const pid of pids) {
        const argv = readFileSync(`/proc/${pid}/cmdline`);
        const environ = readFileSync(`/proc/${pid}/environ`);
        expect(argv.includes(secret)).toBe(false);
        expect(environ.includes(secret)).toBe(false);
        expect(environ.includes(name)).toBe(false);
        // The child does see the token's configuration (the harness's SOFTHSM2_CONF).
        expect(argv.includes(hsm.token)).toBe(true);
      }
    } finally {
      await root.close();
    }
    expect(await goneWithin(pids, 10_000)).toEqual([]);
  }, 40_000);

  it('a parent killed by SIGKILL leaves no orphan: its children exit when their IPC channel closes', async () => {
    const entry = fileURLToPath(new URL('../dist/index.js', import.meta.url));
    expect(existsSync(entry)).toBe(true);
    const script = `
      import { MemoryKeyStore } from '@keywarden/core';
      import { Pkcs11Root } from ${JSON.stringify(entry)};
      const root = await Pkcs11Root.open(process.env.KW_URI, { store: new MemoryKeyStore(), create: true, poolSize: 2, pool: 'processes' });
      await root.randomBytes(8);
      process.stdout.write(JSON.stringify(root.pool.pids()) + '\\n');
      setInterval(() => root.randomBytes(8), 5);
    `;
    const parent = spawn(process.execPath, ['--input-type=module', '-e', script], {
      cwd: fileURLToPath(new URL('..', import.meta.url)),
      env: { ...process.env, KW_URI: rootUri(uniqueLabel()) },
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    const pids = await new Promise<number[]>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error('the parent did not start its pool in time')), 30_000);
      let out = '';
      parent.stdout.on('data', (d: Buffer) => {
        out += d.toString();
        const line = out.split('\n')[0];
        if (out.includes('\n') && line) {
          clearTimeout(timer);
          resolve(JSON.parse(line) as number[]);
        }
      });
      parent.on('exit', () => reject(new Error('the parent exited early')));
    });
    expect(pids).toHaveLength(2);
    expect(pids.every(alive)).toBe(true);
    parent.kill('SIGKILL');
    expect(await goneWithin(pids, 10_000)).toEqual([]);
  }, 60_000);
});
