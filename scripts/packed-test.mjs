// The packed-package test: what a consumer gets from the registry, checked as a consumer uses it.
//
//  1. `pnpm pack` every publishable package (workspace:^ ranges become real versions);
//  2. install the tarballs with npm into a fresh project outside the workspace;
//  3. extract every ```ts block of the root README and of each package README, and typecheck
//     them (strict, module nodenext) against the installed packages — README examples compile
//     as written, with nothing added;
//  4. run each example in its own empty folder (the one input an example may take from outside
//     is the development unseal key in KEYWARDEN_UNSEAL_KEY, as the README says);
//  5. `require()` every package from CommonJS (Node >= 20.19 loads ES modules through require);
//  6. run the packed CLI's `keywarden demo`.
//
// Prints `packed: N passed, N failed`, writes .test-results/packed.json for scripts/test-summary.mjs,
// and exits non-zero when anything failed.
import { execFileSync, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const repo = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const keep = process.argv.includes('--keep');
const rootPkg = JSON.parse(readFileSync(join(repo, 'package.json'), 'utf8'));

/** Publishable packages: every packages/* whose package.json is not private. */
const packages = readdirSync(join(repo, 'packages'))
  .map((dir) => ({ dir, pkg: JSON.parse(readFileSync(join(repo, 'packages', dir, 'package.json'), 'utf8')) }))
  .filter(({ pkg }) => !pkg.private);

const work = mkdtempSync(join(tmpdir(), 'keywarden-packed-'));
const tarballs = join(work, 'tarballs');
const app = join(work, 'app');
mkdirSync(tarballs);
mkdirSync(join(app, 'src'), { recursive: true });

let passed = 0;
let failed = 0;
const results = [];
function check(name, fn) {
  try {
    fn();
    passed++;
    results.push({ name: `packed: ${name}`, status: 'passed' });
    console.log(`packed: ok   ${name}`);
  } catch (err) {
    failed++;
    const why = `${String(err.stdout ?? '')}${String(err.stderr ?? '')}${err.stdout || err.stderr ? '' : err.message}`;
    // The last lines of the output in the report: test-summary.mjs repeats them at the log's end.
    results.push({
      name: `packed: ${name}`,
      status: 'failed',
      message: why.trimEnd().split('\n').slice(-6).join('\n'),
    });
    console.log(`packed: FAIL ${name}\n${why}`);
  }
}
const run = (cmd, args, opts = {}) =>
  execFileSync(cmd, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], timeout: 300_000, ...opts });

try {
  for (const { dir } of packages) {
    run('pnpm', ['pack', '--pack-destination', tarballs], { cwd: join(repo, 'packages', dir) });
  }
  const tgz = readdirSync(tarballs).map((f) => join(tarballs, f));

  writeFileSync(
    join(app, 'package.json'),
    `${JSON.stringify({ name: 'keywarden-consumer', private: true, type: 'module' }, null, 2)}\n`,
  );
  writeFileSync(
    join(app, 'tsconfig.json'),
    `${JSON.stringify(
      {
        compilerOptions: {
          target: 'ES2022',
          lib: ['ES2023'],
          module: 'nodenext',
          moduleResolution: 'nodenext',
          types: ['node'],
          strict: true,
          noUncheckedIndexedAccess: true,
          skipLibCheck: false,
          outDir: 'dist',
          rootDir: 'src',
        },
        include: ['src'],
      },
      null,
      2,
    )}\n`,
  );
  const devDeps = rootPkg.devDependencies;
  check('npm install of the packed tarballs', () =>
    run(
      'npm',
      [
        'install',
        '--no-audit',
        '--no-fund',
        '--loglevel=error',
        ...tgz,
        `typescript@${devDeps.typescript}`,
        `@types/node@${devDeps['@types/node']}`,
      ],
      // Compiles better-sqlite3 and pkcs11js from source (no prebuilt binaries reach this machine):
      // minutes on two busy cores.
      { cwd: app, timeout: 1_200_000 },
    ),
  );

  // README examples, one file per ```ts block.
  const readmes = [
    ['readme', join(repo, 'README.md')],
    ...packages.map(({ dir }) => [dir, join(repo, 'packages', dir, 'README.md')]),
  ];
  const examples = [];
  for (const [name, file] of readmes) {
    const text = readFileSync(file, 'utf8');
    const re = /^```(?:ts|typescript)\n([\s\S]*?)^```$/gm;
    let m;
    let n = 0;
    while ((m = re.exec(text)) !== null) {
      n++;
      const base = `${name}-${n}`;
      writeFileSync(join(app, 'src', `${base}.ts`), `${m[1]}\nexport {};\n`);
      examples.push({ base, from: `${file.slice(repo.length + 1)} block ${n}` });
    }
  }
  check(`typecheck ${examples.length} README examples (strict, nodenext)`, () =>
    run(process.execPath, [join(app, 'node_modules/typescript/bin/tsc'), '-p', 'tsconfig.json'], { cwd: app }),
  );

  for (const ex of examples) {
    check(`run ${ex.from}`, () => {
      const cwd = mkdtempSync(join(work, 'run-'));
      const key = `keywarden-unseal-key:v1:${randomBytes(32).toString('base64url')}`;
      const r = spawnSync(process.execPath, [join(app, 'dist', `${ex.base}.js`)], {
        cwd,
        encoding: 'utf8',
        timeout: 120_000,
        env: { ...process.env, KEYWARDEN_UNSEAL_KEY: key },
      });
      if (r.status !== 0) {
        const err = new Error(`exit ${r.status ?? r.signal}`);
        err.stdout = r.stdout;
        err.stderr = r.stderr;
        throw err;
      }
    });
  }

  for (const { pkg } of packages) {
    check(`require('${pkg.name}') from CommonJS`, () =>
      run(
        process.execPath,
        ['-e', `const m = require(${JSON.stringify(pkg.name)}); if (!Object.keys(m).length) process.exit(1)`],
        {
          cwd: app,
        },
      ),
    );
  }

  check('packed CLI: keywarden demo', () => {
    const out = run(join(app, 'node_modules/.bin/keywarden'), ['demo'], { cwd: app });
    if (!/^Done: \d+ steps/m.test(out)) throw new Error(`unexpected demo output:\n${out.slice(-400)}`);
  });
} finally {
  if (keep) console.log(`packed: kept ${work}`);
  else rmSync(work, { recursive: true, force: true });
}

// Counted by scripts/test-summary.mjs with the vitest reports.
mkdirSync(join(repo, '.test-results'), { recursive: true });
writeFileSync(
  join(repo, '.test-results', 'packed.json'),
  JSON.stringify({ numPassedTests: passed, numFailedTests: failed, testResults: results }),
);
console.log(`packed: ${passed} passed, ${failed} failed`);
process.exit(failed === 0 && passed > 0 ? 0 : 1);
