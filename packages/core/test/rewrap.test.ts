/**
 * Rewrap (issue 10): rewrapDataKey, rewrapEnvelope and the bulk job rewrapRecords (order,
 * concurrency bound, progress, per-record failures, checkpoint and resume).
 */
import { randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import {
  KeyCompromisedError,
  Keywarden,
  MemoryKeyStore,
  type RewrapProgress,
  type RewrapRecord,
  rewrapRecords,
  SoftwareRoot,
  UnexpectedKeyError,
  inspectEnvelope,
  parseWrappedKey,
} from '../src/index.js';

const CONTEXT = { table: 'users' };

async function setup() {
  const store = new MemoryKeyStore();
  const root = await SoftwareRoot.initialize(store, { unsealKey: new Uint8Array(randomBytes(32)) });
  const kw = new Keywarden({ store, root });
  await kw.createKey('k');
  return { store, root, kw };
}

describe('rewrapDataKey', () => {
  it('re-wraps the same DEK under the current primary; a data key already there comes back unchanged', async () => {
    const { kw } = await setup();
    const dk = await kw.generateDataKey('k', CONTEXT);
    await kw.rotateKey('k');
    const r = await kw.rewrapDataKey(dk.wrapped, CONTEXT, { key: 'k' });
    expect(r).toMatchObject({ changed: true, fromVersion: 1, toVersion: 2 });
    expect(parseWrappedKey(r.wrapped).version).toBe(2);
    expect(await kw.decryptDataKey(r.wrapped, CONTEXT, { key: 'k' })).toEqual(dk.plaintext);
    const again = await kw.rewrapDataKey(r.wrapped, CONTEXT, { key: 'k' });
    expect(again.changed).toBe(false);
    expect(again.wrapped).toBe(r.wrapped);
  });

  it('is refused like an unwrap: wrong expected key, wrong context, compromised version', async () => {
    const { kw } = await setup();
    await kw.createKey('other');
    const dk = await kw.generateDataKey('k', CONTEXT);
    await kw.rotateKey('k');
    await expect(kw.rewrapDataKey(dk.wrapped, CONTEXT, { key: 'other' })).rejects.toSatisfy(
      UnexpectedKeyError.isInstance,
    );
    await expect(kw.rewrapDataKey(dk.wrapped, { table: 'x' }, { key: 'k' })).rejects.toThrow();
    await kw.compromiseVersion('k', 1, { rotate: false });
    await expect(kw.rewrapDataKey(dk.wrapped, CONTEXT, { key: 'k' })).rejects.toSatisfy(KeyCompromisedError.isInstance);
  });
});

describe('rewrapEnvelope', () => {
  it('moves an envelope to the primary (re-encrypting: the format authenticates the wrapped DEK in the body), keeping signed envelopes signed', async () => {
    const { kw } = await setup();
    const plain = new TextEncoder().encode('hello');
    const env = await kw.encrypt(plain, { key: 'k', context: CONTEXT });
    const signed = await kw.encrypt(plain, { key: 'k', context: CONTEXT, signed: true });
    await kw.rotateKey('k');
    const r = await kw.rewrapEnvelope(env, { key: 'k', context: CONTEXT });
    expect(r).toMatchObject({ changed: true, fromVersion: 1, toVersion: 2 });
    expect(inspectEnvelope(r.envelope).keyVersion).toBe(2);
    expect(await kw.decrypt(r.envelope, { key: 'k', context: CONTEXT })).toEqual(plain);
    const s = await kw.rewrapEnvelope(signed, { key: 'k', context: CONTEXT });
    expect(inspectEnvelope(s.envelope).signed).toBe(true);
    expect(await kw.decrypt(s.envelope, { key: 'k', context: CONTEXT, requireSigned: true })).toEqual(plain);
    expect((await kw.rewrapEnvelope(r.envelope, { key: 'k', context: CONTEXT })).changed).toBe(false);
  });
});

describe('rewrapRecords (bulk job)', () => {
  async function records(kw: Keywarden, n: number) {
    const out: Array<RewrapRecord & { plaintext: Uint8Array }> = [];
    for (let i = 0; i < n; i++) {
      const context = { row: String(i) };
      const dk = await kw.generateDataKey('k', context);
      out.push({ id: `r${i}`, wrappedKey: dk.wrapped, context, plaintext: dk.plaintext });
    }
    return out;
  }

  it('yields one update per record in input order, never more than `concurrency` in flight, with progress', async () => {
    const { kw } = await setup();
    const input = await records(kw, 50);
    await kw.rotateKey('k');
    let inFlight = 0;
    let maxInFlight = 0;
    const original = kw.rewrapDataKey.bind(kw);
    kw.rewrapDataKey = async (...args) => {
      inFlight++;
      maxInFlight = Math.max(maxInFlight, inFlight);
      try {
        await new Promise((r) => setTimeout(r, 1));
        return await original(...args);
      } finally {
        inFlight--;
      }
    };
    const events: RewrapProgress[] = [];
    const ids: string[] = [];
    for await (const u of rewrapRecords(kw, input, { key: 'k', concurrency: 4, onProgress: (p) => events.push(p) })) {
      ids.push(u.id);
      expect(u.status).toBe('rewrapped');
      const rec = input.find((r) => r.id === u.id)!;
      expect(await kw.decryptDataKey(u.wrappedKey!, rec.context, { key: 'k' })).toEqual(rec.plaintext);
    }
    expect(ids).toEqual(input.map((r) => r.id));
    expect(maxInFlight).toBeLessThanOrEqual(4);
    expect(maxInFlight).toBeGreaterThan(1);
    expect(events.at(-1)).toEqual({ done: 50, rewrapped: 50, unchanged: 0, failed: 0, resumedFrom: 0 });
  });

  it('a record that cannot be rewrapped is reported as failed and the job goes on', async () => {
    const { kw } = await setup();
    const input = await records(kw, 3);
    await kw.rotateKey('k');
    const bad = { ...input[1]!, context: { row: 'wrong' } };
    const updates = [];
    for await (const u of rewrapRecords(kw, [input[0]!, bad, input[2]!], { key: 'k' })) updates.push(u);
    expect(updates.map((u) => u.status)).toEqual(['rewrapped', 'failed', 'rewrapped']);
    expect(updates[1]?.error?.code).toBe('KW_DECRYPT');
  });

  it('resumes from its checkpoint after being abandoned half-way, and removes the checkpoint when done', async () => {
    const { kw, store } = await setup();
    const input = await records(kw, 30);
    await kw.rotateKey('k');
    let taken = 0;
    for await (const _ of rewrapRecords(kw, input, {
      key: 'k',
      jobId: 'move-users',
      checkpointEvery: 5,
      concurrency: 3,
    })) {
      if (++taken === 12) break; // a crash after the 12th update was written
    }
    // Updates 1..10 were handed over and the consumer asked for more; the checkpoint says 10.
    expect(JSON.parse(new TextDecoder().decode((await store.getMeta('rewrap-job/move-users'))!))).toEqual({ done: 10 });
    const resumed: string[] = [];
    let last: RewrapProgress | undefined;
    for await (const u of rewrapRecords(kw, input, {
      key: 'k',
      jobId: 'move-users',
      onProgress: (p) => {
        last = p;
      },
    })) {
      resumed.push(`${u.id}:${u.status}`);
    }
    // Records 10 and 11 (past the last checkpoint) are done again; everything after them once.
    expect(resumed[0]).toBe('r10:rewrapped');
    expect(resumed).toHaveLength(20);
    expect(last).toMatchObject({ done: 30, resumedFrom: 10 });
    expect(await store.getMeta('rewrap-job/move-users')).toBeUndefined();
  });
});
