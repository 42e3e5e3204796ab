/**
 * The harness's PostgreSQL for the CLI's PostgreSQL suites: the environment's cluster
 * (KEYWARDEN_PG_URL + KEYWARDEN_PG_PASSWORD_FILE), else one started here by harness/postgres.sh in
 * a temporary folder and stopped by stopPostgres. In CI a PostgreSQL that cannot start fails the
 * suite; elsewhere the suite is skipped with the harness's reason (`unavailable`).
 */
import { execFileSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';

const POSTGRES_SH = fileURLToPath(new URL('../../../harness/postgres.sh', import.meta.url));

export interface HarnessPostgres {
  /** KEYWARDEN_PG_URL, KEYWARDEN_PG_PASSWORD_FILE (and KEYWARDEN_PG_DIR for a cluster started here). */
  env: Record<string, string>;
  /** The cluster's folder when this process started it (then stopPostgres stops it). */
  dir?: string;
  /** Why no PostgreSQL could be had (outside CI only). */
  unavailable?: string;
}

export function startPostgres(suite: string): HarnessPostgres {
  if (process.env.KEYWARDEN_PG_URL && process.env.KEYWARDEN_PG_PASSWORD_FILE) {
    return {
      env: {
        KEYWARDEN_PG_URL: process.env.KEYWARDEN_PG_URL,
        KEYWARDEN_PG_PASSWORD_FILE: process.env.KEYWARDEN_PG_PASSWORD_FILE,
      },
    };
  }
  let out: string;
  try {
    out = execFileSync('bash', [POSTGRES_SH, 'start'], {
      encoding: 'utf8',
      stdio: ['ignore', 'pipe', 'pipe'],
      timeout: 120_000,
    });
  } catch (err) {
    const reason = `harness/postgres.sh could not start PostgreSQL: ${String((err as { stderr?: string }).stderr ?? err).trim()}`;
    // In CI a missing PostgreSQL is a failure, not a skip.
    if (process.env.CI) throw new Error(reason);
    console.warn(`${suite}: skipped, ${reason}`);
    return { env: {}, unavailable: reason };
  }
  const env: Record<string, string> = {};
  for (const line of out.split('\n')) {
    const m = /^export ([A-Z0-9_]+)='([^']*)'$/.exec(line);
    if (m?.[1] && m[2] !== undefined) env[m[1]] = m[2];
  }
  return { env, dir: env.KEYWARDEN_PG_DIR };
}

/** Stop the cluster startPostgres started (one the environment named outlives the run). */
export function stopPostgres(pg: HarnessPostgres): void {
  if (pg.dir) execFileSync('bash', [POSTGRES_SH, 'stop', pg.dir], { stdio: 'ignore', timeout: 60_000 });
}
