/**
 * Input and output plumbing for encrypt/decrypt: where bytes come from, where they go, and the
 * all-or-nothing output file.
 *
 * The output-file rule (decrypt -o FILE): plaintext goes to a fresh temporary file in the same
 * directory (created O_EXCL, mode 0600), which is renamed over FILE only after the whole input
 * authenticated; on any failure it is deleted. A reader of FILE therefore sees either its old
 * content or the complete authenticated plaintext, never a prefix of an unauthenticated stream.
 * rename(2) within one directory is atomic on POSIX file systems, which is why the temporary file
 * lives beside FILE rather than in os.tmpdir().
 */
import { randomBytes } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { type FileHandle, open, rename, unlink } from 'node:fs/promises';
import path from 'node:path';
import type { Readable, Writable } from 'node:stream';
import { wipe } from '@keywarden/core';
import { CliError } from './errors.js';

export const MiB = 1024 * 1024;

/** Where a command writes its result. */
export interface OutputSink {
  /** Resolves once `chunk` may be reused (file) or has been handed to the stream (stdout). */
  write(chunk: Uint8Array): Promise<void>;
  /** Everything was written and verified: make it visible. */
  commit(): Promise<void>;
  /** Something failed: leave no trace (file) / stop writing (stdout). Never throws. */
  abort(): Promise<void>;
  /**
   * True when written buffers are no longer referenced after write() resolves, so the caller can
   * wipe them. A stream keeps a reference to what it was given until its consumer reads it.
   */
  readonly releasesBuffers: boolean;
}

/** Input: a file (-i) or the given stream (stdin). */
export function openInput(file: string | undefined, cwd: string, stdin: Readable): Readable {
  return file === undefined ? stdin : createReadStream(path.resolve(cwd, file));
}

/** Output: an all-or-nothing file (-o) or the given stream (stdout), which is never ended. */
export async function openOutput(file: string | undefined, cwd: string, stdout: Writable): Promise<OutputSink> {
  return file === undefined ? streamSink(stdout) : atomicFileSink(path.resolve(cwd, file));
}

function streamSink(out: Writable): OutputSink {
  return {
    releasesBuffers: false,
    write: (chunk) => writeToStream(out, chunk),
    commit: async () => {},
    abort: async () => {},
  };
}

/** Write and wait for backpressure to clear; rejects on a stream error (EPIPE…). */
export function writeToStream(out: Writable, chunk: Uint8Array | string): Promise<void> {
  return new Promise((resolve, reject) => {
    if (out.destroyed || out.writableEnded) {
      reject(Object.assign(new Error('output stream closed'), { code: 'EPIPE' }));
      return;
    }
    let settled = false;
    const cleanup = () => {
      out.off('drain', onDrain);
      out.off('error', onError);
      out.off('close', onClose);
    };
    const onDrain = () => {
      if (settled) return;
      settled = true;
      cleanup();
      resolve();
    };
    const onError = (err: Error) => {
      if (settled) return;
      settled = true;
      cleanup();
      reject(err);
    };
    const onClose = () => onError(Object.assign(new Error('output stream closed'), { code: 'EPIPE' }));
    out.on('error', onError);
    out.on('close', onClose);
    const ok = out.write(chunk, (err) => {
      if (err) onError(err);
    });
    if (ok) onDrain();
    else out.on('drain', onDrain);
  });
}

async function atomicFileSink(target: string): Promise<OutputSink> {
  const dir = path.dirname(target);
  const tmp = path.join(dir, `.${path.basename(target)}.${randomBytes(6).toString('hex')}.keywarden-tmp`);
  // 'wx': O_CREAT|O_EXCL, so a pre-planted file or symlink at the temporary name is refused.
  const fh: FileHandle = await open(tmp, 'wx', 0o600);
  let closed = false;
  let done = false;
  const close = async () => {
    if (closed) return;
    closed = true;
    await fh.close();
  };
  return {
    releasesBuffers: true,
    async write(chunk) {
      let off = 0;
      while (off < chunk.length) {
        const { bytesWritten } = await fh.write(chunk, off, chunk.length - off);
        off += bytesWritten;
      }
    },
    async commit() {
      if (done) return;
      try {
        await fh.sync();
        await close();
        await rename(tmp, target);
        done = true;
      } catch (err) {
        await this.abort();
        throw err;
      }
    },
    async abort() {
      if (done) return;
      done = true;
      await close().catch(() => {});
      await unlink(tmp).catch(() => {});
    },
  };
}

/**
 * Read a whole stream into one buffer, refusing more than `limit` bytes (the single-shot text
 * form is for database-column-sized values). With `wipeChunks` (input the CLI opened itself) the
 * intermediate chunks are wiped; chunks from a caller's stream belong to the caller.
 */
export async function readAll(
  source: AsyncIterable<unknown>,
  limit: number,
  tooLarge: string,
  wipeChunks: boolean,
): Promise<Uint8Array> {
  const chunks: Uint8Array[] = [];
  let total = 0;
  try {
    for await (const c of source) {
      const chunk = toBytes(c);
      total += chunk.length;
      chunks.push(chunk);
      if (total > limit) throw new CliError(tooLarge);
    }
    const out = new Uint8Array(total);
    let off = 0;
    for (const c of chunks) {
      out.set(c, off);
      off += c.length;
    }
    return out;
  } finally {
    if (wipeChunks) wipe(...chunks);
  }
}

/**
 * Look at the first `n` bytes of a stream without losing them: returns those bytes (fewer at end
 * of input) and an iterable that yields the whole input from the start.
 */
export async function peek(source: Readable, n: number): Promise<{ head: Uint8Array; all: AsyncIterable<Uint8Array> }> {
  const it = source[Symbol.asyncIterator]() as AsyncIterator<unknown>;
  const buffered: Uint8Array[] = [];
  let have = 0;
  let ended = false;
  while (have < n) {
    const r = await it.next();
    if (r.done) {
      ended = true;
      break;
    }
    const chunk = toBytes(r.value);
    buffered.push(chunk);
    have += chunk.length;
  }
  const head = Buffer.concat(buffered, have).subarray(0, n);
  async function* all(): AsyncGenerator<Uint8Array> {
    try {
      for (const b of buffered) yield b;
      buffered.length = 0;
      if (ended) return;
      for (;;) {
        const r = await it.next();
        if (r.done) return;
        yield toBytes(r.value);
      }
    } finally {
      // Stop reading (and close the file) when the consumer stops early, e.g. on a decryption error.
      await it.return?.();
    }
  }
  return { head: new Uint8Array(head), all: all() };
}

function toBytes(c: unknown): Uint8Array {
  if (c instanceof Uint8Array) return c;
  if (typeof c === 'string') return Buffer.from(c, 'utf8');
  throw new CliError('input stream produced something other than bytes');
}
