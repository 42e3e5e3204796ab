// The same private swtpm as @keywarden/tss2's suites (harness/swtpm.sh), unless KEYWARDEN_TPM_TCTI is set.
export { setup, teardown } from '../../tss2/test/_global-setup.js';
