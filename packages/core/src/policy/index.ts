export {
  Policy,
  type Principal,
  type PolicyRule,
  type PolicyTarget,
  type Decision,
  type Operation,
  OPERATIONS,
} from './policy.js';
export { POLICY_CURRENT_META_NAME, readStoredPolicy, storedPolicyVersion, writeStoredPolicy } from './policy-store.js';
