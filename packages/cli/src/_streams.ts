/**
 * Input and output plumbing for encrypt/decrypt: where bytes come from, where they go, and the
 * all-or-nothing output file.
 *
 * The output-file rule (decrypt -o FILE): plaintext goes to a temporary file in the same
 * directory (mode 0600), which is moved over FILE only after the whole input authenticated; on
 * any failure it is deleted. A reader of FILE therefore sees either its old content or the
 * complete authenticated plaintext, never a prefix of an unauthenticated stream. rename(2) within
 * one directory is atomic on POSIX file systems, which is why the temporary file lives beside FILE
 * rather than in os.tmpdir().
 *
 * What a killed process leaves behind (docs/threat-model.md, "Signals, debuggers and hostile
 * local clients"):
 *  - catchable signals: bin.ts removes the temporary file (_exit-cleanup.ts);
 *  - SIGKILL, OOM kill, power loss: on Linux the temporary file is UNNAMED (open(2) O_TMPFILE):
 *    it has no directory entry while plaintext is written into it, and the kernel frees it when
 *    the process dies. Once complete it gets a name with linkat(2) AT_SYMLINK_FOLLOW on
 *    /proc/PID/fd/N — Node has no binding for that call (fs.link is link(2), which does not follow
 *    the /proc link: EXDEV), so `ln -L` does it; where ln cannot, the content is copied (reflinked
 *    where the file system can) to a named temporary file. Either way the named file exists only
 *    for the instant before the rename;
 *  - where O_TMPFILE is unavailable (other systems, file systems without it), and for that
 *    instant, the named temporary file carries the creating process's pid:
 *    `.FILE.keywarden-tmp.PID.RANDOM`. Every later `-o` into the same directory removes those
 *    whose process is gone, with a warning.
 * KEYWARDEN_NO_TMPFILE=1 forces the named file (tests use it to exercise that path).
 */
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { constants as fsConstants, createReadStream, existsSync } from 'node:fs';
import { chmod, copyFile, type FileHandle, lstat, open, readdir, rename, unlink } from 'node:fs/promises';
import * as path from 'node:path';
import { Readable, type Writable } from 'node:stream';
import { InvalidInputError, wipe } from '@keywarden/core';
import { removeOnExit } from './_exit-cleanup.js';
import { displayPath, systemErrorText } from './errors.js';

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

/**
 * Output: an all-or-nothing file (-o) or the given stream (stdout), which is never ended. With a
 * file, stale temporary files of dead processes in its directory are removed first, each with a
 * warning on `stderr`.
 */
export async function openOutput(
  file: string | undefined,
  cwd: string,
  stdout: Writable,
  stderr?: Writable,
): Promise<OutputSink> {
  if (file === undefined) return streamSink(stdout);
  const target = path.resolve(cwd, file);
  await removeStaleTempFiles(path.dirname(target), cwd, stderr);
  return atomicFileSink(target, cwd);
}

/**
 * Write `text` to FILE all or nothing (the atomic file sink above: a temporary file beside FILE,
 * fsynced, renamed over it, the folder fsynced), then give FILE `mode`: a file being replaced is
 * never seen truncated, even after a SIGKILL. For what is not secret (certificates, CRLs, a git
 * hook); the temporary file is 0600 until the rename. `onStep('out:written')`: the whole text is
 * in the temporary file, FILE not yet replaced (crash tests).
 */
export async function writeWholeFile(
  file: string,
  cwd: string,
  text: string,
  mode: number,
  stderr?: Writable,
  onStep?: (name: string) => void,
): Promise<void> {
  const target = path.resolve(cwd, file);
  await removeStaleTempFiles(path.dirname(target), cwd, stderr);
  const sink = await atomicFileSink(target, cwd);
  try {
    await sink.write(Buffer.from(text, 'utf8'));
    onStep?.('out:written');
    await sink.commit();
  } catch (err) {
    await sink.abort();
    throw err;
  }
  await chmod(target, mode);
}

function streamSink(out: Writable): OutputSink {
  return {
    releasesBuffers: false,
    write: async (chunk) => {
      try {
        await writeToStream(out, chunk);
      } catch (err) {
        const code = (err as NodeJS.ErrnoException).code;
        // EPIPE keeps its code: errors.ts words it ("broken pipe").
        if (code === 'EPIPE' || code === 'ERR_STREAM_DESTROYED' || typeof code !== 'string') throw err;
        throw new InvalidInputError(`cannot write to standard output: ${systemErrorText(err)}`, { cause: err });
      }
    },
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

/** `.NAME.keywarden-tmp.PID.RANDOM`: NAME cut so the whole stays well under NAME_MAX (255). */
const TEMP_RE = /^\..*\.keywarden-tmp\.([0-9]+)\.[0-9a-f]{12}$/;

function tempNameFor(target: string): string {
  const base = path.basename(target).slice(0, 128);
  return path.join(path.dirname(target), `.${base}.keywarden-tmp.${process.pid}.${randomBytes(6).toString('hex')}`);
}

/** open(2) O_TMPFILE where it exists: Linux, on the architectures whose value is the generic one. */
const O_TMPFILE =
  process.platform === 'linux' &&
  ['x64', 'arm64', 'arm', 'ia32', 'ppc64', 's390x', 'riscv64', 'loong64'].includes(process.arch)
    ? 0o20000000 | fsConstants.O_DIRECTORY
    : undefined;

/** coreutils ln, for linkat(2) AT_SYMLINK_FOLLOW (`ln -L`). */
const LN = ['/usr/bin/ln', '/bin/ln'].find((p) => existsSync(p));

/**
 * Remove `.X.keywarden-tmp.PID.R` files in `dir` whose process no longer runs (left by a
 * decrypt/encrypt -o that was SIGKILLed), warning for each. Only regular files owned by this user;
 * a pid that is alive (even if reused by another program) keeps its file.
 */
export async function removeStaleTempFiles(dir: string, cwd: string, stderr: Writable | undefined): Promise<void> {
  let names: string[];
  try {
    names = await readdir(dir);
  } catch {
    return; // a missing directory is reported when the output is created
  }
  const uid = process.getuid?.();
  for (const name of names) {
    const m = TEMP_RE.exec(name);
    if (!m) continue;
    const pid = Number(m[1]);
    if (pid === process.pid || isAlive(pid)) continue;
    const p = path.join(dir, name);
    try {
      const st = await lstat(p);
      if (!st.isFile() || (uid !== undefined && st.uid !== uid)) continue;
      await unlink(p);
    } catch {
      continue;
    }
    stderr?.write(
      `keywarden: warning: removed ${displayPath(p, cwd)}, a temporary output file left by process ${pid}, which was killed (it may have held partial plaintext)\n`,
    );
  }
}

function isAlive(pid: number): boolean {
  if (!Number.isSafeInteger(pid) || pid <= 0) return false;
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** An unnamed file in `dir` (O_TMPFILE), or undefined where the system or file system lacks it. */
export async function openUnnamed(dir: string): Promise<FileHandle | undefined> {
  // Naming it later goes through /proc/PID/fd: without /proc (some containers), use a named file.
  if (O_TMPFILE === undefined || process.env.KEYWARDEN_NO_TMPFILE === '1' || !existsSync('/proc/self/fd')) {
    return undefined;
  }
  try {
    return await open(dir, O_TMPFILE | fsConstants.O_RDWR, 0o600);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    // EOPNOTSUPP: this file system has no O_TMPFILE; EISDIR/EINVAL: a kernel without it.
    if (code === 'EOPNOTSUPP' || code === 'EISDIR' || code === 'EINVAL' || code === 'ENOTSUP') return undefined;
    throw err;
  }
}

/**
 * Give the unnamed file open as `fh` the name `name` (which must not exist): a hard link with
 * coreutils `ln` (`ln` = its path), else (null) a copy. Exported for its test, which runs both ways.
 */
export async function nameUnnamed(fh: FileHandle, name: string, ln: string | null = LN ?? null): Promise<void> {
  const proc = `/proc/${process.pid}/fd/${fh.fd}`;
  if (ln) {
    const linked = await new Promise<boolean>((resolve) => {
      execFile(ln, ['-L', '-T', '--', proc, name], { timeout: 30_000 }, (err) => resolve(!err));
    });
    if (linked) return;
  }
  // No ln (or one without -L): copy the content instead (copy_file_range, a reflink where possible).
  await copyFile(proc, name, fsConstants.COPYFILE_EXCL);
  const copy = await open(name, 'r+');
  try {
    await copy.sync();
  } finally {
    await copy.close();
  }
}

async function syncDir(dir: string): Promise<void> {
  try {
    const d = await open(dir, 'r');
    try {
      await d.sync();
    } finally {
      await d.close();
    }
  } catch {
    // some file systems and systems cannot fsync a directory; the rename is still atomic
  }
}

async function atomicFileSink(target: string, cwd: string): Promise<OutputSink> {
  const dir = path.dirname(target);
  const cannotCreate = (err: unknown) =>
    new InvalidInputError(
      `cannot create ${displayPath(target, cwd)}: ${
        (err as NodeJS.ErrnoException).code === 'ENOENT'
          ? `no such directory ${displayPath(dir, cwd)}`
          : systemErrorText(err)
      }`,
      { cause: err },
    );
  let fh: FileHandle;
  let tmp: string | undefined;
  let forget: () => void = () => {};
  try {
    const unnamed = await openUnnamed(dir);
    if (unnamed) fh = unnamed;
    else {
      tmp = tempNameFor(target);
      forget = removeOnExit(tmp);
      // 'wx': O_CREAT|O_EXCL, so a pre-planted file or symlink at the temporary name is refused.
      fh = await open(tmp, 'wx', 0o600);
    }
  } catch (err) {
    forget();
    throw cannotCreate(err);
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
    if (tmp !== undefined) await unlink(tmp).catch(() => {});
    forget();
  };
  return {
    releasesBuffers: true,
    async write(chunk) {
      let off = 0;
      try {
        while (off < chunk.length) {
          const { bytesWritten } = await fh.write(chunk, off, chunk.length - off);
          off += bytesWritten;
        }
      } catch (err) {
        throw new InvalidInputError(`cannot write ${displayPath(target, cwd)}: ${systemErrorText(err)}`, {
          cause: err,
        });
      }
    },
    async commit() {
      if (done) return;
      try {
        try {
          await fh.sync();
          if (tmp === undefined) {
            tmp = tempNameFor(target);
            forget = removeOnExit(tmp);
            await nameUnnamed(fh, tmp);
          }
        } catch (err) {
          throw new InvalidInputError(`cannot write ${displayPath(target, cwd)}: ${systemErrorText(err)}`, {
            cause: err,
          });
        }
        await close();
        try {
          await rename(tmp, target);
        } catch (err) {
          throw new InvalidInputError(`cannot replace ${displayPath(target, cwd)}: ${systemErrorText(err)}`, {
            cause: err,
          });
        }
        done = true;
        forget();
        await syncDir(dir);
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
      if (total > limit) throw new InvalidInputError(tooLarge);
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
  throw new InvalidInputError('input stream produced something other than bytes');
}
