/**
 * State-machine property test of the KEK version lifecycle (issue 10): random sequences of
 * operations run against the key manager and against a model written out here from the rules in
 * docs/lifecycle.md (independently of src/_lifecycle.ts). After every step the outcome (success
 * or error code), the key's versions, primary and minimum decryption version, and what every data
 * key made so far unwraps to must match the model.
 */
import { randomBytes } from 'node:crypto';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { Keywarden, MemoryKeyStore, SoftwareRoot } from '../src/index.js';

type State = 'enabled' | 'disabled' | 'compromised' | 'destroyed';
type Op =
  | { op: 'rotate' }
  | { op: 'primary'; v: number }
  | { op: 'disable'; v: number; confirm: boolean }
  | { op: 'enable'; v: number }
  | { op: 'compromise'; v: number; rotate: boolean }
  | { op: 'destroy'; v: number; force: boolean; confirm: boolean }
  | { op: 'minDecryption'; v: number }
  | { op: 'wait'; ms: number }
  | { op: 'encrypt' };

const DAY = 86_400_000;
const GRACE = DAY;

interface Model {
  states: Map<number, State>;
  changedAt: Map<number, number>;
  primary: number;
  min: number;
  next: number;
  now: number;
}

/** The rules, restated: the expected error code, or undefined when the operation succeeds. */
function step(m: Model, o: Op): string | undefined {
  const has = (v: number) => m.states.has(v);
  const set = (v: number, s: State) => {
    m.states.set(v, s);
    m.changedAt.set(v, m.now);
  };
  const addPrimary = () => {
    const v = m.next++;
    m.states.set(v, 'enabled');
    m.changedAt.set(v, m.now);
    m.primary = v;
  };
  switch (o.op) {
    case 'rotate':
      addPrimary();
      return undefined;
    case 'primary': {
      if (!has(o.v)) return 'KW_KEY_NOT_FOUND';
      if (m.states.get(o.v) !== 'enabled') return 'KW_KEY_STATE';
      if (o.v < m.min) return 'KW_KEY_RETIRED';
      m.primary = o.v;
      return undefined;
    }
    case 'disable': {
      if (!has(o.v)) return 'KW_KEY_NOT_FOUND';
      const s = m.states.get(o.v);
      if (s === 'disabled') return undefined;
      if (s !== 'enabled') return 'KW_KEY_STATE';
      if (o.v === m.primary) {
        const otherEnabled = [...m.states].some(([v, st]) => v !== o.v && st === 'enabled');
        if (otherEnabled || !o.confirm) return 'KW_KEY_STATE';
      }
      set(o.v, 'disabled');
      return undefined;
    }
    case 'enable': {
      if (!has(o.v)) return 'KW_KEY_NOT_FOUND';
      const s = m.states.get(o.v);
      if (s === 'compromised') return 'KW_KEY_COMPROMISED';
      if (s === 'destroyed') return 'KW_KEY_DESTROYED';
      if (s === 'disabled') set(o.v, 'enabled');
      return undefined;
    }
    case 'compromise': {
      if (!has(o.v)) return 'KW_KEY_NOT_FOUND';
      const s = m.states.get(o.v);
      if (s === 'destroyed') return 'KW_KEY_DESTROYED';
      if (s === 'compromised') return undefined;
      set(o.v, 'compromised');
      if (o.rotate || o.v === m.primary) addPrimary();
      return undefined;
    }
    case 'destroy': {
      if (!has(o.v)) return 'KW_KEY_NOT_FOUND';
      const s = m.states.get(o.v);
      if (s === 'destroyed') return undefined;
      if (s === 'enabled') return 'KW_KEY_STATE';
      const othersLive = [...m.states].some(([v, st]) => v !== o.v && st !== 'destroyed');
      if ((o.v === m.primary || !othersLive) && !o.confirm) return 'KW_KEY_STATE';
      if (!o.force && m.now - (m.changedAt.get(o.v) as number) < GRACE) return 'KW_KEY_STATE';
      set(o.v, 'destroyed');
      return undefined;
    }
    case 'minDecryption':
      if (o.v > m.primary) return 'KW_KEY_STATE';
      m.min = o.v;
      return undefined;
    case 'wait':
      m.now += o.ms;
      return undefined;
    case 'encrypt':
      return refusal(m, m.primary, false);
  }
}

/** Why version v refuses to unwrap (or, for `decrypt` false, to wrap as primary), if it does. */
function refusal(m: Model, v: number, decrypt: boolean): string | undefined {
  const s = m.states.get(v);
  if (s === 'destroyed') return 'KW_KEY_DESTROYED';
  if (s === 'compromised') return 'KW_KEY_COMPROMISED';
  if (decrypt && v < m.min) return 'KW_KEY_RETIRED';
  if (s === 'disabled') return 'KW_KEY_STATE';
  return undefined;
}

const version = fc.integer({ min: 1, max: 7 });
const opArb: fc.Arbitrary<Op> = fc.oneof(
  { arbitrary: fc.constant({ op: 'rotate' } as const), weight: 3 },
  { arbitrary: version.map((v) => ({ op: 'primary', v }) as const), weight: 1 },
  { arbitrary: fc.record({ op: fc.constant('disable' as const), v: version, confirm: fc.boolean() }), weight: 3 },
  { arbitrary: version.map((v) => ({ op: 'enable', v }) as const), weight: 2 },
  { arbitrary: fc.record({ op: fc.constant('compromise' as const), v: version, rotate: fc.boolean() }), weight: 1 },
  {
    arbitrary: fc.record({
      op: fc.constant('destroy' as const),
      v: version,
      force: fc.boolean(),
      confirm: fc.boolean(),
    }),
    weight: 3,
  },
  { arbitrary: fc.integer({ min: 1, max: 4 }).map((v) => ({ op: 'minDecryption', v }) as const), weight: 1 },
  { arbitrary: fc.integer({ min: 0, max: 2 * DAY }).map((ms) => ({ op: 'wait', ms }) as const), weight: 2 },
  { arbitrary: fc.constant({ op: 'encrypt' } as const), weight: 4 },
);

async function codeOf(run: () => Promise<unknown>): Promise<string | undefined> {
  try {
    await run();
    return undefined;
  } catch (err) {
    return (err as { code?: string }).code ?? String(err);
  }
}

describe('KEK lifecycle state machine (property: random operation sequences against a model)', () => {
  it('every outcome, state, primary and unwrap result matches the model', async () => {
    const unsealKey = new Uint8Array(randomBytes(32));
    await fc.assert(
      fc.asyncProperty(fc.array(opArb, { minLength: 1, maxLength: 30 }), async (ops) => {
        const store = new MemoryKeyStore();
        const root = await SoftwareRoot.initialize(store, { unsealKey });
        const m: Model = {
          states: new Map([[1, 'enabled']]),
          changedAt: new Map([[1, 0]]),
          primary: 1,
          min: 1,
          next: 2,
          now: Date.UTC(2026, 0, 1),
        };
        m.changedAt.set(1, m.now);
        const kw = new Keywarden({
          store,
          root,
          now: () => new Date(m.now),
          lifecycle: { destroyGraceMs: GRACE, usageBlock: 8 },
        });
        const made: Array<{ wrapped: Uint8Array; plaintext: Uint8Array; version: number }> = [];
        try {
          await kw.createKey('k');
          for (const o of ops) {
            const expected = step(m, o);
            const got = await codeOf(async () => {
              switch (o.op) {
                case 'rotate':
                  return kw.rotateKey('k');
                case 'primary':
                  return kw.setPrimaryVersion('k', o.v);
                case 'disable':
                  return kw.disableVersion('k', o.v, { confirmLastVersion: o.confirm });
                case 'enable':
                  return kw.enableVersion('k', o.v);
                case 'compromise':
                  return kw.compromiseVersion('k', o.v, { rotate: o.rotate });
                case 'destroy':
                  return kw.destroyVersion('k', o.v, { force: o.force, confirmLastVersion: o.confirm });
                case 'minDecryption':
                  return kw.setMinDecryptionVersion('k', o.v);
                case 'wait':
                  return undefined;
                case 'encrypt': {
                  const dk = await kw.generateDataKey('k');
                  expect(dk.version).toBe(m.primary);
                  made.push({ wrapped: dk.wrapped, plaintext: dk.plaintext, version: dk.version });
                  return dk;
                }
              }
            });
            expect(got, `${JSON.stringify(o)} after ${JSON.stringify([...m.states])}`).toBe(expected);

            const info = await kw.getKey('k');
            expect(info.primaryVersion).toBe(m.primary);
            expect(info.minDecryptionVersion).toBe(m.min);
            expect(info.versions.map((v) => [v.version, v.state])).toEqual([...m.states].sort((a, b) => a[0] - b[0]));
            // Exactly one primary, and numbers are never reused: strictly increasing, none skipped.
            expect(info.versions.map((v) => v.version)).toEqual(Array.from({ length: m.next - 1 }, (_, i) => i + 1));
            for (const dk of made) {
              const want = refusal(m, dk.version, true);
              let unwrapped: Uint8Array | undefined;
              const code = await codeOf(async () => {
                unwrapped = await kw.decryptDataKey(dk.wrapped, undefined, { key: 'k' });
              });
              expect(code, `unwrap of a v${dk.version} data key`).toBe(want);
              if (want === undefined) expect(unwrapped).toEqual(dk.plaintext);
            }
          }
        } finally {
          await kw.close();
          await store.close();
        }
      }),
      { numRuns: 60 },
    );
  }, 60_000);
});
