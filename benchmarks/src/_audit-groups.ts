/**
 * Audit on against off (issue 12: at most 25% slower): the same Keywarden operations with and
 * without an audit log, in one group so that the ratio is measured in the same rounds. "audit off"
 * is the group's ceiling (kind raw). Every case makes BURST operations per call, so that an audited
 * call carries the whole cost of its records inside its own measured window:
 *  - "batched": durability { intervalMs: 10 } into a JSONL sink on /dev/null (the file sink's
 *    sealing, serialization and write calls without a disk's latency); each call ends with the
 *    log's flush, so the batch of its BURST records is sealed and written in the call (in a real
 *    run batches are larger, up to 1024 records: the per-batch part is charged more here);
 *  - "each": durability "each" into a callback sink (record objects handed over), one operation at
 *    a time, each waiting for its own record.
 * Measured in a process of its own that holds nothing but these cases, with a minor GC before
 * each case (audit-child.ts, README §Method), in CPU time of that process. Gated (`gate: true`):
 * baseline.json holds their ratios, and a change that makes the audit log dearer fails
 * bench:check like any other regression.
 */
import { auditLogOf, type EncryptionContext, Keywarden, type KeyStore, type RootOfTrust } from '@keywarden/core';
import type { Kind } from './_report.js';

/** Operations per measured call. */
export const AUDIT_BURST = 64;

/** The operations measured, one group each ("audit on vs off: <operation>"). */
const OPERATIONS = ['generateDataKey', 'decryptDataKey', 'encrypt 1 KiB', 'decrypt 1 KiB'] as const;
export const AUDIT_GROUP_NAMES: readonly string[] = OPERATIONS.map((op) => `audit on vs off: ${op}`);

interface AuditCase {
  label: string;
  kind: Kind;
  fn: () => unknown;
  perCall: number;
  gate: boolean;
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
  const intervalLog = auditLogOf(interval);
  if (!intervalLog) throw new Error('bench: the audited Keywarden has no audit log');
  const each = new Keywarden({ store, root, principal: 'bench', audit: { toStore: false, callback: () => {} } });
  await off.createKey('bench-audit');
  const payload = new Uint8Array(1024).fill(7);
  const envelope = await off.encrypt(payload, { key: 'bench-audit', context });
  const dk = await off.generateDataKey('bench-audit', context);
  const expected = { key: 'bench-audit' };
  const burst = (kw: Keywarden, op: (kw: Keywarden) => Promise<unknown>, flush: boolean) => async () => {
    for (let i = 0; i < AUDIT_BURST; i++) await op(kw);
    if (flush) await intervalLog.flush();
  };
  const rows = (name: string, op: (kw: Keywarden) => Promise<unknown>) => ({
    name,
    cases: [
      {
        label: 'keywarden, audit off',
        kind: 'raw' as Kind,
        fn: burst(off, op, false),
        perCall: AUDIT_BURST,
        gate: false,
      },
      {
        label: 'keywarden, audit on (batched every 10 ms)',
        kind: 'keywarden-audit' as Kind,
        fn: burst(interval, op, true),
        perCall: AUDIT_BURST,
        gate: true,
      },
      {
        label: 'keywarden, audit on (durability each)',
        kind: 'keywarden-audit' as Kind,
        fn: burst(each, op, false),
        perCall: AUDIT_BURST,
        gate: true,
      },
    ],
  });
  return {
    groups: [
      rows(AUDIT_GROUP_NAMES[0] as string, (kw) => kw.generateDataKey('bench-audit', context)),
      rows(AUDIT_GROUP_NAMES[1] as string, (kw) => kw.decryptDataKey(dk.wrapped, context, expected)),
      rows(AUDIT_GROUP_NAMES[2] as string, (kw) => kw.encrypt(payload, { key: 'bench-audit', context })),
      rows(AUDIT_GROUP_NAMES[3] as string, (kw) => kw.decrypt(envelope, { key: 'bench-audit', context })),
    ],
    close: async () => {
      await Promise.all([off.close(), interval.close(), each.close()]);
    },
  };
}
