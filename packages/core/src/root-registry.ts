/**
 * Roots are named by URI and opened through one registry that backends add to (Tink's
 * `KmsClient`: a client per key-URI prefix). Generic code — the key manager, root rotation and
 * destruction, the agent, the CLI — asks `openRoot(uri, { store })` and never names a backend.
 *
 *   software:                         the software root kept in the store (software-root.ts),
 *   software:?unseal-key-env=NAME     unsealed with a development-mode key from the environment,
 *   software:?unseal-key-file=PATH    … or from a key file; or with `options.secret` (the key a
 *                                     quorum of Shamir shares combined into: @keywarden/split-knowledge);
 *   pkcs11:token=…;object=…?…         RFC 7512 (pkcs11-uri.ts parses it); the backend is
 *                                     @keywarden/pkcs11, which registers the opener;
 *   tpm:…                             reserved for @keywarden/tpm.
 *
 * A backend may also register root-record hooks: a root's own record in the key store belongs to
 * the root, so destroying "whatever root this store holds" — including one whose destruction was
 * interrupted and which can no longer be opened — is asked of the backend that recognises the
 * record (`destroyRoot` in root-rotation.ts), never done by generic code.
 */
import { readFile } from 'node:fs/promises';
import { wipe } from './_bytes.js';
import { InvalidInputError, UnknownRootSchemeError, UnsupportedCapabilityError } from './errors.js';
import type { KeyStore } from './keystore.js';
import type { RandomSource } from './random.js';
import type { RootOfTrust } from './root.js';
import {
  decodeUnsealKey,
  destroySoftwareRootRecord,
  ROOT_META_NAME,
  ROOT_TOMBSTONE_META_NAME,
  SoftwareRoot,
} from './software-root.js';

export interface OpenRootOptions {
  /** The key store the root's record lives in (every root keeps its non-secret record there). */
  store: KeyStore;
  /**
   * The unlocking secret (`Sealable.unsealSecret()`): the software root's unseal key, an HSM's
   * user PIN, a TPM auth value. With it the root opens unsealed; without it (and without one named
   * by the URI), sealed. Not modified; the caller wipes it.
   */
  secret?: Uint8Array;
  /** Make a new root in a store that has none (refused when it has one). Needs the secret. */
  create?: boolean;
  /** The root's random source where the backend lets the caller choose (tests). */
  random?: RandomSource;
  /** Environment for URI attributes that name variables. Default: process.env. */
  env?: Readonly<Record<string, string | undefined>>;
}

export type RootOpener = (uri: string, options: OpenRootOptions) => Promise<RootOfTrust>;

/** Root-record hooks (optional): what a backend does with its record when the root cannot be opened. */
export interface RootRecordHooks {
  /** Whether `store` holds this backend's root record, or the record of its destruction. */
  holdsRecord(store: KeyStore): Promise<boolean>;
  /** Destroy the root `store` records (or finish an interrupted destruction), given consent (the
   * unlocking secret). Same contract as `Destroyable.destroy`. */
  destroyRecorded(store: KeyStore, consent: Uint8Array, now: Date): Promise<void>;
}

/**
 * Unlocking-secret hooks (optional): what split knowledge over a device's secret needs of the
 * device (docs/split-knowledge.md §11): draw a fresh secret nobody has seen, tell whether a secret
 * is the device's current one, and change it (PKCS#11 C_SetPIN on the user PIN).
 */
export interface RootSecretHooks {
  /** A fresh random secret of the form the device takes (a printable PIN within its length limits). */
  draw(uri: string, options: RootSecretOptions): Promise<Uint8Array>;
  /** Whether `secret` opens the device now: one login attempt (a wrong one counts towards the
   * device's lockout like any failed login). */
  check(uri: string, secret: Uint8Array, options: RootSecretOptions): Promise<boolean>;
  /** Change the device's secret from `current` to `next` (UnsealError when `current` is wrong). */
  change(uri: string, current: Uint8Array, next: Uint8Array, options: RootSecretOptions): Promise<void>;
}

export interface RootSecretOptions {
  /** The key store that records the root (a TPM root's object), when there is one yet. */
  store?: KeyStore;
  env?: Readonly<Record<string, string | undefined>>;
}

export interface RootBackend {
  open: RootOpener;
  record?: RootRecordHooks;
  secret?: RootSecretHooks;
}

const SCHEME_RE = /^[a-z][a-z0-9+.-]{0,31}$/;
/** Schemes whose backend lives in another package; opening one before it is registered says so. */
const RESERVED: Record<string, string> = {
  pkcs11: '@keywarden/pkcs11',
  tpm: '@keywarden/tpm',
};
const backends = new Map<string, RootBackend>();

/**
 * Register the backend for `scheme` ("pkcs11", without the colon). Registering a scheme twice is
 * refused unless `replace` (a second copy of a backend package must not silently take over).
 */
export function registerRootBackend(
  scheme: string,
  backend: RootOpener | RootBackend,
  options: { replace?: boolean } = {},
): void {
  if (typeof scheme !== 'string' || !SCHEME_RE.test(scheme)) {
    throw new InvalidInputError('root: a scheme is 1..32 characters: a lower-case letter, then letters, digits, + - .');
  }
  const entry: RootBackend = typeof backend === 'function' ? { open: backend } : backend;
  if (typeof entry?.open !== 'function') throw new InvalidInputError('root: a root backend needs an open function');
  if (backends.has(scheme) && !options.replace) {
    throw new InvalidInputError(`root: a backend for "${scheme}:" is already registered`);
  }
  backends.set(scheme, entry);
}

/** Remove a registered backend (tests, hot reload). The built-in "software" stays. */
export function unregisterRootBackend(scheme: string): void {
  if (scheme !== 'software') backends.delete(scheme);
}

/** The schemes that can be opened now. */
export function rootSchemes(): string[] {
  return [...backends.keys()].sort();
}

/** The scheme of a root URI, lower-cased (RFC 3986 §3.1: schemes are case-insensitive). */
export function rootUriScheme(uri: string): string {
  if (typeof uri !== 'string') throw new InvalidInputError('root: a root URI must be a string');
  const colon = uri.indexOf(':');
  const scheme = colon > 0 ? uri.slice(0, colon).toLowerCase() : '';
  if (!SCHEME_RE.test(scheme)) {
    throw new InvalidInputError('root: not a root URI (expected scheme:…, e.g. "software:" or "pkcs11:token=…")');
  }
  return scheme;
}

/**
 * Open the root named by `uri`. An unknown scheme is an UnknownRootSchemeError naming the scheme
 * (and, for a reserved one, the package that provides it). The URI itself is never echoed: it
 * may carry a PIN.
 */
export async function openRoot(uri: string, options: OpenRootOptions): Promise<RootOfTrust> {
  const scheme = rootUriScheme(uri);
  if (!options || typeof options !== 'object' || !options.store) {
    throw new InvalidInputError('root: openRoot needs { store }');
  }
  const backend = backends.get(scheme);
  if (!backend) {
    const pkg = RESERVED[scheme];
    throw new UnknownRootSchemeError(
      pkg
        ? `root: no backend registered for "${scheme}:" roots; install and import ${pkg}, which registers it`
        : `root: unknown root scheme "${scheme}:" (registered: ${rootSchemes()
            .map((s) => `${s}:`)
            .join(', ')})`,
    );
  }
  return backend.open(uri, options);
}

/** The unlocking-secret hooks of the backend for `uri`'s scheme (UnsupportedCapabilityError when it has none). */
export function rootSecretHooks(uri: string): RootSecretHooks {
  const scheme = rootUriScheme(uri);
  const hooks = backends.get(scheme)?.secret;
  if (!hooks) {
    throw new UnsupportedCapabilityError(
      `root: a ${scheme}: root's unlocking secret cannot be changed through Keywarden`,
    );
  }
  return hooks;
}

/**
 * The backend whose record `store` holds (root-record hooks), or undefined when none does: a store
 * with no root record and no record of a destruction is damaged or was never initialized.
 */
export async function recordedRootBackend(store: KeyStore): Promise<RootRecordHooks | undefined> {
  for (const backend of backends.values()) {
    if (backend.record && (await backend.record.holdsRecord(store))) return backend.record;
  }
  return undefined;
}

// ── software: ──────────────────────────────────────────────────────────────────────────────────

const SOFTWARE_QUERY = new Set(['unseal-key-env', 'unseal-key-file']);

async function openSoftwareRoot(uri: string, options: OpenRootOptions): Promise<RootOfTrust> {
  const rest = uri.slice(uri.indexOf(':') + 1);
  const q = rest.indexOf('?');
  if ((q === -1 ? rest : rest.slice(0, q)).length > 0) {
    throw new InvalidInputError(
      'root: a software root URI has no path ("software:" or "software:?unseal-key-env=NAME")',
    );
  }
  const query = new Map<string, string>();
  if (q !== -1 && q < rest.length - 1) {
    for (const part of rest.slice(q + 1).split('&')) {
      const eq = part.indexOf('=');
      const name = eq > 0 ? part.slice(0, eq) : '';
      if (!SOFTWARE_QUERY.has(name)) {
        throw new InvalidInputError('root: a software root URI takes only unseal-key-env= or unseal-key-file=');
      }
      if (query.has(name)) throw new InvalidInputError(`root: "${name}" appears more than once`);
      let value: string;
      try {
        value = decodeURIComponent(part.slice(eq + 1));
      } catch {
        throw new InvalidInputError(`root: "${name}" is not validly percent-encoded`);
      }
      query.set(name, value);
    }
  }
  if (query.size > 1 || (query.size === 1 && options.secret)) {
    throw new InvalidInputError(
      'root: give the software root one unseal key: options.secret, unseal-key-env or unseal-key-file',
    );
  }
  const secret = options.secret ?? (await unsealKeyFromUri(query, options.env ?? process.env));
  const owned = options.secret === undefined;
  try {
    const random = options.random ? { random: options.random } : {};
    if (options.create) {
      if (!secret) throw new InvalidInputError('root: creating a software root needs its unseal key (options.secret)');
      return await SoftwareRoot.initialize(options.store, { unsealKey: secret, ...random });
    }
    const root = await SoftwareRoot.load(options.store, random);
    if (secret) {
      try {
        await root.unseal(secret);
      } catch (err) {
        await root.close();
        throw err;
      }
    }
    return root;
  } finally {
    if (owned) wipe(secret);
  }
}

async function unsealKeyFromUri(
  query: Map<string, string>,
  env: Readonly<Record<string, string | undefined>>,
): Promise<Uint8Array | undefined> {
  const variable = query.get('unseal-key-env');
  if (variable !== undefined) {
    const text = env[variable];
    if (!text) throw new InvalidInputError(`root: environment variable ${variable} holds no unseal key`);
    return decodeUnsealKey(text);
  }
  const file = query.get('unseal-key-file');
  if (file !== undefined) {
    let bytes: Buffer;
    try {
      bytes = await readFile(file);
    } catch (err) {
      throw new InvalidInputError('root: the unseal key file named by the root URI cannot be read', { cause: err });
    }
    try {
      return decodeUnsealKey(bytes.toString('utf8'));
    } finally {
      wipe(bytes);
    }
  }
  return undefined;
}

registerRootBackend('software', {
  open: openSoftwareRoot,
  record: {
    async holdsRecord(store) {
      if ((await store.getMeta(ROOT_TOMBSTONE_META_NAME)) !== undefined) return true;
      const record = await store.getMeta(ROOT_META_NAME);
      if (record === undefined) return false;
      try {
        return (JSON.parse(Buffer.from(record).toString('utf8')) as { kind?: unknown })?.kind === 'software';
      } catch {
        // Unreadable: let the software root's own decoder report the damage.
        return true;
      }
    },
    destroyRecorded: (store, consent, now) => destroySoftwareRootRecord(store, consent, now),
  },
});
