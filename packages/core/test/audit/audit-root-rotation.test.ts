/**
 * The audit key moves with the KEKs when the root is rotated (rewrapUnderNewRoot): staged under the
 * new root before the new root is stored, so that a stop at any point leaves a key the root in
 * use can unwrap, and the log keeps verifying.
 */
import { randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import {
  AUDIT_KEY_META_NAME,
  AUDIT_KEY_NEXT_META_NAME,
  encodeSealedRoot,
  Keywarden,
  loadAuditKey,
  MemoryKeyStore,
  ROOT_META_NAME,
  readStoreAuditHead,
  readStoreAuditLines,
  rewrapUnderNewRoot,
  SoftwareRoot,
  stageAuditKeyMove,
  verifyAuditLog,
} from '../../src/index.js';

async function auditedStore() {
  const store = new MemoryKeyStore();
  const unsealKey = new Uint8Array(randomBytes(32));
  const root = await SoftwareRoot.initialize(store, { unsealKey: unsealKey.slice() });
  const kw = new Keywarden({ store, root, audit: {} });
  await kw.createKey('k');
  await kw.encrypt(new Uint8Array(8), { key: 'k' });
  await kw.close();
  const { root: next, document } = await SoftwareRoot.createForRotation({ unsealKey, unseal: root.document.unseal });
  return { store, root, next, meta: { name: ROOT_META_NAME, value: encodeSealedRoot(document) } };
}

async function verifies(store: MemoryKeyStore, root: SoftwareRoot): Promise<boolean> {
  const key = await loadAuditKey(store, root, { create: false });
  const anchor = await readStoreAuditHead(store, key);
  return verifyAuditLog(key, await readStoreAuditLines(store, key), anchor ? { anchor } : {}).ok;
}

describe('root rotation moves the audit key', () => {
  it('after rewrapUnderNewRoot the log verifies under the new root, and the old root no longer opens the key', async () => {
    const { store, root, next, meta } = await auditedStore();
    await rewrapUnderNewRoot(store, root, next, meta);
    expect(await verifies(store, next)).toBe(true);
    expect(await store.getMeta(AUDIT_KEY_NEXT_META_NAME)).toBeUndefined();
    await expect(loadAuditKey(store, root, { create: false })).rejects.toThrow();
  });

  it('stopped after the new root was stored (before the staged key was promoted): the new root still verifies', async () => {
    const { store, root, next, meta } = await auditedStore();
    const before = (await store.getMeta(AUDIT_KEY_META_NAME)) as Uint8Array;
    await rewrapUnderNewRoot(store, root, next, meta);
    // Put the store back in the state of a stop between replaceRoot and the promotion.
    await store.putMeta(AUDIT_KEY_NEXT_META_NAME, (await store.getMeta(AUDIT_KEY_META_NAME)) as Uint8Array);
    await store.putMeta(AUDIT_KEY_META_NAME, before);
    expect(await verifies(store, next)).toBe(true);
  });

  it('stopped before the new root was stored: the old root still verifies, the staged key is ignored', async () => {
    const { store, root, next } = await auditedStore();
    expect(await stageAuditKeyMove(store, root, next)).toBe(true);
    expect(await verifies(store, root)).toBe(true);
  });
});
