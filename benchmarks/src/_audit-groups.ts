/**
 * Audit on against off (issue 12: at most 25% slower): the same Keywarden operations with and
 * without an audit log, in one group so that the ratio is measured in the same rounds. "audit off"
 * is the group's ceiling (kind raw). The audited instance records every operation, MACed and
 * chained, into a JSONL sink on /dev/null written every 10 ms (the file sink's serialization and
 * write calls, without a disk's latency), and, in the "each" row, a callback sink that every
 * operation waits for (durability "each": one batch per event-loop turn). Ungated rows.
 * Measured as CPU time of this process, so a batch sealed after its case's window is charged to
 * the next case: the short interval keeps that spill small, and the next case is the "each" row.
 */
import { type EncryptionContext, Keywarden, type KeyStore, type RootOfTrust } from '@keywarden/core';
import type { Kind } from './_report.js';

interface AuditCase {
  label: string;
  kind: Kind;
  fn: () => unknown;
}

export async function auditGroups(
  store: KeyStore,
  root: RootOfTrust,
  context: EncryptionContext,
): Promise<{ groups: Array<{ name: string; cases: AuditCase[] }>; close: () => Promise<void> }> {
  const off = new Keywarden({ store, root });
  const interval = new Keywarden({
    store,
    root,
    principal: 'bench',
    audit: { toStore: false, file: '/dev/null', durability: { intervalMs: 10 } },
  });
  const each = new Keywarden({ store, root, principal: 'bench', audit: { toStore: false, callback: () => {} } });
  await off.createKey('bench-audit');
  const payload = new Uint8Array(1024).fill(7);
  const envelope = await off.encrypt(payload, { key: 'bench-audit', context });
  const dk = await off.generateDataKey('bench-audit', context);
  const expected = { key: 'bench-audit' };
  const rows = (name: string, op: (kw: Keywarden) => () => unknown) => ({
    name,
    cases: [
      { label: 'keywarden, audit off', kind: 'raw' as Kind, fn: op(off) },
      { label: 'keywarden, audit on (batched every 10 ms)', kind: 'keywarden-audit' as Kind, fn: op(interval) },
      { label: 'keywarden, audit on (durability each)', kind: 'keywarden-audit' as Kind, fn: op(each) },
    ],
  });
  return {
    groups: [
      rows('audit on vs off: generateDataKey', (kw) => () => kw.generateDataKey('bench-audit', context)),
      rows('audit on vs off: decryptDataKey', (kw) => () => kw.decryptDataKey(dk.wrapped, context, expected)),
      rows('audit on vs off: encrypt 1 KiB', (kw) => () => kw.encrypt(payload, { key: 'bench-audit', context })),
      rows('audit on vs off: decrypt 1 KiB', (kw) => () => kw.decrypt(envelope, { key: 'bench-audit', context })),
    ],
    close: async () => {
      await Promise.all([off.close(), interval.close(), each.close()]);
    },
  };
}
