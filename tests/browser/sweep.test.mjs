// The demo's sweep panel in headless Chromium: `pensive eval` on SmolLM2 (wasm CPU, in the
// page's default Web Worker), 2 problems × budgets 0/16/64 × presets s1 and nowait. The
// chart and the table must agree with the runs: what reached the engine's `generate` is
// recorded in the page, thinking tokens are recounted from those events (not from the
// engine's counters), and the capped presets hold Control at 100 % with nothing re-prefilled.
// The native `pensive eval` gives the same items and summaries. Then Stop aborts a second
// sweep mid-item. Saves tests/browser/out/sweep.png.
import assert from 'node:assert/strict';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { SMOLLM2, nativePensive, outDir, requireModel, startBrowser } from './harness.mjs';

const LOAD_TIMEOUT_MS = 60_000;
const SWEEP_TIMEOUT_MS = 240_000;
const PROBLEMS = 2;
const BUDGETS = [0, 16, 64];
const POLICIES = ['s1', 'nowait'];

let browser;
before(async () => {
  browser = await startBrowser();
});
after(async () => {
  await browser?.close();
});

async function setValue(page, id, value) {
  await page.evaluate(([id, value]) => {
    const el = document.getElementById(id);
    el.value = String(value);
    el.dispatchEvent(new Event('input', { bubbles: true }));
  }, [id, value]);
}

/** A thinking token as the stats define it: phase thinking, not a marker, not a probe. */
const isThinking = (e) => e.type === 'token' && e.phase === 'thinking' && !e.marker && !e.probe;

test('demo sweep: SmolLM2, 2 problems × budgets 0/16/64 × s1, nowait; chart and table match the runs; Stop aborts',
  { timeout: 420_000 }, async (t) => {
    if (!requireModel(SMOLLM2)) return t.skip('model missing');
    const page = await browser.newPage('/demo/');
    await page.waitForFunction(() => document.getElementById('version').textContent.startsWith('v'), null, { timeout: 30_000 });
    await page.setViewportSize({ width: 1280, height: 900 });
    assert.equal(await page.isDisabled('#sweep-run'), true, 'no sweep before a model is loaded');
    await page.selectOption('#backend', 'cpu');
    await page.click('#load');
    await page.waitForFunction(() => !document.getElementById('sweep-run').disabled, null, { timeout: LOAD_TIMEOUT_MS });

    // Record every generate the sweep makes and every event it gets back.
    await page.evaluate(() => {
      const engine = window.pensiveDemo.engine;
      const generate = engine.generate.bind(engine);
      window.generations = [];
      engine.generate = (prompt, { signal, ...options }) => {
        const record = { prompt: structuredClone(prompt), options: structuredClone(options), events: [] };
        window.generations.push(record);
        const stream = generate(prompt, { signal, ...options });
        return {
          [Symbol.asyncIterator]() { return this; },
          async next() {
            const r = await stream.next();
            if (!r.done) record.events.push(structuredClone(r.value));
            return r;
          },
          return: () => stream.return(),
        };
      };
    });

    await setValue(page, 'sweep-problems', PROBLEMS);
    await setValue(page, 'sweep-budgets', BUDGETS.join(','));
    await setValue(page, 'sweep-floor', 0);
    for (const box of await page.locator('#sweep-policies input').all()) {
      await box.setChecked(POLICIES.includes(await box.getAttribute('value')));
    }
    const started = Date.now();
    await page.click('#sweep-run');
    assert.equal(await page.isDisabled('#send'), true, 'the chat waits while the sweep runs');
    assert.equal(await page.isDisabled('#sweep-stop'), false);
    await page.waitForFunction(() => /^(Done|Sweep failed|Stopped)/.test(document.getElementById('sweep-status').textContent),
      null, { timeout: SWEEP_TIMEOUT_MS });
    const seconds = (Date.now() - started) / 1000;
    const runs = PROBLEMS * BUDGETS.length * POLICIES.length;
    assert.equal(await page.textContent('#sweep-status'), `Done: ${runs} of ${runs} runs.`);
    t.diagnostic(`sweep of ${runs} runs: ${seconds.toFixed(1)} s`);
    assert.equal(await page.getAttribute('#sweep-progress', 'value'), String(runs));

    const { plan, results, summaries } = await page.evaluate(() => window.pensiveDemo.sweep);
    const generations = await page.evaluate(() => window.generations);
    assert.equal(plan.length, runs);
    assert.equal(results.length, runs);
    assert.equal(generations.length, runs, 'one generate per run');
    assert.deepEqual(summaries.map((s) => s.policy), POLICIES);

    for (const [i, g] of generations.entries()) {
      const run = plan[i];
      const result = results[i];
      // The request is the plan's (crate/eval.rs's): its question, greedy, the budget.
      assert.deepEqual(g.prompt, run.prompt);
      assert.equal(g.prompt.at(-1).content, run.problem.question);
      assert.equal(g.options.temperature, 0);
      const thinking = g.options.thinking;
      assert.equal(thinking.max_tokens, run.budget);
      assert.equal(thinking.preset, run.policy);
      assert.equal(result.policy, run.policy);
      assert.equal(result.budget, run.budget);
      assert.equal(result.expected, run.problem.answer);
      // Thinking recounted from the events respects the cap (plus the grace period).
      const recounted = g.events.filter(isThinking).length;
      assert.ok(recounted <= run.budget + thinking.grace_tokens, `run ${i}: ${recounted} thinking tokens over budget ${run.budget}`);
      assert.equal(result.thinking_tokens, recounted, `run ${i}: the result's thinking tokens are the events'`);
      assert.equal(result.within_budget, true);
      const done = g.events.at(-1);
      assert.equal(done.type, 'done');
      // One KV cache: nothing re-prefilled, and after the first run the shared system prompt
      // is found in the cache instead of being run again.
      assert.equal(result.reprefilled_tokens, 0, `run ${i}`);
      if (i > 0) assert.ok(done.stats.cached_tokens > 0, `run ${i}: nothing of the prompt was cached`);
      // The answer is the answer-phase text the events carry (the eval's prefix starts it).
      const answer = g.events.filter((e) => e.type === 'token' && e.phase === 'answer' && !e.marker && !e.probe).map((e) => e.text).join('');
      assert.equal(result.answer, answer);
      assert.ok(answer.includes('\\boxed{'), answer);
      assert.equal(result.correct, result.predicted === run.problem.answer);
    }

    // The charts: one series per policy, one point per budget, values from the runs.
    for (const id of ['sweep-accuracy', 'sweep-thinking']) {
      assert.equal(await page.locator(`#${id} circle`).count(), BUDGETS.length * POLICIES.length, id);
      assert.equal(await page.locator(`#${id} g.series`).count(), POLICIES.length, id);
      assert.equal(await page.locator(`#${id} .x-label`).count(), 1, `${id}: x axis label`);
      assert.equal(await page.locator(`#${id} .y-label`).count(), 1, `${id}: y axis label`);
    }
    const points = (id) => page.$$eval(`#${id} circle`, (cs) => cs.map((c) => ({
      policy: c.dataset.policy, budget: Number(c.dataset.budget), value: Number(c.dataset.value),
      cx: Number(c.getAttribute('cx')), cy: Number(c.getAttribute('cy')),
    })));
    const accuracy = await points('sweep-accuracy');
    const thinkingPoints = await points('sweep-thinking');
    for (const policy of POLICIES) {
      for (const budget of BUDGETS) {
        const at = results.map((r, i) => ({ r, g: generations[i] })).filter(({ r }) => r.policy === policy && r.budget === budget);
        assert.equal(at.length, PROBLEMS);
        const meanThinking = at.reduce((n, { g }) => n + g.events.filter(isThinking).length, 0) / at.length;
        const acc = (100 * at.filter(({ r }) => r.correct).length) / at.length;
        const find = (ps) => ps.find((p) => p.policy === policy && p.budget === budget) ?? assert.fail(`no point ${policy}/${budget}`);
        assert.ok(Math.abs(find(thinkingPoints).value - meanThinking) < 1e-9, `${policy}/${budget} thinking`);
        assert.ok(Math.abs(find(accuracy).value - acc) < 1e-9, `${policy}/${budget} accuracy`);
        // The table's budget row says the same.
        const cells = await page.$$eval(`#sweep-table tr.budget[data-policy="${policy}"][data-budget="${budget}"] td`,
          (tds) => tds.map((td) => td.textContent));
        assert.equal(cells[1], String(PROBLEMS));
        assert.equal(cells[2], `${acc.toFixed(0)} %`);
        assert.equal(cells[3], meanThinking.toFixed(1));
        assert.equal(cells[4], '100 %');
      }
      // Larger budgets sit further right, and a point's height follows its value.
      const xs = BUDGETS.map((b) => thinkingPoints.find((p) => p.policy === policy && p.budget === b).cx);
      assert.deepEqual([...xs].sort((a, b) => a - b), xs);
      assert.ok(xs[0] < xs.at(-1));
      const row = await page.$$eval(`#sweep-table tr.policy[data-policy="${policy}"] td`, (tds) => tds.map((td) => td.textContent));
      assert.equal(row[0], policy);
      assert.equal(row[4], '100 %', `${policy}: Control`);
      assert.equal(row[10], '0', `${policy}: re-prefilled`);
      const summary = summaries.find((s) => s.policy === policy);
      assert.equal(row[6], `${summary.performance.toFixed(0)} %`);
      assert.equal(summary.control, 100);
    }
    // The same evaluation as the CLI's: `pensive eval` natively gives the same items and
    // the same summaries (greedy decoding is identical on the native and the wasm CPU path).
    const native = nativePensive(['eval', '--model', SMOLLM2, '--problems', String(PROBLEMS), '--budgets', BUDGETS.join(','),
      '--policies', POLICIES.join(','), '--json']);
    const comparable = (r) => [r.policy, r.budget, r.problem, r.expected, r.predicted, r.correct, r.thinking_tokens,
      r.answer_tokens, r.within_budget, r.continuations, r.words_suppressed, r.forced_exit, r.reprefilled_tokens, r.answer];
    assert.deepEqual(results.map(comparable), native.results.map(comparable));
    const metrics = (s) => [s.policy, s.control, s.scaling, s.performance, s.mean_thinking_tokens,
      s.budgets.map((b) => [b.budget, b.runs, b.accuracy, b.mean_thinking_tokens, b.control])];
    assert.deepEqual(summaries.map(metrics), native.summaries.map(metrics));

    const byValue = [...thinkingPoints].sort((a, b) => a.value - b.value);
    assert.ok(byValue[0].cy >= byValue.at(-1).cy, 'more thinking is drawn higher');
    assert.deepEqual(page.errors, []);

    mkdirSync(outDir, { recursive: true });
    await page.locator('#sweep-panel').screenshot({ path: join(outDir, 'sweep.png') });

    // Stop: a second sweep is aborted in its first item; what finished stays, the engine is free.
    await setValue(page, 'sweep-budgets', '64');
    await page.click('#sweep-run');
    await page.waitForFunction(() => /tokens$/.test(document.getElementById('sweep-status').textContent), null, { timeout: 60_000 });
    await page.click('#sweep-stop');
    await page.waitForFunction(() => /^Stopped after/.test(document.getElementById('sweep-status').textContent), null, { timeout: 30_000 });
    const stopped = await page.evaluate(() => window.pensiveDemo.sweep);
    assert.equal(stopped.stopped, true);
    assert.ok(stopped.results.length < stopped.plan.length);
    assert.equal(await page.isDisabled('#sweep-run'), false);
    assert.equal(await page.isDisabled('#send'), false, 'the chat is usable again');
    assert.deepEqual(page.errors, []);
    await page.close();
  });
