#!/usr/bin/env node
// Run by test_comfyui_browser: the pack's canvas panels in the real ComfyUI page, in headless
// Chromium via playwright-core.
//
//   node browser_panels.js URL PLAYWRIGHT_CORE_DIR QUESTION_JSON
// QUESTION_JSON: {"costs", "target" (the node's label), "value", "types", "capture_costs"}.
// Adds Mixed GGUF Quantize, sets its inputs as a user does (widget value + callback), waits for
// the panel; enlarges the node and changes the value (it must not shrink); shows a run's text,
// saves and reopens the workflow (text and plan must come back); adds Capture Layer Costs.
// Prints one JSON line of what it read; exits 1 on an error from this pack's script.
const path = require("path");
const os = require("os");
const fs = require("fs");

const [url, playwrightDir, questionJson] = process.argv.slice(2);
const { chromium } = require(path.resolve(playwrightDir));
const question = JSON.parse(questionJson);

(async () => {
  const userDir = fs.mkdtempSync(path.join(os.tmpdir(), "mxgguf-browser-"));
  const ctx = await chromium.launchPersistentContext(userDir, {
    executablePath: process.env.MXGGUF_CHROMIUM || "/usr/bin/chromium", headless: true,
    viewport: { width: 1400, height: 900 },
    args: ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking", "--disable-sync"],
  });
  const pageErrors = [];
  try {
    const page = ctx.pages()[0] || (await ctx.newPage());
    page.on("pageerror", (e) => pageErrors.push(String(e.stack || e).slice(0, 600)));
    await page.goto(url, { waitUntil: "load", timeout: 120000 });
    await page.waitForFunction(() => window.app?.graph && window.LiteGraph?.registered_node_types?.MxMixedGGUFQuantize,
      null, { timeout: 120000 });
    await page.keyboard.press("Escape"); // the templates dialog of a first visit
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
      for (const name of ["costs", "target", "value", "types"]) set(node, name, q[name]);
      const asked = new URLSearchParams({ costs: q.costs, target: q.target, value: String(q.value), types: q.types });
      await until(() => node.mxggufAsked === asked.toString() && node.mxggufPlan, "the plan");
      const first = { plan: node.mxggufPlan, text: node.mxgguf.plan.textContent,
        bars: node.mxgguf.el.querySelectorAll(".mxgguf-bars > div").length };
      // a node the user enlarged stays as large when the plan changes
      node.setSize([node.size[0] + 300, node.size[1] + 200]);
      const enlarged = [...node.size];
      set(node, "value", q.value + 1);
      await until(() => node.mxggufAsked.includes(`value=${q.value + 1}`) && node.mxggufPlan?.bpw !== first.plan.bpw, "the new plan");
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
    await ctx.close();
    fs.rmSync(userDir, { recursive: true, force: true });
  }
})();
