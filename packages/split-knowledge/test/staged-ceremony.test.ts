/**
 * staged-ceremony.ts: the contracts of a staged (crash-safe) init and rekey, on a MemoryKeyStore.
 * The real processes killed at every step are in packages/cli/test/ceremony-crash.test.ts.
 */
import { decodeSealedRoot, Keywarden, MemoryKeyStore, ROOT_META_NAME, SoftwareRoot } from '@keywarden/core';
import { describe, expect, it } from 'vitest';
import {
  abortPendingCeremony,
  activatePendingCeremony,
  checkShareAgainstStore,
  finishActivatedCeremony,
  handOutDigest,
  initSplitRoot,
  PENDING_CEREMONY_META,
  pendingCeremonyState,
  readPendingCeremony,
  recordedCommitments,
  rotateRoot,
  shareCommitment,
  stageInit,
  stageRekey,
  unsealWithShares,
  verifyPendingCeremony,
} from '../src/index.js';
import { expectKwError, forgeShare } from './_helpers.js';

const text = new TextEncoder();

/** A 2-of-3 store with one key and one envelope made before any ceremony. */
async function store3() {
  const store = new MemoryKeyStore();
  const { root, handOut } = await initSplitRoot(store, { shares: 3, threshold: 2 });
  const kw = new Keywarden({ store, root });
  await kw.createKey('orders');
  const envelope = await kw.encrypt(text.encode('order #1'), { key: 'orders' });
  await kw.seal();
  return { store, shares: handOut, envelope };
}

async function opensWith(store: MemoryKeyStore, shares: string[], envelope?: Uint8Array): Promise<boolean> {
  const root = await SoftwareRoot.load(store);
  try {
    await unsealWithShares(root, shares);
  } catch {
    await root.close();
    return false;
  }
  if (envelope) {
    const kw = new Keywarden({ store, root });
    expect(new TextDecoder().decode(await kw.decrypt(envelope, { key: 'orders' }))).toBe('order #1');
    await kw.seal();
  }
  await root.close();
  return true;
}

describe('stageRekey → record → activate', () => {
  it('stage and record change nothing that opens the store: the old shares work until activate, the new ones from then on', async () => {
    const c = await store3();
    const before = await c.store.getMeta(ROOT_META_NAME);
    const staged = await stageRekey(c.store, c.shares.slice(0, 2), { shares: 4, threshold: 3 });
    expect(await c.store.getMeta(ROOT_META_NAME)).toEqual(before);
    expect(await readPendingCeremony(c.store)).toBeUndefined();
    const pending = await staged.record(c.store, { mode: 'test' });
    expect(pending.digests).toEqual(staged.handOut.map(handOutDigest));
    expect(await c.store.getMeta(ROOT_META_NAME)).toEqual(before);
    expect((await pendingCeremonyState(c.store)).state).toBe('pending');
    expect(await opensWith(c.store, c.shares.slice(1), c.envelope)).toBe(true);
    expect(await opensWith(c.store, staged.handOut.slice(0, 3))).toBe(false);

    await staged.activate(c.store);
    await staged.close();
    expect((await pendingCeremonyState(c.store)).state).toBe('none');
    expect(await opensWith(c.store, c.shares.slice(0, 2))).toBe(false);
    expect(await opensWith(c.store, staged.handOut.slice(1), c.envelope)).toBe(true);
    // The new sealed root records a commitment to every new share.
    const doc = decodeSealedRoot((await c.store.getMeta(ROOT_META_NAME))!);
    expect(recordedCommitments(doc)).toEqual(staged.handOut.map((t) => shareCommitment(t)));
  });

  it('a second ceremony is refused while one is pending, and so is root rotation', async () => {
    const c = await store3();
    const staged = await stageRekey(c.store, c.shares.slice(0, 2));
    await staged.record(c.store, {});
    await expectKwError(
      () => stageRekey(c.store, c.shares.slice(0, 2)),
      'KW_BAD_INPUT',
      /^ceremony: a rekey to share set ss_\S+ is pending since \S+: finish it \(resume\) or abort it first$/,
    );
    await expectKwError(() => rotateRoot(c.store, c.shares.slice(0, 2)), 'KW_BAD_INPUT', /^rotate: a rekey is pending/);
    await staged.close();
  });

  it('resume: the pending record authenticates under a quorum of the current set or of the new set, and then activates', async () => {
    for (const which of ['current', 'new'] as const) {
      const c = await store3();
      const staged = await stageRekey(c.store, c.shares.slice(0, 2));
      await staged.record(c.store, { mode: 'files' });
      const newShares = [...staged.handOut];
      await staged.close(); // the process that staged it is gone
      const quorum = which === 'current' ? c.shares.slice(1) : newShares.slice(0, 2);
      const verified = await verifyPendingCeremony(c.store, quorum);
      expect(verified.quorumOf).toBe(which);
      await activatePendingCeremony(c.store, verified);
      expect(await opensWith(c.store, newShares.slice(1), c.envelope)).toBe(true);
      expect(await readPendingCeremony(c.store)).toBeUndefined();
    }
  });

  it('a pending record altered in the store does not authenticate, and a test quorum is required when asked for', async () => {
    const c = await store3();
    const staged = await stageRekey(c.store, c.shares.slice(0, 2));
    await staged.record(c.store, { mode: 'files', requireNewQuorum: true });
    const newShares = [...staged.handOut];
    await staged.close();
    const verified = await verifyPendingCeremony(c.store, c.shares.slice(0, 2));
    await expectKwError(
      () => activatePendingCeremony(c.store, verified),
      'KW_BAD_INPUT',
      /waits for a test quorum of the NEW shares/,
    );
    const bytes = (await c.store.getMeta(PENDING_CEREMONY_META))!;
    const record = JSON.parse(new TextDecoder().decode(bytes));
    record.handOut.requireNewQuorum = false;
    await c.store.putMeta(PENDING_CEREMONY_META, text.encode(JSON.stringify(record)));
    await expectKwError(
      () => verifyPendingCeremony(c.store, c.shares.slice(0, 2)),
      'KW_STORE',
      /^ceremony: the pending ceremony record does not authenticate under this root/,
    );
    await c.store.putMeta(PENDING_CEREMONY_META, bytes);
    // A forged new share is refused by its commitment before combining.
    await expectKwError(
      () => verifyPendingCeremony(c.store, [forgeShare(newShares[0]!), newShares[1]!]),
      'KW_SHARE',
      /^share: share 1 of share set ss_\S+ is not the share this key store handed out/,
    );
    await activatePendingCeremony(c.store, await verifyPendingCeremony(c.store, newShares.slice(1)));
    expect(await opensWith(c.store, newShares.slice(0, 2), c.envelope)).toBe(true);
  });

  it('abort drops the pending record and nothing else; a crash between activation and clean-up reads as activated', async () => {
    const c = await store3();
    const staged = await stageRekey(c.store, c.shares.slice(0, 2));
    await staged.record(c.store, {});
    expect((await abortPendingCeremony(c.store))?.shareSet.shareSetId).toBe(staged.shareSet.shareSetId);
    expect(await opensWith(c.store, c.shares.slice(0, 2), c.envelope)).toBe(true);
    await staged.close();

    // Activated, then "killed" before the pending record was deleted: simulate by writing it back.
    const again = await stageRekey(c.store, c.shares.slice(0, 2));
    await again.record(c.store, {});
    const record = (await c.store.getMeta(PENDING_CEREMONY_META))!;
    await again.activate(c.store);
    await again.close();
    await c.store.putMeta(PENDING_CEREMONY_META, record);
    expect((await pendingCeremonyState(c.store)).state).toBe('activated');
    expect(await finishActivatedCeremony(c.store)).toBe(true);
    expect((await pendingCeremonyState(c.store)).state).toBe('none');
  });

  it('activation refuses when the sealed root changed since the ceremony was staged', async () => {
    const c = await store3();
    const staged = await stageRekey(c.store, c.shares.slice(0, 2));
    await staged.record(c.store, {});
    // Someone put another sealed root in the store meanwhile (a rekey that did not look).
    const other = await initSplitRoot(new MemoryKeyStore(), { shares: 2, threshold: 2 });
    await c.store.putMeta(ROOT_META_NAME, text.encode(JSON.stringify(other.root.document)));
    await expectKwError(() => staged.activate(c.store), 'KW_CONFLICT', /root changed since this ceremony was staged/);
    await staged.close();
    await other.root.close();
  });
});

describe('stageInit', () => {
  it('writes the pending record, then the root; the shares open it and carry commitments', async () => {
    const store = new MemoryKeyStore();
    const staged = await stageInit({ shares: 3, threshold: 2 });
    expect(await store.getMeta(ROOT_META_NAME)).toBeUndefined();
    await staged.record(store, { mode: 'files' });
    expect((await pendingCeremonyState(store)).state).toBe('activated');
    const verified = await verifyPendingCeremony(store, staged.handOut.slice(0, 2));
    expect(verified.quorumOf).toBe('new');
    await staged.close();
    expect(await finishActivatedCeremony(store)).toBe(true);
    expect(await opensWith(store, staged.handOut.slice(1))).toBe(true);
  });
});

describe('checkShareAgainstStore', () => {
  it('a share of the current or the pending set must match its commitment; a share of another set is not checked', async () => {
    const c = await store3();
    expect(await checkShareAgainstStore(c.store, c.shares[1]!)).toMatchObject({ set: 'current', committed: true });
    await expectKwError(
      () => checkShareAgainstStore(c.store, forgeShare(c.shares[1]!)),
      'KW_SHARE',
      /^share: share 2 of share set ss_\S+ is not the share this key store handed out/,
      c.shares,
    );
    const staged = await stageRekey(c.store, c.shares.slice(0, 2));
    await staged.record(c.store, {});
    expect(await checkShareAgainstStore(c.store, staged.handOut[0]!)).toMatchObject({
      set: 'pending',
      committed: true,
    });
    const elsewhere = await initSplitRoot(new MemoryKeyStore(), { shares: 2, threshold: 2 });
    expect(await checkShareAgainstStore(c.store, elsewhere.handOut[0]!)).toMatchObject({ set: 'unknown' });
    await staged.close();
    await elsewhere.root.close();
  });
});
