#!/usr/bin/env node
// Run by test_comfyui_browser: a speed budget set on the canvas, and the run it plans.
//
//   node browser_budget.js URL PLAYWRIGHT_CORE_DIR QUESTION_JSON
// QUESTION_JSON: {"unet_name", "costs", "target" (the node's label), "value", "types", "max_slowdown"}.
// Builds Load Diffusion Model -> Mixed GGUF Quantize -> Preview Image (its chart) on the canvas,
// sets Quantize's inputs as a user does, waits for the panel's plan, then queues the graph from
// the page (as Run does) and waits for Quantize's summary. Prints one JSON line: the plan and
// the panel's text as shown before the run, and the summary after it.
const { reportFromPage } = require("./browser_page.js");

const [url, playwrightDir, questionJson] = process.argv.slice(2);
const question = JSON.parse(questionJson);

reportFromPage(url, playwrightDir, async (q) => {
  const { until, set } = window.mxTest;
  const app = window.app;
  app.graph.clear();
  const add = (type) => {
    const node = window.LiteGraph.createNode(type);
    app.graph.add(node);
    return node;
  };
  const loader = add("UNETLoader");
  set(loader, "unet_name", q.unet_name);
  const quantize = add("MxMixedGGUFQuantize");
  const preview = add("PreviewImage");
  loader.connect(0, quantize, "model");
  quantize.connect(3, preview, "images");
  const inputs = ["costs", "target", "value", "types", "max_slowdown"];
  for (const name of inputs) set(quantize, name, q[name]);
  const asked = new URLSearchParams(inputs.map((n) => [n, String(quantize.widgets.find((x) => x.name === n).value)]));
  await until(() => quantize.mxggufAsked === asked.toString() && quantize.mxggufPlan, "the plan");
  const shown = { plan: quantize.mxggufPlan, text: quantize.mxgguf.plan.textContent, asked: asked.toString() };
  await app.queuePrompt(0, 1);
  await until(() => quantize.mxgguf.text.textContent.includes("blocks:"), "Quantize's summary", 300);
  return { shown, summary: quantize.mxgguf.text.textContent };
}, question);
