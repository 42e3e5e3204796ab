/**
 * A device root on a folder whose store is a PostgreSQL schema (`keywarden init --store postgres
 * --root pkcs11:…`), through the real `keywarden` executable, on the SoftHSM2 token and the
 * PostgreSQL that the harness scripts start (harness/softhsm.sh, harness/postgres.sh): the root's
 * record in the schema and the URI in the folder; keys, envelopes, status and the audit log
 * through them; a schema that holds a store refused before anything is made in the token; and an
 * init killed with SIGKILL at every step and at random instants, leaving either the whole store or
 * nothing in the schema and the folder that the next init (or `init --abort`) does not undo.
 * Outside CI a machine without SoftHSM2 or PostgreSQL skips with the harness's reason; in CI a
 * missing one is a failure.
 */
import { execFileSync } from 'node:child_process';
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import pgClient from 'pg';
import { parse } from 'pg-connection-string';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type HarnessPostgres, startPostgres, stopPostgres } from './_postgres.js';
import { type HarnessSoftHsm, startSoftHsm, stopSoftHsm } from './_softhsm.js';
import { tempDir } from './helpers.js';
import { built, kw, requireBuild, spawnKilled } from './split-helpers.js';

requireBuild('folder-postgres-device.test.ts');

const SWTPM_SH = fileURLToPath(new URL('../../../harness/swtpm.sh', import.meta.url));

let pg: HarnessPostgres = { env: {} };
let hsm: HarnessSoftHsm = { reason: 'not started' };
let pin = '';
const PREFIX = `kw_pgdev_${process.pid}_${Date.now().toString(36)}`;
let schemas = 0;
const schema = () => `${PREFIX}_${++schemas}`;
let objects = 0;
const object = () => `kw-pgdev-${Date.now().toString(36)}-${++objects}`;

beforeAll(() => {
  if (!built) return;
  pg = startPostgres('folder-postgres-device.test.ts');
  hsm = startSoftHsm();
  if ('env' in hsm) pin = readFileSync(hsm.env.KEYWARDEN_PKCS11_PIN_FILE as string, 'utf8').replace(/\n$/, '');
}, 150_000);

afterAll(() => {
  stopSoftHsm(hsm);
  stopPostgres(pg);
}, 90_000);

function unavailable(): boolean {
  const why = pg.unavailable ?? ('reason' in hsm ? hsm.reason : undefined);
  if (why) console.warn(`folder-postgres-device.test.ts: skipped, ${why}`);
  return why !== undefined;
}

/** The environment of a command: the PostgreSQL connection, the token's config and its PIN (by name only). */
function env(): Record<string, string> {
  const e = 'env' in hsm ? hsm.env : {};
  return { ...pg.env, SOFTHSM2_CONF: e.SOFTHSM2_CONF as string, KW_TEST_PIN: pin };
}

function uri(label: string): string {
  const e = 'env' in hsm ? hsm.env : {};
  return (
    `pkcs11:token=${encodeURIComponent(e.KEYWARDEN_PKCS11_TOKEN || 'keywarden')};object=${label}` +
    `?module-path=${encodeURI(e.KEYWARDEN_PKCS11_MODULE || '')}&pin-source=env:KW_TEST_PIN`
  );
}

async function ok(args: string[], cwd: string, input?: string) {
  const r = await kw(args, cwd, { env: env(), ...(input !== undefined ? { input } : {}), timeoutMs: 60_000 });
  expect(r.code, `${args.join(' ')}: ${r.stderr}`).toBe(0);
  return r;
}

/** A query on the harness's PostgreSQL, as an operator with psql would run it. */
async function sql<T extends pgClient.QueryResultRow = Record<string, unknown>>(text: string): Promise<T[]> {
  const { password: _none, ...parts } = parse(pg.env.KEYWARDEN_PG_URL as string);
  const password = readFileSync(pg.env.KEYWARDEN_PG_PASSWORD_FILE as string, 'utf8').trim();
  const client = new pgClient.Client({ ...(parts as pgClient.ClientConfig), password });
  client.on('error', () => {});
  await client.connect();
  try {
    return (await client.query<T>(text)).rows;
  } finally {
    await client.end();
  }
}
const q = (s: string) => pgClient.escapeIdentifier(s);
const rootRows = async (S: string) => sql<{ name: string }>(`SELECT name FROM ${q(S)}.meta WHERE name = 'root'`);

/** How many objects labelled `label` the token holds, as OpenSC's pkcs11-tool (not Keywarden) lists them. */
function tokenObjects(label: string): number {
  const e = 'env' in hsm ? hsm.env : {};
  const listed = execFileSync(
    'pkcs11-tool',
    [
      '--module',
      e.KEYWARDEN_PKCS11_MODULE as string,
      '--token-label',
      e.KEYWARDEN_PKCS11_TOKEN || 'keywarden',
      '--login',
      '--pin',
      pin,
      '--list-objects',
    ],
    {
      env: { ...process.env, SOFTHSM2_CONF: e.SOFTHSM2_CONF },
      encoding: 'utf8',
      stdio: ['ignore', 'pipe', 'pipe'],
      timeout: 20_000,
    },
  );
  return listed.split('\n').filter((l) => /^\s*label:\s+(.*)$/.exec(l)?.[1]?.trim() === label).length;
}

describe.skipIf(!built)('keywarden init --store postgres --root pkcs11:…', () => {
  it('the root in the token, its record in the schema, the URI in the folder; keys, envelopes, status and audit through them', async () => {
    if (unavailable()) return;
    const S = schema();
    const cwd = await tempDir();
    const label = object();
    const init = await ok(['init', '--store', 'postgres', '--pg-schema', S, '--root', uri(label)], cwd);
    expect(init.stderr).toContain(
      `Initialized a key store in PostgreSQL schema ${S} for .keywarden with a pkcs11 root`,
    );
    // The folder: the schema's name and the URI (no PIN), nothing else; the record is in the schema.
    const dir = path.join(cwd, '.keywarden');
    expect(readdirSync(dir).sort()).toEqual(['root.uri', 'store.json']);
    expect(JSON.parse(readFileSync(path.join(dir, 'store.json'), 'utf8'))).toEqual({
      format: 1,
      kind: 'postgres',
      schema: S,
    });
    expect(readFileSync(path.join(dir, 'root.uri'), 'utf8')).toBe(`${uri(label)}\n`);
    expect(statSync(path.join(dir, 'root.uri')).mode & 0o777).toBe(0o600);
    for (const f of readdirSync(dir)) expect(readFileSync(path.join(dir, f), 'utf8')).not.toContain(pin);
    expect(await rootRows(S)).toHaveLength(1);
    expect(tokenObjects(label)).toBe(1);

    await ok(['key', 'create', 'in-hsm', '--kek-mode', 'hsm'], cwd);
    await ok(['key', 'create', 'wrapped'], cwd);
    expect((await sql(`SELECT count(*)::int AS n FROM ${q(S)}.keys`))[0]).toEqual({ n: 2 });
    for (const key of ['in-hsm', 'wrapped']) {
      const ct = await ok(['encrypt', '--text', '--key', key, '-c', 'row=1'], cwd, `device on postgres ${key}`);
      const back = await kw(['decrypt', '--key', key, '-c', 'row=1'], cwd, { env: env(), input: ct.stdout });
      expect(back.stdout, back.stderr).toBe(`device on postgres ${key}`);
    }
    const st = await ok(['status'], cwd);
    expect(st.stdout).toMatch(new RegExp(`key store: +\\.keywarden \\(PostgreSQL, schema ${S}\\)`));
    expect(st.stdout).toMatch(/root: +p11_\S+ \(pkcs11\)/);
    const json = JSON.parse((await ok(['status', '--json'], cwd)).stdout) as Record<string, unknown>;
    expect(json).toMatchObject({ storeKind: 'postgres', pgSchema: S, mode: 'device', keys: 2 });
    // Commands open the device themselves: the folder's agent says so (as on a folder's own store).
    const agent = await kw(['agent'], cwd, { env: env(), timeoutMs: 30_000 });
    expect(agent.code).toBe(1);
    expect(agent.stderr.trim()).toBe(
      "keywarden: this key store's root is a pkcs11: device root: commands open the device themselves, no agent is needed",
    );
    const verified = await ok(['audit', 'verify'], cwd);
    expect(verified.stdout).toMatch(/audit: \d+ records verified, chain intact/);

    // The schema holds a store now: a second folder's init (device or software) is refused before
    // anything is made in the token, and leaves the first store whole.
    const other = await tempDir();
    const label2 = object();
    for (const args of [
      ['init', '--store', 'postgres', '--pg-schema', S, '--root', uri(label2)],
      ['init', '--store', 'postgres', '--pg-schema', S],
    ]) {
      const r = await kw(args, other, { env: env(), timeoutMs: 60_000 });
      expect(r.code).toBe(1);
      expect(r.stderr.trim()).toBe(
        `keywarden: init: schema ${S} already holds a Keywarden key store; nothing was changed (choose another schema with --pg-schema)`,
      );
    }
    expect(tokenObjects(label2)).toBe(0);
    expect(existsSync(path.join(other, '.keywarden', 'store.json'))).toBe(false);
    expect(await rootRows(S)).toHaveLength(1);
    const ct2 = await ok(['encrypt', '--text', '--key', 'wrapped'], cwd, 'still whole');
    expect((await ok(['decrypt', '--key', 'wrapped'], cwd, ct2.stdout)).stdout).toBe('still whole');

    // A device secret split is a folder's own store's; usage errors name what goes with what.
    const split = await kw(
      ['init', '--store', 'postgres', '--pg-schema', schema(), '--root', uri(object()), '--pin-shares', '3'],
      other,
      { env: env() },
    );
    expect(split.code).toBe(2);
    expect(split.stderr).toContain('offered on a folder of its own, not with --store postgres');
  }, 180_000);

  it('an init killed at every step or at a random instant leaves the whole store, or nothing the next init does not undo', async () => {
    if (unavailable()) return;
    const steps = [
      'pg-init:device-root-made',
      'pg-init:staged',
      'pg-init:root-written',
      'pg-init:uri-written',
      'pg-init:activated',
      'pg-init:done',
    ];
    const cases: { hook?: string; delayMs?: number }[] = [
      ...steps.map((s) => ({ hook: `kill:${s}` })),
      ...Array.from({ length: 2 }, () => ({ delayMs: 300 + Math.floor(Math.random() * 1200) })),
    ];
    const seen = { activated: 0, undone: 0 };
    for (const c of cases) {
      const S = schema();
      const cwd = await tempDir();
      const label = JSON.stringify(c);
      const r = await spawnKilled(
        ['init', '--store', 'postgres', '--pg-schema', S, '--root', uri(object())],
        cwd,
        c,
        env(),
      );
      if (c.hook) expect(r.signal, `${label}: ${r.stderr}`).toBe('SIGKILL');
      const dir = path.join(cwd, '.keywarden');
      expect(existsSync(path.join(dir, 'root.uri.tmp')), label).toBe(false);
      if (existsSync(path.join(dir, 'store.json'))) {
        // Activated: a whole store, whose root opens from the URI in the folder.
        seen.activated++;
        expect(readFileSync(path.join(dir, 'root.uri'), 'utf8'), label).toMatch(/^pkcs11:/);
        await ok(['key', 'create', 'k'], cwd);
        continue;
      }
      seen.undone++;
      const st = await kw(['status'], cwd, { env: env() });
      expect(st.code, label).not.toBe(0);
      expect(st.stderr, label).toContain('no key store in .keywarden');
      const staged = existsSync(path.join(dir, 'store.json.staged'));
      // The next init in the same schema (with a new object: the killed one's may be in the token)
      // undoes what the staged config names and makes a whole store.
      const again = await ok(['init', '--store', 'postgres', '--pg-schema', S, '--root', uri(object())], cwd);
      if (staged) {
        expect(again.stderr, label).toContain('Undid an earlier init on PostgreSQL');
        expect(again.stderr, label).toContain('device may keep the root object that init made');
      }
      expect(existsSync(path.join(dir, 'store.json.staged')), label).toBe(false);
      expect(await rootRows(S), label).toHaveLength(1);
      const root = /root: +(p11_\S+)/.exec((await ok(['status'], cwd)).stdout)?.[1];
      expect(again.stderr, label).toContain(`(root ${root})`);
      await ok(['key', 'create', 'k'], cwd);
    }
    expect(seen.activated).toBeGreaterThanOrEqual(2);
    expect(seen.undone).toBeGreaterThanOrEqual(4);
  }, 300_000);

  it('init --abort after a kill removes the record from the schema and the URI from the folder', async () => {
    if (unavailable()) return;
    const S = schema();
    const cwd = await tempDir();
    const r = await spawnKilled(
      ['init', '--store', 'postgres', '--pg-schema', S, '--root', uri(object())],
      cwd,
      { hook: 'kill:pg-init:uri-written' },
      env(),
    );
    expect(r.signal, r.stderr).toBe('SIGKILL');
    expect(await rootRows(S)).toHaveLength(1);
    const resume = await kw(['init', '--resume'], cwd, { env: env() });
    expect(resume.code).toBe(2);
    const abort = await ok(['init', '--abort'], cwd);
    expect(abort.stderr).toMatch(/removed the unfinished store's root p11_\S+ from schema/);
    expect(await rootRows(S)).toHaveLength(0);
    expect(readdirSync(path.join(cwd, '.keywarden'))).toEqual([]);
  }, 120_000);
});

describe.skipIf(!built)('keywarden init --store postgres --root tpm:…', () => {
  it('a TPM root (swtpm through harness/swtpm.sh) on the schema: keys and envelopes through it, status', async () => {
    if (pg.unavailable) return;
    let out: string;
    try {
      out = execFileSync('bash', [SWTPM_SH, 'start'], {
        encoding: 'utf8',
        stdio: ['ignore', 'pipe', 'pipe'],
        timeout: 60_000,
      });
    } catch (err) {
      const reason = `harness/swtpm.sh could not start its TPM: ${String((err as { stderr?: string }).stderr ?? err).trim()}`;
      if (process.env.CI) throw new Error(reason);
      console.warn(`folder-postgres-device.test.ts: skipped, ${reason}`);
      return;
    }
    const tpm: Record<string, string> = {};
    for (const line of out.split('\n')) {
      const m = /^export ([A-Z0-9_]+)='?([^']*)'?$/.exec(line);
      if (m?.[1] && m[2] !== undefined) tpm[m[1]] = m[2];
    }
    try {
      const S = schema();
      const cwd = await tempDir();
      const e = {
        ...pg.env,
        KEYWARDEN_TPM_TCTI: tpm.KEYWARDEN_TPM_TCTI as string,
        KW_TEST_AUTH: 'tpm-auth-of-this-test',
      };
      const run = async (args: string[], input?: string) => {
        const r = await kw(args, cwd, { env: e, ...(input !== undefined ? { input } : {}), timeoutMs: 60_000 });
        expect(r.code, `${args.join(' ')}: ${r.stderr}`).toBe(0);
        return r;
      };
      const init = await run([
        'init',
        '--store',
        'postgres',
        '--pg-schema',
        S,
        '--root',
        'tpm:?auth-env=KW_TEST_AUTH',
        '--pcrs',
        '7',
      ]);
      expect(init.stderr).toContain(`Initialized a key store in PostgreSQL schema ${S} for .keywarden with a tpm root`);
      expect(readdirSync(path.join(cwd, '.keywarden')).sort()).toEqual(['root.uri', 'store.json']);
      expect((await sql(`SELECT name FROM ${q(S)}.meta WHERE name = 'tpm-root'`)).length).toBe(1);
      await run(['key', 'create', 'sealed-by-tpm']);
      const ct = await run(['encrypt', '--text', '--key', 'sealed-by-tpm'], 'tpm on postgres');
      expect((await run(['decrypt', '--key', 'sealed-by-tpm'], ct.stdout)).stdout).toBe('tpm on postgres');
      const st = await run(['status']);
      expect(st.stdout).toMatch(new RegExp(`key store: +\\.keywarden \\(PostgreSQL, schema ${S}\\)`));
      expect(st.stdout).toMatch(/PCR policy: +every KEK bound to SHA-256 PCRs 7/);
    } finally {
      execFileSync('bash', [SWTPM_SH, 'stop', tpm.KEYWARDEN_SWTPM_DIR as string], { stdio: 'ignore', timeout: 30_000 });
    }
  }, 120_000);
});
