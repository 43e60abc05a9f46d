// Drives Petrel's console in headless Chromium (Debian's, through playwright-core) as a user
// would, and prints what it saw as one JSON object; the Rust test asserts on it.
// node console.mjs URL OWNER_KEY VIEWER_KEY ZIP SCREENSHOT_DIR SECRET_VALUE DIRECTORY
import { chromium } from "playwright-core";

const [url, owner, viewer, zip, shots, secret, directory] = process.argv.slice(2);
const out = { errors: [] };
const browser = await chromium.launch({
  executablePath: "/usr/bin/chromium",
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
try {
  const page = await browser.newPage({ viewport: { width: 1200, height: 900 } });
  page.on("console", (m) => { if (m.type() === "error") out.errors.push(m.text()); });
  page.on("pageerror", (e) => out.errors.push(String(e)));
  const shot = (name) => page.screenshot({ path: `${shots}/${name}.png`, fullPage: true });

  // Log in with the keyboard alone: the key field has the focus, Enter submits.
  await page.goto(url + "/console");
  await page.waitForSelector("#key:focus");
  await page.keyboard.type(owner);
  await page.keyboard.press("Enter");
  await page.waitForSelector('tr[data-function="web"]');
  out.listed = await page.$$eval("tr[data-function]", (rows) => rows.map((r) => r.dataset.function));

  // A burst of calls moves the function's sparkline (the page refreshes by itself).
  const spark = 'tr[data-function="web"] svg.invocations';
  const before = await page.$eval(spark, (s) => s.dataset.values.split(",").reduce((a, b) => a + +b, 0));
  await page.evaluate(async ([k]) => {
    for (let i = 0; i < 25; i++) {
      await fetch("/v1/functions/web/invoke", { method: "POST", headers: { authorization: "Bearer " + k }, body: "{}" });
    }
  }, [owner]);
  await page.waitForFunction(([sel, b]) => {
    const s = document.querySelector(sel);
    return s && s.dataset.values.split(",").reduce((a, x) => a + +x, 0) >= b + 25;
  }, [spark, before], { timeout: 15000 });
  out.sparkline = { before, after: await page.$eval(spark, (s) => s.dataset.values.split(",").reduce((a, b) => a + +b, 0)) };
  await shot("functions");

  // Search narrows the list.
  await page.fill("#search", "fla");
  out.searched = await page.$$eval("tr[data-function]", (rows) => rows.map((r) => r.dataset.function));
  await page.fill("#search", "");

  // A function's page: its configuration, the invoke panel, the invocation and its log line.
  await page.goto(url + "/console#/fn/web");
  await page.waitForSelector("#config");
  out.config = await page.textContent("#config");
  await page.fill("#event", '{"name": "panel"}');
  await page.click("#invoke");
  await page.waitForSelector("#invoke-status");
  out.invoke = { status: await page.textContent("#invoke-status"), body: await page.textContent("#invoke-body") };
  await page.waitForFunction(() => (document.getElementById("logs").textContent || "").includes("greeting panel"), null, { timeout: 15000 });
  out.invocationRows = await page.$$eval("tr[data-invocation]", (r) => r.length);
  // The same function as an HTTP request through /fn/NAME.
  await page.selectOption("#invoke-mode", "http");
  await page.fill("#http-path", "/?name=httpmode");
  await page.click("#invoke");
  await page.waitForFunction(() => /httpmode/.test(document.getElementById("invoke-body")?.textContent || ""), null, { timeout: 15000 });
  out.httpInvoke = await page.textContent("#invoke-body");
  await page.waitForFunction(() => /ready/.test(document.getElementById("instances").textContent), null, { timeout: 15000 });
  out.instances = await page.textContent("#instances");
  out.usageChart = !!(await page.$("#usage-chart svg.gbs"));
  out.rollouts = await page.textContent("#rollouts");
  await page.waitForFunction(() => /GB-s/.test(document.getElementById("usage").textContent), null, { timeout: 15000 });
  out.usage = await page.textContent("#usage");
  out.queue = await page.textContent("#queue");
  out.deleteButton = !!(await page.$("#delete"));
  out.secretInPage = (await page.content()).includes(secret);
  await shot("function");

  // A dead letter, replayed from its function's page.
  await page.goto(url + "/console#/fn/flaky");
  await page.waitForSelector("tr[data-dead] button");
  out.deadId = await page.$eval("tr[data-dead]", (r) => r.dataset.dead);
  out.flakyQueue = await page.textContent("#queue");
  await page.click("tr[data-dead] button");
  out.replays = await page.evaluate(async ([k, id]) => {
    for (let i = 0; i < 100; i++) {
      const r = await (await fetch("/v1/invocations/" + id, { headers: { authorization: "Bearer " + k } })).json();
      if (r.replays > 0) return r.replays;
      await new Promise((f) => setTimeout(f, 100));
    }
    return 0;
  }, [owner, out.deadId]);

  // Deploy by upload.
  await page.goto(url + "/console#/deploy");
  await page.fill("#deploy-name", "uploaded");
  await page.setInputFiles("#deploy-file", zip);
  await page.click("#deploy");
  await page.waitForFunction(() => /Deployed uploaded version/.test(document.getElementById("deploy-result").textContent), null, { timeout: 30000 });
  out.deployed = await page.textContent("#deploy-result");
  await shot("deploy");
  // A directory, zipped in the page.
  await page.fill("#deploy-name", "from-dir");
  await page.setInputFiles("#deploy-dir", directory);
  await page.waitForFunction(() => /Deployed from-dir version/.test(document.getElementById("deploy-result").textContent), null, { timeout: 30000 });
  out.deployedDir = await page.textContent("#deploy-result");

  await page.goto(url + "/console#/overview");
  await page.waitForSelector("#total-invocations");
  out.total = Number(await page.textContent("#total-invocations"));
  out.budget = await page.textContent("#budget");
  await shot("overview");

  // At a phone's width nothing scrolls sideways.
  await page.setViewportSize({ width: 375, height: 800 });
  await page.goto(url + "/console#/functions");
  await page.waitForSelector('tr[data-function="web"]');
  out.phoneOverflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  await shot("phone");
  await page.setViewportSize({ width: 1200, height: 900 });

  // A viewer: no deploy link, no delete button, no replay; the secret's value nowhere.
  await page.click("#logout");
  await page.waitForSelector("#key");
  await page.fill("#key", viewer);
  await page.press("#key", "Enter");
  await page.waitForSelector('tr[data-function="web"]');
  out.viewerDeployLink = await page.isVisible('a[href="#/deploy"]');
  await page.goto(url + "/console#/fn/web");
  await page.waitForSelector("#config");
  out.viewerDeleteButton = !!(await page.$("#delete"));
  out.viewerSecretInPage = (await page.content()).includes(secret);
  await page.goto(url + "/console#/fn/flaky");
  await page.waitForSelector("tr[data-dead]");
  out.viewerReplayButton = !!(await page.$("tr[data-dead] button"));
} catch (e) {
  out.failed = String(e && e.stack || e);
} finally {
  await browser.close();
}
console.log(JSON.stringify(out));
