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
import { processInitLock, releaseInitLockOf } from './_init-lock.js';
import { pinModule } from './_pin-module.js';
import { processChannel } from './_process-channel.js';
import type { WorkerBatch, WorkerBatchReply, WorkerConfig, WorkerFailure, WorkerRequest } from './_worker.js';
import {
  decodeValue,
  FrameWriter,
  LAST_CHUNK,
  R_BYTES,
  R_FAILURE,
  R_NONE,
  readReplies,
  writeRequest,
} from './_wire.js';
import { Pkcs11DeviceError, Pkcs11UnavailableError } from './errors.js';

/** What a request is, without its sequence number. */
export type PoolRequest = WorkerRequest extends infer R ? (R extends { seq: number } ? Omit<R, 'seq'> : never) : never;

/** Callers resumed per turn of the event loop (#settle). */
const SETTLE_PER_TURN = 16;

/** Batches a worker may have at once. Requests made while it works on one gather in the outbox and
 * go as one batch when it finishes (its last reply chunk): the fewer the messages, the less the host
 * and the worker pay per request (a write, a wake-up, a read, a frame each). Two (the next batch
 * waiting in the channel, so that the worker never waits for the host) was the rule while workers
 * answered every 16 requests; since they answer once per batch, one is cheaper on both sides
 * (issue #8; process pools, 64 callers, alternating: a pool of 2 at 15.8 requests a batch against
 * 10.7, host 73.6-75.6 µs per op against 79-89.7, and 6,041-6,538 ops/s against 5,313-5,859, 4 of
 * 4 runs; a pool of 1 at 31 against 21, host 45-50.7 against 46.6-70.7, no slower, 3 runs). */
const PIPELINE_DEPTH = 1;
/** An outbox this long goes out whatever the depth (a bound on one frame). */
const MAX_BATCH = 256;

const IDEMPOTENT = new Set(['encrypt', 'decrypt', 'random', 'exists', 'info', 'open', 'forget', 'logout', 'close']);

/** The compiled worker: next to this file in dist/, or dist/ when the sources run (tests, vitest). */
function workerUrl(): URL {
  const here = new URL('./_worker.js', import.meta.url);
  if (existsSync(fileURLToPath(here))) return here;
  const built = new URL('../dist/_worker.js', import.meta.url);
  if (existsSync(fileURLToPath(built))) return built;
  throw new Pkcs11DeviceError('worker', '', 'the compiled worker (dist/_worker.js) is missing: run the package build');
}

export interface Pending {
  seq: number;
  request: PoolRequest;
  resolve: (v: unknown) => void;
  reject: (e: Error) => void;
  /** performance.now() past which the request fails (callTimeoutMs after it was sent). */
  deadline: number;
  retried: boolean;
  /** Set when the answer came, until #drain resumes the caller. */
  value: unknown;
  failed: Error | undefined;
  /** Posted to the worker (not only queued in the outbox). */
  sent: boolean;
}

/** A worker's requests in flight, oldest first. Sequence numbers grow, and a worker answers its
 * requests in the order they were sent, so a reply takes the oldest (a scan from the front finds
 * it at once). A ring that only grows, not a Map: a Map emptied as fast as it fills (a batch's
 * replies all at once) shrinks and regrows its hash table batch after batch, which was a visible
 * share of the host's allocation and page faults under full load (perf: Runtime_MapShrink under
 * Map.prototype.delete, issue #8). */
export class InFlight {
  #ring: Array<Pending | undefined> = new Array<Pending | undefined>(64).fill(undefined);
  /** Index of the oldest entry, and the entries from there (holes included: taken out of turn). */
  #head = 0;
  #used = 0;
  /** Requests in flight (holes not counted). */
  size = 0;

  push(p: Pending): void {
    if (this.#used === this.#ring.length) this.#grow();
    this.#ring[(this.#head + this.#used) % this.#ring.length] = p;
    this.#used++;
    this.size++;
  }

  /** The request `seq` taken out, or undefined when it is no longer in flight (it expired). */
  take(seq: number): Pending | undefined {
    const ring = this.#ring;
    for (let k = 0; k < this.#used; k++) {
      const i = (this.#head + k) % ring.length;
      const p = ring[i];
      if (p === undefined) continue;
      if (p.seq > seq) return undefined;
      if (p.seq === seq) {
        ring[i] = undefined;
        this.size--;
        this.#trim();
        return p;
      }
    }
    return undefined;
  }

  /** The oldest request in flight. */
  first(): Pending | undefined {
    this.#trim();
    return this.#used > 0 ? this.#ring[this.#head] : undefined;
  }

  /** Every request in flight, oldest first (a copy). */
  values(): Pending[] {
    const out: Pending[] = [];
    for (let k = 0; k < this.#used; k++) {
      const p = this.#ring[(this.#head + k) % this.#ring.length];
      if (p !== undefined) out.push(p);
    }
    return out;
  }

  clear(): void {
    this.#ring.fill(undefined);
    this.#head = 0;
    this.#used = 0;
    this.size = 0;
  }

  #trim(): void {
    const ring = this.#ring;
    while (this.#used > 0 && ring[this.#head] === undefined) {
      this.#head = (this.#head + 1) % ring.length;
      this.#used--;
    }
    if (this.#used === 0) this.#head = 0;
  }

  #grow(): void {
    const next = new Array<Pending | undefined>(this.#ring.length * 2).fill(undefined);
    for (let k = 0; k < this.#used; k++) next[k] = this.#ring[(this.#head + k) % this.#ring.length];
    this.#ring = next;
    this.#head = 0;
  }
}

/** What waits in a slot's outbox: a request and its sequence number (test hooks have no Pending). */
interface Outgoing {
  seq: number;
  request: PoolRequest;
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
  // (The frame's buffer is transferred: this thread keeps no copy of it.)
  const worker = new Worker(url, { workerData: { ...config, initLock: processInitLock } });
  const tid = worker.threadId;
  // A pool with no requests in flight must not keep the process alive.
  worker.unref();
  worker.on('message', (reply: WorkerBatchReply) => on.reply(reply));
  worker.on('error', () => {
    // An uncaught exception in the worker: 'exit' follows and does the replacement.
  });
  worker.on('exit', () => {
    // Ended inside the module's load or C_Initialize (terminated at its deadline): the next one may go.
    releaseInitLockOf(processInitLock, tid);
    on.exit();
  });
  return {
    post: (batch) => worker.postMessage(batch, [batch.buffer as ArrayBuffer]),
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
  /** Requests sent and not answered, in the order sent: that is also their deadlines' order (every
   * deadline is callTimeoutMs after the send), so the first is the next to expire. */
  inFlight: InFlight;
  alive: boolean;
  /** Requests waiting for the end of this turn of the event loop, sent then as one message. */
  outbox: Outgoing[];
  /** Whether the channel is ref'd (requests in flight keep the process alive). */
  reffed: boolean;
  /** One deadline timer per worker, armed for its oldest request (not one timer per request). */
  timer: NodeJS.Timeout | undefined;
  /** Batches posted whose last chunk of replies has not come back. */
  batchesOut: number;
  /** A flush is queued (microtask). */
  flushQueued: boolean;
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
  /** Processes only: niceness added to each worker process (default DEFAULT_WORKER_NICE, 0). */
  workerNice?: number;
}

/** Niceness added to each worker process unless the root says otherwise: none. Running the
 * workers nicer than the host (workerNice 10) lowered the maximum event-loop delay when the
 * host's own workers were what kept it waiting (a process pool of 2 at full load, alternating:
 * 18-24 ms at 0, 13-16 ms at 10, same throughput), but on a machine busy with other work it cost
 * the workers their share of the cores (bench:pkcs11 at load 14: a process pool of 2 at 0.62 of
 * the raw process with niceness 10 against 0.80 at 0, and no lower delay): docs/pkcs11.md. */
export const DEFAULT_WORKER_NICE = 0;

export class WorkerPool {
  readonly size: number;
  readonly kind: PoolKind;
  readonly #env: Readonly<Record<string, string | undefined>> | undefined;
  readonly #nice: number;
  readonly #config: WorkerConfig;
  readonly #timeout: number;
  readonly #slots: Slot[] = [];
  #seq = 0;
  #closed = false;
  /** Held while the root is unsealed, so that a replacement worker can log in. */
  #pin: Uint8Array | undefined;
  /** Answered requests whose callers are not resumed yet (#settle), and whether a drain is under way. */
  #ready: Pending[] = [];
  #draining = false;
  /** Workers replaced since the pool started (crashes, deadlines): for status and the tests. */
  replaced = 0;
  /** The scratch every batch frame is written in (#flush is synchronous: one at a time). */
  readonly #writer = new FrameWriter();
  /** While set, only this worker is sent anything (closeAllSessions on threads). */
  #hold: Slot | undefined;
  /** For the tests: the other workers' requests in flight when the last closeAllSessions on a
   * pool of threads ran (0 unless the hold above failed). */
  exclusiveOthersInside: number | undefined;

  constructor(options: PoolOptions) {
    this.#config = { modulePath: options.modulePath, token: options.token };
    this.kind = options.kind ?? DEFAULT_POOL_KIND;
    this.#env = options.env;
    this.#nice = options.workerNice ?? DEFAULT_WORKER_NICE;
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

  /** One request on the least busy worker. `data` and `pin` are wiped once the request is settled
   * (pass copies); the other byte fields are only read (into the batch frame, and again if the
   * request is retried on a replacement worker): leave them unchanged until the call settles. */
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
    this.#enqueue(slot, { seq: ++this.#seq, request: { op: 'crash' } });
  }

  /** Test hook: the worker at `index` blocks for `ms` after the requests it was sent before, as a
   * call stuck inside the module would (the request's deadline then replaces the worker). */
  stallWorker(index: number, ms: number): Promise<void> {
    const slot = this.#slots[index % this.#slots.length] as Slot;
    return this.#send(slot, { op: 'stall', ms }) as Promise<void>;
  }

  /** Test hook: C_Finalize from the worker at `index`, after the requests it was sent before. With
   * one worker no other thread is inside the module then (C_Finalize while another thread is in a
   * call is undefined behaviour: PKCS#11 v2.40 §5.4; SoftHSM2 can crash). */
  finalizeModule(index: number): Promise<void> {
    const slot = this.#slots[index % this.#slots.length] as Slot;
    return this.#send(slot, { op: 'finalize' }) as Promise<void>;
  }

  /** Test hook: C_CloseAllSessions from the worker at `index` (its module instance: for a pool of
   * processes, the only way to close a child's sessions under it), between two of its requests.
   *
   * Threads share one module, and SoftHSM2 2.6 frees the Session objects in C_CloseAllSessions
   * (SessionManager::closeAllSessions, `delete *i`) while another thread that looked its session
   * up a moment before (HandleManager::getSession returns a bare pointer, SoftHSM.cpp
   * SymEncryptInit) still uses it: a use-after-free that killed the test process about once in
   * seven runs (docs/pkcs11.md, Faults). So for threads the call is made while no other worker
   * is inside the module: the other workers get nothing new (their requests wait in the outbox)
   * until every request already sent to them is answered; then the call runs, then they go on.
   * Their sessions are closed under them all the same, with requests waiting. */
  async closeAllSessions(index: number): Promise<void> {
    const slot = this.#slots[index % this.#slots.length] as Slot;
    if (this.kind !== 'threads') return this.#send(slot, { op: 'close-all' }) as Promise<void>;
    this.#hold = slot;
    try {
      const until = performance.now() + this.#timeout;
      while (this.#othersInside(slot) > 0) {
        if (performance.now() > until) throw new Pkcs11UnavailableError('worker', '', 'the other workers stayed busy');
        await new Promise((r) => setTimeout(r, 1));
      }
      this.exclusiveOthersInside = this.#othersInside(slot);
      await this.#send(slot, { op: 'close-all' });
    } finally {
      this.#hold = undefined;
      for (const s of this.#slots) if (s.outbox.length > 0) this.#flush(s);
    }
  }

  /** Requests sent to workers other than `slot` and not answered yet (they may be in the module). */
  #othersInside(slot: Slot): number {
    let n = 0;
    for (const s of this.#slots) {
      if (s === slot || !s.alive) continue;
      for (const p of s.inFlight.values()) if (p.sent) n++;
    }
    return n;
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
    const slot = {
      inFlight: new InFlight(),
      alive: true,
      outbox: [],
      reffed: false,
      timer: undefined,
      batchesOut: 0,
      flushQueued: false,
    } as unknown as Slot;
    const on: ChannelEvents = { reply: (reply) => this.#onReply(slot, reply), exit: () => this.#onExit(slot) };
    slot.channel =
      this.kind === 'processes'
        ? processChannel(url, this.#config, this.#env, on, this.#nice)
        : threadChannel(url, this.#config, on);
    return slot;
  }

  #onReply(slot: Slot, frame: WorkerBatchReply): void {
    let flags = 0;
    try {
      flags = readReplies(frame, (seq, kind, value) => {
        const p = slot.inFlight.take(seq);
        if (!p) return;
        wipeRequest(p.request);
        if (kind === R_BYTES) {
          // Each result gets its own copy: no key material stays in the frame (wiped below).
          p.value = (value as Uint8Array).slice();
        } else if (kind === R_FAILURE) {
          p.failed = toError(decodeValue(value as Uint8Array) as WorkerFailure);
        } else if (kind !== R_NONE) {
          p.value = decodeValue(value as Uint8Array);
        }
        this.#settle(p);
      });
    } finally {
      wipe(frame);
    }
    // A batch done: what gathered in the outbox meanwhile goes now, as one batch.
    if (flags & LAST_CHUNK && slot.batchesOut > 0) slot.batchesOut--;
    if (slot.outbox.length > 0 && !slot.flushQueued && slot.batchesOut < PIPELINE_DEPTH) this.#flush(slot);
    this.#refreshRef(slot);
  }

  /** Resume a caller from a setImmediate, at most SETTLE_PER_TURN per turn of the event loop
   * (issue #8: event-loop delay under full load). Never from the message handler itself: Node
   * delivers a port's messages in one loop (up to 1000 per call), so callers resumed there send
   * new requests whose replies arrive while that loop still runs, and a busy pool would hold the
   * poll phase (measured: 60-100 ms stalls); each resumed caller also runs on to its next await. */
  #settle(p: Pending): void {
    this.#ready.push(p);
    if (this.#draining) return;
    this.#draining = true;
    setImmediate(this.#drainBound);
  }

  readonly #drainBound = () => this.#drain();

  #drain(): void {
    const ready = this.#ready;
    const n = Math.min(ready.length, SETTLE_PER_TURN);
    const batch = n === ready.length ? ready : ready.slice(0, n);
    this.#ready = n === ready.length ? [] : ready.slice(n);
    for (const p of batch) {
      const { value, failed } = p;
      p.value = undefined;
      p.failed = undefined;
      if (failed) p.reject(failed);
      else p.resolve(value);
    }
    if (this.#ready.length > 0) setImmediate(this.#drainBound);
    else this.#draining = false;
  }

  /** Ref the channel while requests are in flight, unref it when none are (only on a change). */
  #refreshRef(slot: Slot): void {
    const want = slot.inFlight.size > 0;
    if (want === slot.reffed) return;
    slot.reffed = want;
    if (want) slot.channel.ref();
    else slot.channel.unref();
  }

  /** Arm the slot's deadline timer for its oldest request, unless it is armed already. */
  #arm(slot: Slot): void {
    if (slot.timer) return;
    const first = slot.inFlight.first();
    if (!first) return;
    const wait = Math.max(0, first.deadline - performance.now()) + 1;
    slot.timer = setTimeout(() => this.#expire(slot), wait);
    slot.timer.unref();
  }

  /** Fail every request of `slot` past its deadline (Pkcs11UnavailableError) and replace the worker:
   * it may be stuck inside the module (its other requests then go to the replacement). */
  #expire(slot: Slot): void {
    slot.timer = undefined;
    const now = performance.now();
    let expired = 0;
    for (const p of slot.inFlight.values()) {
      if (p.deadline > now) break;
      slot.inFlight.take(p.seq);
      wipeRequest(p.request);
      p.reject(new Pkcs11UnavailableError('worker', '', `no answer within ${this.#timeout} ms`));
      expired++;
    }
    if (expired > 0 && slot.alive) slot.channel.kill();
    else this.#arm(slot);
  }

  #onExit(slot: Slot): void {
    const wasAlive = slot.alive;
    slot.alive = false;
    const pending = slot.inFlight.values();
    slot.inFlight.clear();
    slot.outbox = [];
    if (slot.timer) clearTimeout(slot.timer);
    slot.timer = undefined;
    if (this.#closed || !wasAlive) {
      for (const p of pending) {
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
      if (IDEMPOTENT.has(p.request.op) && !p.retried) {
        this.#send(next, p.request, false, true).then(p.resolve, p.reject);
      } else {
        wipeRequest(p.request);
        p.reject(new Pkcs11DeviceError('worker', '', 'the worker serving the request stopped; it was not retried'));
      }
    }
  }

  /** Send `request` (written into a batch frame: the worker gets its own copy and wipes it). The
   * pool wipes the request's secret fields (data, pin) once it is settled and will not be sent
   * again. No timer per request: the slot's one deadline timer (#arm) covers them all. */
  #send(slot: Slot, request: PoolRequest, closing = false, retried = false): Promise<unknown> {
    if (this.#closed && !closing) {
      wipeRequest(request);
      return Promise.reject(new Pkcs11UnavailableError('worker', '', 'the pool is closed'));
    }
    return new Promise((resolve, reject) => {
      const seq = ++this.#seq;
      const p: Pending = {
        seq,
        request,
        resolve,
        reject,
        deadline: performance.now() + this.#timeout,
        retried,
        value: undefined,
        failed: undefined,
        sent: false,
      };
      slot.inFlight.push(p);
      this.#refreshRef(slot);
      this.#arm(slot);
      this.#enqueue(slot, p);
    });
  }

  /** Queue `message` for `slot`. The outbox goes out as one message at the end of this turn when
   * the worker has fewer than PIPELINE_DEPTH batches, else when it finishes one (#onReply). */
  #enqueue(slot: Slot, message: Outgoing): void {
    slot.outbox.push(message);
    if (slot.flushQueued) return;
    if (slot.batchesOut < PIPELINE_DEPTH || slot.outbox.length >= MAX_BATCH) {
      slot.flushQueued = true;
      queueMicrotask(() => this.#flush(slot));
    }
  }

  #flush(slot: Slot): void {
    slot.flushQueued = false;
    // Held (closeAllSessions on threads): the outbox stays, and goes when the hold is released.
    if (this.#hold && this.#hold !== slot) return;
    const batch = slot.outbox;
    slot.outbox = [];
    if (batch.length === 0) return;
    slot.batchesOut++;
    const w = this.#writer;
    const countAt = w.mark();
    for (const m of batch) {
      writeRequest(w, m.seq, m.request as unknown as Record<string, unknown>);
      (m as Partial<Pending>).sent = true;
    }
    w.patch(countAt, batch.length);
    const frame: WorkerBatch = w.take();
    try {
      slot.channel.post(frame);
    } catch (err) {
      wipe(frame);
      for (const m of batch) {
        const p = slot.inFlight.take(m.seq);
        if (!p) continue;
        wipeRequest(p.request);
        p.reject(new Pkcs11DeviceError('worker', '', 'the request could not be sent to the worker', { cause: err }));
      }
      this.#refreshRef(slot);
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

function wipeRequest(request: PoolRequest): void {
  const r = request as { data?: Uint8Array; pin?: Uint8Array };
  if (r.data instanceof Uint8Array) wipe(r.data);
  if (r.pin instanceof Uint8Array) wipe(r.pin);
}
