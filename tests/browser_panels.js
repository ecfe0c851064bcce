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
const { reportFromPage } = require("./browser_page.js");

const [url, playwrightDir, questionJson] = process.argv.slice(2);
const question = JSON.parse(questionJson);

reportFromPage(url, playwrightDir, async (q) => {
  const { sleep, until, set } = window.mxTest;
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
