/**
 * `keywarden scan [PATH]`: committed-secret scanning (docs/scanning.md).
 *
 * The detectors are secretlint's (version 11, which runs on Node 20): its recommended preset for
 * the well-known forms (cloud keys, private keys, tokens, connection strings) and
 * @keywarden/secretlint-rule for Keywarden's own (unseal keys, shares, data-key JSON, agent
 * credentials, PINs). What this file adds is what to scan — the working tree as git sees it, every
 * blob reachable from HEAD read once from git's object store, or the staged files — and the
 * report: file, line, commit and rule, the secret masked, text, JSON or SARIF 2.1.0, exit 1 when
 * something is found. git is run as a child process (`git cat-file --batch` streams the blobs):
 * no git library, no working-tree checkout of old commits.
 */
import { spawn } from 'node:child_process';
import { constants as fsConstants } from 'node:fs';
import { access, lstat, mkdir, mkdtemp, readdir, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { creator as keywardenRule, RULE_ID as KEYWARDEN_RULE_ID } from '@keywarden/secretlint-rule';
import { lintSource } from '@secretlint/core';
import { creator as recommendedPreset } from '@secretlint/secretlint-rule-preset-recommend';
import cliProgress from 'cli-progress';
import type { Command } from 'commander';
import { writeWholeFile } from '../_streams.js';
import { EXIT_FAILURE, UsageError } from '../errors.js';
import type { CliIO } from '../io.js';
import { formatJson, print } from '../output.js';

/** Files larger than this are not scanned (reported as skipped): secrets live in text, not in 100 MB dumps. */
const MAX_FILE_BYTES = 4 * 1024 * 1024;
/** Shown a progress bar from this many blobs on (a terminal only). */
const PROGRESS_FROM = 200;
const IGNORE_FILE = '.secretlintignore';
const HOOK_MARKER = '# keywarden-scan-hook v1';
export const SCAN_SKIP_ENV = 'KEYWARDEN_SCAN_SKIP';

const CONFIG: Parameters<typeof lintSource>[0]['options']['config'] = {
  rules: [
    { id: '@secretlint/secretlint-rule-preset-recommend', rule: recommendedPreset },
    { id: KEYWARDEN_RULE_ID, rule: keywardenRule },
  ],
};

export interface ScanFinding {
  file: string;
  line: number;
  column: number;
  /** The commit that added the blob (history scans). */
  commit?: string;
  rule: string;
  messageId: string;
  message: string;
  /** The first characters of the secret and its length, never the secret. */
  masked: string;
}

interface ScanResult {
  mode: 'tree' | 'history' | 'staged';
  scanned: number;
  skipped: { file: string; reason: string }[];
  findings: ScanFinding[];
}

interface ScanOptions {
  history?: boolean;
  all?: boolean;
  staged?: boolean;
  json?: boolean;
  sarif?: boolean;
  installHook?: boolean;
  force?: boolean;
  progress?: boolean;
}

export function registerScan(program: Command, io: CliIO): void {
  program
    .command('scan')
    .description('scan files or a git history for committed secrets (Keywarden’s own forms and the well-known ones)')
    .argument('[path]', 'the folder or file to scan (default: the current folder)')
    .option('--history', 'scan every blob reachable from HEAD (each once), not the working tree')
    .option('--all', 'with --history: every ref, not only HEAD')
    .option('--staged', 'scan the files staged for the next commit (what the pre-commit hook runs)')
    .option('--json', 'print the findings as JSON')
    .option('--sarif', 'print the findings as SARIF 2.1.0 (for code-scanning services)')
    .option('--install-hook', 'install a git pre-commit hook that runs `keywarden scan --staged`')
    .option('--force', 'with --install-hook: replace an existing pre-commit hook')
    .option('--no-progress', 'no progress bar on long histories')
    .addHelpText(
      'after',
      `
Detects secretlint's recommended forms (cloud keys, private keys, tokens, connection strings) and
Keywarden's own (development unseal keys, plaintext shares, \`keywarden datakey\` output, agent
credentials, PIN files). Wrapped keys, envelopes and encrypted shares are not secrets.
The working tree is what git lists (tracked and untracked, .gitignore respected); paths matching
${IGNORE_FILE} (gitignore syntax, at the repository root) are left out, and a line ending in
\`secretlint-disable-line\` is not reported. Each finding names the command that remediates it;
the runbook is docs/scanning.md. Exit status 1 when anything is found.

Pre-commit hook bypass (after checking the finding is not a secret): git commit --no-verify,
or ${SCAN_SKIP_ENV}=1 git commit ….

Examples:
  keywarden scan
  keywarden scan --history --sarif > scan.sarif
  keywarden scan --install-hook`,
    )
    .action(async (target: string | undefined, opts: ScanOptions) => {
      if (opts.json && opts.sarif) throw new UsageError('scan: --json and --sarif exclude each other');
      if ([opts.history, opts.staged, opts.installHook].filter(Boolean).length > 1) {
        throw new UsageError('scan: choose one of --history, --staged and --install-hook');
      }
      if (opts.all && !opts.history) throw new UsageError('scan: --all goes with --history');
      const where = path.resolve(io.cwd, target ?? '.');
      if (opts.installHook) {
        await installHook(where, opts.force === true, io);
        return;
      }
      let result: ScanResult;
      if (opts.history) result = await scanHistory(where, opts.all === true, opts.progress !== false, io);
      else if (opts.staged) result = await scanStaged(where);
      else result = await scanTree(where);
      await report(result, opts, io);
    });
}

// ── what to scan ─────────────────────────────────────────────────────────────────────────────

async function scanText(content: string, file: string): Promise<Omit<ScanFinding, 'file' | 'commit'>[]> {
  const r = await lintSource({
    source: { content, filePath: file, contentType: 'text' },
    options: { config: CONFIG, maskSecrets: true },
  });
  return r.messages.map((m) => ({
    line: m.loc.start.line,
    column: m.loc.start.column + 1,
    rule: m.ruleId,
    messageId: m.messageId,
    // maskSecrets puts one "*" per character of the secret in the preset's messages: eight say it.
    message: m.message.replace(/\*{9,}/g, '********'),
    masked: mask(content.slice(m.range[0], m.range[1])),
  }));
}

/** The first characters of a secret — at most 4, fewer for short ones (a PIN) — then its length. */
export function mask(secret: string): string {
  const shown = Math.min(4, Math.floor(secret.length / 8));
  return `${secret.slice(0, shown)}${'*'.repeat(8)} (${secret.length} chars)`;
}

function isBinary(bytes: Uint8Array): boolean {
  const n = Math.min(bytes.length, 8000);
  for (let i = 0; i < n; i++) if (bytes[i] === 0) return true;
  return false;
}

/** Text of a file or blob, or why it is not scanned. */
function textOf(bytes: Uint8Array): { text: string } | { reason: string } {
  if (bytes.length > MAX_FILE_BYTES) return { reason: `larger than ${MAX_FILE_BYTES >> 20} MiB` };
  if (isBinary(bytes)) return { reason: 'binary' };
  return { text: Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString('utf8') };
}

async function scanTree(where: string): Promise<ScanResult> {
  const result: ScanResult = { mode: 'tree', scanned: 0, skipped: [], findings: [] };
  const info = await lstat(where).catch(() => undefined);
  if (!info) throw new UsageError(`scan: ${where}: no such file or folder`);
  const base = info.isDirectory() ? where : path.dirname(where);
  const top = await gitTopLevel(base);
  let files: string[];
  if (!info.isDirectory()) files = [path.basename(where)];
  else if (top) files = await gitTreeFiles(where, top);
  else files = await walk(where);
  for (const rel of files) {
    const abs = path.join(base, rel);
    let bytes: Buffer;
    try {
      const st = await lstat(abs);
      if (!st.isFile()) continue; // symbolic links, sockets, deleted tracked files
      if (st.size > MAX_FILE_BYTES) {
        result.skipped.push({ file: rel, reason: `larger than ${MAX_FILE_BYTES >> 20} MiB` });
        continue;
      }
      bytes = await readFile(abs);
    } catch {
      continue;
    }
    await scanOne(result, bytes, rel);
  }
  return result;
}

async function scanOne(result: ScanResult, bytes: Uint8Array, file: string, commit?: string): Promise<void> {
  const t = textOf(bytes);
  if ('reason' in t) {
    if (t.reason !== 'binary') result.skipped.push({ file, reason: t.reason });
    return;
  }
  result.scanned++;
  for (const f of await scanText(t.text, file)) result.findings.push({ file, ...(commit ? { commit } : {}), ...f });
}

/** Outside git: every regular file under `dir`, but not .git or node_modules folders. */
async function walk(dir: string, rel = ''): Promise<string[]> {
  const out: string[] = [];
  for (const e of await readdir(path.join(dir, rel), { withFileTypes: true })) {
    const r = rel ? `${rel}/${e.name}` : e.name;
    if (e.isDirectory()) {
      if (e.name !== '.git' && e.name !== 'node_modules') out.push(...(await walk(dir, r)));
    } else if (e.isFile()) out.push(r);
  }
  return out.sort();
}

/** Tracked and untracked files under `where` as git lists them (.gitignore respected), minus .secretlintignore. */
async function gitTreeFiles(where: string, top: string): Promise<string[]> {
  const listed = splitZ(await git(where, ['ls-files', '-z', '--cached', '--others', '--exclude-standard', '--', '.']));
  const ignoreFile = path.join(top, IGNORE_FILE);
  if (!(await exists(ignoreFile))) return [...new Set(listed)];
  const ignored = new Set(
    splitZ(
      await git(where, [
        'ls-files',
        '-z',
        '--cached',
        '--others',
        '--ignored',
        `--exclude-from=${ignoreFile}`,
        '--',
        '.',
      ]),
    ),
  );
  return [...new Set(listed)].filter((f) => !ignored.has(f));
}

/**
 * Paths (relative to the top level) that .secretlintignore excludes, from a list of candidates
 * (history and staged files, which are not in the working tree to list). `git check-ignore
 * --no-index` runs in an empty scratch repository whose only exclude file is .secretlintignore,
 * so the repository's own .gitignore cannot answer first (a gitignored path that was committed
 * anyway is still scanned).
 */
async function secretlintIgnored(top: string, paths: string[]): Promise<Set<string>> {
  const ignoreFile = path.join(top, IGNORE_FILE);
  if (paths.length === 0 || !(await exists(ignoreFile))) return new Set();
  const scratch = await mkdtemp(path.join(tmpdir(), 'keywarden-scan-'));
  try {
    await git(scratch, ['init', '-q']);
    const out = await git(
      scratch,
      ['-c', `core.excludesFile=${ignoreFile}`, 'check-ignore', '--no-index', '-z', '--stdin'],
      `${paths.join('\0')}\0`,
      [0, 1],
    );
    return new Set(splitZ(out));
  } finally {
    await rm(scratch, { recursive: true, force: true });
  }
}

async function scanHistory(where: string, allRefs: boolean, progress: boolean, io: CliIO): Promise<ScanResult> {
  const top = await requireGit(where, '--history');
  const result: ScanResult = { mode: 'history', scanned: 0, skipped: [], findings: [] };
  const hasHead = await git(top, ['rev-parse', '--verify', '-q', 'HEAD'], undefined, [0, 1]);
  if (!hasHead.trim()) return result; // no commit yet
  // Every object reachable from HEAD (or every ref), each listed once, with the first path it was
  // seen at; commits are listed without a path, trees are filtered out by type.
  const listing = await git(top, [
    'rev-list',
    '--objects',
    '--filter=object:type=blob',
    ...(allRefs ? ['--all'] : ['HEAD']),
  ]);
  const blobs: { sha: string; file: string }[] = [];
  for (const line of listing.split('\n')) {
    const sp = line.indexOf(' ');
    if (sp > 0) blobs.push({ sha: line.slice(0, sp), file: line.slice(sp + 1) });
  }
  // rev-list names each blob by the first path it met; the same content may also sit at other
  // paths, so .secretlintignore is applied after the scan, to every path the blob was committed at.
  const tty = (io.stderr as { isTTY?: boolean }).isTTY === true;
  const bar =
    progress && tty && blobs.length >= PROGRESS_FROM
      ? new cliProgress.SingleBar(
          { stream: io.stderr, format: 'scan [{bar}] {value}/{total} blobs', hideCursor: true },
          cliProgress.Presets.shades_classic,
        )
      : undefined;
  bar?.start(blobs.length, 0);
  const found = new Map<string, ScanFinding[]>();
  try {
    await catFileBatch(
      top,
      blobs.map((b) => b.sha),
      async (i, type, bytes) => {
        const b = blobs[i] as { sha: string; file: string };
        if (type === 'blob') {
          const one: ScanResult = { mode: 'history', scanned: 0, skipped: [], findings: [] };
          await scanOne(one, bytes, b.file);
          result.scanned += one.scanned;
          result.skipped.push(...one.skipped);
          if (one.findings.length > 0) found.set(b.sha, one.findings);
        }
        bar?.increment();
      },
    );
  } finally {
    bar?.stop();
  }
  // For each blob that holds a secret, the commits that brought it in (git log --find-object
  // --raw, oldest first): the oldest one not at an ignored path is the commit and file reported.
  for (const [sha, fs] of found) {
    const log = await git(top, [
      'log',
      '--reverse',
      '--no-renames',
      '--raw',
      '--no-abbrev',
      '--format=commit %H',
      `--find-object=${sha}`,
      ...(allRefs ? ['--all'] : ['HEAD']),
    ]);
    const introduced: { commit: string; file: string }[] = [];
    let commit = '';
    for (const line of log.split('\n')) {
      if (line.startsWith('commit ')) commit = line.slice(7).trim();
      else if (line.startsWith(':')) {
        const tab = line.indexOf('\t');
        const meta = line.slice(1, tab).split(' ');
        if (meta[3] === sha) introduced.push({ commit, file: line.slice(tab + 1) });
      }
    }
    const ignored = await secretlintIgnored(
      top,
      introduced.map((x) => x.file),
    );
    const first = introduced.find((x) => !ignored.has(x.file));
    if (introduced.length > 0 && !first) continue; // only ever at ignored paths
    for (const f of fs) {
      if (first) {
        f.commit = first.commit;
        f.file = first.file;
      }
      result.findings.push(f);
    }
  }
  return result;
}

async function scanStaged(where: string): Promise<ScanResult> {
  const top = await requireGit(where, '--staged');
  const result: ScanResult = { mode: 'staged', scanned: 0, skipped: [], findings: [] };
  const names = splitZ(
    await git(top, ['diff', '--cached', '--name-only', '-z', '--no-renames', '--diff-filter=ACMRT', '--']),
  );
  const ignored = await secretlintIgnored(top, names);
  const todo = names.filter((n) => !ignored.has(n) && !n.includes('\n'));
  // The staged content (the index), not the working tree: what the commit will contain.
  await catFileBatch(
    top,
    todo.map((n) => `:${n}`),
    async (i, type, bytes) => {
      if (type === 'blob') await scanOne(result, bytes, todo[i] as string);
    },
  );
  return result;
}

// ── the hook ─────────────────────────────────────────────────────────────────────────────────

function shQuote(s: string): string {
  return `'${s.replace(/'/g, `'\\''`)}'`;
}

async function installHook(where: string, force: boolean, io: CliIO): Promise<void> {
  const top = await requireGit(where, '--install-hook');
  const hooks = path.resolve(top, (await git(top, ['rev-parse', '--git-path', 'hooks'])).trim());
  const hook = path.join(hooks, 'pre-commit');
  const existing = await readFile(hook, 'utf8').catch(() => undefined);
  if (existing !== undefined && !existing.includes(HOOK_MARKER) && !force) {
    throw new UsageError(
      `scan: ${hook} exists and is not Keywarden's; add \`keywarden scan --staged\` to it, or replace it with --force`,
    );
  }
  const bin = fileURLToPath(new URL('../bin.js', import.meta.url));
  const script = `#!/bin/sh
${HOOK_MARKER} (installed by \`keywarden scan --install-hook\`; docs/scanning.md)
# Refuses a commit whose staged files hold a secret. Bypass, once you have checked the finding
# is not a secret: git commit --no-verify, or ${SCAN_SKIP_ENV}=1 git commit …
if [ -n "$${SCAN_SKIP_ENV}" ]; then
  echo "keywarden scan: skipped (${SCAN_SKIP_ENV} is set)" >&2
  exit 0
fi
KEYWARDEN_BIN=${shQuote(bin)}
if [ -f "$KEYWARDEN_BIN" ]; then
  exec ${shQuote(process.execPath)} "$KEYWARDEN_BIN" scan --staged
fi
exec keywarden scan --staged
`;
  await mkdir(hooks, { recursive: true });
  // All or nothing: a hook cut short by a kill could end before its exec line and let every commit
  // through unscanned.
  await writeWholeFile(hook, top, script, 0o755);
  await print(io.stdout, `scan: pre-commit hook installed at ${hook} (bypass: git commit --no-verify)\n`);
}

// ── the report ───────────────────────────────────────────────────────────────────────────────

async function report(result: ScanResult, opts: ScanOptions, io: CliIO): Promise<void> {
  const findings = result.findings.sort(
    (a, b) => (a.commit ?? '').localeCompare(b.commit ?? '') || a.file.localeCompare(b.file) || a.line - b.line,
  );
  if (opts.sarif) await print(io.stdout, formatJson(toSarif(findings)));
  else if (opts.json) await print(io.stdout, formatJson(result));
  else {
    const lines: string[] = [];
    for (const f of findings) {
      lines.push(`${f.file}:${f.line}:${f.column}${f.commit ? ` (commit ${f.commit.slice(0, 12)})` : ''}`);
      lines.push(`  ${f.rule}: ${f.message}`);
      lines.push(`  secret: ${f.masked}`);
    }
    for (const s of result.skipped) lines.push(`skipped ${s.file}: ${s.reason}`);
    const what = result.mode === 'history' ? 'blobs' : 'files';
    if (findings.length === 0) lines.push(`scan: no secrets found (${result.scanned} ${what} scanned)`);
    await print(io.stdout, `${lines.join('\n')}\n`);
  }
  if (findings.length > 0) {
    const files = new Set(findings.map((f) => `${f.commit ?? ''}:${f.file}`)).size;
    const hook = result.mode === 'staged' ? '; commit refused (bypass: git commit --no-verify)' : '';
    // Exit 1 with a one-line summary (the findings are on stdout already).
    throw new UsageError(
      `scan: ${findings.length} secret${findings.length === 1 ? '' : 's'} found in ${files} ${result.mode === 'history' ? 'blob' : 'file'}${files === 1 ? '' : 's'}${hook}; what to do: docs/scanning.md`,
      { exitCode: EXIT_FAILURE },
    );
  }
}

/** SARIF 2.1.0 (OASIS), the minimal shape code-scanning services read. */
function toSarif(findings: readonly ScanFinding[]): unknown {
  const rules = [...new Set(findings.map((f) => `${f.rule}\0${f.messageId}`))].map((k) => {
    const [rule, messageId] = k.split('\0') as [string, string];
    return { id: `${rule}/${messageId}`, name: messageId, shortDescription: { text: `${messageId} (${rule})` } };
  });
  return {
    $schema: 'https://json.schemastore.org/sarif-2.1.0.json',
    version: '2.1.0',
    runs: [
      {
        tool: {
          driver: {
            name: 'keywarden scan',
            informationUri: 'https://github.com/keywarden/keywarden/blob/main/docs/scanning.md',
            rules,
          },
        },
        results: findings.map((f) => ({
          ruleId: `${f.rule}/${f.messageId}`,
          level: 'error',
          message: { text: f.message },
          locations: [
            {
              physicalLocation: {
                artifactLocation: { uri: f.file.split(path.sep).join('/') },
                region: { startLine: f.line, startColumn: f.column },
              },
            },
          ],
          ...(f.commit ? { properties: { commit: f.commit } } : {}),
        })),
      },
    ],
  };
}

// ── git ──────────────────────────────────────────────────────────────────────────────────────

function splitZ(s: string): string[] {
  return s.split('\0').filter((x) => x.length > 0);
}

async function exists(p: string): Promise<boolean> {
  return access(p, fsConstants.F_OK).then(
    () => true,
    () => false,
  );
}

async function gitTopLevel(dir: string): Promise<string | undefined> {
  try {
    return (await git(dir, ['rev-parse', '--show-toplevel'])).trim() || undefined;
  } catch {
    return undefined;
  }
}

async function requireGit(dir: string, what: string): Promise<string> {
  const top = await gitTopLevel(dir);
  if (!top) throw new UsageError(`scan: ${what} needs a git repository (${dir} is not in one)`);
  return top;
}

/** Run git, its stdout as text; a non-zero exit (other than those allowed) is an error naming the subcommand. */
function git(cwd: string, args: string[], input?: string, okCodes: number[] = [0]): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = spawn('git', args, { cwd, stdio: ['pipe', 'pipe', 'pipe'] });
    const out: Buffer[] = [];
    let err = '';
    child.stdout.on('data', (b: Buffer) => out.push(b));
    child.stderr.on('data', (b: Buffer) => {
      err += b.toString('utf8');
    });
    child.on('error', (e: NodeJS.ErrnoException) =>
      reject(
        new UsageError(
          e.code === 'ENOENT' ? 'scan: git is not installed (needed in a repository)' : `scan: git: ${e.message}`,
        ),
      ),
    );
    child.on('close', (code) => {
      if (okCodes.includes(code ?? -1)) resolve(Buffer.concat(out).toString('utf8'));
      else
        reject(
          new UsageError(
            `scan: git ${args.find((a) => !a.startsWith('-')) ?? ''} failed: ${err.trim().split('\n')[0] ?? ''}`,
          ),
        );
    });
    child.stdin.on('error', () => {});
    child.stdin.end(input ?? '');
  });
}

/**
 * `git cat-file --batch`: each object once, streamed. Output per request: "<sha> <type> <size>\n"
 * then <size> bytes and "\n", or "<name> missing\n". Objects are handed on one at a time, in
 * order; git's output is paused while they wait, so a long history is never held in memory.
 */
function catFileBatch(
  cwd: string,
  specs: readonly string[],
  each: (index: number, type: string, bytes: Buffer) => Promise<void>,
): Promise<void> {
  if (specs.length === 0) return Promise.resolve();
  return new Promise((resolve, reject) => {
    const child = spawn('git', ['cat-file', '--batch'], { cwd, stdio: ['pipe', 'pipe', 'pipe'] });
    let buf: Buffer = Buffer.alloc(0);
    let index = 0;
    let want: { type: string; size: number } | undefined;
    let chain = Promise.resolve();
    let pending = 0;
    let failed = false;
    const fail = (e: unknown) => {
      if (failed) return;
      failed = true;
      child.kill();
      reject(e);
    };
    child.stdout.on('data', (chunk: Buffer) => {
      buf = buf.length === 0 ? chunk : Buffer.concat([buf, chunk]);
      for (;;) {
        if (!want) {
          const nl = buf.indexOf(10);
          if (nl < 0) break;
          const header = buf.subarray(0, nl).toString('utf8');
          buf = buf.subarray(nl + 1);
          const parts = header.split(' ');
          if (parts[1] === 'missing' || parts.length < 3) {
            index++;
            continue;
          }
          want = { type: parts[1] as string, size: Number(parts[2]) };
        }
        if (buf.length < want.size + 1) break;
        const bytes = Buffer.from(buf.subarray(0, want.size));
        const type = want.type;
        buf = buf.subarray(want.size + 1);
        want = undefined;
        const i = index++;
        pending++;
        child.stdout.pause();
        chain = chain
          .then(() => each(i, type, bytes))
          .then(() => {
            if (--pending === 0 && !failed) child.stdout.resume();
          }, fail);
      }
    });
    let err = '';
    child.stderr.on('data', (b: Buffer) => {
      err += b.toString('utf8');
    });
    child.on('error', fail);
    child.on('close', (code) => {
      chain.then(() => {
        if (failed) return;
        if (code === 0) resolve();
        else fail(new UsageError(`scan: git cat-file failed: ${err.trim().split('\n')[0] ?? ''}`));
      }, fail);
    });
    child.stdin.on('error', () => {});
    child.stdin.end(`${specs.join('\n')}\n`);
  });
}
