/**
 * Reading secrets (shares, passphrases) without echo, and reading shares from files or a pipe.
 *
 * The hidden prompt puts the terminal in raw mode, so the terminal driver echoes nothing, and
 * this code echoes nothing either: not the characters, not a "*" per character (which would
 * show the length). Enter ends the line, Backspace and Ctrl-U edit it, Ctrl-C interrupts (exit
 * 130), Ctrl-D on an empty line is end of input. The previous terminal mode is always restored.
 *
 * Shares are strings once read (JavaScript strings cannot be wiped); the byte buffers on the way
 * are wiped, and nothing here ever writes what was read.
 */
import { readFile, stat } from 'node:fs/promises';
import * as path from 'node:path';
import type { Readable, Writable } from 'node:stream';
import { InvalidInputError, KeywardenError, wipe } from '@keywarden/core';
import { readAll } from './_streams.js';
import { displayPath, systemErrorText } from './errors.js';

/** What a terminal input offers (process.stdin when it is a TTY). */
export interface TtyInput extends Readable {
  isTTY?: boolean;
  isRaw?: boolean;
  setRawMode?: (mode: boolean) => unknown;
}

/** Longest line the hidden prompt accepts (a share is about 100 characters). */
export const MAX_HIDDEN_INPUT = 16 * 1024;
/** Largest share file or piped input read. */
export const MAX_SHARE_FILE_BYTES = 64 * 1024;

export function isTerminal(input: Readable): input is TtyInput {
  return (input as TtyInput).isTTY === true;
}

/**
 * Write `prompt` to `output` and read one line from the terminal `input` without echo.
 * Resolves to the line, or undefined at end of input (Ctrl-D on an empty line, or EOF).
 * Rejects with an AbortError on Ctrl-C or when `signal` aborts.
 */
export function readHidden(
  input: TtyInput,
  output: Writable,
  prompt: string,
  options: { signal?: AbortSignal | undefined; maxLength?: number } = {},
): Promise<string | undefined> {
  if (typeof input.setRawMode !== 'function') {
    return Promise.reject(
      new InvalidInputError('cannot turn off echo on this terminal; give the share in a file instead'),
    );
  }
  const maxLength = options.maxLength ?? MAX_HIDDEN_INPUT;
  const setRaw = input.setRawMode.bind(input);
  const wasRaw = input.isRaw === true;
  return new Promise((resolve, reject) => {
    const chars: string[] = [];
    /** Inside an escape sequence (arrow keys…): 1 after ESC, 2 after ESC [ or ESC O. */
    let inEscape = 0;
    let settled = false;
    const finish = (err: Error | undefined, value?: string) => {
      if (settled) return;
      settled = true;
      input.off('data', onData);
      input.off('end', onEnd);
      input.off('error', onError);
      options.signal?.removeEventListener('abort', onAbort);
      try {
        setRaw(wasRaw);
      } catch {
        // the terminal is gone; nothing to restore
      }
      input.pause();
      // Enter was not echoed either: end the prompt's line.
      output.write('\n');
      chars.length = 0;
      if (err) reject(err);
      else resolve(value);
    };
    const onData = (chunk: Buffer | string) => {
      const text = typeof chunk === 'string' ? chunk : chunk.toString('utf8');
      if (typeof chunk !== 'string') chunk.fill(0);
      const all = Array.from(text);
      for (const [i, ch] of all.entries()) {
        if (inEscape === 1) {
          inEscape = ch === '[' || ch === 'O' ? 2 : 0;
          continue;
        }
        if (inEscape === 2) {
          if (ch >= '@' && ch <= '~') inEscape = 0;
          continue;
        }
        switch (ch) {
          case '\r':
          case '\n': {
            const rest = all
              .slice(i + 1)
              .join('')
              .replace(/^\n/, ''); // \r\n is one Enter
            finish(undefined, chars.join(''));
            // Typed ahead (two shares pasted at once): leave the rest for the next prompt.
            if (rest !== '') input.unshift(Buffer.from(rest, 'utf8'));
            return;
          }
          case '\u0003': // Ctrl-C
            finish(abortError());
            return;
          case '\u0004': // Ctrl-D
            if (chars.length === 0) {
              finish(undefined, undefined);
              return;
            }
            continue;
          case '\u007f': // Backspace (DEL)
          case '\b':
            chars.pop();
            continue;
          case '\u0015': // Ctrl-U
            chars.length = 0;
            continue;
          case '\u001b':
            inEscape = 1;
            continue;
        }
        if (ch < ' ') continue; // other control characters
        if (chars.length >= maxLength) {
          finish(new InvalidInputError(`input longer than ${maxLength} characters`));
          return;
        }
        chars.push(ch);
      }
    };
    const onEnd = () => finish(undefined, chars.length > 0 ? chars.join('') : undefined);
    const onError = (err: Error) => finish(err);
    const onAbort = () => finish(abortError());
    if (options.signal?.aborted) {
      settled = true;
      reject(abortError());
      return;
    }
    options.signal?.addEventListener('abort', onAbort, { once: true });
    try {
      setRaw(true);
    } catch (err) {
      settled = true;
      reject(
        new InvalidInputError('cannot turn off echo on this terminal; give the share in a file instead', {
          cause: err,
        }),
      );
      return;
    }
    output.write(prompt);
    input.on('data', onData);
    input.once('end', onEnd);
    input.once('error', onError);
    input.resume();
  });
}

function abortError(): Error {
  return Object.assign(new Error('interrupted'), { name: 'AbortError' });
}

/**
 * One plaintext share from a file (whitespace around it is fine). Refuses an encrypted share
 * with the command that opens it, and warns when others can read the file.
 */
export async function readShareFile(file: string, cwd: string, stderr: Writable): Promise<string> {
  const p = path.resolve(cwd, file);
  const shown = displayPath(p, cwd);
  const text = await readSmallSecretFile(p, shown, stderr, 'share file');
  if (text.includes('-----BEGIN KEYWARDEN ENCRYPTED SHARE-----')) {
    throw new InvalidInputError(
      `${shown} holds an encrypted share: its custodian decrypts it first (\`keywarden share decrypt -i ${shown} --private-key KEY\`)`,
    );
  }
  const share = text.trim();
  if (share === '') throw new InvalidInputError(`${shown} is empty`);
  return share;
}

/** Shares piped on stdin, one a line (blank lines skipped). */
export async function readSharesFromStream(input: Readable): Promise<string[]> {
  const bytes = await readAll(
    input,
    MAX_SHARE_FILE_BYTES,
    'more input than a few shares; give one share a line',
    false,
  );
  try {
    return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength)
      .toString('utf8')
      .split(/\r?\n/)
      .map((l) => l.trim())
      .filter((l) => l !== '');
  } finally {
    wipe(bytes);
  }
}

/**
 * A small file holding a secret (a share, a private key, a passphrase), as text. Warns, like ssh,
 * when group or others can read it (unless `secret` is false: a public key); the bytes read are
 * wiped once decoded.
 */
export async function readSmallSecretFile(
  p: string,
  shown: string,
  stderr: Writable,
  what: string,
  secret = true,
): Promise<string> {
  let bytes: Buffer;
  try {
    const st = await stat(p);
    if (!st.isFile()) throw new InvalidInputError(`${shown} is not a file`);
    if (st.size > MAX_SHARE_FILE_BYTES) throw new InvalidInputError(`${shown} is too large to be a ${what}`);
    if (secret && process.platform !== 'win32' && (st.mode & 0o077) !== 0) {
      stderr.write(
        `keywarden: warning: ${what} ${shown} is accessible to group or others (mode ${(st.mode & 0o777).toString(8)}); run chmod 600 on it\n`,
      );
    }
    bytes = await readFile(p);
  } catch (err) {
    if (KeywardenError.isInstance(err)) throw err;
    throw new InvalidInputError(`cannot read ${what} ${shown}: ${systemErrorText(err)}`, { cause: err });
  }
  try {
    return bytes.toString('utf8');
  } finally {
    bytes.fill(0);
  }
}
