// The package's declarations as a TypeScript user meets them: `tsc --strict --noEmit` on
// types/consumer.ts, which uses every option, event, stats field and error code and holds
// `@ts-expect-error` misuses (a misspelt stats or config field, a non-streaming response
// iterated) that an index signature or a loose overload would let through.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { test } from 'node:test';
import { here } from './harness.mjs';

test('index.d.ts: a strict consumer type-checks, and misuses are refused', () => {
  const tsc = join(here, 'node_modules', 'typescript', 'bin', 'tsc');
  const r = spawnSync(process.execPath, [tsc, '--strict', '--noEmit', '-p', join(here, 'types')], { encoding: 'utf8' });
  assert.equal(r.status, 0, `tsc failed:\n${r.stdout}${r.stderr}`);
});
