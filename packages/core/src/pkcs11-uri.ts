/**
 * A strict parser for PKCS #11 URIs (RFC 7512), the form p11-kit, OpenSSL and OpenSC use to name
 * a token and an object: `pkcs11:token=keywarden;object=kw-root?module-path=/usr/lib/softhsm/libsofthsm2.so`.
 * It lives in core so that a PKCS#11 backend only registers an opener (root-registry.ts) and every
 * tool reads the URI the same way.
 *
 * Strict means: the grammar of RFC 7512 §2.3 exactly (no whitespace — the line breaks in §3.3's
 * examples are for display only —, no empty attribute, no character outside the attribute's set
 * unless percent-encoded), every standard attribute at most once (§2.3), values of `type`,
 * `slot-id` and `library-version` checked, percent-encoding decoded (§2.3: any character may be
 * encoded; values are UTF-8, except `id`, which is bytes), and `pin-source` with `pin-value`
 * refused together (one PIN, one place). Vendor-specific attributes (§2.3 pk11-v-pattr and
 * pk11-v-qattr) are kept apart for the backend to accept or refuse.
 *
 * Errors are InvalidInputError("pkcs11: URI …") naming the attribute, never its value: a URI may
 * carry the user PIN (`pin-value`), and no error, log or audit record may.
 */
import { utf8Decoder, wipe } from './_bytes.js';
import { InvalidInputError } from './errors.js';

export type Pkcs11ObjectType = 'public' | 'private' | 'cert' | 'secret-key' | 'data';

export interface Pkcs11Uri {
  /** Path attributes (RFC 7512 §2.3), percent-decoded. */
  token?: string;
  manufacturer?: string;
  serial?: string;
  model?: string;
  libraryManufacturer?: string;
  libraryDescription?: string;
  libraryVersion?: { major: number; minor: number };
  object?: string;
  type?: Pkcs11ObjectType;
  /** CKA_ID: bytes, not text. */
  id?: Uint8Array;
  slotDescription?: string;
  slotManufacturer?: string;
  slotId?: number;
  /** Query attributes. `pinSource` is a URI or path to read the PIN from (e.g. "file:/etc/token_pin"). */
  pinSource?: string;
  /** The PIN itself (UTF-8 bytes). Secret: wipe it when done; it never appears in an error. */
  pinValue?: Uint8Array;
  moduleName?: string;
  modulePath?: string;
  /** Vendor-specific path attributes (name → decoded value), each at most once. */
  vendorPath: Record<string, string>;
  /** Vendor-specific query attributes (name → decoded values; a query attribute may repeat). */
  vendorQuery: Record<string, string[]>;
}

const MAX_URI_CHARS = 8192;
const SCHEME_RE = /^pkcs11:/i;
/** RFC 3986 unreserved, plus pk11-res-avail (":" "[" "]" "@" "!" "$" "'" "(" ")" "*" "+" "," "="). */
const COMMON = "A-Za-z0-9\\-._~:\\[\\]@!$'()*+,=";
/** pk11-pchar: the common set and "&" (path attributes are split on ";"). */
const PATH_VALUE_RE = new RegExp(`^(?:[${COMMON}&]|%[0-9A-Fa-f]{2})*$`);
/** pk11-qchar: the common set and "/" "?" "|" (query attributes are split on "&"). */
const QUERY_VALUE_RE = new RegExp(`^(?:[${COMMON}/?|]|%[0-9A-Fa-f]{2})*$`);
/** pk11-v-attr-nm-char. */
const VENDOR_NAME_RE = /^[A-Za-z0-9_-]+$/;

const PATH_ATTRIBUTES = new Set([
  'token',
  'manufacturer',
  'serial',
  'model',
  'library-manufacturer',
  'library-version',
  'library-description',
  'object',
  'type',
  'id',
  'slot-description',
  'slot-manufacturer',
  'slot-id',
]);
const QUERY_ATTRIBUTES = new Set(['pin-source', 'pin-value', 'module-name', 'module-path']);
const TYPES = new Set<string>(['public', 'private', 'cert', 'secret-key', 'data']);

function fail(what: string): never {
  throw new InvalidInputError(`pkcs11: URI ${what}`);
}

/** Percent-decode (RFC 3986 §2.1) to bytes. The caller has checked the character set. */
function percentDecode(value: string): Uint8Array {
  const out = new Uint8Array(value.length);
  let n = 0;
  for (let i = 0; i < value.length; i++) {
    const c = value.charCodeAt(i);
    if (c === 0x25) {
      out[n++] = Number.parseInt(value.slice(i + 1, i + 3), 16);
      i += 2;
    } else {
      out[n++] = c;
    }
  }
  return out.slice(0, n);
}

function decodeText(value: string, name: string): string {
  const bytes = percentDecode(value);
  try {
    return utf8Decoder.decode(bytes);
  } catch {
    return fail(`attribute ${shown(name)} is not valid UTF-8 once percent-decoded`);
  } finally {
    wipe(bytes);
  }
}

function splitAttribute(part: string, where: 'path' | 'query'): [string, string] {
  const eq = part.indexOf('=');
  if (part.length === 0) fail(`has an empty ${where} attribute (RFC 7512 §2.3)`);
  // Never echoed: text without "=" may be a PIN typed without its attribute name.
  if (eq <= 0) fail(`has a ${where} attribute without the name=value form`);
  return [part.slice(0, eq), part.slice(eq + 1)];
}

/** How an attribute is named in an error: standard names as they are, anything else not at all. */
function shown(name: string): string {
  return PATH_ATTRIBUTES.has(name) || QUERY_ATTRIBUTES.has(name) ? `"${name}"` : '(vendor-specific)';
}

/**
 * Parse a PKCS #11 URI (RFC 7512). Throws InvalidInputError naming the offending attribute (never
 * its value). The returned `pinValue`, when present, is the caller's to wipe.
 */
export function parsePkcs11Uri(uri: string): Pkcs11Uri {
  if (typeof uri !== 'string') fail('must be a string');
  if (uri.length > MAX_URI_CHARS) fail(`is longer than ${MAX_URI_CHARS} characters`);
  if (!SCHEME_RE.test(uri)) fail('must start with "pkcs11:"');
  const body = uri.slice('pkcs11:'.length);
  const q = body.indexOf('?');
  const path = q === -1 ? body : body.slice(0, q);
  const query = q === -1 ? undefined : body.slice(q + 1);
  const out: Pkcs11Uri = { vendorPath: {}, vendorQuery: {} };
  const seen = new Set<string>();
  try {
    if (path.length > 0) {
      for (const part of path.split(';')) {
        const [name, value] = splitAttribute(part, 'path');
        if (!PATH_VALUE_RE.test(value))
          fail(`path attribute ${shown(name)} has a character that must be percent-encoded`);
        if (seen.has(name)) fail(`path attribute ${shown(name)} appears more than once (RFC 7512 §2.3)`);
        seen.add(name);
        setPathAttribute(out, name, value);
      }
    }
    if (query !== undefined && query.length > 0) {
      for (const part of query.split('&')) {
        const [name, value] = splitAttribute(part, 'query');
        if (!QUERY_VALUE_RE.test(value))
          fail(`query attribute ${shown(name)} has a character that must be percent-encoded`);
        if (QUERY_ATTRIBUTES.has(name)) {
          if (seen.has(`?${name}`)) fail(`query attribute "${name}" appears more than once`);
          seen.add(`?${name}`);
        }
        setQueryAttribute(out, name, value);
      }
    }
    if (out.pinSource !== undefined && out.pinValue !== undefined) {
      fail('has both "pin-source" and "pin-value"; give the PIN one way');
    }
  } catch (err) {
    wipe(out.pinValue);
    throw err;
  }
  return out;
}

function setPathAttribute(out: Pkcs11Uri, name: string, value: string): void {
  if (!PATH_ATTRIBUTES.has(name)) {
    if (!VENDOR_NAME_RE.test(name) || QUERY_ATTRIBUTES.has(name)) fail(`has an invalid path attribute name`);
    out.vendorPath[name] = decodeText(value, name);
    return;
  }
  switch (name) {
    case 'id':
      out.id = percentDecode(value);
      return;
    case 'type': {
      const t = decodeText(value, name);
      if (!TYPES.has(t)) fail('attribute "type" must be public, private, cert, secret-key or data');
      out.type = t as Pkcs11ObjectType;
      return;
    }
    case 'slot-id': {
      const t = decodeText(value, name);
      if (!/^[0-9]{1,20}$/.test(t) || !Number.isSafeInteger(Number(t)))
        fail('attribute "slot-id" must be a decimal number');
      out.slotId = Number(t);
      return;
    }
    case 'library-version': {
      const m = /^([0-9]{1,3})(?:\.([0-9]{1,3}))?$/.exec(decodeText(value, name));
      if (!m) fail('attribute "library-version" must be M or M.N (decimal)');
      const major = Number(m[1]);
      const minor = Number(m[2] ?? '0');
      if (major > 255 || minor > 255) fail('attribute "library-version" parts must be 0..255 (CK_VERSION)');
      out.libraryVersion = { major, minor };
      return;
    }
    default: {
      const text = decodeText(value, name);
      const key = camel(name) as 'token';
      out[key] = text;
    }
  }
}

function setQueryAttribute(out: Pkcs11Uri, name: string, value: string): void {
  switch (name) {
    case 'pin-value':
      out.pinValue = percentDecode(value);
      return;
    case 'pin-source':
      out.pinSource = decodeText(value, name);
      return;
    case 'module-name':
      out.moduleName = decodeText(value, name);
      return;
    case 'module-path':
      out.modulePath = decodeText(value, name);
      return;
    default: {
      if (!VENDOR_NAME_RE.test(name) || PATH_ATTRIBUTES.has(name)) fail('has an invalid query attribute name');
      const list = out.vendorQuery[name] ?? [];
      list.push(decodeText(value, name));
      out.vendorQuery[name] = list;
    }
  }
}

function camel(name: string): string {
  return name.replace(/-([a-z])/g, (_, c: string) => c.toUpperCase());
}

/**
 * The user PIN for a parsed URI, from exactly one place: `secret` (a PIN a quorum of custodians
 * recombined: @keywarden/split-knowledge), the URI's `pin-value`, or its `pin-source` — a `file:`
 * URI (RFC 8089; an absolute path, one trailing newline dropped) or, a Keywarden extension,
 * `env:NAME`. Undefined when none gives one (the backend then opens the token logged out, i.e.
 * sealed). The result is a fresh buffer for the caller to wipe; errors never carry the PIN.
 */
export async function readPkcs11Pin(
  uri: Pkcs11Uri,
  options: { secret?: Uint8Array; env?: Readonly<Record<string, string | undefined>> } = {},
): Promise<Uint8Array | undefined> {
  const given = [options.secret, uri.pinValue, uri.pinSource].filter((x) => x !== undefined).length;
  if (given > 1) fail('and the caller both give a PIN; give it one way');
  if (options.secret !== undefined) return options.secret.slice();
  if (uri.pinValue !== undefined) return uri.pinValue.slice();
  const source = uri.pinSource;
  if (source === undefined) return undefined;
  if (source.startsWith('env:')) {
    const name = source.slice(4);
    const value = (options.env ?? process.env)[name];
    if (!/^[A-Za-z_][A-Za-z0-9_]*$/.test(name) || !value)
      fail('"pin-source" names an environment variable that holds no PIN');
    return new TextEncoder().encode(value);
  }
  let path: string;
  if (source.startsWith('file://')) {
    if (!source.startsWith('file:///')) fail('"pin-source" file URI must name a local absolute path (file:///…)');
    path = source.slice('file://'.length);
  } else if (source.startsWith('file:/')) {
    path = source.slice('file:'.length);
  } else {
    fail('"pin-source" must be a file: URI or env:NAME');
  }
  const { readFile } = await import('node:fs/promises');
  let bytes: Uint8Array;
  try {
    bytes = new Uint8Array(await readFile(path));
  } catch {
    fail('"pin-source" file cannot be read');
  }
  let end = bytes.length;
  if (end > 0 && bytes[end - 1] === 0x0a) end--;
  if (end > 0 && bytes[end - 1] === 0x0d) end--;
  const pin = bytes.slice(0, end);
  wipe(bytes);
  if (pin.length === 0) fail('"pin-source" file is empty');
  return pin;
}
