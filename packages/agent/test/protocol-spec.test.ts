/**
 * docs/agent-protocol.md §6 replayed against a real AgentServer: every ```agent-session block of
 * the spec, in order, one connection each, over a MemoryKeyStore whose software root is sealed by
 * split knowledge (2 of 3). The spec's placeholders: `<name>` in an answer matches any value the
 * first time and the same value afterwards; in a request it is replaced by that value.
 */
import { readFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { createConnection, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { MemoryKeyStore, SoftwareRoot } from '@keywarden/core';
import { initSplitRoot } from '@keywarden/split-knowledge';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AgentServer } from '../src/server.js';

const SPEC = fileURLToPath(new URL('../../../docs/agent-protocol.md', import.meta.url));

interface Step {
  send: string;
  expect: string;
}

/** The spec's sessions: each block's → lines and ← lines, paired in order. */
function sessions(markdown: string): { title: string; steps: Step[] }[] {
  const out: { title: string; steps: Step[] }[] = [];
  const re = /((?:[^\n]+\n)+)\n```agent-session\n([\s\S]*?)```/g;
  for (let m = re.exec(markdown); m !== null; m = re.exec(markdown)) {
    const lines = (m[2] as string).split('\n').filter((l) => l !== '');
    const steps: Step[] = [];
    for (let i = 0; i < lines.length; i += 2) {
      const send = lines[i] as string;
      const answer = lines[i + 1] as string;
      if (!send.startsWith('→ ') || !answer?.startsWith('← ')) throw new Error(`spec: unpaired lines near ${send}`);
      steps.push({ send: send.slice(2), expect: answer.slice(2) });
    }
    out.push({ title: (m[1] as string).trim().replace(/\s+/g, ' '), steps });
  }
  return out;
}

const PLACEHOLDER = /<([a-z0-9 ]+)>/g;

/** Match `actual` against the spec's `expected`, binding placeholders in `vars`. */
function match(expected: unknown, actual: unknown, vars: Map<string, unknown>, where: string): void {
  if (typeof expected === 'string' && /^<[a-z0-9 ]+>$/.test(expected)) {
    const name = expected.slice(1, -1);
    if (vars.has(name)) expect(actual, `${where} (<${name}>)`).toEqual(vars.get(name));
    else vars.set(name, actual);
    return;
  }
  if (typeof expected === 'string' && PLACEHOLDER.test(expected)) {
    PLACEHOLDER.lastIndex = 0;
    const names: string[] = [];
    const pattern = expected
      .split(PLACEHOLDER)
      .map((part, i) => {
        if (i % 2 === 0) return part.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
        names.push(part);
        return '(.+?)';
      })
      .join('');
    expect(typeof actual, where).toBe('string');
    const m = new RegExp(`^${pattern}$`).exec(actual as string);
    expect(m, `${where}: ${String(actual)} does not match ${expected}`).not.toBe(null);
    for (const [i, name] of names.entries()) match(`<${name}>`, m?.[i + 1], vars, where);
    return;
  }
  if (Array.isArray(expected)) {
    expect(Array.isArray(actual), where).toBe(true);
    expect((actual as unknown[]).length, where).toBe(expected.length);
    for (const [i, e] of expected.entries()) match(e, (actual as unknown[])[i], vars, `${where}[${i}]`);
    return;
  }
  if (typeof expected === 'object' && expected !== null) {
    expect(typeof actual === 'object' && actual !== null && !Array.isArray(actual), where).toBe(true);
    expect(Object.keys(actual as object).sort(), where).toEqual(Object.keys(expected).sort());
    for (const [k, v] of Object.entries(expected))
      match(v, (actual as Record<string, unknown>)[k], vars, `${where}.${k}`);
    return;
  }
  expect(actual, where).toEqual(expected);
}

/** A request line with its placeholders replaced (lines that are not JSON are sent as they are). */
function fill(line: string, vars: Map<string, unknown>): string {
  let value: unknown;
  try {
    value = JSON.parse(line);
  } catch {
    return line;
  }
  const walk = (v: unknown): unknown => {
    if (typeof v === 'string') {
      return v.replace(PLACEHOLDER, (_, name: string) => {
        if (!vars.has(name)) throw new Error(`spec: <${name}> used before it was seen`);
        return String(vars.get(name));
      });
    }
    if (Array.isArray(v)) return v.map(walk);
    if (typeof v === 'object' && v !== null) return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, walk(x)]));
    return v;
  };
  return JSON.stringify(walk(value));
}

class Lines {
  readonly #conn: Socket;
  #buf = '';
  readonly #lines: string[] = [];
  #wake: (() => void) | undefined;

  constructor(conn: Socket) {
    this.#conn = conn;
    conn.on('data', (d) => {
      this.#buf += d.toString('utf8');
      for (let nl = this.#buf.indexOf('\n'); nl >= 0; nl = this.#buf.indexOf('\n')) {
        this.#lines.push(this.#buf.slice(0, nl));
        this.#buf = this.#buf.slice(nl + 1);
      }
      this.#wake?.();
    });
  }

  async next(): Promise<string> {
    while (this.#lines.length === 0) {
      if (this.#conn.destroyed) throw new Error('connection closed');
      await new Promise<void>((resolve) => {
        this.#wake = resolve;
        setTimeout(resolve, 50);
      });
    }
    return this.#lines.shift() as string;
  }
}

const spec = sessions(readFileSync(SPEC, 'utf8'));
let server: AgentServer;
let socket: string;
let dir: string;
const vars = new Map<string, unknown>();

beforeAll(async () => {
  dir = await mkdtemp(path.join(tmpdir(), 'kw-spec-'));
  socket = path.join(dir, 'agent.sock');
  const store = new MemoryKeyStore();
  const { root, handOut } = await initSplitRoot(store, { shares: 3, threshold: 2 });
  await root.close();
  for (const [i, share] of handOut.entries()) vars.set(`share ${i + 1}`, share);
  server = await AgentServer.start({ socket, store, root: (s) => SoftwareRoot.load(s) });
});

afterAll(async () => {
  await server?.close();
  await rm(dir, { recursive: true, force: true });
});

describe('docs/agent-protocol.md §6, replayed against a real AgentServer', () => {
  it('the spec has the golden sessions', () => {
    expect(spec.length).toBeGreaterThanOrEqual(6);
  });

  for (const [n, session] of spec.entries()) {
    it(`session ${n + 1}: ${session.title}`, async () => {
      const conn = createConnection({ path: socket });
      await new Promise<void>((resolve, reject) => {
        conn.once('connect', resolve);
        conn.once('error', reject);
      });
      const lines = new Lines(conn);
      try {
        for (const step of session.steps) {
          conn.write(`${fill(step.send, vars)}\n`);
          const answer = JSON.parse(await lines.next()) as unknown;
          match(JSON.parse(step.expect), answer, vars, `answer to ${step.send}`);
        }
      } finally {
        conn.destroy();
      }
    });
  }
});
