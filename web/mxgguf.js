// The pack's canvas panels, on every node of its category:
// - Mixed GGUF Quantize: the plan its inputs mean (GET /mxgguf/plan), live as they change:
//   bits per parameter, size, the cards it fits, the predicted cost, one bar per block by type.
// - Capture Layer Costs: how many samples its costs file holds (GET /mxgguf/costs).
// - every node: the text it returned when it ran (summary, saved path), kept in the workflow.
// Public extension API only; a panel never shrinks a node the user enlarged.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

const CATEGORY = "mxgguf";
const DEBOUNCE_MS = 300;
const PLAN_INPUTS = ["costs", "target", "value", "types", "max_slowdown"];

function widget(node, name) {
  return node.widgets?.find((w) => w.name === name);
}

// Grow the node to fit its panel; never shrink what the user made larger.
function fit(node) {
  const want = node.computeSize();
  node.setSize([Math.max(node.size[0], want[0]), Math.max(node.size[1], want[1])]);
  node.setDirtyCanvas?.(true, true);
}

// A read-only panel under the node's widgets; its text lives in node.properties so that it
// survives saving and reopening the workflow.
function panel(node) {
  if (node.mxgguf) return node.mxgguf;
  const el = document.createElement("div");
  el.className = "mxgguf-panel";
  Object.assign(el.style, { font: "11px monospace", color: "var(--input-text, #ddd)", whiteSpace: "pre-wrap",
    overflow: "hidden", padding: "2px 4px" });
  const plan = document.createElement("div");
  const text = document.createElement("div");
  el.append(plan, text);
  const w = node.addDOMWidget("mxgguf_panel", "mxgguf", el, { serialize: false, getMinHeight: () => el.scrollHeight + 4 });
  w.serialize = false; // no slot in widgets_values: the panel is redrawn, its text kept in properties
  node.mxgguf = { el, plan, text };
  return node.mxgguf;
}

function showText(node, text) {
  node.properties = node.properties || {};
  node.properties.mxgguf_text = text;
  panel(node).text.textContent = text;
  fit(node);
}

function gb(bytes) {
  return `${(bytes / 1e9).toFixed(2)} GB (${(bytes / 2 ** 30).toFixed(2)} GiB)`;
}

// Under the bars, each block's dequantization time as a share of the step (as the chart draws it).
function shareStrip(plan) {
  const strip = document.createElement("div");
  strip.className = "mxgguf-shares";
  Object.assign(strip.style, { display: "flex", height: "10px", gap: "1px", alignItems: "flex-end" });
  const peak = Math.max(...plan.block_step_shares, 1e-12);
  plan.block_step_shares.forEach((share, b) => {
    const bar = document.createElement("div");
    bar.title = `block ${b}: ${(100 * share).toFixed(2)} % of the step dequantizing`;
    Object.assign(bar.style, { flex: "1", height: `${(100 * share) / peak}%`, background: plan.type_colors[plan.blocks[b]] });
    strip.append(bar);
  });
  return strip;
}

function planView(target, plan) {
  const view = document.createElement("div");
  const cards = plan.fits_cards_gb.length ? `fits ${plan.fits_cards_gb.join("/")} GB cards`
    : "fits none of 6-80 GB cards";
  const slowdown = plan.predicted_slowdown === undefined ? ""
    : `predicted step time ${plan.predicted_slowdown.toFixed(2)}x the unquantized model's\n`;
  view.append(`${plan.bpw.toFixed(3)} bits per parameter, ${gb(plan.size_bytes)}\n${cards}\n`
    + `predicted cost ${plan.predicted_cost.toPrecision(4)}\n${slowdown}`);
  const bars = document.createElement("div");
  bars.className = "mxgguf-bars";
  Object.assign(bars.style, { display: "flex", height: "18px", gap: "1px", margin: "2px 0" });
  plan.blocks.forEach((t, b) => {
    const bar = document.createElement("div");
    const group = plan.groups.findLast((g) => g.first <= b);
    bar.title = `block ${b} (${group.name} ${b - group.first}): ${t}, cost ${plan.block_costs[b].toPrecision(3)}`;
    Object.assign(bar.style, { flex: "1", background: plan.type_colors[t] });
    bars.append(bar);
  });
  if (plan.block_step_shares) view.append(shareStrip(plan));
  const legend = document.createElement("div");
  const counts = {};
  plan.blocks.forEach((t) => { counts[t] = (counts[t] || 0) + 1; });
  for (const [t, n] of Object.entries(counts)) {
    const key = document.createElement("span");
    key.textContent = `■ ${t} x${n}  `;
    key.style.color = plan.type_colors[t];
    legend.append(key);
  }
  view.append(bars, legend);
  view.title = `${target}; ${plan.shapes}`;
  return view;
}

async function refreshPlan(node) {
  const query = new URLSearchParams();
  for (const name of PLAN_INPUTS) query.set(name, String(widget(node, name)?.value ?? ""));
  const asked = query.toString();
  node.mxggufAsked = asked;
  let answer;
  try {
    const r = await api.fetchApi(`/mxgguf/plan?${asked}`);
    answer = await r.json();
    if (!r.ok) answer = { error: answer.error || `HTTP ${r.status}` };
  } catch (e) {
    answer = { error: String(e) };
  }
  if (node.mxggufAsked !== asked) return; // a newer question is on its way
  node.mxggufPlan = answer;
  const view = panel(node).plan;
  view.replaceChildren(answer.error ? `plan: ${answer.error}` : planView(query.get("target"), answer));
  fit(node);
}

async function refreshSamples(node) {
  const name = String(widget(node, "costs_file")?.value ?? "");
  let line;
  try {
    const listed = await (await api.fetchApi("/mxgguf/costs")).json();
    const entry = listed.find((e) => e.name === name || e.name === `${name}.json`);
    line = entry ? `${entry.name}: ${entry.samples ?? "?"} samples` : `${name}: no samples yet`;
  } catch (e) {
    line = `costs: ${e}`;
  }
  panel(node).plan.textContent = line;
  fit(node);
}

// Call refresh after the last change to any of the inputs settles.
function watch(node, names, refresh) {
  let timer;
  const later = () => { clearTimeout(timer); timer = setTimeout(() => refresh(node), DEBOUNCE_MS); };
  for (const name of names) {
    const w = widget(node, name);
    if (!w) continue;
    const callback = w.callback;
    w.callback = function () {
      const r = callback?.apply(this, arguments);
      later();
      return r;
    };
  }
  later();
}

app.registerExtension({
  name: "mxgguf.panels",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData.category !== CATEGORY) return;
    const onNodeCreated = nodeType.prototype.onNodeCreated;
    nodeType.prototype.onNodeCreated = function () {
      const r = onNodeCreated?.apply(this, arguments);
      panel(this);
      if (nodeData.name === "MxMixedGGUFQuantize") watch(this, PLAN_INPUTS, refreshPlan);
      if (nodeData.name === "MxCaptureLayerCosts") watch(this, ["costs_file"], refreshSamples);
      return r;
    };
    const onConfigure = nodeType.prototype.onConfigure;
    nodeType.prototype.onConfigure = function () {
      const r = onConfigure?.apply(this, arguments);
      const text = this.properties?.mxgguf_text;
      if (text) showText(this, text);
      return r; // the plan: the refresh onNodeCreated scheduled runs after this, on the saved values
    };
    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (message) {
      onExecuted?.apply(this, arguments);
      const text = (message?.text ?? []).join("\n");
      if (text) showText(this, text);
      if (nodeData.name === "MxCaptureLayerCosts") refreshSamples(this);
    };
  },
});
