#!/usr/bin/env node
// Run by test_comfyui_browser: the pack's canvas panels in the real ComfyUI page, in headless
// Chromium via playwright-core.
//
//   node browser_panels.js URL PLAYWRIGHT_CORE_DIR QUESTION_JSON
// QUESTION_JSON: {"costs", "target" (the node's label), "value", "types", "max_slowdown", "capture_costs"}.
// Adds Mixed GGUF Quantize, sets its inputs as a user does (widget value + callback), waits for
// the panel; enlarges the node and changes the value (it must not shrink); shows a run's text,
// saves and reopens the workflow (text and plan must come back); adds Capture Layer Costs.
// Prints one JSON line of what it read; exits 1 on an error from this pack's script.
const { openComfyPage } = require("./browser_page.js");

const [url, playwrightDir, questionJson] = process.argv.slice(2);
const question = JSON.parse(questionJson);

(async () => {
  const pageErrors = [];
  let opened;
  try {
    opened = await openComfyPage(url, playwrightDir, pageErrors);
    const { page } = opened;
    const result = await page.evaluate(async (q) => {
      const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
      const until = async (ok, what) => {
        for (let t = 0; t < 300; t++) { if (ok()) return; await sleep(100); }
        throw new Error(`timed out waiting for ${what}`);
      };
      const set = (node, name, value) => {
        const w = node.widgets.find((x) => x.name === name);
        w.value = value;
        w.callback?.(value);
      };
      const app = window.app;
      app.graph.clear();
      const node = window.LiteGraph.createNode("MxMixedGGUFQuantize");
      app.graph.add(node);
      const inputs = ["costs", "target", "value", "types", "max_slowdown"];
      for (const name of inputs) set(node, name, q[name]);
      // as the widgets hold them (a number widget rounds to its precision)
      const asked = new URLSearchParams(inputs.map((n) => [n, String(node.widgets.find((x) => x.name === n).value)]));
      await until(() => node.mxggufAsked === asked.toString() && node.mxggufPlan, "the plan");
      const first = { plan: node.mxggufPlan, text: node.mxgguf.plan.textContent, asked: asked.toString(),
        bars: node.mxgguf.el.querySelectorAll(".mxgguf-bars > div").length };
      // a node the user enlarged stays as large when the plan changes
      node.setSize([node.size[0] + 300, node.size[1] + 200]);
      const enlarged = [...node.size];
      set(node, "value", q.value + 1);
      const value = node.widgets.find((x) => x.name === "value").value;
      await until(() => node.mxggufAsked.includes(`value=${value}`) && node.mxggufPlan !== first.plan, "the new plan");
      await sleep(200);
      const afterChange = [...node.size];
      // a run's text, then save and reopen the workflow
      node.onExecuted({ text: ["saved: /models/unet/example_mx4_5.gguf"] });
      const saved = app.graph.serialize();
      await app.loadGraphData(saved);
      const reopened = app.graph._nodes.find((n) => n.type === "MxMixedGGUFQuantize");
      await until(() => reopened.mxggufPlan && reopened.mxgguf?.plan.textContent.includes("bits per parameter"), "the reopened plan");
      const capture = window.LiteGraph.createNode("MxCaptureLayerCosts");
      app.graph.add(capture);
      set(capture, "costs_file", q.capture_costs);
      await until(() => capture.mxgguf?.plan.textContent.includes("samples"), "the capture's sample count");
      return {
        first, enlarged, after_change: afterChange,
        reopened_text: reopened.mxgguf.text.textContent, reopened_plan: reopened.mxgguf.plan.textContent,
        capture_text: capture.mxgguf.plan.textContent,
      };
    }, question);
    // the frontend's own start-up errors in a headless page are not this pack's to judge
    const ours = pageErrors.filter((e) => e.includes("mxgguf"));
    console.log(JSON.stringify({ ...result, page_errors: pageErrors, our_errors: ours }));
    process.exitCode = ours.length ? 1 : 0;
  } catch (e) {
    console.log(JSON.stringify({ error: String(e).slice(0, 2000), page_errors: pageErrors }));
    process.exitCode = 1;
  } finally {
    await opened?.close();
  }
})();
