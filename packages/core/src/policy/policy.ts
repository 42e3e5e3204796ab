/**
 * Principals and policies (docs/policy.md). A policy is a small line-oriented text, one statement
 * a line, so that a review diff shows exactly which permission changed:
 *
 *   keywarden-policy 1
 *   principal billing-api  environment=prod
 *   allow billing-api  encrypt,decrypt,generate-data-key  on billing/*  where service=billing
 *   deny  billing-api  decrypt  on billing/archive-*
 *
 * Decisions, in order: an unknown principal is denied; a key made for an environment is refused to
 * a principal acting in another one (or in none), whatever the rules say; a matching deny wins; a
 * matching allow allows; anything else is denied (default deny).
 */
import { InvalidInputError } from '../errors.js';
import type { KeyScope } from '../keystore.js';

export const OPERATIONS = [
  'encrypt',
  'decrypt',
  'generate-data-key',
  'rewrap',
  'rotate',
  'disable',
  'compromise',
  'destroy',
  'administer',
] as const;
export type Operation = (typeof OPERATIONS)[number];

const SCOPE_FIELDS = ['environment', 'service', 'tenant', 'purpose'] as const;
const NAME_RE = /^[A-Za-z0-9][A-Za-z0-9._@:-]{0,63}$/;
const GLOB_RE = /^[A-Za-z0-9._/:*?-]{1,128}$/;
const VALUE_RE = /^[A-Za-z0-9._/:@*?-]{1,128}$/;

export interface Principal {
  name: string;
  /** The environment this principal acts in; keys made for another environment are refused to it. */
  environment?: string;
  line: number;
}

export interface PolicyRule {
  effect: 'allow' | 'deny';
  /** A principal's name, or "*" for every principal. */
  principal: string;
  operations: readonly Operation[];
  /** Glob over key names: "*" any run of characters (including "/"), "?" one character. */
  keys: string;
  where: Readonly<Partial<Record<(typeof SCOPE_FIELDS)[number], string>>>;
  line: number;
}

/** What a decision is about: a key's name and scope, or nothing (store-wide administration). */
export interface PolicyTarget {
  name: string;
  scope: KeyScope;
}

export interface Decision {
  allowed: boolean;
  /** One line for the error and the audit record (no secret in it). */
  reason: string;
}

function fail(line: number, message: string): never {
  throw new InvalidInputError(`policy: line ${line}: ${message}`);
}

function globToRegExp(glob: string): RegExp {
  let re = '^';
  for (const ch of glob) {
    if (ch === '*') re += '.*';
    else if (ch === '?') re += '.';
    else re += ch.replace(/[.+^${}()|[\]\\/-]/g, '\\$&');
  }
  return new RegExp(`${re}$`);
}

export class Policy {
  readonly principals: ReadonlyMap<string, Principal>;
  readonly rules: readonly PolicyRule[];
  /** The text it was parsed from (what the store keeps and versions). */
  readonly text: string;
  readonly #matchers = new Map<string, RegExp>();

  private constructor(text: string, principals: Map<string, Principal>, rules: PolicyRule[]) {
    this.text = text;
    this.principals = principals;
    this.rules = rules;
  }

  /** Parse and validate; an error names the line and what is wrong with it. */
  static parse(text: string): Policy {
    if (typeof text !== 'string') throw new InvalidInputError('policy: the policy must be text');
    if (text.length > 1_000_000) throw new InvalidInputError('policy: the policy is larger than 1 MB');
    const principals = new Map<string, Principal>();
    const rules: PolicyRule[] = [];
    let header = false;
    const lines = text.split(/\r?\n/);
    for (let i = 0; i < lines.length; i++) {
      const n = i + 1;
      const raw = lines[i] as string;
      const hash = raw.indexOf('#');
      const stmt = (hash >= 0 ? raw.slice(0, hash) : raw).trim();
      if (stmt === '') continue;
      const words = stmt.split(/\s+/);
      const head = words[0] as string;
      if (!header) {
        if (head !== 'keywarden-policy') fail(n, 'a policy starts with "keywarden-policy 1"');
        if (words.length !== 2 || words[1] !== '1') fail(n, 'only "keywarden-policy 1" is known');
        header = true;
        continue;
      }
      if (head === 'keywarden-policy') fail(n, 'the header appears twice');
      if (head === 'principal') {
        const name = words[1];
        if (name === undefined) fail(n, 'principal needs a name');
        if (!NAME_RE.test(name) || name === '*') {
          fail(
            n,
            `principal name "${name.slice(0, 64)}" must be 1..64 of [A-Za-z0-9._@:-], starting with a letter or digit`,
          );
        }
        if (principals.has(name))
          fail(n, `principal "${name}" is declared twice (first on line ${principals.get(name)?.line})`);
        const p: Principal = { name, line: n };
        for (const attr of words.slice(2)) {
          const [k, v, ...rest] = attr.split('=');
          if (k !== 'environment' || v === undefined || rest.length > 0) {
            fail(n, `unknown principal attribute "${attr.slice(0, 64)}" (expected environment=NAME)`);
          }
          if (!VALUE_RE.test(v) || /[*?]/.test(v)) fail(n, `environment "${v.slice(0, 64)}" is not a plain name`);
          p.environment = v;
        }
        principals.set(name, p);
        continue;
      }
      if (head === 'allow' || head === 'deny') {
        // allow WHO OPS on PATTERN [where k=v,k=v]
        const [, who, ops, on, keys, where, conds, ...extra] = words;
        if (who === undefined || ops === undefined)
          fail(n, `${head} needs: ${head} PRINCIPAL OPERATIONS on KEYS [where FIELD=VALUE,…]`);
        if (on !== 'on' || keys === undefined) fail(n, `expected "on KEYS" after the operations`);
        if (who !== '*' && !NAME_RE.test(who)) fail(n, `"${who.slice(0, 64)}" is not a principal name or *`);
        const operations: Operation[] = [];
        for (const op of ops.split(',')) {
          if (op === '*') {
            operations.push(...OPERATIONS);
            continue;
          }
          if (!(OPERATIONS as readonly string[]).includes(op)) {
            fail(n, `unknown operation "${op.slice(0, 64)}" (expected ${OPERATIONS.join(', ')} or *)`);
          }
          operations.push(op as Operation);
        }
        if (!GLOB_RE.test(keys))
          fail(n, `key pattern "${keys.slice(0, 64)}" must be 1..128 of [A-Za-z0-9._/:-] and * ?`);
        const whereMap: Partial<Record<(typeof SCOPE_FIELDS)[number], string>> = {};
        if (where !== undefined) {
          if (where !== 'where' || conds === undefined) fail(n, `expected "where FIELD=VALUE,…" after the key pattern`);
          if (extra.length > 0)
            fail(n, `unexpected "${extra.join(' ').slice(0, 64)}" (conditions are joined by commas, no spaces)`);
          for (const c of conds.split(',')) {
            const [k, v, ...rest] = c.split('=');
            if (!(SCOPE_FIELDS as readonly string[]).includes(k as string) || v === undefined || rest.length > 0) {
              fail(n, `condition "${c.slice(0, 64)}" must be FIELD=VALUE with FIELD one of ${SCOPE_FIELDS.join(', ')}`);
            }
            if (!VALUE_RE.test(v)) fail(n, `value "${v.slice(0, 64)}" must be 1..128 of [A-Za-z0-9._/:@-] and * ?`);
            if (whereMap[k as (typeof SCOPE_FIELDS)[number]] !== undefined) fail(n, `condition on ${k} given twice`);
            whereMap[k as (typeof SCOPE_FIELDS)[number]] = v;
          }
        }
        rules.push({
          effect: head,
          principal: who,
          operations: [...new Set(operations)],
          keys,
          where: whereMap,
          line: n,
        });
        continue;
      }
      fail(n, `unknown statement "${head.slice(0, 64)}" (expected principal, allow or deny)`);
    }
    if (!header) throw new InvalidInputError('policy: line 1: a policy starts with "keywarden-policy 1"');
    for (const r of rules) {
      if (r.principal !== '*' && !principals.has(r.principal)) {
        fail(r.line, `principal "${r.principal}" is not declared (add "principal ${r.principal} environment=…")`);
      }
    }
    return new Policy(text, principals, rules);
  }

  #match(glob: string, value: string): boolean {
    let re = this.#matchers.get(glob);
    if (!re) {
      re = globToRegExp(glob);
      this.#matchers.set(glob, re);
    }
    return re.test(value);
  }

  #ruleMatches(rule: PolicyRule, principal: string, op: Operation, target: PolicyTarget | undefined): boolean {
    if (rule.principal !== '*' && rule.principal !== principal) return false;
    if (!rule.operations.includes(op)) return false;
    if (target === undefined) return rule.keys === '*' && Object.keys(rule.where).length === 0;
    if (!this.#match(rule.keys, target.name)) return false;
    for (const [field, glob] of Object.entries(rule.where)) {
      const v = target.scope[field as keyof KeyScope];
      if (v === undefined || !this.#match(glob as string, v)) return false;
    }
    return true;
  }

  /** May `principal` do `op` on `target` (a key; undefined: the whole store, e.g. policy changes)? */
  decide(principal: string, op: Operation, target: PolicyTarget | undefined): Decision {
    const p = this.principals.get(principal);
    const what = target ? `key "${target.name}"` : 'this key store';
    if (!p) return { allowed: false, reason: `policy: "${principal}" is not a principal of this key store` };
    const env = target?.scope.environment;
    if (env !== undefined && env !== p.environment) {
      return {
        allowed: false,
        reason: `policy: ${what} is for environment ${env} and principal "${principal}" acts in ${p.environment ?? 'no environment'}`,
      };
    }
    for (const r of this.rules) {
      if (r.effect === 'deny' && this.#ruleMatches(r, principal, op, target)) {
        return {
          allowed: false,
          reason: `policy: principal "${principal}" may not ${op} ${what} (deny on line ${r.line})`,
        };
      }
    }
    for (const r of this.rules) {
      if (r.effect === 'allow' && this.#ruleMatches(r, principal, op, target)) {
        return { allowed: true, reason: `allowed by line ${r.line}` };
      }
    }
    return { allowed: false, reason: `policy: principal "${principal}" may not ${op} ${what} (no rule allows it)` };
  }

  /** Whether `principal` may do anything at all with `target` (to see its metadata). */
  allowsAny(principal: string, target: PolicyTarget): boolean {
    return OPERATIONS.some((op) => this.decide(principal, op, target).allowed);
  }
}
