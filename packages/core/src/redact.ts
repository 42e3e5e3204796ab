/**
 * Secret scrubbing for application logs (docs/audit.md §Redaction). Usable on its own: a plain
 * function for text (`redactSecrets`), one for structured values (`redactValue`), a pino hook set
 * (`pinoRedaction`) and a line Transform (`createRedactTransform`, for any JSONL log stream).
 *
 * What it removes, keeping enough around each secret to tell what was there:
 *  - Keywarden's own secret forms: unseal keys (`keywarden-unseal-key:v1:…`), share texts
 *    (`kwshare1.<purpose>.<set>.<i>-of-<N>.need-<M>.<payload>.<checksum>`: payload and checksum),
 *    agent credentials (`kwagent1.<principal>.<token>`), data-key JSON (`"plaintext": "…"`);
 *  - PEM private keys (every `-----BEGIN … PRIVATE KEY-----` block) and encrypted share blocks;
 *  - bearer and basic credentials (`Authorization: Bearer …`), passwords in connection strings
 *    (`postgres://user:…@host`, `Password=…;`);
 *  - the values under configurable field names (password, secret, token, pin, plaintext, dek,
 *    share, unsealKey, credential, privateKey, apiKey, authorization … by default), as JSON
 *    fields, `key=value` and `key: value` pairs, and object keys in structured values.
 * It cannot recognise arbitrary plaintext: never log what you decrypted.
 */
import { Transform, type TransformCallback } from 'node:stream';

export const REDACTED = '[REDACTED]';

export const DEFAULT_REDACT_FIELDS: readonly string[] = [
  'password',
  'passwd',
  'passphrase',
  'secret',
  'token',
  'pin',
  'plaintext',
  'dek',
  'share',
  'shares',
  'unsealKey',
  'unseal_key',
  'credential',
  'privateKey',
  'private_key',
  'apiKey',
  'api_key',
  'authorization',
  'cookie',
  'material',
];

export interface RedactOptions {
  /** Field names whose values are removed (case-insensitive). Added to the defaults unless `replaceFields`. */
  fields?: readonly string[];
  /** Use `fields` instead of the defaults. */
  replaceFields?: boolean;
  /** What a removed secret becomes. Default "[REDACTED]". */
  replacement?: string;
}

export interface Redactor {
  text(input: string): string;
  value<T>(input: T): T;
}

function escapeRe(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\/-]/g, '\\$&');
}

/** Compile once; use the result for every line (the module-level functions cache the default one). */
export function createRedactor(options: RedactOptions = {}): Redactor {
  const r = options.replacement ?? REDACTED;
  const names = [...new Set([...(options.replaceFields ? [] : DEFAULT_REDACT_FIELDS), ...(options.fields ?? [])])];
  const fieldSet = new Set(names.map((n) => n.toLowerCase()));
  // biome-ignore lint/suspicious/noExplicitAny: String.replace callbacks receive (match, ...groups, offset, whole).
  const rules: Array<[RegExp, string | ((...m: any[]) => string)]> = [
    // PEM private keys (PKCS#1, PKCS#8, encrypted PKCS#8, OpenSSH, EC) and encrypted share blocks: the whole block.
    [
      /-----BEGIN ([A-Z0-9 ]*PRIVATE KEY|KEYWARDEN ENCRYPTED SHARE)-----[\s\S]*?(-----END \1-----|$)/g,
      `-----BEGIN $1-----${r}-----END $1-----`,
    ],
    // Unseal keys.
    [/keywarden-unseal-key:v1:[A-Za-z0-9_-]*/g, `keywarden-unseal-key:v1:${r}`],
    // Share texts: keep purpose, set, index and threshold; drop payload and checksum.
    [
      /(kwshare\d+\.[a-z][a-z0-9-]{0,31}\.ss_[A-Za-z0-9_-]+\.\d+-of-\d+\.need-\d+\.)[A-Za-z0-9_\-\s]+(?:\.[0-9A-Fa-f]{8})?/g,
      `$1${r}`,
    ],
    // Agent credentials: keep the principal.
    [/(kwagent\d+\.[A-Za-z0-9][A-Za-z0-9._@:-]{0,63}?\.)[A-Za-z0-9_-]{20,}/g, `$1${r}`],
    // Bearer / Basic credentials.
    [/\b(Bearer|Basic|Token)(\s+)[A-Za-z0-9._~+/=-]+/gi, `$1$2${r}`],
    // user:password@ in URLs and connection strings.
    [/([a-z][a-z0-9+.-]*:\/\/[^\s:/@]*:)[^\s@/]+(@)/gi, `$1${r}$2`],
  ];
  if (names.length > 0) {
    const alt = names.map(escapeRe).join('|');
    // "field": "value" | field=value | field: value — JSON, query strings, key=value logs, headers.
    rules.push([
      new RegExp(
        `((?:["']?)\\b(?:${alt})\\b(?:["']?)\\s*[:=]\\s*)("(?:[^"\\\\]|\\\\.)*"|'[^']*'|[^\\s,;&"'}\\]]+)`,
        'gi',
      ),
      (m: string, head: string, value: string, offset: number, whole: string) =>
        // "Authorization: Bearer [REDACTED]": the scheme word stays when its credential is already gone.
        whole.startsWith(` ${r}`, offset + m.length)
          ? m
          : `${head}${value.startsWith('"') ? `"${r}"` : value.startsWith("'") ? `'${r}'` : r}`,
    ]);
  }

  const text = (input: string): string => {
    if (typeof input !== 'string' || input.length === 0) return input;
    let out = input;
    for (const [re, rep] of rules) out = out.replace(re, rep as string);
    return out;
  };

  const value = <T>(input: T): T => walk(input, new WeakMap()) as T;
  function walk(v: unknown, seen: WeakMap<object, unknown>): unknown {
    if (typeof v === 'string') return text(v);
    if (v instanceof Uint8Array) return `${r} (${v.length} bytes)`;
    if (typeof v !== 'object' || v === null) return v;
    if (seen.has(v)) return seen.get(v);
    if (v instanceof Error) {
      const code: unknown = (v as Error & { code?: unknown }).code;
      const e = { name: v.name, message: text(v.message), ...(typeof code === 'string' ? { code } : {}) };
      seen.set(v, e);
      return e;
    }
    if (Array.isArray(v)) {
      const out: unknown[] = [];
      seen.set(v, out);
      for (const x of v) out.push(walk(x, seen));
      return out;
    }
    if (v instanceof Date) return v;
    const out: Record<string, unknown> = {};
    seen.set(v, out);
    for (const [k, x] of Object.entries(v as Record<string, unknown>)) {
      out[k] = fieldSet.has(k.toLowerCase()) && x !== undefined && x !== null ? r : walk(x, seen);
    }
    return out;
  }
  return { text, value };
}

let defaultRedactor: Redactor | undefined;
function defaults(options?: RedactOptions): Redactor {
  if (options) return createRedactor(options);
  defaultRedactor ??= createRedactor();
  return defaultRedactor;
}

/** Remove secrets from one piece of text. */
export function redactSecrets(input: string, options?: RedactOptions): string {
  return defaults(options).text(input);
}

/** A copy of a structured value with secrets removed (strings scrubbed, secret fields and bytes replaced). */
export function redactValue<T>(input: T, options?: RedactOptions): T {
  return defaults(options).value(input);
}

/**
 * For pino: `pino({ ...pinoRedaction() })`. `formatters.log` scrubs the merged object of every
 * line, `hooks.logMethod` the message and its interpolation arguments.
 */
export function pinoRedaction(options?: RedactOptions): {
  formatters: { log: (object: Record<string, unknown>) => Record<string, unknown> };
  hooks: { logMethod: (this: unknown, args: unknown[], method: (...a: unknown[]) => void) => void };
} {
  const red = createRedactor(options);
  return {
    formatters: { log: (object) => red.value(object) },
    hooks: {
      logMethod(args, method) {
        method.apply(
          this,
          args.map((a) => (typeof a === 'string' ? red.text(a) : a)),
        );
      },
    },
  };
}

/** A Transform that scrubs a text stream line by line (a pino destination, a JSONL log, stdout). */
export function createRedactTransform(options?: RedactOptions): Transform {
  const red = createRedactor(options);
  let rest = '';
  return new Transform({
    transform(chunk: Buffer | string, _enc: BufferEncoding, done: TransformCallback) {
      const text = rest + (typeof chunk === 'string' ? chunk : chunk.toString('utf8'));
      const cut = text.lastIndexOf('\n');
      if (cut < 0) {
        rest = text;
        // A line longer than 1 MiB is scrubbed and passed on rather than held without bound.
        if (rest.length > 1 << 20) {
          done(null, red.text(rest));
          rest = '';
          return;
        }
        done();
        return;
      }
      rest = text.slice(cut + 1);
      done(null, red.text(text.slice(0, cut + 1)));
    },
    flush(done: TransformCallback) {
      done(null, rest ? red.text(rest) : undefined);
    },
  });
}
