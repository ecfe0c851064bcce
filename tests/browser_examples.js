#!/usr/bin/env node
// The example workflows, through the real ComfyUI page (headless Chromium, playwright-core).
//
//   node browser_examples.js URL PLAYWRIGHT_CORE_DIR make OUT_DIR   (re)build example_workflows/*.json
//   node browser_examples.js URL PLAYWRIGHT_CORE_DIR prompts FILE... each loaded onto the canvas and
//                                                                    turned into the API prompt Run would send
//   node browser_examples.js URL PLAYWRIGHT_CORE_DIR screenshot OUT.png FILE   the canvas with FILE open,
//                                                                    once Quantize's plan is drawn
// "make" builds the graphs with the frontend's own nodes and links, so the files are in the
// format ComfyUI's template browser opens. Prints one JSON line.
const path = require("path");
const fs = require("fs");
const { openComfyPage } = require("./browser_page.js");

const [url, playwrightDir, mode, ...rest] = process.argv.slice(2);

// Node specs: [id, type, [x, y], {widget: value}, {input: [from id, output slot]}]
const FLUX = { unet_name: "flux1-dev.safetensors", weight_dtype: "default" };
const WORKFLOWS = {
  "quantize_flux_builtin_costs.json": [
    [1, "UNETLoader", [40, 80], FLUX, {}],
    [2, "MxMixedGGUFQuantize", [380, 80], { costs: "builtin:flux1-dev", target: "card size (GB)", value: 12 },
      { model: [1, 0] }],
    [3, "MxSaveMxGGUF", [900, 80], { model_name: "flux1-dev" }, { mx_gguf: [2, 0] }],
  ],
  // Wan 2.2 A14B is two experts, each its own checkpoint: both quantized for one card, on costs
  // estimated from their weights (no measured table ships for Wan).
  "quantize_wan22_experts_estimated_costs.json": [
    [1, "UNETLoader", [40, 80], { unet_name: "wan2.2_t2v_high_noise_14B_fp16.safetensors", weight_dtype: "default" },
      {}],
    [2, "MxMixedGGUFQuantize", [420, 80], { costs: "estimate from the weights", target: "card size (GB)", value: 16 },
      { model: [1, 0] }],
    [3, "MxSaveMxGGUF", [940, 80], { model_name: "wan2.2_t2v_high_noise_14B" }, { mx_gguf: [2, 0] }],
    [4, "UNETLoader", [40, 480], { unet_name: "wan2.2_t2v_low_noise_14B_fp16.safetensors", weight_dtype: "default" },
      {}],
    [5, "MxMixedGGUFQuantize", [420, 480], { costs: "estimate from the weights", target: "card size (GB)", value: 16 },
      { model: [4, 0] }],
    [6, "MxSaveMxGGUF", [940, 480], { model_name: "wan2.2_t2v_low_noise_14B" }, { mx_gguf: [5, 0] }],
  ],
  "capture_quantize_save.json": [
    [1, "UNETLoader", [40, 80], FLUX, {}],
    [2, "DualCLIPLoader", [40, 260], { clip_name1: "clip_l.safetensors", clip_name2: "t5xxl_fp16.safetensors",
      type: "flux" }, {}],
    [3, "CLIPTextEncode", [400, 260], { text: "a lighthouse on a cliff at dawn, photograph" }, { clip: [2, 0] }],
    [4, "FluxGuidance", [760, 260], { guidance: 3.5 }, { conditioning: [3, 0] }],
    [5, "ConditioningZeroOut", [760, 400], {}, { conditioning: [3, 0] }],
    [6, "MxCaptureLayerCosts", [400, 40], { costs_file: "my-flux" }, { model: [1, 0] }],
    [7, "EmptySD3LatentImage", [760, 520], { width: 1024, height: 1024, batch_size: 1 }, {}],
    [8, "KSampler", [1080, 80], { seed: 1, steps: 20, cfg: 1.0, sampler_name: "euler", scheduler: "simple" },
      { model: [6, 0], positive: [4, 0], negative: [5, 0], latent_image: [7, 0] }],
    [9, "VAELoader", [1080, 560], { vae_name: "ae.safetensors" }, {}],
    [10, "VAEDecode", [1420, 80], {}, { samples: [8, 0], vae: [9, 0] }],
    [11, "SaveImage", [1640, 80], { filename_prefix: "capture" }, { images: [10, 0] }],
    [12, "MxMixedGGUFQuantize", [1420, 320], { costs: "my-flux.json", target: "card size (GB)", value: 12 },
      { model: [1, 0], after: [8, 0] }],
    [13, "MxSaveMxGGUF", [1900, 320], { model_name: "flux1-dev" }, { mx_gguf: [12, 0] }],
  ],
};

(async () => {
  let opened;
  try {
    opened = await openComfyPage(url, playwrightDir, [], { width: 1600, height: 900 });
    const { page } = opened;
    if (mode === "make") {
      const [outDir] = rest;
      for (const [name, specs] of Object.entries(WORKFLOWS)) {
        const graph = await page.evaluate((specs) => {
          const app = window.app;
          app.graph.clear();
          const made = {};
          for (const [id, type, pos, widgets] of specs) {
            const node = window.LiteGraph.createNode(type);
            if (!node) throw new Error(`no node type ${type}`);
            node.id = id;
            app.graph.add(node);
            node.pos = pos;
            for (const [k, v] of Object.entries(widgets)) {
              const w = node.widgets.find((x) => x.name === k);
              if (!w) throw new Error(`${type} has no widget ${k}`);
              w.value = v;
            }
            made[id] = node;
          }
          for (const [id, type, , , links] of specs) {
            for (const [input, [from, slot]] of Object.entries(links)) {
              const target = made[id];
              const index = target.findInputSlot(input);
              if (index < 0) throw new Error(`${type} has no input ${input}`);
              made[from].connect(slot, target, index);
            }
          }
          return app.graph.serialize();
        }, specs);
        fs.writeFileSync(path.join(outDir, name), JSON.stringify(graph, null, 1) + "\n");
      }
      console.log(JSON.stringify({ made: Object.keys(WORKFLOWS) }));
    } else if (mode === "screenshot") {
      const [out, file] = rest;
      await page.evaluate(async (g) => {
        await window.app.loadGraphData(g);
        const quantize = window.app.graph._nodes.find((n) => n.type === "MxMixedGGUFQuantize");
        for (let t = 0; t < 300 && !quantize.mxggufPlan; t++) await new Promise((r) => setTimeout(r, 100));
      }, JSON.parse(fs.readFileSync(file, "utf8")));
      await page.keyboard.press("Escape"); // the templates dialog, if it opened late
      await page.waitForTimeout(800);
      await page.screenshot({ path: out, clip: { x: 0, y: 80, width: 1400, height: 520 } });
      console.log(JSON.stringify({ screenshot: out }));
    } else {
      const prompts = {};
      for (const file of rest) {
        const graph = JSON.parse(fs.readFileSync(file, "utf8"));
        prompts[path.basename(file)] = await page.evaluate(async (g) => {
          await window.app.loadGraphData(g);
          return (await window.app.graphToPrompt()).output;
        }, graph);
      }
      console.log(JSON.stringify(prompts));
    }
  } catch (e) {
    console.log(JSON.stringify({ error: String(e.stack || e).slice(0, 2000) }));
    process.exitCode = 1;
  } finally {
    await opened?.close();
  }
})();
