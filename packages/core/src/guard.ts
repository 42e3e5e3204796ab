/**
 * Acting as a principal: policy enforcement and audit records around every Keywarden operation
 * (docs/policy.md, docs/audit.md). `new Keywarden({ audit, policy, principal })` returns a guarded
 * view of the instance it built, and `kw.as(principal)` makes one per principal: views share the
 * instance's caches, store and root but decide and record as their principal.
 *
 * Every guarded call: (1) the audit log must be writable (fail closed); (2) the policy decides
 * (a denial is an AccessDeniedError); (3) the operation runs through the unguarded method; (4) one
 * audit record says who did what to which key version and how it ended; when that record cannot be
 * written the call fails with AuditError and any secret it produced is wiped first.
 *
 * Metadata reads (getKey, listKeys) are not operations of the policy and are neither checked nor
 * recorded; every method that changes or uses a key is, including lifecycle methods this file does
 * not name (they are classified by name and default to "administer").
 */
import { wipe } from './_bytes.js';
import { AuditLog, type AuditLogOptions } from './audit/audit-log.js';
import type { AuditEvent } from './audit/record.js';
import type { EncryptionContext } from './context.js';
import { type DataKey, type DataKeyProvider, parseWrappedKey } from './data-key.js';
import { decryptEnvelope, encryptEnvelope, inspectEnvelope } from './envelope.js';
import { AccessDeniedError, InvalidInputError, KeyNotFoundError, KeywardenError } from './errors.js';
import type { KeyRecord, KeyStore } from './keystore.js';
import type { Keywarden } from './keywarden.js';
import { type Operation, Policy, type PolicyTarget } from './policy/policy.js';
import { readStoredPolicy, storedPolicyVersion, writeStoredPolicy } from './policy/policy-store.js';
import type { RootOfTrust } from './root.js';
import { createDecryptStream, createEncryptStream } from './stream.js';

/** `audit` option: an AuditLog you own, or options for one the Keywarden makes, owns and closes. */
export type AuditOption = AuditLog | Omit<AuditLogOptions, 'store' | 'root'>;
/** `policy` option: a parsed Policy, or "store": the versioned policy in the key store. */
export type PolicyOption = Policy | 'store';

export interface GuardOptions {
  store: KeyStore;
  root: RootOfTrust;
  audit?: AuditOption;
  policy?: PolicyOption;
  principal?: string;
}

/** How often a policy read from the store is checked for a newer version (another process's change). */
const POLICY_REFRESH_MS = 2000;
const DEFAULT_PRINCIPAL = 'local';

interface Binding {
  guard: Guard;
  principal: string;
}
const BINDINGS = new WeakMap<object, Binding>();

type AnyFn = (...args: unknown[]) => unknown;

class Guard {
  readonly kw: Keywarden;
  readonly proto: Record<string, AnyFn>;
  readonly audit: AuditLog | undefined;
  readonly ownsAudit: boolean;
  readonly #fixedPolicy: Policy | undefined;
  readonly #fromStore: boolean;
  #stored: { policy: Policy; version: number; checkedAt: number } | undefined;
  #storedLoad: Promise<void> | undefined;
  readonly #keys = new Map<string, KeyRecord>();

  constructor(kw: Keywarden, options: GuardOptions) {
    this.kw = kw;
    this.proto = Object.getPrototypeOf(kw) as Record<string, AnyFn>;
    if (options.audit instanceof AuditLog) {
      this.audit = options.audit;
      this.ownsAudit = false;
    } else if (options.audit !== undefined) {
      if (typeof options.audit !== 'object' || options.audit === null) {
        throw new InvalidInputError('keywarden: option "audit" must be an AuditLog or AuditLog options');
      }
      this.audit = new AuditLog({ ...options.audit, store: options.store, root: options.root });
      this.ownsAudit = true;
    } else {
      this.ownsAudit = false;
    }
    if (options.policy !== undefined && options.policy !== 'store' && !(options.policy instanceof Policy)) {
      throw new InvalidInputError('keywarden: option "policy" must be a Policy or "store"');
    }
    this.#fixedPolicy = options.policy instanceof Policy ? options.policy : undefined;
    this.#fromStore = options.policy === 'store';
  }

  get enforcing(): boolean {
    return this.#fixedPolicy !== undefined || this.#fromStore;
  }

  /** The policy in force; a stored one is re-read when its version changed (checked every 2 s). */
  async policy(): Promise<Policy | undefined> {
    if (this.#fixedPolicy) return this.#fixedPolicy;
    if (!this.#fromStore) return undefined;
    if (this.#stored && Date.now() - this.#stored.checkedAt < POLICY_REFRESH_MS) return this.#stored.policy;
    this.#storedLoad ??= this.#refresh().finally(() => {
      this.#storedLoad = undefined;
    });
    await this.#storedLoad;
    return this.#stored?.policy;
  }

  async #refresh(): Promise<void> {
    const version = await storedPolicyVersion(this.kw.store);
    if (this.#stored && this.#stored.version === version) {
      this.#stored.checkedAt = Date.now();
      return;
    }
    const read = await readStoredPolicy(this.kw.store);
    // No policy stored yet: nothing is allowed (default deny) except writing the first one.
    this.#stored = read
      ? { policy: read.policy, version: read.version, checkedAt: Date.now() }
      : { policy: Policy.parse('keywarden-policy 1\n'), version: 0, checkedAt: Date.now() };
  }

  forgetPolicy(): void {
    this.#stored = undefined;
  }

  async keyRecord(nameOrId: string): Promise<KeyRecord | undefined> {
    const hit = this.#keys.get(nameOrId);
    if (hit) return hit;
    if (typeof nameOrId !== 'string' || nameOrId.length === 0 || nameOrId.length > 128) return undefined;
    const rec = await this.kw.store.getKey(nameOrId);
    // Names and scopes never change, and ids are never reused: safe to keep (bounded).
    if (rec) {
      if (this.#keys.size > 10_000) this.#keys.clear();
      this.#keys.set(rec.id, rec);
      this.#keys.set(rec.name, rec);
    }
    return rec;
  }

  /** Decide, or throw AccessDeniedError. Resolves the key (KeyNotFoundError when it does not exist). */
  async authorize(
    principal: string,
    op: Operation,
    key: string | PolicyTarget | undefined,
  ): Promise<KeyRecord | undefined> {
    // Not enforcing: nothing to decide, and the key id comes from the operation's result.
    if (!this.enforcing) return undefined;
    let record: KeyRecord | undefined;
    let target: PolicyTarget | undefined;
    if (typeof key === 'string') {
      record = await this.keyRecord(key);
      if (!record) {
        throw new KeyNotFoundError(`keystore: no key named "${key.slice(0, 128)}"`);
      }
      target = record;
    } else target = key;
    const policy = await this.policy();
    if (!policy) return record;
    const d = policy.decide(principal, op, target);
    if (!d.allowed) throw new AccessDeniedError(d.reason);
    return record;
  }

  /** Run one guarded operation and record it. */
  async run<T>(
    principal: string,
    action: string,
    op: Operation | undefined,
    key: string | PolicyTarget | undefined,
    event: Partial<AuditEvent>,
    fn: (record: KeyRecord | undefined) => Promise<T>,
    after?: (result: T, event: AuditEvent) => void,
    wipeResult?: (result: T) => void,
  ): Promise<T> {
    // Refused at once when the log cannot take records (fail closed); counted as in flight until its record.
    this.audit?.begin();
    // The caller's event object itself: a provider that learns the key version mid-call writes into it.
    const ev = event as AuditEvent;
    ev.op = action;
    ev.principal = principal;
    ev.outcome = 'ok';
    let result: T;
    try {
      // Not enforcing: no decision to wait for (an await per call is measurable on the hot path).
      const record = op === undefined || !this.enforcing ? undefined : await this.authorize(principal, op, key);
      if (record && ev.keyId === undefined) ev.keyId = record.id;
      result = await fn(record);
      after?.(result, ev);
    } catch (err) {
      // A key the operation never resolved: the name as the caller typed it, as a keyed digest.
      if (ev.keyId === undefined && typeof key === 'string') ev.ids = { ...ev.ids, key };
      await this.#recordFailure(ev, err);
      throw err;
    }
    if (this.audit) {
      try {
        // Interval mode returns nothing to wait for.
        const written = this.audit.record(ev, true);
        if (written !== undefined) await written;
      } catch (err) {
        wipeResult?.(result);
        throw err;
      }
    }
    return result;
  }

  async #recordFailure(ev: AuditEvent, err: unknown): Promise<void> {
    if (!this.audit) return;
    ev.outcome = AccessDeniedError.isInstance(err) ? 'denied' : 'error';
    ev.code = KeywardenError.isInstance(err) ? err.code : 'KW_INTERNAL';
    try {
      await this.audit.record(ev, true);
    } catch {
      // The operation already failed; its own error is the one to report.
    }
  }
}

/** Policy operation and audit action of each Keywarden method that uses or changes keys. */
const METHODS: Record<string, { op: Operation | 'none'; action: string; global?: boolean }> = {
  createKey: { op: 'administer', action: 'create-key' },
  importKey: { op: 'administer', action: 'import-key' },
  rotateKey: { op: 'rotate', action: 'rotate-key' },
  setPrimaryVersion: { op: 'rotate', action: 'set-primary-version' },
  disableVersion: { op: 'disable', action: 'disable-version' },
  enableVersion: { op: 'disable', action: 'enable-version' },
  compromiseVersion: { op: 'compromise', action: 'compromise-version' },
  destroyVersion: { op: 'destroy', action: 'destroy-version' },
  rotateDue: { op: 'rotate', action: 'rotate-due', global: true },
};
/** Not operations of the policy: metadata reads and this instance's own lifecycle. */
const UNGUARDED = new Set(['constructor', 'getKey', 'listKeys', 'clearCache', 'close', 'as']);
const DATA_METHODS = new Set([
  'rewrapDataKey',
  'rewrapEnvelope',
  'generateDataKey',
  'decryptDataKey',
  'encrypt',
  'decrypt',
  'createEncryptStream',
  'createDecryptStream',
  'seal',
]);

function kebab(name: string): string {
  return name.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`);
}

/** A lifecycle method this file does not name: classified by its name, "administer" by default. */
function classify(name: string): { op: Operation; action: string } {
  const action = kebab(name);
  if (/rewrap/i.test(name)) return { op: 'rewrap', action };
  if (/compromis/i.test(name)) return { op: 'compromise', action };
  if (/destroy/i.test(name)) return { op: 'destroy', action };
  if (/^(disable|enable)/.test(name)) return { op: 'disable', action };
  if (/^rotate/.test(name)) return { op: 'rotate', action };
  return { op: 'administer', action };
}

function keyMethod(guard: Guard, name: string, principal: () => string): AnyFn {
  const spec = METHODS[name] ?? classify(name);
  const raw = guard.proto[name] as AnyFn;
  const op = spec.op === 'none' ? undefined : spec.op;
  return (...args: unknown[]) => {
    const first = args[0];
    let target: string | PolicyTarget | undefined;
    if (name === 'createKey' || name === 'importKey') {
      const opts = (name === 'createKey' ? args[1] : args[2]) as { scope?: PolicyTarget['scope'] } | undefined;
      target = { name: String(first), scope: opts?.scope ?? {} };
    } else if (typeof first === 'string' && !('global' in spec && spec.global)) target = first;
    const event: Partial<AuditEvent> = {};
    if (typeof args[1] === 'number') event.version = args[1];
    if (target !== undefined && typeof target === 'object') event.detail = { name: target.name };
    return guard.run(
      principal(),
      spec.action,
      op,
      target,
      event,
      async () => raw.apply(guard.kw, args),
      (result, ev) => {
        const info = result as { id?: unknown; primaryVersion?: unknown } | undefined;
        if (typeof info?.id === 'string' && ev.keyId === undefined) ev.keyId = info.id;
        if (ev.version === undefined && typeof info?.primaryVersion === 'number') ev.version = info.primaryVersion;
      },
    );
  };
}

/**
 * The event of a data operation with every member the hot path fills in already present, in one
 * order: filling them in later (op, principal, outcome, the key version, then the time and the
 * canonical context in AuditLog.record) would grow the object's property store step by step.
 */
function dataEvent(context: EncryptionContext | undefined): Partial<AuditEvent> {
  return {
    op: '',
    principal: '',
    outcome: 'ok',
    keyId: undefined,
    version: undefined,
    context,
    at: undefined,
    contextCanonical: undefined,
  };
}

/** Made once, not per call: the hot path allocates as little as it can. */
function noteDataKey(dk: DataKey, ev: AuditEvent): void {
  ev.keyId = dk.keyId;
  ev.version = dk.version;
}
function wipeDataKey(dk: DataKey): void {
  wipe(dk.plaintext);
}

/**
 * The header of the wrapped key last read for an audit record: its bytes up to the KEK version, its
 * total length, and its KEK id. Data keys under one KEK share all of these (only the version's four
 * bytes and what follows them differ), so for them the strict parse's copies and checks are done once.
 */
let lastWrapped = { header: new Uint8Array(0), length: -1, keyId: '' };

/**
 * Note the KEK id and version a wrapped key names in its audit event: exactly what
 * parseWrappedKey gives, and it throws as parseWrappedKey does. When the bytes before the version
 * and the length are those of the last header read (which parsed), the parse would pass with the
 * same id: only the version is read. Not secret: the header is what every record shows.
 */
function noteWrappedKey(w: Uint8Array, ev: Partial<AuditEvent>): void {
  const last = lastWrapped;
  if (w instanceof Uint8Array && w.length === last.length) {
    const h = last.header;
    const n = h.length;
    let same = true;
    for (let i = 0; i < n; i++) {
      if (w[i] !== h[i]) {
        same = false;
        break;
      }
    }
    if (same) {
      const version =
        (w[n] as number) * 0x1000000 +
        (((w[n + 1] as number) << 16) | ((w[n + 2] as number) << 8) | (w[n + 3] as number));
      if (version >= 1) {
        ev.keyId = last.keyId;
        ev.version = version;
        return;
      }
    }
  }
  const parsed = parseWrappedKey(w);
  ev.keyId = parsed.keyId;
  ev.version = parsed.version;
  lastWrapped = { header: w.slice(0, parsed.header.length - 4), length: w.length, keyId: parsed.keyId };
}

function dataMethods(guard: Guard, principal: () => string): Record<string, AnyFn> {
  const raw = guard.proto;
  const kw = guard.kw;
  const gdk = (k: string, ctx?: EncryptionContext) => raw.generateDataKey?.call(kw, k, ctx) as Promise<DataKey>;
  const ddk = (w: Uint8Array, ctx: EncryptionContext | undefined, e: unknown) =>
    raw.decryptDataKey?.call(kw, w, ctx, e) as Promise<Uint8Array>;

  /** A provider for one envelope call that checks `op` on the key it is asked for and notes it. */
  const provider = (op: Operation, ev: Partial<AuditEvent>): DataKeyProvider => ({
    async generateDataKey(k, ctx) {
      if (guard.enforcing) await guard.authorize(principal(), op, k);
      const dk = await gdk(k, ctx);
      ev.keyId = dk.keyId;
      ev.version = dk.version;
      return dk;
    },
    async decryptDataKey(w, ctx, expected) {
      noteWrappedKey(w, ev);
      if (guard.enforcing) await guard.authorize(principal(), op, ev.keyId);
      return ddk(w, ctx, expected);
    },
  });
  /** Streams: each key use is its own record (the stream outlives this call). */
  const streamProvider = (op: Operation, action: string, context: EncryptionContext | undefined): DataKeyProvider => ({
    generateDataKey: (k, ctx) =>
      guard.run(
        principal(),
        action,
        op,
        k,
        { context },
        () => gdk(k, ctx),
        (dk, ev) => {
          ev.keyId = dk.keyId;
          ev.version = dk.version;
        },
        wipeDataKey,
      ),
    decryptDataKey: (w, ctx, expected) => {
      const parsed = parseWrappedKey(w);
      return guard.run(
        principal(),
        action,
        op,
        parsed.keyId,
        { context, version: parsed.version },
        () => ddk(w, ctx, expected),
        undefined,
        wipe,
      );
    },
  });

  return {
    generateDataKey: (key: unknown, context: unknown) =>
      guard.run(
        principal(),
        'generate-data-key',
        'generate-data-key',
        key as string,
        dataEvent(context as EncryptionContext | undefined),
        () => gdk(key as string, context as EncryptionContext | undefined),
        noteDataKey,
        wipeDataKey,
      ),
    decryptDataKey: (wrapped: unknown, context: unknown, expected: unknown) => {
      const ev = dataEvent(context as EncryptionContext | undefined);
      return guard.run(
        principal(),
        'decrypt-data-key',
        undefined,
        undefined,
        ev,
        // Not an async function: one promise less per call (run() awaits it inside its try, so a
        // wrapped key that does not parse is still a failure of this operation).
        () => {
          noteWrappedKey(wrapped as Uint8Array, ev);
          const ctx = context as EncryptionContext | undefined;
          if (!guard.enforcing) return ddk(wrapped as Uint8Array, ctx, expected);
          return guard
            .authorize(principal(), 'decrypt', ev.keyId)
            .then(() => ddk(wrapped as Uint8Array, ctx, expected));
        },
        undefined,
        wipe,
      );
    },
    encrypt: (plaintext: unknown, options: unknown) => {
      const o = options as { context?: EncryptionContext };
      const ev = dataEvent(o?.context);
      return guard.run(principal(), 'encrypt', undefined, undefined, ev, () =>
        encryptEnvelope(provider('encrypt', ev), plaintext as Uint8Array, options as never),
      );
    },
    decrypt: (envelope: unknown, options: unknown) => {
      const o = options as { context?: EncryptionContext };
      const ev = dataEvent(o?.context);
      return guard.run(
        principal(),
        'decrypt',
        undefined,
        undefined,
        ev,
        () => decryptEnvelope(provider('decrypt', ev), envelope as Uint8Array, options as never),
        undefined,
        wipe,
      );
    },
    createEncryptStream: (options: unknown) =>
      createEncryptStream(
        streamProvider('encrypt', 'encrypt-stream', (options as { context?: EncryptionContext })?.context),
        options as never,
      ),
    createDecryptStream: (options: unknown) =>
      createDecryptStream(
        streamProvider('decrypt', 'decrypt-stream', (options as { context?: EncryptionContext })?.context),
        options as never,
      ),
    rewrapDataKey: (wrapped: unknown, context: unknown, expected: unknown) => {
      const ev: Partial<AuditEvent> = { context: context as EncryptionContext | undefined };
      return guard.run(
        principal(),
        'rewrap-data-key',
        undefined,
        undefined,
        ev,
        async () => {
          const parsed = parseWrappedKey(wrapped as Uint8Array);
          ev.keyId = parsed.keyId;
          ev.version = parsed.version;
          await guard.authorize(principal(), 'rewrap', parsed.keyId);
          return (await raw.rewrapDataKey?.call(kw, wrapped, context, expected)) as {
            toVersion: number;
            changed: boolean;
          };
        },
        (r, e) => {
          e.detail = { toVersion: r.toVersion, changed: r.changed };
        },
      );
    },
    rewrapEnvelope: (envelope: unknown, options: unknown) => {
      const ev: Partial<AuditEvent> = { context: (options as { context?: EncryptionContext })?.context };
      return guard.run(
        principal(),
        'rewrap-envelope',
        undefined,
        undefined,
        ev,
        async () => {
          const info = inspectEnvelope(envelope as Uint8Array);
          ev.keyId = info.keyId;
          ev.version = info.keyVersion;
          await guard.authorize(principal(), 'rewrap', info.keyId);
          return (await raw.rewrapEnvelope?.call(kw, envelope, options)) as {
            toVersion: number;
            changed: boolean;
          };
        },
        (r, e) => {
          e.detail = { toVersion: r.toVersion, changed: r.changed };
        },
      );
    },
    // Sealing only takes access away: never refused by the policy (an agent gates who may ask), always recorded.
    seal: () =>
      guard.run(principal(), 'seal', undefined, undefined, {}, async () => {
        await raw.seal?.call(kw);
      }),
  };
}

/** The guarded methods for one principal, to define on the instance or on a view. */
function guardedMethods(guard: Guard, principal: () => string): Record<string, AnyFn> {
  const out: Record<string, AnyFn> = dataMethods(guard, principal);
  for (const name of Object.getOwnPropertyNames(guard.proto)) {
    if (UNGUARDED.has(name) || DATA_METHODS.has(name)) continue;
    const d = Object.getOwnPropertyDescriptor(guard.proto, name);
    if (typeof d?.value !== 'function') continue;
    out[name] = keyMethod(guard, name, principal);
  }
  return out;
}

function checkPrincipal(principal: unknown): string {
  if (typeof principal !== 'string' || !/^[A-Za-z0-9][A-Za-z0-9._@:-]{0,63}$/.test(principal)) {
    throw new InvalidInputError('keywarden: a principal is 1..64 of [A-Za-z0-9._@:-], starting with a letter or digit');
  }
  return principal;
}

/**
 * A view of the guard's Keywarden acting as `principal`: its prototype is the Keywarden (so it is
 * `instanceof Keywarden` and sees its `store` and `root`), unguarded methods are bound to it, and
 * the guarded ones decide and record. The Keywarden itself stays unguarded underneath: a method it
 * calls on itself (rewrapDataKey → decryptDataKey, rewrapEnvelope → decrypt and encrypt, the
 * lifecycle methods → getKey) is part of the operation already decided and recorded.
 */
function makeView(guard: Guard, principal: string, owner: boolean): Keywarden {
  const base = guard.kw;
  const view = Object.create(base) as Keywarden;
  const proto = guard.proto;
  for (const key of Object.getOwnPropertyNames(proto)) {
    const d = Object.getOwnPropertyDescriptor(proto, key);
    if (!d || key === 'constructor') continue;
    if (d.get) Object.defineProperty(view, key, { get: () => d.get?.call(base), configurable: true });
    else if (typeof d.value === 'function') {
      Object.defineProperty(view, key, { value: (d.value as AnyFn).bind(base), configurable: true });
    }
  }
  for (const [k, fn] of Object.entries(guardedMethods(guard, () => principal))) {
    Object.defineProperty(view, k, { value: fn, configurable: true });
  }
  const rawClose = proto.close as AnyFn;
  Object.defineProperty(view, 'close', {
    // A view made by as() shares everything with its Keywarden: closing it does nothing.
    value: owner
      ? async () => {
          try {
            // Records first (the store sink writes into the store the Keywarden may close).
            if (guard.ownsAudit) await guard.audit?.close();
            else await guard.audit?.flush();
          } finally {
            await rawClose.call(base);
          }
        }
      : async () => {},
    configurable: true,
  });
  Object.defineProperty(view, 'as', { value: (p: string) => actAs(base, p), configurable: true });
  BINDINGS.set(view, { guard, principal });
  return view;
}

/**
 * Called by the Keywarden constructor when `audit` or `policy` is given: the constructor returns
 * the view this makes (acting as `options.principal`, default "local"), which owns the audit log.
 */
export function installGuard(kw: Keywarden, options: GuardOptions): Keywarden {
  const guard = new Guard(kw, options);
  const principal = checkPrincipal(options.principal ?? DEFAULT_PRINCIPAL);
  BINDINGS.set(kw, { guard, principal });
  return makeView(guard, principal, true);
}

/**
 * `kw.as(principal)`: the same key manager acting as `principal` (policy decided and records
 * written as that principal). It shares everything with `kw`; closing the view does nothing.
 */
export function actAs(kw: Keywarden, principal: string): Keywarden {
  const binding = BINDINGS.get(kw);
  if (!binding) {
    throw new InvalidInputError('keywarden: as() needs a Keywarden made with an "audit" or "policy" option');
  }
  return makeView(binding.guard, checkPrincipal(principal), false);
}

/** The audit log a Keywarden (or a view of one) records into, if any. */
export function auditLogOf(kw: Keywarden): AuditLog | undefined {
  return BINDINGS.get(kw)?.guard.audit;
}

/** The principal a Keywarden or view acts as (undefined: no guard installed). */
export function principalOf(kw: Keywarden): string | undefined {
  return BINDINGS.get(kw)?.principal;
}

/** The policy in force for a guarded Keywarden (undefined: not enforcing). */
export async function policyOf(kw: Keywarden): Promise<Policy | undefined> {
  return BINDINGS.get(kw)?.guard.policy();
}

/**
 * Store a new policy version, as the principal `kw` acts as: it needs "administer" on the whole
 * store under the policy in force — except for the first policy of a store, which whoever holds the
 * unsealed key manager writes. Recorded as "policy-change" with the new version.
 */
export async function updatePolicy(kw: Keywarden, text: string): Promise<number> {
  const binding = BINDINGS.get(kw);
  if (!binding) throw new InvalidInputError('keywarden: updatePolicy needs a Keywarden made with "audit" or "policy"');
  const { guard, principal } = binding;
  const first = (await storedPolicyVersion(kw.store)) === 0;
  const version = await guard.run(
    principal,
    'policy-change',
    first || !guard.enforcing ? undefined : 'administer',
    undefined,
    {},
    () => writeStoredPolicy(kw.store, text),
    (v, ev) => {
      ev.detail = { policyVersion: v };
    },
  );
  guard.forgetPolicy();
  return version;
}

/** Record an event through a guarded Keywarden's audit log as its principal (agent: unseal, auth). */
export async function recordAudit(
  kw: Keywarden,
  event: Omit<AuditEvent, 'principal'> & { principal?: string },
): Promise<void> {
  const binding = BINDINGS.get(kw);
  if (!binding?.guard.audit) return;
  await binding.guard.audit.record({ principal: binding.principal, ...event });
}
