/**
 * Lifecycle changes and rewraps through the guard: each is decided for the acting principal and
 * recorded once (a rewrap's inner unwrap and wrap are part of it, not separate decisions made as the
 * instance's own principal), and use of a retired version is recorded with its code.
 */
import { describe, expect, it } from 'vitest';
import { AccessDeniedError, type AuditRecord, AnomalyDetector, Keywarden, Policy } from '../../src/index.js';
import { storeAndRoot } from './_setup.js';

const POLICY = `keywarden-policy 1
principal admin  environment=prod
principal app    environment=prod
principal mover  environment=prod
allow admin  *                                 on *
allow app    encrypt,decrypt,generate-data-key on orders/*
allow mover  rewrap                            on orders/*
`;

async function setup() {
  const s = await storeAndRoot();
  const records: AuditRecord[] = [];
  // The instance's own principal ("agent") is not in the policy: only its views act.
  const kw = new Keywarden({
    store: s.store,
    root: s.root,
    principal: 'agent',
    policy: Policy.parse(POLICY),
    audit: { toStore: false, callback: (r) => void records.push(...r) },
  });
  return { kw, records };
}

describe('lifecycle and rewrap under a policy', () => {
  it('disable, enable, compromise and destroy are decided for the acting principal and recorded with the version', async () => {
    const { kw, records } = await setup();
    const admin = kw.as('admin');
    const app = kw.as('app');
    await admin.createKey('orders/main', { scope: { environment: 'prod' } });
    await admin.rotateKey('orders/main');
    await expect(app.disableVersion('orders/main', 1)).rejects.toBeInstanceOf(AccessDeniedError);
    await admin.disableVersion('orders/main', 1);
    await admin.enableVersion('orders/main', 1);
    await admin.compromiseVersion('orders/main', 1, { rotate: false });
    await admin.destroyVersion('orders/main', 1, { force: true });
    await kw.close();
    expect(records.filter((r) => r.op !== 'create-key').map((r) => [r.principal, r.op, r.outcome, r.version])).toEqual([
      ['admin', 'rotate-key', 'ok', 2],
      ['app', 'disable-version', 'denied', 1],
      ['admin', 'disable-version', 'ok', 1],
      ['admin', 'enable-version', 'ok', 1],
      ['admin', 'compromise-version', 'ok', 1],
      ['admin', 'destroy-version', 'ok', 1],
    ]);
  });

  it('a rewrap is one decision and one record for its principal; without the rewrap permission it is denied', async () => {
    const { kw, records } = await setup();
    const admin = kw.as('admin');
    await admin.createKey('orders/main', { scope: { environment: 'prod' } });
    const app = kw.as('app');
    const dk = await app.generateDataKey('orders/main', { order: 'o-1' });
    const env = await app.encrypt(new TextEncoder().encode('hello'), { key: 'orders/main' });
    await admin.rotateKey('orders/main');
    const before = records.length;
    const mover = kw.as('mover');
    const moved = await mover.rewrapDataKey(dk.wrapped, { order: 'o-1' }, { key: 'orders/main' });
    expect(moved).toMatchObject({ changed: true, fromVersion: 1, toVersion: 2 });
    const envMoved = await mover.rewrapEnvelope(env, { key: 'orders/main' });
    expect(envMoved.changed).toBe(true);
    expect(new TextDecoder().decode(await app.decrypt(envMoved.envelope, { key: 'orders/main' }))).toBe('hello');
    await expect(app.rewrapDataKey(dk.wrapped, { order: 'o-1' }, { key: 'orders/main' })).rejects.toBeInstanceOf(
      AccessDeniedError,
    );
    await kw.close();
    expect(records.slice(before).map((r) => [r.principal, r.op, r.outcome, r.version, r.detail?.toVersion])).toEqual([
      ['mover', 'rewrap-data-key', 'ok', 1, 2],
      ['mover', 'rewrap-envelope', 'ok', 1, 2],
      ['app', 'decrypt', 'ok', 2, undefined],
      ['app', 'rewrap-data-key', 'denied', 1, undefined],
    ]);
  });

  it('use of a disabled version is recorded with its code and flagged as an anomaly', async () => {
    const { kw, records } = await setup();
    const admin = kw.as('admin');
    const app = kw.as('app');
    await admin.createKey('orders/main', { scope: { environment: 'prod' } });
    const dk = await app.generateDataKey('orders/main');
    await admin.rotateKey('orders/main');
    await admin.disableVersion('orders/main', 1);
    await expect(app.decryptDataKey(dk.wrapped, undefined, { key: 'orders/main' })).rejects.toThrow();
    await kw.close();
    const last = records.at(-1) as AuditRecord;
    expect(last).toMatchObject({ principal: 'app', op: 'decrypt-data-key', outcome: 'error', version: 1 });
    expect(new AnomalyDetector().observe(last).map((a) => a.kind)).toEqual(['retired-version-use']);
  });
});
