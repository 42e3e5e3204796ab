/**
 * `keywarden encrypt`: envelope encryption of a file or stdin.
 *
 * Default: the framed streaming format (createEncryptStream), so a file of any size is encrypted
 * in bounded memory, each frame authenticated on its own and the end of the stream marked.
 * `--text`: the single-shot compact text form ("kw1.…") for values that live in a text column;
 * it holds the whole input in memory, hence the size bound.
 */
import type { Command } from 'commander';
import { createEncryptStream, encryptEnvelope, envelopeToText, MAX_SINGLE_SHOT_PLAINTEXT, wipe } from '@keywarden/core';
import { destroyOnAbort, MiB, openInput, openOutput, readAll } from '../_streams.js';
import { UsageError } from '../errors.js';
import type { CliIO } from '../io.js';
import { withAgentOrKeyService } from './_agent-client.js';
import { addContextOption, contextFrom, locationOf } from './_common.js';
import { pipeInto } from './_pipe.js';

/** Largest input for --text: a database value, not a file. */
export const MAX_TEXT_PLAINTEXT_BYTES = MAX_SINGLE_SHOT_PLAINTEXT;

interface EncryptOptions {
  key: string;
  context?: string[];
  input?: string;
  output?: string;
  text?: boolean;
  signed?: boolean;
}

export function registerEncrypt(program: Command, io: CliIO): void {
  const cmd = program
    .command('encrypt')
    .description('envelope-encrypt stdin or a file under a fresh data key wrapped by a KEK')
    .requiredOption('-k, --key <name>', 'KEK (name or id) that wraps the data key');
  addContextOption(cmd)
    .option('-i, --input <file>', 'read plaintext from FILE instead of stdin')
    .option('-o, --output <file>', 'write ciphertext to FILE (all or nothing) instead of stdout')
    .option(
      '--text',
      `write the compact "kw1." text form (single-shot, inputs up to ${MAX_TEXT_PLAINTEXT_BYTES / MiB} MiB)`,
    )
    .option(
      '--signed',
      'sign the ciphertext (ECDSA P-384, a key pair per message) so that readers who can decrypt cannot forge; decrypt with --require-signed',
    )
    .addHelpText(
      'after',
      `
Without --text the output is binary, in authenticated frames, and any input size works in bounded
memory. With --text the output is one line of text for a database column or a config value.
The context pairs are bound into the ciphertext but not stored in it: decrypt needs the same pairs.
With --signed, whoever may decrypt under the key can still read the data but cannot make new
ciphertext that passes \`decrypt --require-signed\` (docs/format.md §4.9); context keys starting
with "keywarden:" are reserved.

Examples:
  keywarden encrypt --key backups -i dump.sql -o dump.sql.kw
  keywarden encrypt --key payments --signed -i order.json -o order.json.kw
  printf '%s' "$SSN" | keywarden encrypt --key pii --context table=patients --context row=42 --text`,
    )
    .action(async (opts: EncryptOptions, command: Command) => {
      const context = contextFrom(opts.context);
      const envelopeOptions = {
        key: opts.key,
        ...(context ? { context } : {}),
        ...(opts.signed ? { signed: true } : {}),
      };
      const loc = locationOf(command, io);
      if (!opts.text && opts.output === undefined && (io.stdout as { isTTY?: boolean }).isTTY === true) {
        throw new UsageError('refusing to write binary ciphertext to a terminal (use -o FILE, --text, or a pipe)');
      }
      await withAgentOrKeyService(command, io, loc, async (ks) => {
        // Fail on an unknown key before reading any input.
        await ks.getKey(opts.key);
        const sink = await openOutput(opts.output, io.cwd, io.stdout, io.stderr);
        const input = openInput(opts.input, io.cwd, io.stdin);
        const stopWatching = destroyOnAbort(input, io.signal);
        try {
          if (opts.text) {
            const plaintext = await readAll(
              input,
              MAX_TEXT_PLAINTEXT_BYTES,
              `--text is for values up to ${MAX_TEXT_PLAINTEXT_BYTES / MiB} MiB; encrypt larger input without --text (streaming)`,
              opts.input !== undefined,
            );
            try {
              const envelope = await encryptEnvelope(ks, plaintext, envelopeOptions);
              await sink.write(Buffer.from(`${envelopeToText(envelope)}\n`, 'utf8'));
            } finally {
              wipe(plaintext);
            }
          } else {
            await pipeInto(input, createEncryptStream(ks, envelopeOptions), sink, {
              signal: io.signal,
            });
          }
          await sink.commit();
        } catch (err) {
          await sink.abort();
          if (opts.input !== undefined) input.destroy();
          throw err;
        } finally {
          stopWatching();
        }
      });
    });
}
