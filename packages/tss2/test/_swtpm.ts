/**
 * A private swtpm for a test run, started through the project's harness (harness/swtpm.sh): free
 * loopback ports, a temporary state folder, torn down afterwards. Used by the vitest globalSetup of
 * @keywarden/tss2 and @keywarden/tpm, and by the fault tests that kill and restart a TPM.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';

const SCRIPT = fileURLToPath(new URL('../../../harness/swtpm.sh', import.meta.url));

export interface Swtpm {
  tcti: string;
  pid: number;
  dir: string;
  port: number;
}

function parse(out: string): Swtpm {
  const get = (name: string): string => {
    const m = new RegExp(`^export ${name}='?([^'\\n]*)'?$`, 'm').exec(out);
    if (!m?.[1]) throw new Error(`swtpm.sh start printed no ${name}`);
    return m[1];
  };
  const tcti = get('KEYWARDEN_TPM_TCTI');
  return {
    tcti,
    pid: Number(get('KEYWARDEN_SWTPM_PID')),
    dir: get('KEYWARDEN_SWTPM_DIR'),
    port: Number(/port=(\d+)/.exec(tcti)?.[1]),
  };
}

/** Start swtpm (optionally on a given state folder and port, to bring the same TPM back). */
export function startSwtpm(options: { state?: string; port?: number } = {}): Swtpm {
  const args = ['start'];
  if (options.state) args.push('--state', options.state);
  if (options.port) args.push('--port', String(options.port));
  return parse(execFileSync('bash', [SCRIPT, ...args], { encoding: 'utf8', timeout: 30_000 }));
}

/** Stop it and remove its state folder. */
export function stopSwtpm(t: Pick<Swtpm, 'pid' | 'dir'>): void {
  spawnSync('bash', [SCRIPT, 'stop', String(t.pid), t.dir], { timeout: 30_000 });
}
