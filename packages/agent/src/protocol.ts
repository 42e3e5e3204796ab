/**
 * The agent protocol, version 1: newline-delimited JSON over a local unix socket. The spec, with
 * golden request/response examples that test/protocol-spec.test.ts replays against a real
 * server, is docs/agent-protocol.md.
 *
 *   request   {"id": 1, "op": "unseal", "args": {"share": "kwshare1.…"}}\n
 *   response  {"id": 1, "ok": true, "result": {…}}\n
 *           | {"id": 1, "ok": false, "error": {"code": "KW_SHARE", "message": "share: …"}}\n
 *
 * One JSON object a line (JSON text never contains a raw newline), UTF-8, at most
 * MAX_REQUEST_BYTES a request line; bytes travel as standard base64 (RFC 4648 §4). `id` is the
 * client's (a safe integer or a string of 1..64 characters), echoed back; a request the agent
 * could not read at all is answered with `"id": null`. Errors carry a stable code (core's KW_*
 * codes, or KW_AGENT_INTERNAL) and a one-line message, and are rebuilt on the client as the same
 * KeywardenError subclass, so an application sees the same errors through the agent as with a
 * Keywarden in its own process.
 *
 * Versions: a client opens every connection with `hello`, listing the versions it speaks; the
 * agent answers with the one it will speak, or KW_AGENT_VERSION when they share none. A
 * connection that sends no hello speaks version 1 (so `socat` and the version-1 examples work).
 *
 * Nothing in this file formats a buffer into a message: shares, DEKs and wrapped keys appear only
 * inside request and response bodies, never in an error.
 */
import {
  AccessDeniedError,
  AgentError,
  AgentProtocolError,
  AuditError,
  AgentUnavailableError,
  AgentVersionError,
  CeremonyError,
  CeremonyPendingError,
  ClosedError,
  ConflictError,
  KeyCompromisedError,
  KeyDestroyedError,
  KeyVersionRetiredError,
  RootDeviceError,
  RootLockoutError,
  RootUnavailableError,
  DecryptionError,
  FormatError,
  InvalidInputError,
  KeyExistsError,
  KeyNotFoundError,
  KeyStateError,
  KeyStoreError,
  KeystoreSealedError,
  KeywardenError,
  RootDestroyedError,
  RootMissingError,
  type KeywardenErrorCode,
  type KeyInfo,
  ShareError,
  NativeAddonError,
  StoreCorruptError,
  StoreReplacedError,
  UnexpectedKeyError,
  UnsealError,
  UnsupportedCapabilityError,
  UsageLimitError,
  WeakKeyMaterialError,
} from '@keywarden/core';

/** The protocol versions this package speaks, oldest first. */
export const PROTOCOL_VERSIONS = [1] as const;
/** The newest of them: what a client asks for first. */
export const PROTOCOL_VERSION = 1;

/**
 * Longest request line the agent reads (without its newline); a longer one closes the connection.
 * The largest real request (a share, a wrapped data key, a key name and scope) is under 2 KiB; the
 * bound is what an unfinished line of each of the agent's connections may hold in its memory.
 */
export const MAX_REQUEST_BYTES = 64 * 1024;
/** Longest response line the client reads (`listKeys` on a large store is the big one). */
export const MAX_RESPONSE_BYTES = 16 * 1024 * 1024;

export const AGENT_OPS = [
  'hello',
  'status',
  'unseal',
  'seal',
  'generateDataKey',
  'decryptDataKey',
  'createKey',
  'rotateKey',
  'disableVersion',
  'enableVersion',
  'compromiseVersion',
  'destroyVersion',
  'getKey',
  'listKeys',
] as const;
export type AgentOp = (typeof AGENT_OPS)[number];

export type RequestId = number | string;

export interface AgentRequest {
  id: RequestId;
  op: AgentOp;
  args: Record<string, unknown>;
}

export interface WireError {
  code: string;
  message: string;
}

export type AgentResponse =
  | { id: RequestId | null; ok: true; result: unknown }
  | { id: RequestId | null; ok: false; error: WireError };

/** The request was not a request (not JSON, no id, unknown op, arguments of the wrong type). */
export const PROTOCOL_ERROR: KeywardenErrorCode = 'KW_AGENT_PROTOCOL';
/** Something failed inside the agent that is not a Keywarden error; the details are in its log. */
export const INTERNAL_ERROR = 'KW_AGENT_INTERNAL';

/** A request the agent could not read, with the request's id when it could be read. */
export class ProtocolError extends AgentProtocolError {
  constructor(
    message: string,
    /** The request's id, when it could be read. */
    readonly requestId: RequestId | null = null,
  ) {
    super(message);
  }
}

// ── Results (non-secret) ────────────────────────────────────────────────────────────────────────

/** `hello`: the version the agent will speak on this connection. */
export interface HelloResult {
  protocol: number;
  /** "keywarden-agent". */
  server: string;
}

export interface AgentStatus {
  sealed: boolean;
  rootId: string;
  /** Split knowledge: the share set the next unseal needs ("" for a root not unsealed by shares). */
  shareSetId: string;
  threshold: number;
  shares: number;
  /** Shares held towards the next unseal (0 when unsealed). */
  accepted: number;
  /** Their indices (printed on the shares, not secret). */
  indices: number[];
  /** Earlier shares were discarded after the idle timeout (reported until the next accepted share). */
  reset: boolean;
  unsealTimeoutSeconds: number;
  pid: number;
}

export interface UnsealResult {
  sealed: boolean;
  accepted: number;
  threshold: number;
  shares: number;
  indices: number[];
  reset: boolean;
  /** The agent was already unsealed: the share was not looked at. */
  alreadyUnsealed: boolean;
}

// ── Lines ──────────────────────────────────────────────────────────────────────────────────────

export class LineTooLongError extends Error {
  override name = 'LineTooLongError';
}

/**
 * Splits a byte stream into lines of at most `max` bytes (newline excluded). It copies what it
 * keeps, so the caller may wipe each chunk once `push` returns, and it wipes its own copies when
 * a line is handed out: a request can carry a share, a response a data key.
 */
export class LineBuffer {
  readonly #max: number;
  #parts: Buffer[] = [];
  #length = 0;

  constructor(max: number) {
    this.#max = max;
  }

  /** Complete lines in this chunk (the caller wipes them after use). Throws LineTooLongError. */
  push(chunk: Uint8Array): Buffer[] {
    const buf = Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength);
    const lines: Buffer[] = [];
    let start = 0;
    for (let nl = buf.indexOf(0x0a, start); nl >= 0; nl = buf.indexOf(0x0a, start)) {
      const piece = buf.subarray(start, nl);
      this.#check(piece.length);
      const line = Buffer.alloc(this.#length + piece.length);
      let off = 0;
      for (const p of this.#parts) {
        p.copy(line, off);
        off += p.length;
      }
      piece.copy(line, off);
      this.wipe();
      lines.push(line);
      start = nl + 1;
    }
    const rest = buf.subarray(start);
    if (rest.length > 0) {
      this.#check(rest.length);
      const copy = Buffer.alloc(rest.length);
      rest.copy(copy);
      this.#parts.push(copy);
      this.#length += copy.length;
    }
    return lines;
  }

  /** Bytes of an unfinished line are held. */
  get pending(): boolean {
    return this.#length > 0;
  }

  wipe(): void {
    for (const p of this.#parts) p.fill(0);
    this.#parts = [];
    this.#length = 0;
  }

  #check(more: number): void {
    if (this.#length + more > this.#max) {
      this.wipe();
      throw new LineTooLongError(`line longer than ${this.#max} bytes`);
    }
  }
}

export function encodeLine(message: AgentRequest | AgentResponse): string {
  return `${JSON.stringify(message)}\n`;
}

// ── Requests ───────────────────────────────────────────────────────────────────────────────────

function isRequestId(v: unknown): v is RequestId {
  return (
    (typeof v === 'number' && Number.isSafeInteger(v)) || (typeof v === 'string' && v.length > 0 && v.length <= 64)
  );
}

function isPlainObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** Parse one request line. Throws ProtocolError (never echoing the line: it may hold a share). */
export function parseRequest(line: Uint8Array): AgentRequest {
  let value: unknown;
  try {
    value = JSON.parse(Buffer.from(line.buffer, line.byteOffset, line.byteLength).toString('utf8'));
  } catch {
    throw new ProtocolError('agent: the request is not valid JSON (one JSON object a line)');
  }
  if (!isPlainObject(value)) throw new ProtocolError('agent: the request is not a JSON object');
  const id = isRequestId(value.id) ? value.id : null;
  if (id === null) throw new ProtocolError('agent: the request has no valid id (a safe integer or a short string)');
  const op = value.op;
  if (typeof op !== 'string' || !(AGENT_OPS as readonly string[]).includes(op)) {
    throw new ProtocolError(`agent: unknown op (expected one of ${AGENT_OPS.join(', ')})`, id);
  }
  const args = value.args ?? {};
  if (!isPlainObject(args)) throw new ProtocolError('agent: args must be a JSON object', id);
  return { id, op: op as AgentOp, args };
}

export function stringArg(req: AgentRequest, name: string): string {
  const v = req.args[name];
  if (typeof v !== 'string') throw new ProtocolError(`agent: ${req.op} needs args.${name} (a string)`, req.id);
  return v;
}

/** An optional object of string values (an encryption context, a key scope); core checks the rest. */
export function recordArg(req: AgentRequest, name: string): Record<string, string> | undefined {
  const v = req.args[name];
  if (v === undefined || v === null) return undefined;
  if (!isPlainObject(v) || !Object.values(v).every((x) => typeof x === 'string')) {
    throw new ProtocolError(`agent: args.${name} must be an object of strings`, req.id);
  }
  return v as Record<string, string>;
}

/** A key version: a positive safe integer. */
export function versionArg(req: AgentRequest, name: string): number {
  const v = req.args[name];
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 1) {
    throw new ProtocolError(`agent: ${req.op} needs args.${name} (a positive integer)`, req.id);
  }
  return v;
}

/** An optional boolean (absent: undefined, the library's default). */
export function booleanArg(req: AgentRequest, name: string): boolean | undefined {
  const v = req.args[name];
  if (v === undefined || v === null) return undefined;
  if (typeof v !== 'boolean') throw new ProtocolError(`agent: args.${name} must be true or false`, req.id);
  return v;
}

export function bytesArg(req: AgentRequest, name: string): Uint8Array {
  return fromBase64(stringArg(req, name), () => new ProtocolError(`agent: args.${name} is not base64`, req.id));
}

/**
 * `hello`'s args.versions: the protocol versions the client speaks. The agent picks the newest it
 * shares; none in common is an AgentVersionError naming both sides' versions.
 */
export function negotiateVersion(req: AgentRequest): HelloResult {
  const v = req.args.versions;
  if (!Array.isArray(v) || v.length === 0 || v.length > 16 || !v.every((x) => Number.isSafeInteger(x) && x > 0)) {
    throw new ProtocolError('agent: hello needs args.versions (an array of 1..16 positive integers)', req.id);
  }
  const common = (PROTOCOL_VERSIONS as readonly number[]).filter((x) => v.includes(x));
  const chosen = common.length > 0 ? Math.max(...common) : undefined;
  if (chosen === undefined) {
    throw new AgentVersionError(
      `agent: protocol version mismatch: the client speaks ${versionList(v as number[])}, this agent speaks ${versionList(PROTOCOL_VERSIONS)}; use matching releases of @keywarden/agent`,
    );
  }
  return { protocol: chosen, server: 'keywarden-agent' };
}

function versionList(v: readonly number[]): string {
  return v.length === 1 ? `version ${v[0]}` : `versions ${v.join(', ')}`;
}

// ── Bytes ──────────────────────────────────────────────────────────────────────────────────────

/** Base64 through a view: Buffer.from(bytes) would leave an unwiped copy of a secret. */
export function toBase64(bytes: Uint8Array): string {
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString('base64');
}

const BASE64_RE = /^[A-Za-z0-9+/]*={0,2}$/;

/** Strict base64 to a fresh Uint8Array (the intermediate Buffer is wiped). */
export function fromBase64(text: string, fail: () => Error): Uint8Array {
  if (text.length % 4 !== 0 || !BASE64_RE.test(text)) throw fail();
  const tmp = Buffer.from(text, 'base64');
  const out = new Uint8Array(tmp);
  tmp.fill(0);
  return out;
}

// ── Errors ─────────────────────────────────────────────────────────────────────────────────────

type ErrorClass = new (message: string) => KeywardenError;

const ERROR_CLASSES: Partial<Record<KeywardenErrorCode, ErrorClass>> = {
  KW_FORMAT: FormatError,
  KW_BAD_INPUT: InvalidInputError,
  KW_WEAK_KEY: WeakKeyMaterialError,
  KW_KEY_NOT_FOUND: KeyNotFoundError,
  KW_KEY_EXISTS: KeyExistsError,
  KW_KEY_STATE: KeyStateError,
  KW_KEYSTORE_SEALED: KeystoreSealedError,
  KW_UNSEAL: UnsealError,
  KW_UNSUPPORTED: UnsupportedCapabilityError,
  KW_USAGE_LIMIT: UsageLimitError,
  KW_UNEXPECTED_KEY: UnexpectedKeyError,
  KW_STORE: KeyStoreError,
  KW_STORE_CORRUPT: StoreCorruptError,
  KW_NATIVE_ADDON: NativeAddonError,
  KW_STORE_REPLACED: StoreReplacedError,
  KW_ROOT_DESTROYED: RootDestroyedError,
  KW_ROOT_MISSING: RootMissingError,
  KW_SHARE: ShareError,
  KW_CLOSED: ClosedError,
  KW_AGENT: AgentError,
  KW_AGENT_UNAVAILABLE: AgentUnavailableError,
  KW_AGENT_PROTOCOL: AgentProtocolError,
  KW_AGENT_VERSION: AgentVersionError,
  KW_KEY_COMPROMISED: KeyCompromisedError,
  KW_KEY_RETIRED: KeyVersionRetiredError,
  KW_KEY_DESTROYED: KeyDestroyedError,
  KW_CONFLICT: ConflictError,
  KW_ROOT_UNAVAILABLE: RootUnavailableError,
  KW_ROOT_DEVICE: RootDeviceError,
  KW_ROOT_LOCKOUT: RootLockoutError,
  KW_CEREMONY: CeremonyError,
  KW_CEREMONY_PENDING: CeremonyPendingError,
  KW_DENIED: AccessDeniedError,
  KW_AUDIT: AuditError,
};

const MAX_MESSAGE_CHARS = 2000;

function oneLine(message: string): string {
  const s = message.replace(/\s*[\r\n]+\s*/g, ' ').trim();
  return s.length > MAX_MESSAGE_CHARS ? `${s.slice(0, MAX_MESSAGE_CHARS)}…` : s;
}

/**
 * What crosses the socket for a failure. Keywarden's messages are made to be shown (they carry
 * no secret); anything else becomes a generic internal error, and the agent logs it locally.
 */
export function errorToWire(err: unknown): WireError {
  if (KeywardenError.isInstance(err)) return { code: err.code, message: oneLine(err.message) };
  return { code: INTERNAL_ERROR, message: "agent: internal error (see the agent's log)" };
}

/** The error a client throws for a wire error: the matching KeywardenError subclass, by code. */
export function errorFromWire(wire: unknown): KeywardenError {
  if (!isPlainObject(wire) || typeof wire.code !== 'string' || typeof wire.message !== 'string') {
    return new AgentProtocolError('agent: malformed error response');
  }
  const message = oneLine(wire.message);
  if (wire.code === 'KW_DECRYPT') {
    // DecryptionError builds its (fixed) message from the component it names.
    const component = /^([a-z][a-z ]{0,31}): decryption failed/.exec(message)?.[1] ?? 'envelope';
    return new DecryptionError(component);
  }
  const cls = ERROR_CLASSES[wire.code as KeywardenErrorCode];
  if (cls) return new cls(message);
  // KW_AGENT_INTERNAL, or a code from a newer agent.
  return new AgentError(message);
}

// ── Key metadata ───────────────────────────────────────────────────────────────────────────────

/** Key metadata on the wire: the same JSON shape as the CLI's `key show --json`. */
export function keyInfoToWire(key: KeyInfo): Record<string, unknown> {
  return {
    id: key.id,
    name: key.name,
    scope: { ...key.scope },
    primaryVersion: key.primaryVersion,
    createdAt: key.createdAt.toISOString(),
    updatedAt: key.updatedAt.toISOString(),
    versions: key.versions.map((v) => ({
      version: v.version,
      state: v.state,
      rootId: v.rootId,
      createdAt: v.createdAt.toISOString(),
      updatedAt: v.updatedAt.toISOString(),
    })),
  };
}

function malformedKey(): AgentProtocolError {
  return new AgentProtocolError('agent: malformed key metadata in the response');
}

function date(v: unknown): Date {
  const d = typeof v === 'string' ? new Date(v) : new Date(Number.NaN);
  if (Number.isNaN(d.getTime())) throw malformedKey();
  return d;
}

function str(v: unknown): string {
  if (typeof v !== 'string') throw malformedKey();
  return v;
}

function int(v: unknown): number {
  if (typeof v !== 'number' || !Number.isSafeInteger(v)) throw malformedKey();
  return v;
}

export function keyInfoFromWire(v: unknown): KeyInfo {
  if (!isPlainObject(v) || !isPlainObject(v.scope) || !Array.isArray(v.versions)) throw malformedKey();
  const scope: Record<string, string> = {};
  for (const [k, s] of Object.entries(v.scope)) scope[k] = str(s);
  return {
    id: str(v.id),
    name: str(v.name),
    scope,
    primaryVersion: int(v.primaryVersion),
    createdAt: date(v.createdAt),
    updatedAt: date(v.updatedAt),
    versions: v.versions.map((x: unknown) => {
      if (!isPlainObject(x)) throw malformedKey();
      return {
        version: int(x.version),
        state: str(x.state) as KeyInfo['versions'][number]['state'],
        rootId: str(x.rootId),
        createdAt: date(x.createdAt),
        updatedAt: date(x.updatedAt),
      };
    }),
  };
}
