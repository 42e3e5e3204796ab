/**
 * A key-store folder whose store is a PostgreSQL schema (`keywarden init --store postgres`), on the
 * harness's PostgreSQL (_postgres.ts): init (development mode and split knowledge), every folder
 * command against the schema, the refusal of a schema that holds a store, `audit verify` naming the
 * first bad record after rows are edited, deleted or reordered in PostgreSQL directly, and inits
 * killed with SIGKILL at every step and at random instants leaving nothing stranded.
 */
import { existsSync, mkdirSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import pgClient from 'pg';
import { parse } from 'pg-connection-string';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type HarnessPostgres, startPostgres, stopPostgres } from './_postgres.js';
import { cli, tempDir } from './helpers.js';
import { built, kw, requireBuild, spawnKilled, startAgent } from './split-helpers.js';

requireBuild('folder-postgres.test.ts');

let pg: HarnessPostgres = { env: {} };
const PREFIX = `kw_folder_${process.pid}_${Date.now().toString(36)}`;
const schemas: string[] = [];
/** A fresh schema name for one test (dropped at the end when the cluster outlives the run). */
function schema(): string {
  const s = `${PREFIX}_${schemas.length + 1}`;
  schemas.push(s);
  return s;
}

/** A query on the harness's PostgreSQL, as an operator with psql would run it. */
async function sql<T extends pgClient.QueryResultRow = Record<string, unknown>>(
  text: string,
  params: unknown[] = [],
): Promise<T[]> {
  // pg lets a connection string's (absent) password override `password`: pass the parts instead.
  const { password: _none, ...parts } = parse(pg.env.KEYWARDEN_PG_URL as string);
  const password = readFileSync(pg.env.KEYWARDEN_PG_PASSWORD_FILE as string, 'utf8').trim();
  const client = new pgClient.Client({ ...(parts as pgClient.ClientConfig), password });
  client.on('error', () => {});
  await client.connect();
  try {
    return (await client.query<T>(text, params)).rows;
  } finally {
    await client.end();
  }
}

const q = (s: string) => pgClient.escapeIdentifier(s);

const FLEET_DOC = fileURLToPath(new URL('../../../docs/fleet.md', import.meta.url));

beforeAll(() => {
  if (!built) return;
  pg = startPostgres('folder-postgres.test.ts');
}, 150_000);

afterAll(async () => {
  if (!pg.unavailable && !pg.dir && pg.env.KEYWARDEN_PG_URL) {
    for (const s of schemas) await sql(`DROP SCHEMA IF EXISTS ${q(s)} CASCADE`);
  }
  stopPostgres(pg);
}, 90_000);

/** The CLI in this process, with only the PostgreSQL connection in its environment. */
function run(argv: string[], cwd: string, stdin?: string) {
  return cli(argv, { cwd, env: { ...pg.env }, ...(stdin !== undefined ? { stdin } : {}) });
}

async function ok(argv: string[], cwd: string, stdin?: string) {
  const r = await run(argv, cwd, stdin);
  expect(r.stderr.includes('keywarden:') ? r.stderr : '', argv.join(' ')).not.toMatch(/keywarden: (?!warning)/);
  expect(r.code, `${argv.join(' ')}: ${r.stderr}`).toBe(0);
  return r;
}

async function auditVerify(cwd: string) {
  return run(['audit', 'verify'], cwd);
}

describe.skipIf(!built)('keywarden init --store postgres', () => {
  it('docs/fleet.md: the commands for a folder on PostgreSQL run as written; the folder names the schema only, audit verify|tail|export|search and status read it', async () => {
    if (pg.unavailable) return;
    const doc = readFileSync(FLEET_DOC, 'utf8');
    const block =
      /<!-- run by packages\/cli\/test\/folder-postgres\.test\.ts[^>]*-->\n\s*```sh\n([\s\S]*?)\n\s*```/.exec(doc)?.[1];
    expect(block, 'the marked sh block in docs/fleet.md').toBeDefined();
    const S = schema();
    const script = (block as string)
      .split('\n')
      .map((l) => l.trim())
      .join('\n')
      .replaceAll('payments', S);
    expect(script).toMatch(/^keywarden init --store postgres --pg-schema /);
    const cwd = await tempDir();
    // Each line is run in this process as the shell would: `echo 'TEXT' |` and `< FILE` give
    // stdin, `> FILE` takes stdout; a line of any other form fails the test (the doc changed).
    let stdout = '';
    for (const line of script.split('\n')) {
      const m = /^(?:echo '([^']*)' \| )?keywarden ((?:[^<>#\s]+ ?)+?)(?: < (\S+))?(?: > (\S+))?(?:\s+#.*)?$/.exec(
        line,
      );
      expect(m, `docs/fleet.md: cannot run ${line}`).not.toBeNull();
      const [, echoed, argv, from, to] = m as RegExpExecArray;
      const stdin =
        echoed !== undefined ? `${echoed}\n` : from !== undefined ? readFileSync(path.join(cwd, from)) : undefined;
      const res = await cli((argv as string).trim().split(' '), {
        cwd,
        env: { ...pg.env },
        ...(stdin !== undefined ? { stdin } : {}),
      });
      expect(res.code, `${line}: ${res.stderr}`).toBe(0);
      if (to !== undefined) writeFileSync(path.join(cwd, to), res.stdout);
      else stdout += res.out;
    }
    const r = { stdout };
    expect(r.stdout).toContain('order 1041');
    expect(r.stdout).toMatch(new RegExp(`key store: +\\.keywarden \\(PostgreSQL, schema ${S}\\)`));
    expect(r.stdout).toMatch(/audit: \d+ records verified, chain intact/);
    expect(r.stdout).toMatch(/^orders\s+kek_\S+\s+v2\s/m);
    // The folder names the schema and nothing else: no connection string, no password, no SQLite file.
    const configPath = path.join(cwd, '.keywarden', 'store.json');
    const config = readFileSync(configPath, 'utf8');
    expect(JSON.parse(config)).toEqual({ format: 1, kind: 'postgres', schema: S });
    expect(statSync(configPath).mode & 0o777).toBe(0o600);
    const password = readFileSync(pg.env.KEYWARDEN_PG_PASSWORD_FILE as string, 'utf8').trim();
    expect(config).not.toContain(password);
    expect(config).not.toContain('postgres://');
    expect(readdirSync(path.join(cwd, '.keywarden')).sort()).toEqual(['store.json', 'unseal.key']);
    // The root is in the schema.
    expect((await sql(`SELECT name FROM ${q(S)}.meta WHERE name = 'root'`)).length).toBe(1);

    const json = JSON.parse((await ok(['status', '--json'], cwd)).out) as Record<string, unknown>;
    expect(json).toMatchObject({ storeKind: 'postgres', pgSchema: S, mode: 'development' });

    const verified = await ok(['audit', 'verify'], cwd);
    const count = Number(/audit: (\d+) records verified, chain intact up to seq (\d+)/.exec(verified.out)?.[1]);
    expect(count).toBeGreaterThanOrEqual(4); // create, rotate, generate, decrypt (and the reads audit does not record)
    const exported = (await ok(['audit', 'export', '--jsonl'], cwd)).out.trim().split('\n');
    // verify, run above, reads the log without recording itself; export equals what it verified
    expect(exported.length).toBe(count);
    expect((await ok(['audit', 'tail', '-n', '2'], cwd)).out.trim().split('\n')).toEqual(exported.slice(-2));
    const keyId = (JSON.parse(exported[0] as string) as { key: string }).key;
    const found = (await ok(['audit', 'search', '--key', 'orders'], cwd)).out.trim().split('\n');
    expect(found.length).toBeGreaterThanOrEqual(4);
    for (const l of found) expect((JSON.parse(l) as { key: string }).key).toBe(keyId);
  }, 120_000);

  it('refuses a schema that already holds a store, and a folder that has one: nothing changed', async () => {
    if (pg.unavailable) return;
    const S = schema();
    const a = await tempDir();
    await ok(['init', '--store', 'postgres', '--pg-schema', S], a);
    await ok(['key', 'create', 'k'], a);
    const rootBefore = await sql<{ value: Buffer }>(`SELECT value FROM ${q(S)}.meta WHERE name = 'root'`);

    const b = await tempDir();
    for (const extra of [[], ['--shares', '3', '--threshold', '2', '--share-dir', 'shares']]) {
      const r = await run(['init', '--store', 'postgres', '--pg-schema', S, ...extra], b);
      expect(r.code).toBe(1);
      expect(r.stderr).toContain(
        `keywarden: init: schema ${S} already holds a Keywarden key store; nothing was changed`,
      );
      expect(existsSync(path.join(b, '.keywarden', 'store.json'))).toBe(false);
      expect(existsSync(path.join(b, '.keywarden', 'store.json.staged'))).toBe(false);
      expect(existsSync(path.join(b, '.keywarden', 'unseal.key'))).toBe(false);
      expect(existsSync(path.join(b, 'shares')) && readdirSync(path.join(b, 'shares')).length > 0).toBe(false);
    }
    // A schema whose root was removed but which holds keys is a store too.
    const c = await tempDir();
    await sql(`DELETE FROM ${q(S)}.meta WHERE name = 'root'`);
    const again = await run(['init', '--store', 'postgres', '--pg-schema', S], c);
    expect(again.stderr).toContain(`keywarden: init: schema ${S} already holds a Keywarden key store`);
    await sql(`INSERT INTO ${q(S)}.meta (name, value) VALUES ('root', $1)`, [rootBefore[0]?.value]);

    // The folder that has a store refuses any init.
    for (const args of [['init'], ['init', '--store', 'postgres', '--pg-schema', schema()]]) {
      const r = await run(args, a);
      expect(r.code).not.toBe(0);
      expect(r.stderr).toContain('.keywarden already has a key store');
    }
    const rootAfter = await sql<{ value: Buffer }>(`SELECT value FROM ${q(S)}.meta WHERE name = 'root'`);
    expect(Buffer.compare(rootAfter[0]?.value as Buffer, rootBefore[0]?.value as Buffer)).toBe(0);
    await ok(['key', 'rotate', 'k'], a);

    // --pg-schema alone is a usage error; so is a device secret split on PostgreSQL (a device root
    // itself is folder-postgres-device.test.ts's subject).
    expect((await run(['init', '--pg-schema', S], c)).code).toBe(2);
    expect((await run(['init', '--store', 'postgres', '--root', 'tpm:', '--auth-shares', '3'], c)).code).toBe(2);
  });

  it('audit verify names the first bad record when a row is edited, deleted or reordered in PostgreSQL', async () => {
    if (pg.unavailable) return;
    const S = schema();
    const cwd = await tempDir();
    await ok(['init', '--store', 'postgres', '--pg-schema', S], cwd);
    await ok(['key', 'create', 'k'], cwd);
    for (let i = 0; i < 4; i++) await ok(['encrypt', '--key', 'k'], cwd, `record ${i}`);
    expect((await auditVerify(cwd)).code).toBe(0);
    // The log's rows: one segment of records per command, in order.
    const rows = await sql<{ name: string; value: Buffer }>(
      `SELECT name, value FROM ${q(S)}.meta WHERE name LIKE 'audit/seg/%' ORDER BY name`,
    );
    expect(rows.length).toBeGreaterThanOrEqual(4);
    const linesIn = (r: { value: Buffer }) =>
      r.value
        .toString('utf8')
        .split('\n')
        .filter((l) => l !== '').length;
    // The first record of the second row: every failure below is found there.
    const first = linesIn(rows[0] as { value: Buffer }) + 1;
    const r1 = rows[1] as { name: string; value: Buffer };
    const r2 = rows[2] as { name: string; value: Buffer };
    const setRow = (name: string, value: Buffer) =>
      sql(`UPDATE ${q(S)}.meta SET value = $2 WHERE name = $1`, [name, value]);
    const expectBadAt = async (what: string) => {
      const r = await auditVerify(cwd);
      expect(r.code, what).toBe(1);
      expect(r.out, what).toBe('');
      expect(r.stderr, what).toMatch(
        new RegExp(
          `^keywarden: audit: the log does not verify: line ${first} \\(seq \\d+\\): .+; ${first - 1} records before it verified\\n`,
        ),
      );
    };

    // Edited: one field of one record.
    const edited = Buffer.from(r1.value.toString('utf8').replace('"outcome":"ok"', '"outcome":"no"'));
    expect(edited.equals(r1.value)).toBe(false);
    await setRow(r1.name, edited);
    await expectBadAt('edited');
    await setRow(r1.name, r1.value);
    expect((await auditVerify(cwd)).code).toBe(0);

    // Deleted: a whole row.
    await sql(`DELETE FROM ${q(S)}.meta WHERE name = $1`, [r1.name]);
    await expectBadAt('deleted');
    await sql(`INSERT INTO ${q(S)}.meta (name, value) VALUES ($1, $2)`, [r1.name, r1.value]);
    expect((await auditVerify(cwd)).code).toBe(0);

    // Reordered: two rows' records swapped.
    await setRow(r1.name, r2.value);
    await setRow(r2.name, r1.value);
    await expectBadAt('reordered');
    await setRow(r1.name, r1.value);
    await setRow(r2.name, r2.value);
    const healed = await auditVerify(cwd);
    expect(healed.code, healed.stderr).toBe(0);
  });

  it('split knowledge: shares handed out, the folder agent serves the schema, keys and rekey through it', async () => {
    if (pg.unavailable) return;
    const S = schema();
    const cwd = await tempDir();
    const init = await ok(
      ['init', '--store', 'postgres', '--pg-schema', S, '--shares', '3', '--threshold', '2', '--share-dir', 'shares'],
      cwd,
    );
    expect(init.stderr).toContain(`Initialized a split-knowledge key store in PostgreSQL schema ${S}`);
    expect(readdirSync(path.join(cwd, 'shares')).sort()).toEqual([
      'share-1-of-3.txt',
      'share-2-of-3.txt',
      'share-3-of-3.txt',
    ]);
    expect(readdirSync(path.join(cwd, '.keywarden'))).toEqual(['store.json']);
    // The pending record of the ceremony was dropped at activation.
    expect(await sql(`SELECT name FROM ${q(S)}.meta WHERE name LIKE 'split/%'`)).toEqual([]);
    const share = (i: number) => path.join(cwd, 'shares', `share-${i}-of-3.txt`);
    const agent = await startAgent(cwd, [], pg.env);
    try {
      // The folder's agent is the fleet's agent on the schema (with its change watch), on the folder's socket.
      expect(agent.log()).toContain(
        `serving ${path.join(cwd, '.keywarden', 'agent.sock')} for the PostgreSQL key store, schema ${S}`,
      );
      const u = await kw(['unseal', '--share-file', share(1), '--share-file', share(3)], cwd);
      expect(u.stdout, u.stderr).toMatch(/unsealed/);
      await ok(['key', 'create', 'pay'], cwd);
      expect((await sql(`SELECT count(*)::int AS n FROM ${q(S)}.keys`))[0]).toEqual({ n: 1 });
      const ct = await ok(['encrypt', '--key', 'pay'], cwd, 'split');
      const back = await cli(['decrypt', '--key', 'pay'], { cwd, env: { ...pg.env }, stdin: ct.stdout });
      expect(back.out, back.stderr).toBe('split');
      const st = await ok(['status'], cwd);
      expect(st.out).toContain(`(PostgreSQL, schema ${S})`);
      expect(st.out).toMatch(/state: +unsealed/);
      // Rekey: a quorum of the current shares, the new set written; the root in the schema resealed.
      const rk = await run(
        ['rekey', '--share-file', share(2), '--share-file', share(3), '--share-dir', 'shares2'],
        cwd,
      );
      expect(rk.code, rk.stderr).toBe(0);
      expect(readdirSync(path.join(cwd, 'shares2')).length).toBe(3);
    } finally {
      await agent.stop();
    }
  });

  it('an init killed at every step or at a random instant leaves the folder with its store, or nothing the next init cannot undo', async () => {
    if (pg.unavailable) return;
    const steps = [
      'pg-init:staged',
      'pg-init:root-written',
      'pg-init:key-written',
      'pg-init:activated',
      'pg-init:done',
    ];
    const cases: { hook?: string; delayMs?: number; split?: boolean }[] = [
      ...steps.map((s) => ({ hook: `kill:${s}` })),
      { hook: 'kill:init:share-2', split: true },
      { hook: 'kill:pg-init:activated', split: true },
      ...Array.from({ length: 2 }, () => ({ delayMs: 150 + Math.floor(Math.random() * 600) })),
    ];
    const seen = { activated: 0, undone: 0 };
    for (const c of cases) {
      const S = schema();
      const cwd = await tempDir();
      const label = JSON.stringify(c);
      const args = ['init', '--store', 'postgres', '--pg-schema', S];
      if (c.split) args.push('--shares', '3', '--threshold', '2', '--share-dir', 'shares');
      const r = await spawnKilled(args, cwd, { hook: c.hook, delayMs: c.delayMs }, pg.env);
      if (c.hook) expect(r.signal, `${label}: ${r.stderr}`).toBe('SIGKILL');
      const dir = path.join(cwd, '.keywarden');
      if (existsSync(path.join(dir, 'store.json'))) {
        // Activated: a whole store, usable (development mode: its key file opens the root).
        seen.activated++;
        if (!c.split) {
          await ok(['key', 'create', 'k'], cwd);
        } else {
          expect(readdirSync(path.join(cwd, 'shares')).length, label).toBe(3);
          expect((await sql(`SELECT name FROM ${q(S)}.meta WHERE name = 'root'`)).length).toBe(1);
        }
        continue;
      }
      // Not activated: the folder has no store, and the next init in the same schema succeeds.
      seen.undone++;
      const st = await run(['status'], cwd);
      expect(st.code, label).not.toBe(0);
      expect(st.stderr, label).toContain('no key store in .keywarden');
      const again = await ok(['init', '--store', 'postgres', '--pg-schema', S], cwd);
      if (existsSync(path.join(dir, 'store.json.staged'))) throw new Error(`${label}: staged config left`);
      if (c.hook && c.hook !== 'kill:pg-init:staged') {
        expect(again.stderr, label).toContain('Undid an earlier init on PostgreSQL');
      }
      if (c.split && existsSync(path.join(cwd, 'shares'))) {
        // The killed ceremony's share files (of a root that no longer exists) were removed.
        expect(readdirSync(path.join(cwd, 'shares')), label).toEqual([]);
      }
      expect((await sql(`SELECT name FROM ${q(S)}.meta WHERE name LIKE 'split/%'`)).length, label).toBe(0);
      await ok(['key', 'create', 'k'], cwd);
    }
    expect(seen.activated).toBeGreaterThanOrEqual(3);
    expect(seen.undone).toBeGreaterThanOrEqual(4);
  }, 120_000);

  it("an init of the other kind after a killed one: PostgreSQL undoes a folder-file init's remains; a folder-file init refuses while one on PostgreSQL is unfinished", async () => {
    if (pg.unavailable) return;
    // A development-mode init on the folder's own file killed with its key file written: the next
    // init on PostgreSQL removes its staged store and that key file (it opens the staged root).
    const a = await tempDir();
    const k = await spawnKilled(['init'], a, { hook: 'kill:init:key-written' }, pg.env);
    expect(k.signal, k.stderr).toBe('SIGKILL');
    const S = schema();
    const onPg = await ok(['init', '--store', 'postgres', '--pg-schema', S], a);
    expect(onPg.stderr).toContain(
      'Removed the remains of an earlier init that stopped before the folder had its store.',
    );
    expect(onPg.stderr).toContain("removed .keywarden/unseal.key (the unseal key of that init's root)");
    expect(readdirSync(path.join(a, '.keywarden')).sort()).toEqual(['store.json', 'unseal.key']);
    await ok(['key', 'create', 'k'], a);

    // An init on PostgreSQL killed after writing its root: an init on the folder's own file is
    // refused (it would leave that root in the schema for ever) until `init --abort` undoes it.
    const b = await tempDir();
    const S2 = schema();
    const p = await spawnKilled(
      ['init', '--store', 'postgres', '--pg-schema', S2],
      b,
      { hook: 'kill:pg-init:root-written' },
      pg.env,
    );
    expect(p.signal, p.stderr).toBe('SIGKILL');
    const refused = await run(['init'], b);
    expect(refused.code).toBe(1);
    expect(refused.stderr.trim()).toBe(
      'keywarden: an earlier `keywarden init --store postgres` in .keywarden did not finish: undo it with `keywarden init --abort` (or run that init again)',
    );
    expect((await sql(`SELECT name FROM ${q(S2)}.meta WHERE name = 'root'`)).length).toBe(1);
    await ok(['init', '--abort'], b);
    expect((await sql(`SELECT name FROM ${q(S2)}.meta WHERE name = 'root'`)).length).toBe(0);
    await ok(['init'], b);
    await ok(['key', 'create', 'k'], b);
  }, 120_000);

  it("init --abort removes only the root its staged config names: another folder's store in the schema is left whole", async () => {
    if (pg.unavailable) return;
    const S = schema();
    const a = await tempDir();
    await ok(['init', '--store', 'postgres', '--pg-schema', S], a);
    await ok(['key', 'create', 'k'], a);
    const b = await tempDir();
    mkdirSync(path.join(b, '.keywarden'), { mode: 0o700 });
    writeFileSync(
      path.join(b, '.keywarden', 'store.json.staged'),
      `${JSON.stringify({ format: 1, kind: 'postgres', schema: S, rootId: 'root_AAAAAAAAAAAAAAAAAAAAAA' })}\n`,
      { mode: 0o600 },
    );
    const resume = await run(['init', '--resume'], b);
    expect(resume.code).toBe(2);
    const r = await ok(['init', '--abort'], b);
    expect(r.stderr).toContain('Removed the unfinished init in .keywarden.');
    expect(r.stderr).not.toContain('removed the unfinished store');
    expect(existsSync(path.join(b, '.keywarden', 'store.json.staged'))).toBe(false);
    expect((await sql(`SELECT name FROM ${q(S)}.meta WHERE name = 'root'`)).length).toBe(1);
    await ok(['key', 'rotate', 'k'], a);
  });
});
