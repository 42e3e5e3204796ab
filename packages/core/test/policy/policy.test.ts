import { describe, expect, it } from 'vitest';
import { InvalidInputError } from '../../src/errors.js';
import { MemoryKeyStore } from '../../src/memory-store.js';
import { Policy } from '../../src/policy/policy.js';
import { readStoredPolicy, storedPolicyVersion, writeStoredPolicy } from '../../src/policy/policy-store.js';

const TEXT = `# Who may do what with the billing keys. Default deny.
keywarden-policy 1

principal billing-api   environment=prod
principal billing-dev   environment=dev
principal ops-alice     environment=prod
principal auditor

allow billing-api  encrypt,decrypt,generate-data-key  on billing/*  where service=billing
deny  billing-api  decrypt                            on billing/archive-*
allow billing-dev  *                                  on billing/*
allow ops-alice    rotate,disable,compromise,destroy,administer  on *
`;

const prodKey = { name: 'billing/cards', scope: { environment: 'prod', service: 'billing' } };
const devKey = { name: 'billing/cards-dev', scope: { environment: 'dev', service: 'billing' } };

describe('policy format', () => {
  it('parses principals and rules, with their lines', () => {
    const p = Policy.parse(TEXT);
    expect([...p.principals.keys()]).toEqual(['billing-api', 'billing-dev', 'ops-alice', 'auditor']);
    expect(p.principals.get('billing-api')).toEqual({ name: 'billing-api', environment: 'prod', line: 4 });
    expect(p.rules.map((r) => [r.effect, r.principal, r.line])).toEqual([
      ['allow', 'billing-api', 9],
      ['deny', 'billing-api', 10],
      ['allow', 'billing-dev', 11],
      ['allow', 'ops-alice', 12],
    ]);
    expect(p.rules[2]?.operations).toHaveLength(9);
  });

  const bad: Array<[string, string]> = [
    ['principal a\n', 'policy: line 1: a policy starts with "keywarden-policy 1"'],
    ['keywarden-policy 2\n', 'policy: line 1: only "keywarden-policy 1" is known'],
    ['keywarden-policy 1\n\nprincipal a\nallow a decrpyt on *\n', 'policy: line 4: unknown operation "decrpyt"'],
    ['keywarden-policy 1\nallow ghost encrypt on *\n', 'policy: line 2: principal "ghost" is not declared'],
    [
      'keywarden-policy 1\nprincipal a\nprincipal a\n',
      'policy: line 3: principal "a" is declared twice (first on line 2)',
    ],
    ['keywarden-policy 1\nprincipal a\nallow a encrypt in *\n', 'policy: line 3: expected "on KEYS"'],
    [
      'keywarden-policy 1\nprincipal a\nallow a encrypt on * where colour=red\n',
      'policy: line 3: condition "colour=red"',
    ],
    ['keywarden-policy 1\nprincipal a\nallow a encrypt on * where service=x, tenant=y\n', 'policy: line 3: unexpected'],
    ['keywarden-policy 1\nprincipal a role=admin\n', 'policy: line 2: unknown principal attribute "role=admin"'],
    ['keywarden-policy 1\nprincipal a environment=pr*d\n', 'policy: line 2: environment "pr*d" is not a plain name'],
    ['keywarden-policy 1\ngrant a encrypt on *\n', 'policy: line 2: unknown statement "grant"'],
    ['keywarden-policy 1\nprincipal a\nallow a encrypt on bad[key]\n', 'policy: line 3: key pattern "bad[key]"'],
    ['', 'policy: line 1: a policy starts with'],
  ];
  it.each(bad)('an invalid policy is refused with an error naming the line: %j', (text, message) => {
    let err: unknown;
    try {
      Policy.parse(text);
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(InvalidInputError);
    expect((err as Error).message.startsWith(message)).toBe(true);
  });
});

describe('policy decisions', () => {
  const p = Policy.parse(TEXT);
  it('allows what a rule allows, on matching names and scope', () => {
    expect(p.decide('billing-api', 'encrypt', prodKey)).toMatchObject({ allowed: true, reason: 'allowed by line 9' });
    expect(p.decide('billing-api', 'decrypt', prodKey).allowed).toBe(true);
  });
  it('denies by default: another operation, another key, another scope', () => {
    expect(p.decide('billing-api', 'destroy', prodKey)).toMatchObject({
      allowed: false,
      reason: expect.stringMatching(/no rule allows it/),
    });
    expect(
      p.decide('billing-api', 'encrypt', { name: 'hr/payroll', scope: { environment: 'prod', service: 'billing' } })
        .allowed,
    ).toBe(false);
    expect(
      p.decide('billing-api', 'encrypt', { name: 'billing/x', scope: { environment: 'prod', service: 'hr' } }).allowed,
    ).toBe(false);
    expect(p.decide('billing-api', 'encrypt', { name: 'billing/x', scope: { environment: 'prod' } }).allowed).toBe(
      false,
    );
    expect(p.decide('auditor', 'decrypt', prodKey).allowed).toBe(false);
  });
  it('an unknown principal is denied everything', () => {
    expect(p.decide('mallory', 'encrypt', prodKey)).toMatchObject({
      allowed: false,
      reason: expect.stringMatching(/not a principal/),
    });
  });
  it('a deny rule wins over an allow rule', () => {
    const archive = { name: 'billing/archive-2019', scope: { environment: 'prod', service: 'billing' } };
    expect(p.decide('billing-api', 'decrypt', archive)).toMatchObject({
      allowed: false,
      reason: expect.stringMatching(/deny on line 10/),
    });
    expect(p.decide('billing-api', 'encrypt', archive).allowed).toBe(true);
  });
  it('environment separation: a prod key is refused to a principal acting in dev, whatever the rules say', () => {
    // billing-dev is allowed * on billing/*: still not the prod key.
    expect(p.decide('billing-dev', 'decrypt', devKey).allowed).toBe(true);
    expect(p.decide('billing-dev', 'decrypt', prodKey)).toMatchObject({
      allowed: false,
      reason: 'policy: key "billing/cards" is for environment prod and principal "billing-dev" acts in dev',
    });
    // A principal acting in no environment cannot use a key made for one.
    const q = Policy.parse('keywarden-policy 1\nprincipal root-ish\nallow * * on *\n');
    expect(q.decide('root-ish', 'encrypt', prodKey).allowed).toBe(false);
    expect(q.decide('root-ish', 'encrypt', { name: 'k', scope: {} }).allowed).toBe(true);
  });
  it('store-wide administration needs a rule on * without conditions', () => {
    expect(p.decide('ops-alice', 'administer', undefined).allowed).toBe(true);
    expect(p.decide('billing-dev', 'administer', undefined).allowed).toBe(false);
  });
});

describe('stored policy', () => {
  it('is versioned: each write adds a version, older versions stay readable', async () => {
    const store = new MemoryKeyStore();
    expect(await storedPolicyVersion(store)).toBe(0);
    expect(await readStoredPolicy(store)).toBeUndefined();
    expect(await writeStoredPolicy(store, TEXT)).toBe(1);
    const second = `${TEXT}allow auditor encrypt on audit/*\n`;
    expect(await writeStoredPolicy(store, second)).toBe(2);
    expect((await readStoredPolicy(store))?.policy.text).toBe(second);
    expect((await readStoredPolicy(store, 1))?.policy.text).toBe(TEXT);
    await expect(writeStoredPolicy(store, 'keywarden-policy 1\nallow x * on *\n')).rejects.toThrow(/line 2/);
    expect(await storedPolicyVersion(store)).toBe(2);
  });
});
