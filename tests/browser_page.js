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
    return { page, close };
  } catch (e) {
    await close();
    throw e;
  }
}

module.exports = { openComfyPage };
