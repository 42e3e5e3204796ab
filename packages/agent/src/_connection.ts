/**
 * One client connection of the agent: reads request lines, answers them in order, and bounds
 * what a slow or hostile client can make the agent hold.
 *
 * A connection is in one of four states, and each has its own bound:
 *   answering        the agent is computing an answer             no timer (the agent's own work)
 *   reading a line   bytes of an unfinished line arrived          line timeout from its FIRST byte,
 *                                                                  so a byte every few seconds does
 *                                                                  not keep it open; at most
 *                                                                  maxLineBytes held
 *   replies unread   a reply is waiting for the client to read it  line timeout, then dropped;
 *                                                                  reading is paused meanwhile
 *   idle             nothing in progress                           idle timeout, then closed
 *                                                                  (clients reconnect)
 * Pipelined requests are answered one at a time; the agent stops reading (backpressure) while
 * maxPipelined complete requests wait or a reply is not drained, so a client that never reads
 * its replies makes the agent hold at most one read's worth of requests and one reply's worth of
 * output, whatever it sends.
 *
 * Request lines may carry a share, replies a data key: lines are wiped once answered, and the
 * queue and the unfinished line are wiped when the connection goes.
 */
import type { Socket } from 'node:net';
import { encodeLine, LineBuffer, LineTooLongError, PROTOCOL_ERROR } from './protocol.js';

export interface ConnectionLimits {
  /** A connection with nothing in progress is closed after this long. */
  idleTimeoutMs: number;
  /** A request line must be complete, and a reply read, within this long. */
  lineTimeoutMs: number;
  /** Longest request line (newline excluded). */
  maxLineBytes: number;
  /** Complete requests a connection may have waiting before the agent stops reading from it. */
  maxPipelined: number;
}

/** How long a connection closed with an error line may take to read it before it is destroyed. */
const LINGER_MS = 2000;

type Expiry = 'idle' | 'line' | 'reply';

export class Connection {
  readonly #conn: Socket;
  readonly #limits: ConnectionLimits;
  readonly #answer: (line: Buffer) => Promise<string>;
  readonly #onGone: () => void;
  readonly #lines: LineBuffer;
  readonly #queue: Buffer[] = [];
  #answering = false;
  #open = true;
  #lastActivity = Date.now();
  /** When the unfinished line's first byte arrived. */
  #lineSince: number | undefined;
  /** When a reply stopped draining (write() returned false). */
  #drainSince: number | undefined;
  #timer: ReturnType<typeof setTimeout> | undefined;

  constructor(conn: Socket, limits: ConnectionLimits, answer: (line: Buffer) => Promise<string>, onGone: () => void) {
    this.#conn = conn;
    this.#limits = limits;
    this.#answer = answer;
    this.#onGone = onGone;
    this.#lines = new LineBuffer(limits.maxLineBytes);
    conn.on('data', (chunk: Buffer) => this.#onData(chunk));
    conn.on('drain', () => {
      if (this.#drainSince === undefined) return;
      this.#drainSince = undefined;
      this.#lastActivity = Date.now();
      this.#flow();
      void this.#pump();
      this.#arm();
    });
    conn.on('close', () => this.#gone());
    this.#arm();
  }

  /** The agent is computing an answer for this connection (it is not waiting on its client). */
  get answering(): boolean {
    return this.#answering;
  }

  /** Since when this connection has been waiting on its client: the eviction order. */
  get waitingSince(): number {
    return this.#lineSince ?? this.#drainSince ?? this.#lastActivity;
  }

  /**
   * Close: with `message`, answer it (id null, protocol error) and give the client a moment to
   * read it; without, at once.
   */
  drop(message: string | undefined): void {
    if (!this.#open) return;
    this.#gone();
    if (message === undefined || !this.#conn.writable) {
      this.#conn.destroy();
      return;
    }
    // Keep reading (and discarding) so a client still writing sees the answer, not EPIPE.
    this.#conn.resume();
    this.#conn.end(encodeLine({ id: null, ok: false, error: { code: PROTOCOL_ERROR, message } }));
    setTimeout(() => this.#conn.destroy(), LINGER_MS).unref();
  }

  #onData(chunk: Buffer): void {
    if (!this.#open) {
      chunk.fill(0);
      return;
    }
    const now = Date.now();
    this.#lastActivity = now;
    let got: Buffer[];
    try {
      got = this.#lines.push(chunk);
    } catch (err) {
      if (!(err instanceof LineTooLongError)) throw err;
      // The stream cannot be resynchronized cheaply: answer, then close this connection only.
      this.drop(`agent: request longer than ${sizeText(this.#limits.maxLineBytes)}; closing the connection`);
      return;
    } finally {
      chunk.fill(0);
    }
    if (!this.#lines.pending) this.#lineSince = undefined;
    else if (got.length > 0 || this.#lineSince === undefined) this.#lineSince = now;
    this.#queue.push(...got);
    this.#flow();
    void this.#pump();
    this.#arm();
  }

  /** Answer the queued requests in order, one at a time, stopping while a reply is not drained. */
  async #pump(): Promise<void> {
    if (this.#answering) return;
    this.#answering = true;
    this.#arm();
    try {
      while (this.#open && this.#drainSince === undefined) {
        const line = this.#queue.shift();
        if (!line) break;
        const response = await this.#answer(line); // wipes the line; never throws
        if (!this.#open || !this.#conn.writable) break;
        if (!this.#conn.write(response)) this.#drainSince = Date.now();
        this.#flow();
      }
    } finally {
      this.#answering = false;
    }
    this.#flow();
    this.#arm();
  }

  /** Backpressure: read only while few requests wait and the replies drain. */
  #flow(): void {
    if (!this.#open) return;
    if (this.#queue.length >= this.#limits.maxPipelined || this.#drainSince !== undefined) this.#conn.pause();
    else this.#conn.resume();
  }

  /** One timer for the state the connection is in (see the file comment). */
  #arm(): void {
    if (this.#timer !== undefined) clearTimeout(this.#timer);
    this.#timer = undefined;
    if (!this.#open || this.#answering) return;
    let at: number;
    let why: Expiry;
    if (this.#drainSince !== undefined) {
      at = this.#drainSince + this.#limits.lineTimeoutMs;
      why = 'reply';
    } else if (this.#lineSince !== undefined) {
      at = this.#lineSince + this.#limits.lineTimeoutMs;
      why = 'line';
    } else if (this.#queue.length === 0) {
      at = this.#lastActivity + this.#limits.idleTimeoutMs;
      why = 'idle';
    } else {
      return;
    }
    this.#timer = setTimeout(() => this.#expire(why), Math.max(0, at - Date.now()));
    this.#timer.unref();
  }

  #expire(why: Expiry): void {
    this.#timer = undefined;
    const s = this.#limits.lineTimeoutMs / 1000;
    if (why === 'line') this.drop(`agent: request line not finished within ${s} s; closing the connection`);
    else if (why === 'reply')
      this.drop(undefined); // it does not read: nothing more can reach it
    else {
      this.#gone();
      this.#conn.end();
      setTimeout(() => this.#conn.destroy(), LINGER_MS).unref();
    }
  }

  /** Wipe what this connection holds; tell the agent its slot is free. Runs once. */
  #gone(): void {
    if (!this.#open) return;
    this.#open = false;
    if (this.#timer !== undefined) clearTimeout(this.#timer);
    this.#timer = undefined;
    this.#lines.wipe();
    for (const line of this.#queue.splice(0)) line.fill(0);
    this.#onGone();
  }
}

function sizeText(bytes: number): string {
  if (bytes % (1024 * 1024) === 0) return `${bytes / (1024 * 1024)} MiB`;
  if (bytes % 1024 === 0) return `${bytes / 1024} KiB`;
  return `${bytes} bytes`;
}
