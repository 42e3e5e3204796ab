/**
 * The worker pool that keeps PKCS#11 calls off the event loop (workers are threads, or with
 * kind "processes" child processes: _process-channel.ts; the batch protocol is the same). graphene-pk11 and pkcs11js call the
 * module synchronously, so one C_Encrypt run on the main thread would stall every other request.
 * Each worker thread (_worker.ts) owns one session, so no session is ever used by two threads at
 * once (PKCS#11 v2.40 §5.1); the pool is sized to the cores; a request goes to the worker with the
 * fewest requests in flight.
 *
 * Faults: every request has a deadline (a worker that does not answer in time is replaced and the
 * request fails with RootUnavailableError); a worker that dies (a crash, an uncaught error) is
 * replaced at once, and its requests in flight are sent again to the new worker when they are
 * idempotent (encrypt, decrypt, random, exists, info) or fail with RootDeviceError when not (a key
 * generation may or may not have happened). The replacement opens its session and, while the root
 * is unsealed, logs in with the PIN the pool holds; nothing needs a restart.
 */
import { availableParallelism } from 'node:os';
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { Worker } from 'node:worker_threads';
import { wipe } from '@keywarden/core';
import { pinModule } from './_pin-module.js';
import { processChannel } from './_process-channel.js';
import type { WorkerBatch, WorkerBatchReply, WorkerConfig, WorkerFailure, WorkerRequest } from './_worker.js';
import { Pkcs11DeviceError, Pkcs11UnavailableError } from './errors.js';

/** What a request is, without its sequence number. */
export type PoolRequest = WorkerRequest extends infer R ? (R extends { seq: number } ? Omit<R, 'seq'> : never) : never;

/** Callers resumed per turn of the event loop (#settle). */
const SETTLE_PER_TURN = 16;

const IDEMPOTENT = new Set(['encrypt', 'decrypt', 'random', 'exists', 'info', 'open', 'forget', 'logout', 'close']);

/** The compiled worker: next to this file in dist/, or dist/ when the sources run (tests, vitest). */
function workerUrl(): URL {
  const here = new URL('./_worker.js', import.meta.url);
  if (existsSync(fileURLToPath(here))) return here;
  const built = new URL('../dist/_worker.js', import.meta.url);
  if (existsSync(fileURLToPath(built))) return built;
  throw new Pkcs11DeviceError('worker', '', 'the compiled worker (dist/_worker.js) is missing: run the package build');
}

interface Pending {
  seq: number;
  request: PoolRequest;
  resolve: (v: unknown) => void;
  reject: (e: Error) => void;
  timer: NodeJS.Timeout;
  retried: boolean;
}

/** What the pool holds of one worker, a thread or a child process (_process-channel.ts). */
export interface Channel {
  /** Send one batch. The batch's buffer is the channel's to wipe (transferred or serialized). */
  post(batch: WorkerBatch): void;
  /** Stop the worker now (a deadline passed: it may be stuck inside the module). */
  kill(): void;
  /** Stop the worker after the requests it was sent (pool closed); resolves once it is gone. */
  stop(): Promise<void>;
  ref(): void;
  unref(): void;
  /** The child's process id (processes only). */
  readonly pid?: number;
}

/** What a channel reports to its pool. */
export interface ChannelEvents {
  reply(reply: WorkerBatchReply): void;
  exit(): void;
}

/** Where the workers run: threads of this process (one loaded module, shared) or child processes
 * (a module, a C_Initialize and a login each). SoftHSM2 serialises the threads of one process
 * (docs/pkcs11.md), so only processes scale there. */
export type PoolKind = 'threads' | 'processes';

/** The kind a root gets when neither its options nor its URI name one: processes, the faster of
 * the two with 2 workers on SoftHSM2 (bench:pkcs11, 4 runs of 5, median 1.07 × a pool of 2
 * threads; docs/pkcs11.md "A pool of processes"). */
export const DEFAULT_POOL_KIND: PoolKind = 'processes';

function threadChannel(url: URL, config: WorkerConfig, on: ChannelEvents): Channel {
  const worker = new Worker(url, { workerData: config });
  // A pool with no requests in flight must not keep the process alive.
  worker.unref();
  worker.on('message', (reply: WorkerBatchReply) => on.reply(reply));
  worker.on('error', () => {
    // An uncaught exception in the worker: 'exit' follows and does the replacement.
  });
  worker.on('exit', () => on.exit());
  return {
    post: (batch) => worker.postMessage(batch, [batch.bytes.buffer as ArrayBuffer]),
    kill: () => void worker.terminate().catch(() => undefined),
    stop: () =>
      worker.terminate().then(
        () => undefined,
        () => undefined,
      ),
    ref: () => worker.ref(),
    unref: () => worker.unref(),
  };
}

interface Slot {
  channel: Channel;
  inFlight: Map<number, Pending>;
  alive: boolean;
  /** Requests waiting for the end of this turn of the event loop, sent then as one message. */
  outbox: WorkerRequest[];
}

export interface PoolOptions extends WorkerConfig {
  /** Threads or child processes (default DEFAULT_POOL_KIND). */
  kind?: PoolKind;
  /** Processes only: the environment of the children (default: this process's). The root leaves
   * out the variable a pin-source=env: names, so that no child ever holds the PIN in its env. */
  env?: Readonly<Record<string, string | undefined>>;
  /** Number of workers (default: the number of cores, os.availableParallelism()). */
  size?: number;
  /** Deadline of one request in milliseconds (default 15 000). */
  callTimeoutMs?: number;
}

export class WorkerPool {
  readonly size: number;
  readonly kind: PoolKind;
  readonly #env: Readonly<Record<string, string | undefined>> | undefined;
  readonly #config: WorkerConfig;
  readonly #timeout: number;
  readonly #slots: Slot[] = [];
  #seq = 0;
  #closed = false;
  /** Held while the root is unsealed, so that a replacement worker can log in. */
  #pin: Uint8Array | undefined;
  /** Settlements not yet run (#settle), and whether a drain is under way. */
  readonly #ready: Array<() => void> = [];
  #draining = false;
  /** Workers replaced since the pool started (crashes, deadlines): for status and the tests. */
  replaced = 0;

  constructor(options: PoolOptions) {
    this.#config = { modulePath: options.modulePath, token: options.token };
    this.kind = options.kind ?? DEFAULT_POOL_KIND;
    this.#env = options.env;
    // Before any worker loads it: the module's destructors must never run on a worker's teardown.
    if (this.kind === 'threads') pinModule(options.modulePath);
    this.size = Math.max(1, Math.min(64, Math.floor(options.size ?? availableParallelism())));
    this.#timeout = options.callTimeoutMs ?? 15_000;
  }

  /** Start the workers; each opens its session (the first failure is thrown, the pool closed). */
  async start(): Promise<void> {
    const url = workerUrl();
    for (let i = 0; i < this.size; i++) this.#slots.push(this.#spawn(url));
    try {
      await Promise.all(this.#slots.map((s) => this.#send(s, { op: 'open' })));
    } catch (err) {
      await this.close();
      throw err;
    }
  }

  /** One request on the least busy worker. Byte fields are moved to the worker (pass copies). */
  call<T>(request: PoolRequest): Promise<T> {
    if (this.#closed) return Promise.reject(new Pkcs11UnavailableError('worker', '', 'the pool is closed'));
    let best = this.#slots[0] as Slot;
    for (const s of this.#slots) if (s.alive && (!best.alive || s.inFlight.size < best.inFlight.size)) best = s;
    return this.#send(best, request) as Promise<T>;
  }

  /** The same request on one given worker (index), e.g. the one login that checks a PIN. */
  callOn<T>(index: number, request: PoolRequest): Promise<T> {
    const slot = this.#slots[index % this.#slots.length] as Slot;
    return this.#send(slot, request) as Promise<T>;
  }

  /** The request on every worker (copies of byte fields made by `make`). */
  async broadcast(make: () => PoolRequest): Promise<void> {
    await Promise.all(this.#slots.map((s) => this.#send(s, make())));
  }

  /** Hold the PIN for replacement workers (a copy; the caller keeps its own). Undefined: forget. */
  holdPin(pin: Uint8Array | undefined): void {
    wipe(this.#pin);
    this.#pin = pin?.slice();
  }

  /** The child processes' ids (processes; empty for threads): for the tests. */
  pids(): number[] {
    return this.#slots.flatMap((s) => (s.alive && s.channel.pid !== undefined ? [s.channel.pid] : []));
  }

  /** Requests in flight per worker (for status and tests). */
  inFlight(): number[] {
    return this.#slots.map((s) => s.inFlight.size);
  }

  /** Test hook: the worker at `index` dies at once, as a crash would. */
  crashWorker(index: number): void {
    const slot = this.#slots[index % this.#slots.length] as Slot;
    this.#enqueue(slot, { seq: ++this.#seq, op: 'crash' });
  }

  /** Test hook: C_Finalize from the worker at `index`, after the requests it was sent before. With
   * one worker no other thread is inside the module then (C_Finalize while another thread is in a
   * call is undefined behaviour: PKCS#11 v2.40 §5.4; SoftHSM2 can crash). */
  finalizeModule(index: number): Promise<void> {
    const slot = this.#slots[index % this.#slots.length] as Slot;
    return this.#send(slot, { op: 'finalize' }) as Promise<void>;
  }

  /** Test hook: C_CloseAllSessions from the worker at `index` (its module instance: for a pool of
   * processes, the only way to close a child's sessions under it), between two of its requests. */
  closeAllSessions(index: number): Promise<void> {
    const slot = this.#slots[index % this.#slots.length] as Slot;
    return this.#send(slot, { op: 'close-all' }) as Promise<void>;
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    this.holdPin(undefined);
    await Promise.all(
      this.#slots.map(async (s) => {
        if (s.alive) {
          await this.#send(s, { op: 'close' }, true).catch(() => undefined);
        }
        s.alive = false;
        await s.channel.stop();
      }),
    );
  }

  #spawn(url: URL): Slot {
    const slot = { inFlight: new Map(), alive: true, outbox: [] } as unknown as Slot;
    const on: ChannelEvents = { reply: (reply) => this.#onReply(slot, reply), exit: () => this.#onExit(slot) };
    slot.channel =
      this.kind === 'processes'
        ? processChannel(url, this.#config, this.#env, on)
        : threadChannel(url, this.#config, on);
    return slot;
  }

  #onReply(slot: Slot, { replies, done, packed }: WorkerBatchReply): void {
    const take = (seq: number): Pending | undefined => {
      const p = slot.inFlight.get(seq);
      if (!p) return undefined;
      slot.inFlight.delete(seq);
      clearTimeout(p.timer);
      wipeRequest(p.request);
      return p;
    };
    for (let i = 0; i < done.length; i += 3) {
      const p = take(done[i] as number);
      if (!p) continue;
      const off = done[i + 1] as number;
      const bytes = packed.slice(off, off + (done[i + 2] as number));
      this.#settle(() => p.resolve(bytes));
    }
    for (const reply of replies) {
      const p = take(reply.seq);
      if (!p) continue;
      if (!reply.ok) {
        const err = toError(reply.error);
        this.#settle(() => p.reject(err));
      } else {
        const result = reply.result;
        this.#settle(() => p.resolve(result));
      }
    }
    // Each result has its own copy now: no key material stays in the batch buffer.
    wipe(packed);
    this.#refreshRef(slot);
  }

  /** Resume a caller from a setImmediate, at most SETTLE_PER_TURN per turn of the event loop
   * (issue #8: event-loop delay under full load). Never from the message handler itself: Node
   * delivers a port's messages in one loop (up to 1000 per call), so callers resumed there send
   * new requests whose replies arrive while that loop still runs, and a busy pool would hold the
   * poll phase (measured: 60-100 ms stalls); each resumed caller also runs on to its next await. */
  #settle(f: () => void): void {
    this.#ready.push(f);
    if (this.#draining) return;
    this.#draining = true;
    setImmediate(() => this.#drain());
  }

  #drain(): void {
    const batch = this.#ready.splice(0, SETTLE_PER_TURN);
    for (const f of batch) f();
    if (this.#ready.length > 0) setImmediate(() => this.#drain());
    else this.#draining = false;
  }

  #refreshRef(slot: Slot): void {
    if (slot.inFlight.size > 0) slot.channel.ref();
    else slot.channel.unref();
  }

  #onExit(slot: Slot): void {
    const wasAlive = slot.alive;
    slot.alive = false;
    const pending = [...slot.inFlight.values()];
    slot.inFlight.clear();
    slot.outbox = [];
    if (this.#closed || !wasAlive) {
      for (const p of pending) {
        clearTimeout(p.timer);
        wipeRequest(p.request);
        p.reject(new Pkcs11UnavailableError('worker', '', 'the pool was closed with the request in flight'));
      }
      return;
    }
    // Replace the worker in place: it opens a session and logs in before anything else it is sent.
    this.replaced++;
    const index = this.#slots.indexOf(slot);
    const next = this.#spawn(workerUrl());
    if (index >= 0) this.#slots[index] = next;
    this.#send(next, { op: 'open' }).catch(() => undefined);
    if (this.#pin) this.#send(next, { op: 'login', pin: this.#pin.slice(), hold: true }).catch(() => undefined);
    for (const p of pending) {
      clearTimeout(p.timer);
      if (IDEMPOTENT.has(p.request.op) && !p.retried) {
        this.#send(next, p.request, false, true).then(p.resolve, p.reject);
      } else {
        wipeRequest(p.request);
        p.reject(new Pkcs11DeviceError('worker', '', 'the worker serving the request stopped; it was not retried'));
      }
    }
  }

  /** Send `request` (structured-cloned: the worker gets its own copy and wipes it). The pool wipes
   * the request's secret fields (data, pin) once it is settled and will not be sent again. */
  #send(slot: Slot, request: PoolRequest, closing = false, retried = false): Promise<unknown> {
    if (this.#closed && !closing) {
      wipeRequest(request);
      return Promise.reject(new Pkcs11UnavailableError('worker', '', 'the pool is closed'));
    }
    return new Promise((resolve, reject) => {
      const seq = ++this.#seq;
      const timer = setTimeout(() => {
        if (!slot.inFlight.delete(seq)) return;
        wipeRequest(request);
        reject(new Pkcs11UnavailableError('worker', '', `no answer within ${this.#timeout} ms`));
        // The worker may be stuck in the module: replace it (its other requests go to the new one).
        if (slot.alive) slot.channel.kill();
      }, this.#timeout);
      timer.unref();
      const p: Pending = { seq, request, resolve, reject, timer, retried };
      slot.inFlight.set(seq, p);
      this.#refreshRef(slot);
      this.#enqueue(slot, { ...request, seq } as WorkerRequest);
    });
  }

  /** Queue `message` for `slot`; the queue goes out as one message at the end of this turn. */
  #enqueue(slot: Slot, message: WorkerRequest): void {
    slot.outbox.push(message);
    if (slot.outbox.length === 1) queueMicrotask(() => this.#flush(slot));
  }

  #flush(slot: Slot): void {
    const batch = slot.outbox;
    slot.outbox = [];
    if (batch.length === 0) return;
    const message = pack(batch);
    try {
      slot.channel.post(message);
    } catch (err) {
      wipe(message.bytes);
      for (const m of batch) {
        const p = slot.inFlight.get(m.seq);
        if (!p) continue;
        slot.inFlight.delete(m.seq);
        clearTimeout(p.timer);
        wipeRequest(p.request);
        p.reject(new Pkcs11DeviceError('worker', '', 'the request could not be sent to the worker', { cause: err }));
      }
    }
  }
}

/** A worker's failure as a typed error; the root refines "decrypt" and "missing". */
export class WorkerFailureError extends Error {
  constructor(readonly failure: WorkerFailure) {
    super(`pkcs11: ${failure.fn}: ${failure.ckr || failure.kind}`);
  }
}

function toError(f: WorkerFailure): Error {
  return new WorkerFailureError(f);
}

/** The batch as it crosses to the worker (WorkerBatch): the requests' byte fields copied into one
 * buffer, transferred with the message, so the pool keeps no copy (its own requests are wiped when
 * settled) and the worker wipes it when the batch is done. */
function pack(batch: WorkerRequest[]): WorkerBatch {
  let total = 0;
  for (const r of batch) {
    for (const v of Object.values(r)) if (v instanceof Uint8Array) total += v.length;
  }
  const bytes = new Uint8Array(total);
  let off = 0;
  const requests = batch.map((r) => {
    const wire: WorkerBatch['requests'][number] = { seq: r.seq, op: r.op };
    let fields: Array<string | number> | undefined;
    for (const [name, v] of Object.entries(r)) {
      if (v instanceof Uint8Array) {
        bytes.set(v, off);
        (fields ??= []).push(name, off, v.length);
        off += v.length;
      } else {
        wire[name] = v;
      }
    }
    if (fields) wire.b = fields;
    return wire;
  });
  return { requests, bytes };
}

function wipeRequest(request: PoolRequest): void {
  const r = request as { data?: Uint8Array; pin?: Uint8Array };
  if (r.data instanceof Uint8Array) wipe(r.data);
  if (r.pin instanceof Uint8Array) wipe(r.pin);
}
