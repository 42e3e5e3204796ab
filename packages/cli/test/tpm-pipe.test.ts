/**
 * `keywarden encrypt | keywarden decrypt` on a TPM folder: two CLI processes on one swtpm (three
 * transient object slots, no resource manager) at the same time, three such pipelines at once.
 * Before the TPM root held nothing between operations and locked the TPM across processes
 * (docs/tpm.md §Several processes), one side failed with TPM_RC_OBJECT_MEMORY. swtpm comes from
 * harness/swtpm.sh (or KEYWARDEN_TPM_TCTI); outside CI a machine without swtpm skips.
 */
import { execFileSync, spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

const BIN = fileURLToPath(new URL('../dist/bin.js', import.meta.url));
const SWTPM = fileURLToPath(new URL('../../../harness/swtpm.sh', import.meta.url));

const env: Record<string, string> = { KEYWARDEN_DIR: '', KEYWARDEN_UNSEAL_KEY: '' };
let stopDir: string | undefined;
let reason: string | undefined;
let cwd = '';

beforeAll(async () => {
  cwd = await mkdtemp(path.join(tmpdir(), 'keywarden-tpm-pipe-'));
  if (process.env.KEYWARDEN_TPM_TCTI) return;
  try {
    const out = execFileSync('bash', [SWTPM, 'start'], {
      encoding: 'utf8',
      stdio: ['ignore', 'pipe', 'pipe'],
      timeout: 60_000,
    });
    for (const m of out.matchAll(/^export ([A-Z0-9_]+)='?([^'\n]*)'?$/gm)) env[m[1] as string] = m[2] as string;
    stopDir = env.KEYWARDEN_SWTPM_DIR;
  } catch (err) {
    reason = `swtpm.sh could not start: ${String((err as { stderr?: string }).stderr ?? err).trim()}`;
    if (process.env.CI) throw new Error(reason);
  }
}, 90_000);

afterAll(async () => {
  if (stopDir) execFileSync('bash', [SWTPM, 'stop', stopDir], { stdio: 'ignore', timeout: 30_000 });
  if (cwd) await rm(cwd, { recursive: true, force: true });
});

/** Run a shell command line in `cwd` with the CLI on $KW; exit code and stderr. */
function sh(line: string): Promise<{ code: number | null; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn('bash', ['-c', `set -o pipefail; ${line}`], {
      cwd,
      env: { ...process.env, ...env, KW: `${process.execPath} ${BIN}` },
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    let stderr = '';
    child.stderr.on('data', (d: Buffer) => {
      stderr += d.toString();
    });
    const timer = setTimeout(() => child.kill('SIGKILL'), 90_000);
    child.on('error', reject);
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stderr });
    });
  });
}

const built = existsSync(BIN);
if (!built && process.env.CI) throw new Error('dist/bin.js is missing: build the CLI first');

describe.skipIf(!built)('keywarden encrypt | keywarden decrypt on a TPM folder', () => {
  it('three pipelines at once, each with both ends on the same swtpm, all round-trip', async (ctx) => {
    if (reason) {
      console.warn(`skipped: ${reason}`);
      return ctx.skip();
    }
    expect(await sh('$KW init --root tpm: && $KW key create tenant')).toEqual({ code: 0, stderr: expect.any(String) });
    const plain = Buffer.from('a record for the TPM pipe\n'.repeat(50));
    await writeFile(path.join(cwd, 'in'), plain);
    const runs = await Promise.all(
      [1, 2, 3].map((i) => sh(`$KW encrypt --key tenant < in | $KW decrypt --key tenant > out${i}`)),
    );
    for (const [i, r] of runs.entries()) {
      expect(r.stderr).toBe('');
      expect(r.code).toBe(0);
      expect((await readFile(path.join(cwd, `out${i + 1}`))).equals(plain)).toBe(true);
    }
  }, 150_000);
});
