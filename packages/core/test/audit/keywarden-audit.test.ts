/**
 * Keywarden with `audit` and `policy`: every operation leaves a record (success, denial, failed
 * unwrap, lifecycle change, seal, policy change), denials are AccessDeniedError, and an operation
 * whose record cannot be written is refused.
 */
import { describe, expect, it } from 'vitest';
import { AccessDeniedError, AuditError, DecryptionError } from '../../src/errors.js';
import {
  type AuditRecord,
  type AuditSink,
  auditLogOf,
  Keywarden,
  loadAuditKey,
  Policy,
  readStoreAuditHead,
  readStoreAuditLines,
  updatePolicy,
  verifyAuditLog,
} from '../../src/index.js';
import { storeAndRoot } from './_setup.js';

const POLICY = `keywarden-policy 1
principal app     environment=prod
principal dev-app environment=dev
principal admin   environment=prod
allow app    encrypt,decrypt,generate-data-key on orders/*
allow dev-app *                                on *
allow admin  *                                 on *
`;

async function setup(options: { policy?: boolean; sinks?: AuditSink[] } = {}) {
  const s = await storeAndRoot();
  const records: AuditRecord[] = [];
  const kw = new Keywarden({
    store: s.store,
    root: s.root,
    principal: 'admin',
    audit: { callback: (r) => void records.push(...r), ...(options.sinks ? { sinks: options.sinks } : {}) },
    ...(options.policy ? { policy: Policy.parse(POLICY) } : {}),
  });
  return { ...s, kw, records };
}

const enc = new TextEncoder();

describe('every operation is recorded', () => {
  it('create, encrypt, decrypt, data keys, rotate and seal each append one verifiable record', async () => {
    const { kw, records } = await setup();
    const key = await kw.createKey('orders/main', { scope: { environment: 'prod' } });
    const env = await kw.encrypt(enc.encode('hello'), { key: 'orders/main', context: { order: 'o-1' } });
    await kw.decrypt(env, { key: 'orders/main', context: { order: 'o-1' } });
    const dk = await kw.generateDataKey('orders/main');
    await kw.decryptDataKey(dk.wrapped, undefined, { key: 'orders/main' });
    await kw.rotateKey('orders/main');
    await kw.seal();
    await kw.close();
    expect(records.map((r) => [r.op, r.principal, r.outcome, r.key, r.version])).toEqual([
      ['create-key', 'admin', 'ok', key.id, 1],
      ['encrypt', 'admin', 'ok', key.id, 1],
      ['decrypt', 'admin', 'ok', key.id, 1],
      ['generate-data-key', 'admin', 'ok', key.id, 1],
      ['decrypt-data-key', 'admin', 'ok', key.id, 1],
      ['rotate-key', 'admin', 'ok', key.id, 2],
      ['seal', 'admin', 'ok', undefined, undefined],
    ]);
    expect(records[1]?.ctx).toMatch(/^h:/);
    expect(JSON.stringify(records).split(/[^\w-]+/)).not.toContain('o-1'); // a whole token: a MAC may hold the letters
  });

  it('a failed unwrap (a tampered envelope) is recorded as an error with its code', async () => {
    const { kw, records } = await setup();
    await kw.createKey('orders/main');
    const env = await kw.encrypt(enc.encode('hello'), { key: 'orders/main' });
    env[env.length - 1] = (env[env.length - 1] as number) ^ 1;
    await expect(kw.decrypt(env, { key: 'orders/main' })).rejects.toBeInstanceOf(DecryptionError);
    await kw.close();
    expect(records.at(-1)).toMatchObject({ op: 'decrypt', outcome: 'error', code: 'KW_DECRYPT' });
  });

  it('records go to the store too, and verify against its head', async () => {
    const s = await storeAndRoot();
    const kw = new Keywarden({ store: s.store, root: s.root, audit: {} });
    await kw.createKey('k');
    await kw.encrypt(enc.encode('x'), { key: 'k' });
    await kw.close();
    const key = await loadAuditKey(s.store, s.root);
    const lines = await readStoreAuditLines(s.store, key);
    expect(lines).toHaveLength(2);
    expect(verifyAuditLog(key, lines, { anchor: await readStoreAuditHead(s.store, key) }).ok).toBe(true);
    expect(JSON.parse(lines[0] as string)).toMatchObject({ principal: 'local', op: 'create-key' });
  });
});

describe('policy enforcement in the SDK', () => {
  it('a principal may do what its policy allows, and a denial is an AccessDeniedError and a record', async () => {
    const { kw, records } = await setup({ policy: true });
    await kw.createKey('orders/main', { scope: { environment: 'prod' } });
    await kw.createKey('hr/payroll', { scope: { environment: 'prod' } });
    const app = kw.as('app');
    const env = await app.encrypt(enc.encode('hello'), { key: 'orders/main' });
    expect(new TextDecoder().decode(await app.decrypt(env, { key: 'orders/main' }))).toBe('hello');
    await expect(app.encrypt(enc.encode('x'), { key: 'hr/payroll' })).rejects.toBeInstanceOf(AccessDeniedError);
    await expect(app.rotateKey('orders/main')).rejects.toThrow(
      /policy: principal "app" may not rotate key "orders\/main"/,
    );
    await expect(app.createKey('orders/new')).rejects.toBeInstanceOf(AccessDeniedError);
    // Data under a key it may not use is not decrypted either (checked before the unwrap).
    const hr = await kw.encrypt(enc.encode('salary'), { key: 'hr/payroll' });
    await expect(app.decrypt(hr, { key: 'hr/payroll' })).rejects.toBeInstanceOf(AccessDeniedError);
    const dk = await kw.generateDataKey('hr/payroll');
    await expect(app.decryptDataKey(dk.wrapped, undefined, { anyKeyInStore: true })).rejects.toBeInstanceOf(
      AccessDeniedError,
    );
    await kw.close();
    const denied = records.filter((r) => r.outcome === 'denied');
    expect(denied.map((r) => [r.principal, r.op, r.code])).toEqual([
      ['app', 'encrypt', 'KW_DENIED'],
      ['app', 'rotate-key', 'KW_DENIED'],
      ['app', 'create-key', 'KW_DENIED'],
      ['app', 'decrypt', 'KW_DENIED'],
      ['app', 'decrypt-data-key', 'KW_DENIED'],
    ]);
    expect(denied[3]?.key).toMatch(/^kek_/);
  });

  it('environment separation: a principal acting in dev cannot use a prod key, though its rules allow *', async () => {
    const { kw } = await setup({ policy: true });
    await kw.createKey('orders/main', { scope: { environment: 'prod' } });
    const dev = kw.as('dev-app');
    await dev.createKey('orders/dev', { scope: { environment: 'dev' } });
    await expect(dev.encrypt(enc.encode('x'), { key: 'orders/main' })).rejects.toThrow(
      'policy: key "orders/main" is for environment prod and principal "dev-app" acts in dev',
    );
    await expect(dev.createKey('orders/prod-2', { scope: { environment: 'prod' } })).rejects.toBeInstanceOf(
      AccessDeniedError,
    );
    await dev.encrypt(enc.encode('x'), { key: 'orders/dev' });
    await kw.close();
  });

  it('an unknown principal is denied everything', async () => {
    const { kw } = await setup({ policy: true });
    await kw.createKey('orders/main');
    await expect(kw.as('mallory').generateDataKey('orders/main')).rejects.toBeInstanceOf(AccessDeniedError);
    await kw.close();
  });

  it('the stored policy is versioned, changed only by an administrator, and each change is recorded', async () => {
    const s = await storeAndRoot();
    const records: AuditRecord[] = [];
    const kw = new Keywarden({
      store: s.store,
      root: s.root,
      principal: 'admin',
      policy: 'store',
      audit: { callback: (r) => void records.push(...r) },
    });
    // No policy yet: default deny, even for the instance's own principal.
    await expect(kw.createKey('orders/main')).rejects.toBeInstanceOf(AccessDeniedError);
    expect(await updatePolicy(kw, POLICY)).toBe(1);
    await kw.createKey('orders/main', { scope: { environment: 'prod' } });
    await expect(updatePolicy(kw.as('app'), `${POLICY}allow app * on *\n`)).rejects.toBeInstanceOf(AccessDeniedError);
    expect(await updatePolicy(kw, `${POLICY}allow app rotate on orders/*\n`)).toBe(2);
    await kw.as('app').rotateKey('orders/main');
    await kw.close();
    expect(
      records.filter((r) => r.op === 'policy-change').map((r) => [r.principal, r.outcome, r.detail?.policyVersion]),
    ).toEqual([
      ['admin', 'ok', 1],
      ['app', 'denied', undefined],
      ['admin', 'ok', 2],
    ]);
  });
});

describe('fail closed', () => {
  it('an operation whose record cannot be written is refused, and its data key wiped', async () => {
    let broken = false;
    const sink: AuditSink = {
      async write() {
        if (broken) throw new Error('disk full');
      },
    };
    const { kw } = await setup({ sinks: [sink] });
    await kw.createKey('orders/main');
    broken = true;
    await expect(kw.generateDataKey('orders/main')).rejects.toBeInstanceOf(AuditError);
    // Every later operation is refused before it runs.
    await expect(kw.encrypt(enc.encode('x'), { key: 'orders/main' })).rejects.toBeInstanceOf(AuditError);
    await expect(kw.rotateKey('orders/main')).rejects.toBeInstanceOf(AuditError);
    expect((await kw.getKey('orders/main')).versions).toHaveLength(1);
    expect(auditLogOf(kw)).toBeDefined();
  });
});
