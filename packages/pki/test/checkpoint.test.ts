/**
 * Signed audit checkpoints (src/checkpoint.ts): written every N records and on close, verified
 * against a certificate the verifier holds; a log rewritten by someone holding the audit key (a
 * fresh chain with valid MACs, which core's verifyAuditLog accepts) fails, naming the checkpoint.
 */
import { randomBytes } from 'node:crypto';
import {
  type AuditEvent,
  type AuditKey,
  AuditLog,
  type AuditRecord,
  auditLogOf,
  Keywarden,
  loadAuditKey,
  MemoryKeyStore,
  readStoreAuditLines,
  SoftwareRoot,
  verifyAuditLog,
} from '@keywarden/core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  AuditCheckpointer,
  CHECKPOINT_OP,
  issueCertificate,
  KeyPairs,
  type Signer,
  signerKeyId,
  verifyCheckpoints,
  writeCheckpoint,
} from '../src/index.js';

const DAY = 86_400_000;

async function selfSigned(signer: Signer, commonName: string, days = 30): Promise<Uint8Array> {
  return issueCertificate(
    { signer },
    {
      subject: { commonName },
      publicKey: signer.publicKey,
      profile: 'ca',
      notAfter: new Date(Date.now() + days * DAY),
    },
  );
}

let store: MemoryKeyStore;
let root: SoftwareRoot;
let kw: Keywarden;
let pairs: KeyPairs;
let signer: Signer;
let certificate: Uint8Array;
let auditKey: AuditKey;
let original: AuditRecord[];

beforeAll(async () => {
  store = new MemoryKeyStore();
  root = await SoftwareRoot.initialize(store, { unsealKey: new Uint8Array(randomBytes(32)) });
  kw = new Keywarden({ store, root, principal: 'app', audit: {} });
  await kw.createKey('pki');
  await kw.createKey('data');
  pairs = new KeyPairs({ keywarden: kw });
  await pairs.create('audit-signer', { algorithm: 'ECDSA-P256' });
  signer = await pairs.signer('audit-signer');
  certificate = await selfSigned(signer, 'Audit checkpoints');
  const log = auditLogOf(kw);
  if (!log) throw new Error('no audit log');
  const checkpointer = new AuditCheckpointer({ log, signer, every: 5 });
  for (let i = 0; i < 12; i++) await kw.encrypt(new Uint8Array([i]), { key: 'data' });
  await checkpointer.close();
  auditKey = await loadAuditKey(store, root);
  original = (await readStoreAuditLines(store, auditKey)).map((l) => JSON.parse(l) as AuditRecord);
});

afterAll(async () => {
  auditKey.destroy();
  await kw.close();
  await root.close();
  await store.close();
});

/** What an attacker holding the audit key does: a new chain of these events, MACed with the key. */
async function rewrite(events: AuditEvent[]): Promise<AuditRecord[]> {
  const out: AuditRecord[] = [];
  const log = new AuditLog({ key: auditKey, callback: (records) => void out.push(...records) });
  for (const e of events) await log.record(e);
  await log.close();
  return out;
}

/** The event a record came from (its detail kept as is: a replayed checkpoint). */
function eventOf(r: AuditRecord): AuditEvent {
  return {
    op: r.op,
    principal: r.principal,
    outcome: r.outcome,
    ...(r.key !== undefined ? { keyId: r.key } : {}),
    ...(r.version !== undefined ? { version: r.version } : {}),
    ...(r.detail !== undefined ? { detail: r.detail } : {}),
  };
}

describe('signed audit checkpoints', () => {
  it('a checkpoint every N records and one on close; the log verifies and every checkpoint checks out', () => {
    expect(verifyAuditLog(auditKey, original).ok).toBe(true);
    const cps = original.filter((r) => r.op === CHECKPOINT_OP);
    // Every 5 of 12 records and on close: 3, or 2 when a slow signature let the second one cover the
    // tail before close() (a busy machine); either way nothing is left uncovered (below).
    expect(cps.length).toBeGreaterThanOrEqual(2);
    for (const cp of cps) {
      expect(cp.detail?.signer).toBe(signerKeyId(signer.publicKey));
      expect(cp.detail?.head_seq).toBeLessThan(cp.seq);
    }
    const result = verifyCheckpoints(original, { certificates: [certificate], maxUncovered: 0 });
    expect(result).toMatchObject({ ok: true, checkpoints: cps.length, uncovered: 0 });
    expect(result.coveredThrough).toBe((cps[cps.length - 1] as AuditRecord).detail?.head_seq);
  });

  it('a rewritten log (fresh chain, valid MACs, the old checkpoints replayed) passes verifyAuditLog but not the checkpoints, which name the first checkpoint', async () => {
    // The attacker removes the second encrypt and rebuilds the chain from seq 1.
    const events = original.filter((r) => r.seq !== 2).map(eventOf);
    const forged = await rewrite(events);
    expect(verifyAuditLog(auditKey, forged).ok).toBe(true);
    const result = verifyCheckpoints(forged, { certificates: [certificate] });
    const first = forged.find((r) => r.op === CHECKPOINT_OP) as AuditRecord;
    expect(result.ok).toBe(false);
    expect(result.firstBad?.seq).toBe(first.seq);
    expect(result.firstBad?.reason).toMatch(
      new RegExp(
        `^checkpoint at seq ${first.seq}: the signed head \\(seq \\d+\\) is not the record this log has there`,
      ),
    );
  });

  it('a forged checkpoint (right head of the new chain, signature not by the key) fails: the signature does not verify', async () => {
    const plain = original.filter((r) => r.op !== CHECKPOINT_OP).map(eventOf);
    const out: AuditRecord[] = [];
    const log = new AuditLog({ key: auditKey, callback: (records) => void out.push(...records) });
    for (const e of plain.slice(0, 4)) await log.record(e);
    const head = log.head as { seq: number; mac: string };
    const old = original.find((r) => r.op === CHECKPOINT_OP) as AuditRecord;
    await log.record({
      op: CHECKPOINT_OP,
      principal: 'keywarden',
      outcome: 'ok',
      detail: { ...(old.detail ?? {}), head_seq: head.seq, head_mac: head.mac },
    });
    await log.close();
    expect(verifyAuditLog(auditKey, out).ok).toBe(true);
    const result = verifyCheckpoints(out, { certificates: [certificate] });
    expect(result.ok).toBe(false);
    expect(result.firstBad).toEqual({
      seq: 5,
      reason: 'checkpoint at seq 5: the signature does not verify (forged or altered)',
    });
  });

  it('a checkpoint signed by another key pair (another root, or the attacker’s) fails against the trusted certificate', async () => {
    await pairs.create('attacker', { algorithm: 'ECDSA-P256' });
    const other = await pairs.signer('attacker');
    const out: AuditRecord[] = [];
    const log = new AuditLog({ key: auditKey, callback: (records) => void out.push(...records) });
    for (const e of original.filter((r) => r.op !== CHECKPOINT_OP).map(eventOf)) await log.record(e);
    await writeCheckpoint(log, other);
    await log.close();
    expect(verifyCheckpoints(out, { certificates: [await selfSigned(other, 'Other')] }).ok).toBe(true);
    const result = verifyCheckpoints(out, { certificates: [certificate] });
    expect(result.firstBad?.reason).toBe(
      `checkpoint at seq ${out.length}: signed by a key none of the trusted certificates holds`,
    );
  });

  it('a rewrite that drops the checkpoints fails the coverage rule (maxUncovered)', async () => {
    const stripped = await rewrite(original.filter((r) => r.op !== CHECKPOINT_OP).map(eventOf));
    expect(verifyAuditLog(auditKey, stripped).ok).toBe(true);
    expect(verifyCheckpoints(stripped, { certificates: [certificate] }).ok).toBe(true); // no rule asked
    const result = verifyCheckpoints(stripped, { certificates: [certificate], maxUncovered: 5 });
    expect(result.ok).toBe(false);
    expect(result.firstBad?.reason).toMatch(
      /^no valid signed checkpoint in \d+ records \(at most 5 may be uncovered\)$/,
    );
  });

  it('a checkpoint signed outside its certificate’s validity fails', async () => {
    const expired = await issueCertificate(
      { signer },
      {
        subject: { commonName: 'Old' },
        publicKey: signer.publicKey,
        profile: 'ca',
        notBefore: new Date(Date.now() - 10 * DAY),
        notAfter: new Date(Date.now() - 5 * DAY),
      },
    );
    const result = verifyCheckpoints(original, { certificates: [expired] });
    expect(result.firstBad?.reason).toMatch(/outside its certificate's validity$/);
  });

  it.each(['ECDSA-P384', 'RSA-2048', 'RSA-3072', 'Ed25519'] as const)(
    'a checkpoint signed by a %s key pair verifies against its certificate, and not once its head is altered',
    async (algorithm) => {
      await pairs.create(`cp-${algorithm}`, { algorithm });
      const s = await pairs.signer(`cp-${algorithm}`);
      const cert = await selfSigned(s, `Checkpoints ${algorithm}`);
      const out: AuditRecord[] = [];
      const log = new AuditLog({ key: auditKey, callback: (records) => void out.push(...records) });
      for (const e of original
        .filter((r) => r.op !== CHECKPOINT_OP)
        .slice(0, 3)
        .map(eventOf))
        await log.record(e);
      await writeCheckpoint(log, s);
      const head = log.head as { seq: number; mac: string };
      // The attacker re-signs nothing but moves the checkpoint to name the record before.
      const old = out[out.length - 1] as AuditRecord;
      await log.record({
        op: CHECKPOINT_OP,
        principal: 'keywarden',
        outcome: 'ok',
        detail: { ...(old.detail ?? {}), head_seq: head.seq, head_mac: head.mac },
      });
      await log.close();
      expect(verifyCheckpoints(out.slice(0, 4), { certificates: [cert], maxUncovered: 0 })).toMatchObject({
        ok: true,
        checkpoints: 1,
        coveredThrough: 3,
      });
      expect(verifyCheckpoints(out, { certificates: [cert] }).firstBad).toEqual({
        seq: 5,
        reason: 'checkpoint at seq 5: the signature does not verify (forged or altered)',
      });
    },
    60_000,
  );

  it('every option is checked: every ≥ 1, a trusted certificate, no head known', async () => {
    const log = new AuditLog({ key: auditKey, callback: () => {} });
    expect(() => new AuditCheckpointer({ log, signer, every: 0 })).toThrow(/every is a positive integer/);
    expect(() => verifyCheckpoints(original, { certificates: [] })).toThrow(/at least one trusted certificate/);
    expect(() => verifyCheckpoints(original, { certificates: [new Uint8Array([1, 2])] })).toThrow(
      /not a DER X.509 certificate/,
    );
    await expect(writeCheckpoint(log, signer)).rejects.toThrow(/no known head yet/);
    await log.close();
  });
});
