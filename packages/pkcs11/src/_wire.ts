/**
 * The pool's wire format: a batch of requests, and a chunk of replies, each one flat binary frame
 * (one Uint8Array), written and read by hand. Both channels carry these frames: a thread gets the
 * frame's buffer transferred, a child process gets it over fork's IPC channel (the V8 serializer
 * then copies one typed array as raw bytes, the cheapest thing it can send).
 *
 * Why by hand (issue #8, the main process's share of each request): the frames they replace were
 * arrays of objects (one per request, one per reply) that the V8 serializer walked field by field
 * and the other side rebuilt field by field, and each request was first copied into a wire object
 * (Object.entries, one array per byte field); a CPU profile of the host under full load had that,
 * the garbage it made and the per-request timers as the largest part of the host's own work.
 *
 * Little-endian. A batch frame:
 *
 *   u32 count, then per request: u32 seq, u8 op (OPS index; 255: u8 length ‖ latin1 name follows),
 *   u8 field count, then per field: u8 name (FIELDS index; 255: u8 length ‖ latin1 name follows),
 *   u8 type, value:
 *     0 bytes    u32 length ‖ bytes
 *     1 string   u32 length ‖ UTF-8
 *     2 number   f64
 *     3 true, 4 false (no value)
 *     5 other    u32 length ‖ v8.serialize(value) (rare: nothing on the hot path)
 *
 * A reply frame: u8 flags (bit 0: the last chunk of its batch), u32 count, then per reply: u32
 * seq, u8 kind, value:
 *     0 ok, bytes      u32 length ‖ bytes (ciphertext, opened key material, random bytes)
 *     1 ok, no value
 *     2 ok, a value    u32 length ‖ v8.serialize(value)
 *     3 failure        u32 length ‖ v8.serialize(WorkerFailure)
 *
 * Secrets: a request's key material and PIN, and a reply's opened key material, are in a frame.
 * The writer's scratch is wiped as soon as a frame is copied out of it; whoever receives a frame
 * wipes it once it has been read (decoded byte fields are views of it: the worker wipes a batch
 * once the batch is done; the pool copies each byte result out, then wipes the reply frame).
 */
import { deserialize, serialize } from 'node:v8';

const OPS = [
  'open',
  'login',
  'forget',
  'logout',
  'info',
  'generate',
  'exists',
  'encrypt',
  'decrypt',
  'random',
  'destroy',
  'close',
  'crash',
  'finalize',
  'close-all',
  'stall',
  'kp-generate',
  'kp-sign',
  'kp-destroy',
  'kp-algorithms',
] as const;
const FIELDS = [
  'label',
  'id',
  'iv',
  'aad',
  'data',
  'pin',
  'hold',
  'usage',
  'length',
  'prefix',
  'algorithm',
  'ms',
] as const;
const OP_CODE = new Map<string, number>(OPS.map((o, i) => [o, i]));
const FIELD_CODE = new Map<string, number>(FIELDS.map((f, i) => [f, i]));
const INLINE = 255;

const T_BYTES = 0;
const T_STRING = 1;
const T_NUMBER = 2;
const T_TRUE = 3;
const T_FALSE = 4;
const T_OTHER = 5;

export const R_BYTES = 0;
export const R_NONE = 1;
export const R_VALUE = 2;
export const R_FAILURE = 3;

/** A growable little-endian writer over one reused scratch buffer. */
export class FrameWriter {
  #buf: Buffer;
  #off = 0;

  constructor(initial = 16_384) {
    this.#buf = Buffer.allocUnsafeSlow(initial).fill(0);
  }

  get length(): number {
    return this.#off;
  }

  #room(n: number): void {
    if (this.#off + n <= this.#buf.length) return;
    let size = this.#buf.length * 2;
    while (size < this.#off + n) size *= 2;
    const next = Buffer.allocUnsafeSlow(size).fill(0);
    this.#buf.copy(next, 0, 0, this.#off);
    this.#buf.fill(0, 0, this.#off);
    this.#buf = next;
  }

  u8(v: number): void {
    this.#room(1);
    this.#buf[this.#off++] = v;
  }

  u32(v: number): void {
    this.#room(4);
    this.#buf.writeUInt32LE(v, this.#off);
    this.#off += 4;
  }

  f64(v: number): void {
    this.#room(8);
    this.#buf.writeDoubleLE(v, this.#off);
    this.#off += 8;
  }

  bytes(b: Uint8Array): void {
    this.u32(b.length);
    this.#room(b.length);
    this.#buf.set(b, this.#off);
    this.#off += b.length;
  }

  string(s: string): void {
    const n = Buffer.byteLength(s, 'utf8');
    this.u32(n);
    this.#room(n);
    this.#buf.write(s, this.#off, n, 'utf8');
    this.#off += n;
  }

  latin1(s: string): void {
    this.u8(s.length);
    this.#room(s.length);
    this.#buf.write(s, this.#off, s.length, 'latin1');
    this.#off += s.length;
  }

  /** Reserve a u32 to fill in later (a count known only at the end). */
  mark(): number {
    this.#room(4);
    const at = this.#off;
    this.#off += 4;
    return at;
  }

  patch(at: number, v: number): void {
    this.#buf.writeUInt32LE(v, at);
  }

  setU8(at: number, v: number): void {
    this.#buf[at] = v;
  }

  /** The frame so far, copied into a buffer of its own; the scratch is wiped and reset. */
  take(): Uint8Array {
    const out = new Uint8Array(this.#off);
    out.set(this.#buf.subarray(0, this.#off));
    this.#buf.fill(0, 0, this.#off);
    this.#off = 0;
    return out;
  }
}

/** Append one request (its fields: every own enumerable property but `seq` and `op`). */
export function writeRequest(w: FrameWriter, seq: number, request: Readonly<Record<string, unknown>>): void {
  w.u32(seq);
  const op = request.op as string;
  const code = OP_CODE.get(op);
  if (code === undefined) {
    w.u8(INLINE);
    w.latin1(op);
  } else {
    w.u8(code);
  }
  const countAt = w.length;
  w.u8(0);
  let n = 0;
  for (const name in request) {
    if (name === 'op' || name === 'seq') continue;
    const v = request[name];
    if (v === undefined) continue;
    const f = FIELD_CODE.get(name);
    if (f === undefined) {
      w.u8(INLINE);
      w.latin1(name);
    } else {
      w.u8(f);
    }
    if (v instanceof Uint8Array) {
      w.u8(T_BYTES);
      w.bytes(v);
    } else if (typeof v === 'string') {
      w.u8(T_STRING);
      w.string(v);
    } else if (typeof v === 'number') {
      w.u8(T_NUMBER);
      w.f64(v);
    } else if (v === true) {
      w.u8(T_TRUE);
    } else if (v === false) {
      w.u8(T_FALSE);
    } else {
      w.u8(T_OTHER);
      w.bytes(serialize(v));
    }
    n++;
  }
  if (n > 254) throw new RangeError('pkcs11 wire: too many fields in a request');
  w.setU8(countAt, n);
}

/** A little-endian reader over one frame. */
export class FrameReader {
  readonly #b: Buffer;
  off = 0;

  constructor(frame: Uint8Array) {
    this.#b = Buffer.from(frame.buffer, frame.byteOffset, frame.byteLength);
  }

  get done(): boolean {
    return this.off >= this.#b.length;
  }

  u8(): number {
    const v = this.#b[this.off];
    if (v === undefined) throw new RangeError('pkcs11 wire: truncated frame');
    this.off++;
    return v;
  }

  u32(): number {
    const v = this.#b.readUInt32LE(this.off);
    this.off += 4;
    return v;
  }

  f64(): number {
    const v = this.#b.readDoubleLE(this.off);
    this.off += 8;
    return v;
  }

  /** A view of the next length-prefixed bytes (no copy). */
  view(): Uint8Array {
    const n = this.u32();
    if (this.off + n > this.#b.length) throw new RangeError('pkcs11 wire: truncated frame');
    const v = new Uint8Array(this.#b.buffer, this.#b.byteOffset + this.off, n);
    this.off += n;
    return v;
  }

  string(): string {
    const n = this.u32();
    if (this.off + n > this.#b.length) throw new RangeError('pkcs11 wire: truncated frame');
    const s = this.#b.toString('utf8', this.off, this.off + n);
    this.off += n;
    return s;
  }

  latin1(): string {
    const n = this.u8();
    const s = this.#b.toString('latin1', this.off, this.off + n);
    this.off += n;
    return s;
  }
}

/** Every request of a batch frame; byte fields are views of the frame. */
export function readRequests(frame: Uint8Array): Array<Record<string, unknown> & { seq: number; op: string }> {
  const r = new FrameReader(frame);
  const count = r.u32();
  const out: Array<Record<string, unknown> & { seq: number; op: string }> = [];
  for (let i = 0; i < count; i++) {
    const seq = r.u32();
    const code = r.u8();
    const op = code === INLINE ? r.latin1() : (OPS[code] as string);
    const req: Record<string, unknown> & { seq: number; op: string } = { seq, op };
    const fields = r.u8();
    for (let j = 0; j < fields; j++) {
      const f = r.u8();
      const name = f === INLINE ? r.latin1() : (FIELDS[f] as string);
      const type = r.u8();
      switch (type) {
        case T_BYTES:
          req[name] = r.view();
          break;
        case T_STRING:
          req[name] = r.string();
          break;
        case T_NUMBER:
          req[name] = r.f64();
          break;
        case T_TRUE:
          req[name] = true;
          break;
        case T_FALSE:
          req[name] = false;
          break;
        default:
          req[name] = deserialize(r.view());
      }
    }
    out.push(req);
  }
  return out;
}

/** Append one reply. */
export function writeReply(w: FrameWriter, seq: number, ok: boolean, value: unknown): void {
  w.u32(seq);
  if (!ok) {
    w.u8(R_FAILURE);
    w.bytes(serialize(value));
  } else if (value instanceof Uint8Array) {
    w.u8(R_BYTES);
    w.bytes(value);
  } else if (value === undefined) {
    w.u8(R_NONE);
  } else {
    w.u8(R_VALUE);
    w.bytes(serialize(value));
  }
}

/** Flag of a reply frame: the last chunk of its batch (the worker is done with that batch). */
export const LAST_CHUNK = 1;

/** Visit every reply of a reply frame: byte values are views of the frame (copy what you keep).
 * Returns the frame's flags. */
export function readReplies(
  frame: Uint8Array,
  each: (seq: number, kind: number, value: Uint8Array | undefined) => void,
): number {
  const r = new FrameReader(frame);
  const flags = r.u8();
  const count = r.u32();
  for (let i = 0; i < count; i++) {
    const seq = r.u32();
    const kind = r.u8();
    each(seq, kind, kind === R_NONE ? undefined : r.view());
  }
  return flags;
}

export { deserialize as decodeValue };
