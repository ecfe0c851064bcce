// The real ComfyUI page in headless Chromium (playwright-core), shared by the browser scripts.
const path = require("path");
const os = require("os");
const fs = require("fs");

// Opens `url` once the pack's nodes are registered; `pageErrors` collects the page's errors.
// Returns { page, close }.
async function openComfyPage(url, playwrightDir, pageErrors = [], viewport = { width: 1400, height: 900 }) {
  const { chromium } = require(path.resolve(playwrightDir));
  const userDir = fs.mkdtempSync(path.join(os.tmpdir(), "mxgguf-browser-"));
  const ctx = await chromium.launchPersistentContext(userDir, {
    executablePath: process.env.MXGGUF_CHROMIUM || "/usr/bin/chromium", headless: true, viewport,
    args: ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking", "--disable-sync"],
  });
  const close = async () => {
    await ctx.close();
    fs.rmSync(userDir, { recursive: true, force: true });
  };
  try {
    const page = ctx.pages()[0] || (await ctx.newPage());
    page.on("pageerror", (e) => pageErrors.push(String(e.stack || e).slice(0, 600)));
    await page.goto(url, { waitUntil: "load", timeout: 120000 });
    await page.waitForFunction(() => window.app?.graph && window.LiteGraph?.registered_node_types?.MxMixedGGUFQuantize,
      null, { timeout: 120000 });
    // the frontend sets up its first workflow after the page answers (a blank one on a first
    // visit clears the graph late): let its requests settle before touching the graph
    await page.waitForLoadState("networkidle", { timeout: 60000 });
    await page.keyboard.press("Escape"); // the templates dialog of a first visit
    await page.evaluate(installPageHelpers);
    return { page, close };
  } catch (e) {
    await close();
    throw e;
  }
}

// In the page, as window.mxTest: sleep; until(ok, what, seconds = 30), polling ok() each 0.1 s;
// set(node, name, value), a widget set as a user sets it (value, then its callback).
function installPageHelpers() {
  const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
  window.mxTest = {
    sleep,
    until: async (ok, what, seconds = 30) => {
      for (let t = 0; t < seconds * 10; t++) { if (ok()) return; await sleep(100); }
      throw new Error(`timed out waiting for ${what}`);
    },
    set: (node, name, value) => {
      const w = node.widgets.find((x) => x.name === name);
      w.value = value;
      w.callback?.(value);
    },
  };
}

// Opens the page, runs `inPage(arg)` in it and prints one JSON line: what it returned with the
// page's errors, or the error. Exits 1 on an error, or on one from this pack's script (the
// frontend's own start-up errors in a headless page are not this pack's to judge).
async function reportFromPage(url, playwrightDir, inPage, arg) {
  const pageErrors = [];
  let opened;
  try {
    opened = await openComfyPage(url, playwrightDir, pageErrors);
    const result = await opened.page.evaluate(inPage, arg);
    const ours = pageErrors.filter((e) => e.includes("mxgguf"));
    console.log(JSON.stringify({ ...result, page_errors: pageErrors, our_errors: ours }));
    process.exitCode = ours.length ? 1 : 0;
  } catch (e) {
    console.log(JSON.stringify({ error: String(e).slice(0, 2000), page_errors: pageErrors }));
    process.exitCode = 1;
  } finally {
    await opened?.close();
  }
}

module.exports = { openComfyPage, reportFromPage };
