/**
 * Starts a throwaway PostgreSQL cluster for the run (harness/postgres.sh) unless the environment
 * already names one (KEYWARDEN_PG_URL), and stops it after. Outside CI, a machine without
 * PostgreSQL gets the reason in KEYWARDEN_PG_UNAVAILABLE and the suites say it; in CI
 * (process.env.CI) it is a failure.
 */
import { execFileSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';

const script = fileURLToPath(new URL('../../../harness/postgres.sh', import.meta.url));

export default function setup(): (() => void) | undefined {
  if (process.env.KEYWARDEN_PG_URL) return undefined;
  let out: string;
  try {
    out = execFileSync('bash', [script, 'start'], {
      encoding: 'utf8',
      stdio: ['ignore', 'pipe', 'pipe'],
      timeout: 120_000,
    });
  } catch (err) {
    const reason = `PostgreSQL could not be started by harness/postgres.sh: ${String((err as { stderr?: string }).stderr ?? err).trim()}`;
    if (process.env.CI) throw new Error(reason);
    process.env.KEYWARDEN_PG_UNAVAILABLE = reason;
    return undefined;
  }
  for (const line of out.split('\n')) {
    const m = /^export ([A-Z0-9_]+)='([^']*)'$/.exec(line);
    if (m?.[1] && m[2] !== undefined) process.env[m[1]] = m[2];
  }
  const dir = process.env.KEYWARDEN_PG_DIR as string;
  return () => {
    execFileSync('bash', [script, 'stop', dir], { stdio: 'ignore', timeout: 60_000 });
  };
}
