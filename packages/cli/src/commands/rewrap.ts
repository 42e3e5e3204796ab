/**
 * `keywarden rewrap FILE...`: move encrypted files onto their key's current primary version, in
 * place (docs/lifecycle.md §Rewrap). Each file is replaced atomically: the new ciphertext is written
 * to a temporary file beside it, fsynced, and renamed over the original, so the original stays
 * until the new file is complete (a crash or SIGKILL leaves one or the other, never a mix). A file
 * already under the primary is left untouched. The envelope format authenticates the wrapped DEK in
 * the body, so a file is decrypted and re-encrypted as it streams (bounded memory); signed files
 * stay signed. On a terminal, runs of several files show a progress bar (cli-progress).
 */
import { open, stat } from 'node:fs/promises';
import * as path from 'node:path';
import { pipeline } from 'node:stream/promises';
import type { Command } from 'commander';
import cliProgress from 'cli-progress';
import {
  createDecryptStream,
  createEncryptStream,
  type EncryptionContext,
  InvalidInputError,
  inspectEnvelope,
  KeywardenError,
} from '@keywarden/core';
import { openInput, openOutput } from '../_streams.js';
import type { CliIO } from '../io.js';
import { formatJson, print } from '../output.js';
import { type KeyService, withKeyService } from '../store-dir.js';
import { addContextOption, collect, contextFrom, keyServiceOptionsOf, locationOf } from './_common.js';
import { drainInto } from './_pipe.js';

interface RewrapOptions {
  key: string[];
  context?: string[];
  json?: boolean;
  progress?: boolean;
}

interface FileResult {
  file: string;
  status: 'rewrapped' | 'unchanged' | 'failed';
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
    .option('--json', 'print one result per file as a JSON array')
    .addHelpText(
      'after',
      `
Run after \`keywarden key rotate\` or \`key compromise\` so that old versions can then be retired
(\`key retire\`), disabled and destroyed. Each file is replaced only once its new ciphertext is
complete and on disk; files already under the primary are not rewritten. Files under a compromised
or destroyed version cannot be rewrapped (re-encrypt them from their source): they are reported and
the others go on; the exit status is 1 if any file failed.

Example:
  keywarden rewrap --key backups backups/*.kw`,
    )
    .action(async (files: string[], opts: RewrapOptions, command: Command) => {
      const context = contextFrom(opts.context);
      const loc = locationOf(command, io);
      const results: FileResult[] = [];
      await withKeyService(loc, io, keyServiceOptionsOf(command), async (ks) => {
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
            bar?.update({ file: path.basename(file) });
            results.push(await rewrapFile(ks, file, opts.key, context, io));
            bar?.increment();
          }
        } finally {
          bar?.stop();
        }
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
    return { file, status: 'rewrapped', fromVersion: info.keyVersion, toVersion: primary };
  } catch (err) {
    if (!KeywardenError.isInstance(err) && !isFileError(err)) throw err;
    return { file, status: 'failed', error: messageOf(err) };
  }
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
        ? `${r.file}: rewrapped v${r.fromVersion} → v${r.toVersion}\n`
        : r.status === 'unchanged'
          ? `${r.file}: already under v${r.toVersion}\n`
          : `${r.file}: failed: ${r.error}\n`,
    )
    .join('');
}
