/**
 * Rewrap (issue 10): rewrapDataKey, rewrapEnvelope (format v2: header only; v1: re-encrypted) and
 * the bulk job rewrapRecords (order,
 * concurrency bound, progress, per-record failures, checkpoint and resume).
 */
import { randomBytes } from 'node:crypto';
import { Readable, type Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { describe, expect, it } from 'vitest';
import { concatBytes } from '../src/_bytes.js';
import { encryptEnvelopeForTestVectors } from '../src/_testing.js';
import {
  DecryptionError,
  envelopeHeaderLength,
  FormatError,
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
const rnd = (n: number) => new Uint8Array(randomBytes(n));

async function streamed(stream: Transform, input: Uint8Array): Promise<Uint8Array> {
  const out: Buffer[] = [];
  await pipeline(Readable.from([Buffer.from(input)]), stream, async (source) => {
    for await (const c of source) out.push(c as Buffer);
  });
  return new Uint8Array(Buffer.concat(out));
}

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
  const bodyOf = (e: Uint8Array) => e.subarray(envelopeHeaderLength(e));

  it('format v2: replaces only the header, the body comes back byte for byte (single-shot, framed, signed), and it decrypts under the new version alone', async () => {
    const { kw } = await setup();
    const plain = new TextEncoder().encode('hello');
    const env = await kw.encrypt(plain, { key: 'k', context: CONTEXT });
    const signed = await kw.encrypt(plain, { key: 'k', context: CONTEXT, signed: true });
    const bigPlain = new Uint8Array(randomBytes(200_000));
    const framed = await streamed(kw.createEncryptStream({ key: 'k', context: CONTEXT, frameSize: 4096 }), bigPlain);
    await kw.rotateKey('k');
    for (const [input, plaintext, opts] of [
      [env, plain, {}],
      [signed, plain, { requireSigned: true }],
      [framed, bigPlain, {}],
    ] as const) {
      const r = await kw.rewrapEnvelope(input, { key: 'k', context: CONTEXT });
      expect(r).toMatchObject({ changed: true, fromVersion: 1, toVersion: 2 });
      expect(inspectEnvelope(r.envelope)).toMatchObject({ formatVersion: 2, keyVersion: 2 });
      expect(bodyOf(r.envelope)).toEqual(bodyOf(input));
      expect(r.envelope.length - input.length).toBe(0); // same wrap suite, same KEK id: same header length
      expect(await kw.decrypt(r.envelope, { key: 'k', context: CONTEXT, ...opts })).toEqual(plaintext);
      expect((await kw.rewrapEnvelope(r.envelope, { key: 'k', context: CONTEXT })).changed).toBe(false);
    }
    // Version 1 disabled: the rewrapped envelopes no longer need it.
    const moved = (await kw.rewrapEnvelope(env, { key: 'k', context: CONTEXT })).envelope;
    await kw.disableVersion('k', 1);
    expect(await kw.decrypt(moved, { key: 'k', context: CONTEXT })).toEqual(plain);
  });

  it('format v2: given only the header (the first envelopeHeaderLength bytes), it returns only the new header', async () => {
    const { kw } = await setup();
    const plain = new TextEncoder().encode('header only');
    const env = await kw.encrypt(plain, { key: 'k', context: CONTEXT });
    await kw.rotateKey('k');
    const head = env.subarray(0, envelopeHeaderLength(env));
    const r = await kw.rewrapEnvelope(head, { key: 'k', context: CONTEXT });
    expect(r.envelope.length).toBe(envelopeHeaderLength(r.envelope));
    expect(await kw.decrypt(concatBytes(r.envelope, bodyOf(env)), { key: 'k', context: CONTEXT })).toEqual(plain);
  });

  it('format v2: the body is not read — a damaged body is carried over unchanged and still fails to decrypt', async () => {
    const { kw } = await setup();
    const env = await kw.encrypt(new Uint8Array(randomBytes(4096)), { key: 'k', context: CONTEXT });
    const damaged = env.slice();
    damaged[damaged.length - 100]! ^= 1;
    await kw.rotateKey('k');
    const r = await kw.rewrapEnvelope(damaged, { key: 'k', context: CONTEXT });
    expect(r.changed).toBe(true);
    expect(bodyOf(r.envelope)).toEqual(bodyOf(damaged));
    await expect(kw.decrypt(r.envelope, { key: 'k', context: CONTEXT })).rejects.toSatisfy(DecryptionError.isInstance);
  });

  it('format v2: refused like a decryption — unexpected key (before any KEK is loaded), wrong context, wrong commitment, compromised version', async () => {
    const { kw } = await setup();
    await kw.createKey('other');
    const env = await kw.encrypt(new Uint8Array(10), { key: 'k', context: CONTEXT });
    await kw.rotateKey('k');
    await expect(kw.rewrapEnvelope(env, { key: 'other', context: CONTEXT })).rejects.toSatisfy(
      UnexpectedKeyError.isInstance,
    );
    await expect(kw.rewrapEnvelope(env, { key: 'k', context: { table: 'x' } })).rejects.toSatisfy(
      DecryptionError.isInstance,
    );
    const badCommitment = env.slice();
    badCommitment[envelopeHeaderLength(env) - 1]! ^= 1;
    await expect(kw.rewrapEnvelope(badCommitment, { key: 'k', context: CONTEXT })).rejects.toSatisfy(
      DecryptionError.isInstance,
    );
    await expect(kw.rewrapEnvelope(env, { key: 'k', context: CONTEXT, requireSigned: true })).rejects.toSatisfy(
      FormatError.isInstance,
    );
    await kw.compromiseVersion('k', 1, { rotate: false });
    await expect(kw.rewrapEnvelope(env, { key: 'k', context: CONTEXT })).rejects.toSatisfy(
      KeyCompromisedError.isInstance,
    );
  });

  it('format v1: decrypted and re-encrypted into a v2 envelope (its header is in the body AAD), signed stays signed', async () => {
    const { kw } = await setup();
    const plain = new TextEncoder().encode('hello');
    const v1 = await encryptEnvelopeForTestVectors(kw, plain, { key: 'k', context: CONTEXT }, rnd, 1);
    const signedV1 = await encryptEnvelopeForTestVectors(
      kw,
      plain,
      { key: 'k', context: CONTEXT, signed: true },
      rnd,
      1,
    );
    await kw.rotateKey('k');
    const r = await kw.rewrapEnvelope(v1, { key: 'k', context: CONTEXT });
    expect(r).toMatchObject({ changed: true, fromVersion: 1, toVersion: 2 });
    expect(inspectEnvelope(r.envelope)).toMatchObject({ formatVersion: 2, keyVersion: 2 });
    expect(await kw.decrypt(r.envelope, { key: 'k', context: CONTEXT })).toEqual(plain);
    const s = await kw.rewrapEnvelope(signedV1, { key: 'k', context: CONTEXT });
    expect(inspectEnvelope(s.envelope)).toMatchObject({ formatVersion: 2, signed: true });
    expect(await kw.decrypt(s.envelope, { key: 'k', context: CONTEXT, requireSigned: true })).toEqual(plain);
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
