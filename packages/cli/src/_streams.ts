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
import * as path from 'node:path';
import { Readable, type Writable } from 'node:stream';
import { wipe } from '@keywarden/core';
import { CliError, displayPath, systemErrorText } from './errors.js';

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
  return file === undefined ? streamSink(stdout) : atomicFileSink(path.resolve(cwd, file), cwd);
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

async function atomicFileSink(target: string, cwd: string): Promise<OutputSink> {
  const dir = path.dirname(target);
  const tmp = path.join(dir, `.${path.basename(target)}.${randomBytes(6).toString('hex')}.keywarden-tmp`);
  let fh: FileHandle;
  try {
    // 'wx': O_CREAT|O_EXCL, so a pre-planted file or symlink at the temporary name is refused.
    fh = await open(tmp, 'wx', 0o600);
  } catch (err) {
    const why =
      (err as NodeJS.ErrnoException).code === 'ENOENT'
        ? `no such directory ${displayPath(dir, cwd)}`
        : systemErrorText(err);
    throw new CliError(`cannot create ${displayPath(target, cwd)}: ${why}`, { cause: err });
  }
  let closed = false;
  let done = false;
  const close = async () => {
    if (closed) return;
    closed = true;
    await fh.close();
  };
  const abort = async () => {
    if (done) return;
    done = true;
    await close().catch(() => {});
    await unlink(tmp).catch(() => {});
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
        try {
          await rename(tmp, target);
        } catch (err) {
          throw new CliError(`cannot replace ${displayPath(target, cwd)}: ${systemErrorText(err)}`, { cause: err });
        }
        done = true;
      } catch (err) {
        await abort();
        throw err;
      }
    },
    abort,
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
 * Look at the first `n` bytes of a stream without consuming them: returns those bytes (fewer at
 * end of input) and a stream that yields the whole input from the start. The bytes are put back
 * with unshift(), so the returned stream is the source itself and can be destroyed at once on an
 * error or an abort (an async generator suspended on a read could not be).
 */
export function peek(source: Readable, n: number): Promise<{ head: Uint8Array; input: Readable }> {
  return new Promise((resolve, reject) => {
    const chunks: Uint8Array[] = [];
    let have = 0;
    const cleanup = () => {
      source.off('readable', onReadable);
      source.off('end', onEnd);
      source.off('error', onError);
    };
    const onReadable = () => {
      let chunk: unknown;
      while (have < n && (chunk = source.read()) !== null) {
        const bytes = toBytes(chunk);
        chunks.push(bytes);
        have += bytes.length;
      }
      if (have >= n) {
        cleanup();
        const head = Buffer.concat(chunks, have);
        source.unshift(head);
        resolve({ head: new Uint8Array(head.subarray(0, n)), input: source });
      }
    };
    const onEnd = () => {
      // Shorter than n: the whole input is in hand (and unshift is no longer allowed).
      cleanup();
      const all = Buffer.concat(chunks, have);
      resolve({ head: new Uint8Array(all), input: Readable.from(have > 0 ? [all] : []) });
    };
    const onError = (err: Error) => {
      cleanup();
      reject(err);
    };
    source.on('readable', onReadable);
    source.once('end', onEnd);
    source.once('error', onError);
  });
}

/**
 * Destroy `stream` with an AbortError when `signal` aborts (SIGINT/SIGTERM in bin.ts), so a command
 * waiting on input stops at once. Returns the function that removes the listener.
 */
export function destroyOnAbort(stream: Readable, signal: AbortSignal | undefined): () => void {
  if (!signal) return () => {};
  const onAbort = () => stream.destroy(Object.assign(new Error('interrupted'), { name: 'AbortError' }));
  if (signal.aborted) onAbort();
  else signal.addEventListener('abort', onAbort, { once: true });
  return () => signal.removeEventListener('abort', onAbort);
}

function toBytes(c: unknown): Uint8Array {
  if (c instanceof Uint8Array) return c;
  if (typeof c === 'string') return Buffer.from(c, 'utf8');
  throw new CliError('input stream produced something other than bytes');
}
