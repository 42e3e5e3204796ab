import { generateKeyPairSync, randomBytes } from 'node:crypto';
import {
  DecryptionError,
  decodeSealedRoot,
  encodeSealedRoot,
  KeyDestroyedError,
  KeystoreSealedError,
  Keywarden,
  kekAad,
  MemoryKeyStore,
  ROOT_DESTROYED_MESSAGE,
  ROOT_META_NAME,
  ROOT_MISSING_MESSAGE,
  SoftwareRoot,
} from '@keywarden/core';
import { beforeAll, describe, expect, it } from 'vitest';
import {
  combineShares,
  decryptShareForCustodian,
  destroyRootWithQuorum,
  initSplitRoot,
  parseShare,
  rekey,
  requireQuorum,
  rotateRoot,
  shareCommitment,
  splitHardwareSecret,
  splitSecret,
  unsealSessionFor,
  unsealWithSession,
  unsealWithShares,
} from '../src/index.js';
import { caught, expectKwError, expectNoShareLeak, forgeShare, payloadOf, rewrite, subsets } from './_helpers.js';

const FORGED =
  'unseal: the shares combined into a key that does not open the root: at least one share is forged or altered, ' +
  'or comes from another ceremony; the root stays sealed';
/** What a share that does not match the commitment recorded for it in the sealed root gets. */
const SUBSTITUTED =
  /^share: share \d of share set ss_[A-Za-z0-9_-]{16} is not the share this key store handed out \(its commitment does not match: substituted or forged\); it was not used$/;
const text = new TextEncoder();

/**
 * A store whose root was sealed before commitments existed (no `commitments` in its unseal
 * description): forged shares are caught only when the combined key fails to open the root.
 */
async function legacyCeremony() {
  const store = new MemoryKeyStore();
  const unsealKey = new Uint8Array(randomBytes(32));
  const set = await splitSecret(unsealKey, { shares: 5, threshold: 3, purpose: 'unseal-key' });
  const root = await SoftwareRoot.initialize(store, {
    unsealKey,
    unseal: { method: 'shamir', shareSetId: set.shareSetId, threshold: 3, shares: 5 },
  });
  await root.close();
  return { store, shares: set.encoded };
}

async function storedDoc(store: MemoryKeyStore) {
  return decodeSealedRoot((await store.getMeta(ROOT_META_NAME))!);
}

/** A store with a 3-of-5 split root, a key "orders", and one envelope encrypted under it. */
async function ceremony() {
  const store = new MemoryKeyStore();
  const { root, shareSet, handOut } = await initSplitRoot(store);
  const kw = new Keywarden({ store, root });
  await kw.createKey('orders');
  const envelope = await kw.encrypt(text.encode('order #1'), { key: 'orders', context: { table: 'orders' } });
  await kw.seal(); // not close(): Keywarden.close() closes the store too, and the tests reuse it
  return { store, shareSet, shares: handOut, envelope };
}

async function decryptsWith(store: MemoryKeyStore, root: SoftwareRoot, envelope: Uint8Array): Promise<string> {
  const kw = new Keywarden({ store, root });
  try {
    return new TextDecoder().decode(await kw.decrypt(envelope, { key: 'orders', context: { table: 'orders' } }));
  } finally {
    await kw.seal();
  }
}

describe('initSplitRoot', () => {
  it('defaults to 5 shares, threshold 3, and stores only the sealed root with the share-set description', async () => {
    const store = new MemoryKeyStore();
    const { root, shareSet, handOut } = await initSplitRoot(store);
    expect(shareSet).toEqual({
      shareSetId: expect.stringMatching(/^ss_/),
      threshold: 3,
      shares: 5,
      purpose: 'unseal-key',
    });
    expect(handOut).toHaveLength(5);
    handOut.forEach((t, i) => {
      expect(parseShare(t)).toMatchObject({ index: i + 1, shareSetId: shareSet.shareSetId, threshold: 3, shares: 5 });
    });
    expect(root.isSealed()).toBe(false);
    expect(root.describe().label).toBe('software root (split knowledge: 3 of 5 shares)');
    const doc = await storedDoc(store);
    expect(doc.unseal).toEqual({
      method: 'shamir',
      shareSetId: shareSet.shareSetId,
      threshold: 3,
      shares: 5,
      commitments: handOut.map((t) => shareCommitment(t)),
    });
    // Nothing of the shares (hence of the unseal key) is in the store.
    const raw = Buffer.from((await store.getMeta(ROOT_META_NAME))!).toString('utf8');
    for (const t of handOut) expect(raw).not.toContain(payloadOf(t).slice(0, 12));
    // The hand-out is exactly what recombines into the key that opens the stored root.
    const key = await combineShares(handOut.slice(2));
    const fresh = await SoftwareRoot.load(store);
    await fresh.unseal(key);
    expect(fresh.isSealed()).toBe(false);
  });

  it('checks N, M and the custodian keys before writing anything', async () => {
    const store = new MemoryKeyStore();
    const x = () => generateKeyPairSync('x25519').publicKey.export({ type: 'spki', format: 'pem' }) as string;
    const same = x();
    const cases: Array<[Parameters<typeof initSplitRoot>[1], RegExp]> = [
      [{ shares: 5, threshold: 6 }, /threshold \(6\) cannot exceed the number of shares \(5\)/],
      [{ shares: 5, threshold: 1 }, /1-of-N split/],
      [{ shares: 1, threshold: 1 }, /number of shares must be an integer from 2 to 255/],
      [{ shares: 3, threshold: 2, custodians: [x(), x()] }, /^ceremony: 2 custodian keys for 3 shares/],
      [
        { shares: 3, threshold: 2, custodians: [x(), same, same] },
        /^ceremony: custodians 2 and 3 have the same public key/,
      ],
      [{ shares: 2, threshold: 2, custodians: [x(), 'not a key'] }, /^custodian: not a PEM public key/],
    ];
    for (const [options, message] of cases) {
      await expectKwError(() => initSplitRoot(store, options), 'KW_BAD_INPUT', message);
      expect(await store.getMeta(ROOT_META_NAME)).toBeUndefined();
    }
    await initSplitRoot(store, { shares: 2, threshold: 2 });
    await expectKwError(() => initSplitRoot(store), 'KW_STORE', 'root: this key store already has a root');
  });

  it('with custodians, hands out only encrypted shares; each custodian decrypts their own', async () => {
    const pairs = [
      generateKeyPairSync('x25519'),
      generateKeyPairSync('rsa', { modulusLength: 2048 }),
      generateKeyPairSync('x25519'),
    ];
    const pub = pairs.map((p) => p.publicKey.export({ type: 'spki', format: 'pem' }) as string);
    const priv = pairs.map((p) => p.privateKey.export({ type: 'pkcs8', format: 'pem' }) as string);
    const store = new MemoryKeyStore();
    const { root, handOut } = await initSplitRoot(store, { shares: 3, threshold: 2, custodians: pub });
    await root.close();
    for (const armored of handOut) {
      expect(armored).toMatch(/^-----BEGIN KEYWARDEN ENCRYPTED SHARE-----/);
      expect(armored).not.toContain('kwshare1');
    }
    const recovered = handOut.map((a, i) => decryptShareForCustodian(a, priv[i]!));
    expect(recovered.map((t) => parseShare(t).index)).toEqual([1, 2, 3]);
    await expectKwError(() => decryptShareForCustodian(handOut[0]!, priv[2]!), 'KW_SHARE', /not for this private key/);
    const sealed = await SoftwareRoot.load(store);
    await unsealWithShares(sealed, [recovered[2]!, recovered[0]!]);
    expect(sealed.isSealed()).toBe(false);
  });
});

describe('sealed start and unseal by quorum', () => {
  let c: Awaited<ReturnType<typeof ceremony>>;
  beforeAll(async () => {
    c = await ceremony();
  });

  it('a loaded root starts sealed: key operations refuse until 3 of 5 shares unseal it', async () => {
    const root = await SoftwareRoot.load(c.store);
    expect(root.isSealed()).toBe(true);
    const kw = new Keywarden({ store: c.store, root });
    const err = await caught(() => kw.decrypt(c.envelope, { key: 'orders', context: { table: 'orders' } }));
    expect(KeystoreSealedError.isInstance(err)).toBe(true);
    await expect(kw.encrypt(text.encode('x'), { key: 'orders' })).rejects.toSatisfy(KeystoreSealedError.isInstance);
    await unsealWithShares(root, [c.shares[4]!, c.shares[0]!, c.shares[2]!]);
    expect(root.isSealed()).toBe(false);
    const again = await kw.encrypt(text.encode('order #2'), { key: 'orders' });
    expect(new TextDecoder().decode(await kw.decrypt(again, { key: 'orders' }))).toBe('order #2');
    expect(
      new TextDecoder().decode(await kw.decrypt(c.envelope, { key: 'orders', context: { table: 'orders' } })),
    ).toBe('order #1');
    // seal wipes the root and the KEK cache: the process is back to refusing.
    await kw.seal();
    expect(root.isSealed()).toBe(true);
    await expect(kw.decrypt(again, { key: 'orders' })).rejects.toSatisfy(KeystoreSealedError.isInstance);
  });

  it('every 3-subset of the 5 shares unseals; every 2-subset is refused and the root stays sealed', async () => {
    for (const three of subsets(c.shares, 3)) {
      const root = await SoftwareRoot.load(c.store);
      await unsealWithShares(root, three);
      expect(await decryptsWith(c.store, root, c.envelope)).toBe('order #1');
    }
    for (const two of subsets(c.shares, 2)) {
      const root = await SoftwareRoot.load(c.store);
      await expectKwError(() => unsealWithShares(root, two), 'KW_SHARE', 'share: 2 of 3 shares, need 1 more', c.shares);
      expect(root.isSealed()).toBe(true);
    }
  });

  it('a forged share among 3 is refused before combining by the commitment recorded for it, naming its index', async () => {
    for (const at of [0, 1, 2]) {
      const three = c.shares.slice(0, 3);
      three[at] = forgeShare(three[at]!, 3 + at);
      const root = await SoftwareRoot.load(c.store);
      const err = await expectKwError(() => unsealWithShares(root, three), 'KW_SHARE', SUBSTITUTED, [
        ...c.shares,
        ...three,
      ]);
      expect(err.message).toContain(`share ${at + 1} of share set`);
      expect(root.isSealed()).toBe(true);
    }
  });

  it('a root sealed before commitments: a forged share among 3 combines but is refused at unseal, with an error that reveals nothing', async () => {
    const legacy = await legacyCeremony();
    for (const at of [0, 1, 2]) {
      const three = legacy.shares.slice(0, 3);
      three[at] = forgeShare(three[at]!, 3 + at);
      expect(await combineShares(three)).toHaveLength(32); // combining itself succeeds
      const root = await SoftwareRoot.load(legacy.store);
      const err = await expectKwError(() => unsealWithShares(root, three), 'KW_UNSEAL', FORGED, [
        ...legacy.shares,
        ...three,
      ]);
      expect(err.name).toBe('UnsealError');
      expect(err.cause).toBeUndefined();
      expect(root.isSealed()).toBe(true);
    }
  });

  it('shares of another ceremony are refused before combining, relabelled ones too (by their commitments)', async () => {
    const other = await ceremony();
    const root = await SoftwareRoot.load(c.store);
    await expectKwError(
      () => unsealWithShares(root, other.shares.slice(0, 3)),
      'KW_SHARE',
      `share: share 1 belongs to share set ${other.shareSet.shareSetId}, expected ${c.shareSet.shareSetId}`,
      [...c.shares, ...other.shares],
    );
    const relabelled = other.shares.slice(0, 3).map((t) =>
      rewrite(t, (f) => {
        f[2] = c.shareSet.shareSetId;
      }),
    );
    await expectKwError(() => unsealWithShares(root, relabelled), 'KW_SHARE', SUBSTITUTED, [
      ...c.shares,
      ...other.shares,
      ...relabelled,
    ]);
    expect(root.isSealed()).toBe(true);
  });

  it('hsm-pin shares are refused as unseal shares', async () => {
    const pin = await splitHardwareSecret(text.encode('1234'), { purpose: 'hsm-pin' });
    const root = await SoftwareRoot.load(c.store);
    await expectKwError(
      () => unsealWithShares(root, pin.encoded.slice(0, 3)),
      'KW_SHARE',
      'share: share 1 is for hsm-pin, expected a share for unseal-key',
      pin.encoded,
    );
  });

  it('on a root that is already unsealed, the quorum is still verified', async () => {
    const root = await SoftwareRoot.load(c.store);
    await unsealWithShares(root, c.shares.slice(1, 4));
    await unsealWithShares(root, c.shares.slice(0, 3));
    const forged = [forgeShare(c.shares[0]!), c.shares[1]!, c.shares[2]!];
    await expectKwError(() => unsealWithShares(root, forged), 'KW_SHARE', SUBSTITUTED, [...c.shares, ...forged]);
    expect(root.isSealed()).toBe(false);
    const legacy = await legacyCeremony();
    const legacyRoot = await SoftwareRoot.load(legacy.store);
    await unsealWithShares(legacyRoot, legacy.shares.slice(0, 3));
    const legacyForged = [forgeShare(legacy.shares[0]!), legacy.shares[1]!, legacy.shares[2]!];
    await expectKwError(() => unsealWithShares(legacyRoot, legacyForged), 'KW_UNSEAL', FORGED, legacyForged);
    expect(legacyRoot.isSealed()).toBe(false);
  });

  it('one share at a time through an UnsealSession', async () => {
    const root = await SoftwareRoot.load(c.store);
    const session = unsealSessionFor(root);
    expect(session.submit(c.shares[3]!)).toMatchObject({ accepted: 1, threshold: 3, shares: 5 });
    expect(session.submit(c.shares[1]!)).toMatchObject({ accepted: 2 });
    await expectKwError(() => unsealWithSession(root, session), 'KW_SHARE', 'share: 2 of 3 shares, need 1 more');
    expect(session.submit(c.shares[0]!)).toMatchObject({ accepted: 3, complete: true });
    await unsealWithSession(root, session);
    expect(root.isSealed()).toBe(false);
    expect(session.progress().accepted).toBe(0);

    // A forged share is refused as it is submitted (its commitment), and the progress is kept.
    const sealed = await SoftwareRoot.load(c.store);
    const s2 = unsealSessionFor(sealed);
    for (const t of [c.shares[0]!, c.shares[1]!]) s2.submit(t);
    await expectKwError(() => s2.submit(forgeShare(c.shares[2]!)), 'KW_SHARE', SUBSTITUTED, c.shares);
    expect(s2.progress().accepted).toBe(2);
    s2.reset();
    // Without commitments (a root sealed before them), it is caught only at combining.
    const legacy = await legacyCeremony();
    const legacySealed = await SoftwareRoot.load(legacy.store);
    const s3 = unsealSessionFor(legacySealed);
    for (const t of [legacy.shares[0]!, legacy.shares[1]!, forgeShare(legacy.shares[2]!)]) s3.submit(t);
    await expectKwError(() => unsealWithSession(legacySealed, s3), 'KW_UNSEAL', FORGED, legacy.shares);
    expect(legacySealed.isSealed()).toBe(true);
  });

  it('a development-mode root has no shares', async () => {
    const store = new MemoryKeyStore();
    const root = await SoftwareRoot.initialize(store, { unsealKey: new Uint8Array(randomBytes(32)) });
    await expectKwError(
      () => unsealWithShares(root, c.shares.slice(0, 3)),
      'KW_BAD_INPUT',
      'unseal: this root is not split into shares (it is unsealed with a development-mode key)',
    );
    await expectKwError(
      () => requireQuorum(store, c.shares.slice(0, 3)),
      'KW_BAD_INPUT',
      /^quorum: this root is not split/,
    );
  });
});

describe('rekey and the quorum gate', () => {
  it('3-of-5 → 2-of-3: the new shares work, the old ones stop working, the KEKs stay valid', async () => {
    const c = await ceremony();
    const root = await SoftwareRoot.load(c.store);
    await unsealWithShares(root, c.shares.slice(0, 3));
    const { shareSet, handOut } = await rekey(c.store, root, [c.shares[4]!, c.shares[2]!, c.shares[3]!], {
      shares: 3,
      threshold: 2,
    });
    expect(shareSet).toMatchObject({ shares: 3, threshold: 2, purpose: 'unseal-key' });
    expect(shareSet.shareSetId).not.toBe(c.shareSet.shareSetId);
    expect(handOut).toHaveLength(3);
    expect((await storedDoc(c.store)).unseal).toEqual({
      method: 'shamir',
      shareSetId: shareSet.shareSetId,
      threshold: 2,
      shares: 3,
      commitments: handOut.map((t) => shareCommitment(t)),
    });
    expect(root.isSealed()).toBe(false);

    // New shares: any 2 of 3 unseal a freshly loaded root, and old data still decrypts.
    for (const two of subsets(handOut, 2)) {
      const fresh = await SoftwareRoot.load(c.store);
      await unsealWithShares(fresh, two);
      expect(await decryptsWith(c.store, fresh, c.envelope)).toBe('order #1');
    }
    // Old shares: refused by their share-set id …
    const fresh = await SoftwareRoot.load(c.store);
    await expectKwError(
      () => unsealWithShares(fresh, c.shares.slice(0, 3)),
      'KW_SHARE',
      `share: share 1 belongs to share set ${c.shareSet.shareSetId}, expected ${shareSet.shareSetId}`,
      [...c.shares, ...handOut],
    );
    // … and the old unseal key no longer opens the sealed root at all.
    const oldKey = await combineShares(c.shares.slice(0, 3));
    await expectKwError(() => fresh.unseal(oldKey), 'KW_UNSEAL', 'root: unseal failed (wrong unseal key or shares)');
    await expectKwError(() => requireQuorum(c.store, c.shares.slice(0, 3)), 'KW_SHARE', /belongs to share set/);
    await requireQuorum(c.store, handOut.slice(1));
  });

  it('is refused without a quorum of the current shares, even with the root unsealed', async () => {
    const c = await ceremony();
    const root = await SoftwareRoot.load(c.store);
    await unsealWithShares(root, c.shares.slice(0, 3));
    const before = await c.store.getMeta(ROOT_META_NAME);
    await expectKwError(
      () => rekey(c.store, root, c.shares.slice(0, 2), { shares: 3, threshold: 2 }),
      'KW_SHARE',
      'share: 2 of 3 shares, need 1 more',
      c.shares,
    );
    await expectKwError(() => rekey(c.store, root, [], {}), 'KW_SHARE', 'share: no shares given');
    const forged = [c.shares[0]!, c.shares[1]!, forgeShare(c.shares[2]!)];
    await expectKwError(() => rekey(c.store, root, forged, {}), 'KW_SHARE', SUBSTITUTED, [...c.shares, ...forged]);
    const other = await ceremony();
    await expectKwError(() => rekey(c.store, root, other.shares.slice(0, 3), {}), 'KW_SHARE', /belongs to share set/);
    await expectKwError(
      () => rekey(c.store, root, c.shares.slice(0, 3), { shares: 4, threshold: 5 }),
      'KW_BAD_INPUT',
      /threshold \(5\) cannot exceed/,
    );
    expect(await c.store.getMeta(ROOT_META_NAME)).toEqual(before);
    expect(root.isSealed()).toBe(false);
  });

  it('on a sealed root: the quorum unseals it for the rekey and it is sealed again afterwards', async () => {
    const c = await ceremony();
    const root = await SoftwareRoot.load(c.store);
    const pub = [0, 1, 2, 3].map(
      () => generateKeyPairSync('x25519').publicKey.export({ type: 'spki', format: 'pem' }) as string,
    );
    const out = await rekey(c.store, root, c.shares.slice(2), { shares: 4, threshold: 3, custodians: pub });
    expect(root.isSealed()).toBe(true);
    expect(out.handOut.every((a) => a.startsWith('-----BEGIN KEYWARDEN ENCRYPTED SHARE-----'))).toBe(true);
    expect(root.describe().label).toBe('software root (split knowledge: 3 of 4 shares)');
  });

  it('is refused when the root in memory is not the one in the store', async () => {
    const c = await ceremony();
    const a = await SoftwareRoot.load(c.store);
    const b = await SoftwareRoot.load(c.store);
    const { handOut } = await rekey(c.store, a, c.shares.slice(0, 3), {});
    await expectKwError(
      () => rekey(c.store, b, handOut.slice(0, 3), {}),
      'KW_BAD_INPUT',
      'rekey: the root in this process is not the one in the key store (it was rekeyed or replaced); load it again',
    );
  });

  it('requireQuorum: resolves for a quorum, refuses too few, forged, or foreign shares', async () => {
    const c = await ceremony();
    await requireQuorum(c.store, c.shares.slice(1, 4));
    await requireQuorum(c.store, c.shares);
    await expectKwError(
      () => requireQuorum(c.store, c.shares.slice(0, 2)),
      'KW_SHARE',
      'share: 2 of 3 shares, need 1 more',
    );
    const forged = [forgeShare(c.shares[0]!), c.shares[1]!, c.shares[2]!];
    const err = await caught(() => requireQuorum(c.store, forged));
    expect((err as Error).message).toMatch(SUBSTITUTED);
    expectNoShareLeak(err, [...c.shares, ...forged]);
    await expectKwError(() => requireQuorum(new MemoryKeyStore(), c.shares), 'KW_ROOT_MISSING', ROOT_MISSING_MESSAGE);
  });
});

describe('root rotation and root destruction (quorum-gated)', () => {
  async function snapshot(store: MemoryKeyStore) {
    const keys = await store.listKeys();
    return {
      keys,
      versions: await Promise.all(keys.map((k) => store.listVersions(k.id))),
      root: Array.from((await store.getMeta(ROOT_META_NAME)) ?? []),
    };
  }

  /** The ceremony, plus a second version of "orders" and a second envelope under it. */
  async function rotated() {
    const c = await ceremony();
    const root = await SoftwareRoot.load(c.store);
    await unsealWithShares(root, c.shares.slice(0, 3));
    const kw = new Keywarden({ store: c.store, root });
    await kw.rotateKey('orders');
    const second = await kw.encrypt(text.encode('order #2'), { key: 'orders', context: { table: 'orders' } });
    await kw.seal();
    return { ...c, second };
  }

  it('rotateRoot with a quorum: a new root id on the document and every version; the SAME shares unseal the new root; data made before decrypts', async () => {
    const c = await rotated();
    const oldDoc = await storedDoc(c.store);
    const before = await snapshot(c.store);
    const r = await rotateRoot(c.store, c.shares.slice(2, 5));
    expect(r.rewrapped).toBe(2);
    expect(r.rootId).toMatch(/^root_/);
    expect(r.rootId).not.toBe(oldDoc.rootId);
    const doc = await storedDoc(c.store);
    expect(doc.rootId).toBe(r.rootId);
    expect(doc.unseal).toEqual(oldDoc.unseal); // same share set: the custodians' shares stay valid
    expect(doc.wrappedRoot).not.toBe(oldDoc.wrappedRoot);
    const after = await snapshot(c.store);
    expect(after.keys).toStrictEqual(before.keys);
    for (const v of after.versions.flat()) expect(v.rootId).toBe(r.rootId);

    // Every 3-subset of the same five shares unseals the new root.
    for (const subset of subsets(c.shares, 3)) {
      const root = await SoftwareRoot.load(c.store);
      await unsealWithShares(root, subset);
      await root.close();
    }
    const root = await SoftwareRoot.load(c.store);
    await unsealWithShares(root, c.shares.slice(0, 3));
    expect(await decryptsWith(c.store, root, c.envelope)).toBe('order #1');
    await unsealWithShares(root, c.shares.slice(1, 4)); // decryptsWith sealed it
    expect(await decryptsWith(c.store, root, c.second)).toBe('order #2');

    // The old root (from a copy of the old document, e.g. a backup) cannot unwrap what is stored now.
    const backup = new MemoryKeyStore();
    await backup.putMeta(ROOT_META_NAME, encodeSealedRoot(oldDoc));
    const old = await SoftwareRoot.load(backup);
    await unsealWithShares(old, c.shares.slice(0, 3));
    for (const v of after.versions.flat()) {
      await expect(old.unwrapKey(v.wrappedMaterial, kekAad(v.keyId, v.version))).rejects.toSatisfy(
        DecryptionError.isInstance,
      );
    }
  });

  it('without a quorum — M-1 shares, a forged share, shares of another ceremony — rotation and destruction are refused and nothing changes', async () => {
    const c = await rotated();
    const other = await ceremony();
    const before = await snapshot(c.store);
    const forged = [forgeShare(c.shares[0]!), c.shares[1]!, c.shares[2]!];
    for (const op of [rotateRoot, destroyRootWithQuorum]) {
      await expectKwError(() => op(c.store, c.shares.slice(0, 2)), 'KW_SHARE', 'share: 2 of 3 shares, need 1 more', [
        ...c.shares,
      ]);
      const err = await caught(() => op(c.store, forged));
      expect((err as Error).message).toMatch(SUBSTITUTED);
      expectNoShareLeak(err, [...c.shares, ...forged]);
      await expectKwError(
        () => op(c.store, other.shares.slice(0, 3)),
        'KW_SHARE',
        /^share: share 1 belongs to share set/,
        [...other.shares],
      );
      expect(await snapshot(c.store)).toStrictEqual(before);
    }
    const root = await SoftwareRoot.load(c.store);
    await unsealWithShares(root, c.shares.slice(0, 3));
    expect(await decryptsWith(c.store, root, c.envelope)).toBe('order #1');
  });

  it('a development-mode root has no quorum: both are refused', async () => {
    const store = new MemoryKeyStore();
    await SoftwareRoot.initialize(store, { unsealKey: randomBytes(32) });
    const c = await ceremony();
    for (const op of [rotateRoot, destroyRootWithQuorum]) {
      await expectKwError(
        () => op(store, c.shares.slice(0, 3)),
        'KW_BAD_INPUT',
        /^quorum: this root is not split into shares/,
      );
    }
  });

  it('destroyRootWithQuorum: every version destroyed, nothing decrypts, and a later unseal or quorum says there is no root', async () => {
    const c = await rotated();
    const loadedBefore = await SoftwareRoot.load(c.store); // a process that loaded the root earlier
    expect(await destroyRootWithQuorum(c.store, c.shares.slice(1, 4))).toEqual({ destroyed: 2, alreadyDestroyed: 0 });
    expect(await c.store.getMeta(ROOT_META_NAME)).toBeUndefined();
    for (const v of (await snapshot(c.store)).versions.flat()) {
      expect(v.state).toBe('destroyed');
      expect(v.wrappedMaterial).toHaveLength(0);
    }
    await expectKwError(() => SoftwareRoot.load(c.store), 'KW_ROOT_DESTROYED', ROOT_DESTROYED_MESSAGE);
    await expectKwError(
      () => requireQuorum(c.store, c.shares.slice(0, 3)),
      'KW_ROOT_DESTROYED',
      ROOT_DESTROYED_MESSAGE,
    );
    await expectKwError(() => rotateRoot(c.store, c.shares.slice(0, 3)), 'KW_ROOT_DESTROYED', ROOT_DESTROYED_MESSAGE);
    // Destroying again asks for the quorum again (checked against the tombstone), and has nothing left to erase.
    await expectKwError(() => destroyRootWithQuorum(c.store, c.shares.slice(0, 2)), 'KW_SHARE', /need 1 more/);
    expect(await destroyRootWithQuorum(c.store, c.shares.slice(0, 3))).toEqual({ destroyed: 0, alreadyDestroyed: 2 });
    // Even a root loaded before the destruction and unsealed by a quorum decrypts nothing: the
    // KEK material in the store is gone.
    await unsealWithShares(loadedBefore, c.shares.slice(0, 3));
    const kw = new Keywarden({ store: c.store, root: loadedBefore });
    await expect(kw.decrypt(c.envelope, { key: 'orders', context: { table: 'orders' } })).rejects.toSatisfy(
      KeyDestroyedError.isInstance,
    );
    await expect(kw.decrypt(c.second, { key: 'orders', context: { table: 'orders' } })).rejects.toSatisfy(
      KeyDestroyedError.isInstance,
    );
    await kw.seal();
  });
});
