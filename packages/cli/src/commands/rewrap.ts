/**
 * `keywarden rewrap FILE...`: move encrypted files onto their key's current primary version, in
 * place (docs/lifecycle.md §Rewrap). Each file is replaced atomically: the new file is written to a
 * temporary file beside it, fsynced, and renamed over the original, so the original stays until
 * the new file is complete (a crash or SIGKILL leaves one or the other, never a mix). A file
 * already under the primary is left untouched.
 *
 * Format v2 files (docs/format.md §4.10): only the header is rewrapped (Keywarden.rewrapEnvelope on
 * the header alone); the rest of the file is copied byte for byte, never decrypted. Format v1
 * files, `--re-encrypt`, and rewraps through the agent (whose protocol has no rewrap operation)
 * decrypt and re-encrypt as the file streams (bounded memory), into format v2; signed files stay
 * signed. On a terminal, runs of several files show a progress bar (cli-progress).
 */
import { createReadStream } from 'node:fs';
import { open, stat } from 'node:fs/promises';
import * as path from 'node:path';
import { pipeline } from 'node:stream/promises';
import type { Command } from 'commander';
import cliProgress from 'cli-progress';
import {
  createDecryptStream,
  createEncryptStream,
  type EncryptionContext,
  envelopeHeaderLength,
  InvalidInputError,
  inspectEnvelope,
  type JobLease,
  type KeyStore,
  type Keywarden,
  KeywardenError,
} from '@keywarden/core';
import { openInput, openOutput } from '../_streams.js';
import type { CliIO } from '../io.js';
import { formatJson, print } from '../output.js';
import { type KeyService, withKeyService } from '../store-dir.js';
import { addContextOption, collect, contextFrom, keyServiceOptionsOf, locationOf } from './_common.js';
import { REWRAP_LEASE, withJobLease } from './_job-lease.js';
import { drainInto } from './_pipe.js';

interface RewrapOptions {
  key: string[];
  context?: string[];
  json?: boolean;
  progress?: boolean;
  reEncrypt?: boolean;
}

interface FileResult {
  file: string;
  status: 'rewrapped' | 'unchanged' | 'failed';
  /** rewrapped only: "header" (format v2, the body copied as is) or "re-encrypted". */
  method?: 'header' | 're-encrypted';
  fromVersion?: number;
  toVersion?: number;
  error?: string;
}

export function registerRewrap(program: Command, io: CliIO): void {
  const cmd = program
    .command('rewrap')
    .description("move encrypted files onto their key's current primary version, in place (atomic replace)")
    .argument('<file...>', 'files written by `keywarden encrypt`')
    .requiredOption('-k, --key <name>', 'KEK (name or id) the files must be under; repeat to allow several', collect);
  addContextOption(cmd)
    .option('--no-progress', 'no progress bar (it is shown on a terminal for several files)')
    .option('--re-encrypt', 'decrypt and re-encrypt under a new data key instead of rewrapping the header')
    .option('--json', 'print one result per file as a JSON array')
    .addHelpText(
      'after',
      `
Run after \`keywarden key rotate\` or \`key compromise\` so that old versions can then be retired
(\`key retire\`), disabled and destroyed. Each file is replaced only once the new file is
complete and on disk; files already under the primary are not rewritten. Format v2 files keep
their data key and body: only the header is rewrapped, whatever the file size. Format v1 files
(and all files with --re-encrypt, or through the agent) are decrypted and re-encrypted under a new
data key, into format v2; use --re-encrypt when whoever held the old KEK may also have the old
files (a rewrap keeps the data key). Files under a compromised
or destroyed version cannot be rewrapped (re-encrypt them from their source): they are reported and
the others go on; the exit status is 1 if any file failed.

One rewrap runs at a time on a key store (a job lease): a second one is refused (KW_CONFLICT)
while the first runs. If a run is killed, run the same command again: it takes the dead run's
lease over, and the files already done are left as they are (docs/lifecycle.md §10).

Example:
  keywarden rewrap --key backups backups/*.kw`,
    )
    .action(async (files: string[], opts: RewrapOptions, command: Command) => {
      const context = contextFrom(opts.context);
      const loc = locationOf(command, io);
      const results: FileResult[] = [];
      // One rewrap at a time per key store, resumed by the next run if killed (_job-lease.ts).
      await withJobLease(loc, io, REWRAP_LEASE, 'rewrap', async (lease, store) => {
        let job: Awaited<ReturnType<typeof startJob>> | undefined;
        await withKeyService(loc, io, keyServiceOptionsOf(command), async (ks) => {
          if (lease !== undefined) job = await startJob(store, lease, files.length, io);
          const tty = (io.stderr as { isTTY?: boolean }).isTTY === true;
          const bar =
            opts.progress !== false && tty && files.length > 1
              ? new cliProgress.SingleBar(
                  { stream: io.stderr, format: 'rewrap [{bar}] {value}/{total} files  {file}', hideCursor: true },
                  cliProgress.Presets.shades_classic,
                )
              : undefined;
          bar?.start(files.length, 0, { file: '' });
          try {
            for (const file of files) {
              // Stop before touching another file once the lease may be lost (ConflictError).
              lease?.check();
              bar?.update({ file: path.basename(file) });
              results.push(await rewrapFile(ks, file, opts.key, context, io, opts.reEncrypt === true));
              await job?.progress(results.length);
              bar?.increment();
            }
          } finally {
            bar?.stop();
          }
        });
        await job?.finish();
      });
      await print(io.stdout, opts.json ? formatJson(results) : resultText(results));
      const failed = results.filter((r) => r.status === 'failed').length;
      if (failed > 0) {
        throw new InvalidInputError(
          `rewrap: ${failed} of ${results.length} files could not be rewrapped (listed above)`,
        );
      }
    });
}

async function rewrapFile(
  ks: KeyService,
  file: string,
  keys: readonly string[],
  context: EncryptionContext | undefined,
  io: CliIO,
  reEncrypt: boolean,
): Promise<FileResult> {
  const target = path.resolve(io.cwd, file);
  try {
    const header = await readHead(target);
    const info = inspectEnvelope(header);
    const primary = (await ks.getKey(info.keyId)).primaryVersion;
    if (info.keyVersion === primary) {
      return { file, status: 'unchanged', fromVersion: info.keyVersion, toVersion: primary };
    }
    const expected = { key: keys.length === 1 ? (keys[0] as string) : [...keys] };
    if (info.formatVersion === 2 && !reEncrypt && canRewrap(ks)) {
      // docs/format.md §4.10: the new header, then the rest of the file unchanged.
      const length = envelopeHeaderLength(header);
      const r = await ks.rewrapEnvelope(header.subarray(0, length), { ...expected, ...(context ? { context } : {}) });
      const sink = await openOutput(file, io.cwd, io.stdout, io.stderr);
      try {
        await sink.write(r.envelope);
        await pipeline(createReadStream(target, { start: length }), drainInto(sink));
        await sink.commit();
      } catch (err) {
        await sink.abort();
        throw err;
      }
      return { file, status: 'rewrapped', method: 'header', fromVersion: r.fromVersion, toVersion: r.toVersion };
    }
    const sink = await openOutput(file, io.cwd, io.stdout, io.stderr);
    try {
      await pipeline(
        openInput(file, io.cwd, io.stdin),
        createDecryptStream(ks, { ...expected, ...(context ? { context } : {}) }),
        createEncryptStream(ks, {
          key: info.keyId,
          ...(context ? { context } : {}),
          ...(info.signed ? { signed: true } : {}),
          ...(info.frameSize !== undefined ? { frameSize: info.frameSize } : {}),
        }),
        drainInto(sink, true),
      );
      await sink.commit();
    } catch (err) {
      await sink.abort();
      throw err;
    }
    return { file, status: 'rewrapped', method: 're-encrypted', fromVersion: info.keyVersion, toVersion: primary };
  } catch (err) {
    if (!KeywardenError.isInstance(err) && !isFileError(err)) throw err;
    return { file, status: 'failed', error: messageOf(err) };
  }
}

/** The record of a running `keywarden rewrap` (meta "rewrap-job/cli"), written only under its lease. */
const JOB_META = 'rewrap-job/cli';

interface JobRecord {
  v: 1;
  files: number;
  done: number;
}

/**
 * Start the job's record, telling on stderr when an earlier run was interrupted. Its writes go
 * through the lease (fenced): a run that lost its lease (stalled past the TTL while another took
 * over) is refused at its next write and stops. The files already done need no record to be
 * skipped — each one's header says it is under the primary — so the record is what fences and
 * what tells a resumed run how far the interrupted one got.
 */
async function startJob(store: KeyStore, lease: JobLease, files: number, io: CliIO) {
  const earlier = parseJob(await store.getMeta(JOB_META));
  if (earlier) {
    await print(
      io.stderr,
      `keywarden: rewrap: the interrupted run had done ${earlier.done} of ${earlier.files} files; files already under their primary are left as they are\n`,
    );
  }
  const write = (done: number) => lease.putMeta(JOB_META, utf8.encode(JSON.stringify({ v: 1, files, done })));
  await write(0);
  // After the first file, then at most once a second: each write is a durable commit (an fsync),
  // which costs more than a header rewrap on a slow disk. Between writes, lease.check() before each
  // file still stops a run whose lease may have expired.
  let savedAt = 0;
  let savedTime = 0;
  return {
    progress: async (done: number) => {
      if (savedAt > 0 && performance.now() - savedTime < PROGRESS_EVERY_MS) return;
      await write(done);
      savedAt = done;
      savedTime = performance.now();
    },
    finish: () => lease.deleteMeta(JOB_META),
  };
}

const PROGRESS_EVERY_MS = 1000;

function parseJob(bytes: Uint8Array | undefined): JobRecord | undefined {
  if (bytes === undefined) return undefined;
  try {
    const r = JSON.parse(new TextDecoder().decode(bytes)) as Partial<JobRecord>;
    if (r.v === 1 && Number.isSafeInteger(r.files) && Number.isSafeInteger(r.done)) return r as JobRecord;
  } catch {
    // A damaged record is replaced: the files themselves say what is left to do.
  }
  return { v: 1, files: 0, done: 0 };
}

const utf8 = new TextEncoder();

/** A local key manager (not an agent client): it can rewrap a header. */
function canRewrap(ks: KeyService): ks is KeyService & Pick<Keywarden, 'rewrapEnvelope'> {
  return typeof (ks as Partial<Keywarden>).rewrapEnvelope === 'function';
}

/** Longer than any envelope header (docs/format.md §4.1: at most 271 bytes). */
const HEAD_BYTES = 512;

/** The first bytes of a file: enough for any envelope header. */
async function readHead(file: string): Promise<Uint8Array> {
  const size = (await stat(file)).size;
  const fh = await open(file, 'r');
  try {
    const buf = new Uint8Array(Math.min(size, HEAD_BYTES));
    await fh.read(buf, 0, buf.length, 0);
    return buf;
  } finally {
    await fh.close();
  }
}

function isFileError(err: unknown): boolean {
  return (
    typeof (err as NodeJS.ErrnoException)?.code === 'string' &&
    /^E[A-Z]+$/.test((err as NodeJS.ErrnoException).code as string)
  );
}

function messageOf(err: unknown): string {
  if (KeywardenError.isInstance(err)) return err.message;
  const code = (err as NodeJS.ErrnoException).code;
  return code === 'ENOENT'
    ? 'no such file'
    : code === 'EACCES'
      ? 'permission denied'
      : `cannot read the file (${code})`;
}

function resultText(results: readonly FileResult[]): string {
  return results
    .map((r) =>
      r.status === 'rewrapped'
        ? `${r.file}: ${r.method === 'header' ? 'rewrapped' : 're-encrypted'} v${r.fromVersion} → v${r.toVersion}\n`
        : r.status === 'unchanged'
          ? `${r.file}: already under v${r.toVersion}\n`
          : `${r.file}: failed: ${r.error}\n`,
    )
    .join('');
}
