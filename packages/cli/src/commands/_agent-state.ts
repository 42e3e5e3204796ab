/**
 * How `status` describes an agent's seal state: one text for the folder status, `status --agent`
 * and a device root's status, so that all three say the same thing.
 */
import type { AgentStatus } from '@keywarden/agent';

/** Sealed with the shares held so far (their indices, and whether earlier ones timed out), or unsealed. */
export function agentStateText(st: AgentStatus): string {
  if (!st.sealed) return 'unsealed';
  const reset = st.reset ? ' (earlier shares timed out and were discarded)' : '';
  return `sealed, unseal progress ${st.accepted} of ${st.threshold}${shareIndicesText(st.indices)}${reset}`;
}

/** ` (share 2)` / ` (shares 1, 2)`, or nothing when no share is held. */
export function shareIndicesText(list: readonly number[]): string {
  if (list.length === 0) return '';
  return ` (${list.length === 1 ? 'share' : 'shares'} ${list.join(', ')})`;
}
