// Drives certmq's web console in a real browser (Debian's chromium through
// playwright-core), with real MQTT sessions (the mosquitto clients) that
// the console's buttons must cut off. Run by tests/integration/console.rs,
// which starts `certmq serve` and passes:
//
//   CERTMQ_PHASE        "admin" (the generated key) or "readonly"
//   CERTMQ_ADMIN        http://127.0.0.1:PORT (the admin listener)
//   CERTMQ_MQTT_PORT    the MQTT (mutual TLS) port
//   CERTMQ_DIR          the broker's directory (certs/dev holds the dev PKI)
//   CERTMQ_BIN          the certmq binary (for `certmq pki`)
//   CERTMQ_KEY_ID, CERTMQ_KEY_SECRET   the key to sign in with
//   CERTMQ_SCREENSHOTS  where to write the pages' screenshots (admin phase)
//   PLAYWRIGHT_DIR      where playwright-core is installed

import { spawn, spawnSync } from "node:child_process";
import { mkdirSync } from "node:fs";
import { createRequire } from "node:module";
import path from "node:path";

const env = process.env;
const require = createRequire(path.join(env.PLAYWRIGHT_DIR, "/"));
const { chromium } = require("playwright-core");

const ADMIN = env.CERTMQ_ADMIN;
const DEV = path.join(env.CERTMQ_DIR, "certs/dev");
const WORK = path.join(env.CERTMQ_DIR, "console-work");
const WAIT = 15_000;

function log(message) {
  console.log(`[console] ${message}`);
}

function assert(condition, message) {
  if (!condition) throw new Error(message);
}

function certFiles(device) {
  const dir = device.startsWith("device-") ? DEV : WORK;
  return ["--cert", path.join(dir, `${device}.pem`), "--key", path.join(dir, `${device}.key`)];
}

function mosquittoArgs(device) {
  return ["-h", "localhost", "-p", env.CERTMQ_MQTT_PORT, "--cafile", path.join(DEV, "ca.pem"), ...certFiles(device)];
}

// A long-lived MQTT 5 session of `device`; resolves its exit.
function subscriber(device, clientId) {
  const proc = spawn(
    "mosquitto_sub",
    [...mosquittoArgs(device), "-V", "mqttv5", "-i", clientId, "-t", `devices/${device}/cmd`],
    { stdio: "ignore" },
  );
  proc.exited = new Promise((resolve) => proc.on("exit", (code) => resolve(code)));
  return proc;
}

// Whether `device` can connect and publish once.
function publishes(device) {
  const result = spawnSync(
    "mosquitto_pub",
    [...mosquittoArgs(device), "-i", `${device}-pub`, "-t", `devices/${device}/telemetry`, "-m", "hi"],
    { timeout: 10_000 },
  );
  return result.status === 0;
}

async function exitsWithin(proc, ms, what) {
  const timer = new Promise((resolve) => setTimeout(() => resolve("timeout"), ms));
  const outcome = await Promise.race([proc.exited, timer]);
  assert(outcome !== "timeout", `${what}: the MQTT session is still open`);
}

function certmq(...args) {
  const result = spawnSync(env.CERTMQ_BIN, args, { cwd: WORK, encoding: "utf8" });
  assert(result.status === 0, `certmq ${args.join(" ")}: ${result.stderr}`);
}

async function shot(page, name) {
  if (!env.CERTMQ_SCREENSHOTS) return;
  mkdirSync(env.CERTMQ_SCREENSHOTS, { recursive: true });
  await page.screenshot({ path: path.join(env.CERTMQ_SCREENSHOTS, `${name}.png`) });
  log(`screenshot ${name}.png`);
}

async function signIn(page, id, secret) {
  await page.goto(`${ADMIN}/console/`);
  await page.getByLabel("Access key ID").fill(id);
  await page.getByLabel("Access key secret").fill(secret);
  await page.getByRole("button", { name: "Sign in" }).click();
}

async function errorText(page) {
  const box = page.locator("#error");
  await box.waitFor({ state: "visible", timeout: WAIT });
  return box.textContent();
}

function deviceRow(page, name) {
  return page.locator(`#device-table tr[data-name="${name}"]`);
}

async function waitCell(row, selector, attribute, value, what) {
  await row.locator(`${selector}[${attribute}="${value}"]`).waitFor({ timeout: WAIT }).catch(() => {
    throw new Error(`${what}: the page never showed ${attribute}=${value}`);
  });
}

async function confirm(page) {
  const dialog = page.locator("dialog#confirm");
  await dialog.waitFor({ state: "visible", timeout: WAIT });
  return dialog;
}

async function adminPhase(page) {
  // A wrong secret: the API's own message, and no sign-in.
  await signIn(page, env.CERTMQ_KEY_ID, "not-the-secret");
  const wrong = await errorText(page);
  assert(wrong.includes("SignatureDoesNotMatch"), `wrong secret showed: ${wrong}`);
  assert(wrong.includes("RequestId"), `no RequestId shown: ${wrong}`);
  await shot(page, "sign-in-wrong-secret");
  log("a wrong secret shows SignatureDoesNotMatch");

  await signIn(page, env.CERTMQ_KEY_ID, env.CERTMQ_KEY_SECRET);
  await page.locator("#ov-cas").waitFor({ timeout: WAIT });
  const stored = await page.evaluate(() => JSON.stringify(sessionStorage));
  assert(stored.includes(env.CERTMQ_KEY_ID), "the key is not in sessionStorage");
  assert(!page.url().includes(env.CERTMQ_KEY_SECRET), "the secret is in the URL");
  // The key belongs to this tab: another tab (or this one, closed and
  // opened again) starts at the sign-in form.
  const otherTab = await page.context().newPage();
  await otherTab.goto(`${ADMIN}/console/#/devices`);
  await otherTab.getByLabel("Access key ID").waitFor({ timeout: WAIT });
  await otherTab.close();

  // A connected device of the dev PKI, cut off with one click.
  const device1 = subscriber("device-1", "device-1");
  await page.getByRole("link", { name: "Devices" }).click();
  const row = deviceRow(page, "device-1");
  await waitCell(row, "td", "data-live", "1", "device-1 online");
  await shot(page, "devices");
  await row.getByRole("button", { name: "Inactivate device-1" }).click();
  const dialog = await confirm(page);
  assert((await dialog.textContent()).includes("1 live session"), "the confirm does not say what it closes");
  await shot(page, "devices-confirm");
  await dialog.getByRole("button", { name: "Confirm" }).click();
  await exitsWithin(device1, 5_000, "Inactivate");
  await waitCell(row, "td", "data-status", "Inactive", "device-1 inactive");
  assert(!publishes("device-1"), "the inactivated device could connect again");
  log("Inactivate: session closed, reconnect refused, status shown without a reload");
  await row.getByRole("button", { name: "Activate device-1" }).click();
  await waitCell(row, "td", "data-status", "Active", "device-1 active");
  assert(publishes("device-1"), "the activated device could not connect");
  log("Activate: the device is back");

  // Register a CA through the upload form; its first device shows up.
  mkdirSync(WORK, { recursive: true });
  await page.getByRole("link", { name: "CAs" }).click();
  const code = page.locator("#reg-code");
  await page.waitForFunction(() => /^[0-9a-f]+$/i.test(document.querySelector("#reg-code")?.textContent ?? ""), null, { timeout: WAIT });
  const registrationCode = (await code.textContent()).trim();
  certmq("pki", "create-ca", "--cn", "Console fleet CA", "--out-cert", "fleet-ca.pem", "--out-key", "fleet-ca.key");
  certmq("pki", "verification-cert", "--ca-cert", "fleet-ca.pem", "--ca-key", "fleet-ca.key", "--code", registrationCode,
    "--out-cert", "verify.pem", "--out-key", "verify.key");
  certmq("pki", "issue-device", "--ca-cert", "fleet-ca.pem", "--ca-key", "fleet-ca.key", "--cn", "meter-9",
    "--out-cert", "meter-9.pem", "--out-key", "meter-9.key");
  await page.getByLabel("CA name").fill("Console fleet");
  await page.getByLabel("CA certificate (PEM)").setInputFiles(path.join(WORK, "fleet-ca.pem"));
  await page.getByLabel("Verification certificate (PEM)").setInputFiles(path.join(WORK, "verify.pem"));
  await page.getByRole("button", { name: "Register" }).click();
  await page.locator("#notice").filter({ hasText: "Registered" }).waitFor({ timeout: WAIT });
  const caRow = page.locator("#ca-table tr", { hasText: "Console fleet" });
  await caRow.waitFor({ timeout: WAIT });
  const caSn = await caRow.getAttribute("data-sn");
  await caRow.getByRole("button", { name: "Details of CA Console fleet" }).click();
  await page.locator("#ca-details pre").waitFor({ timeout: WAIT });
  await shot(page, "cas");
  assert(publishes("meter-9"), "the new CA's device could not connect");
  await page.goto(`${ADMIN}/console/#/devices?ca=${caSn}`);
  await deviceRow(page, "meter-9").waitFor({ timeout: WAIT });
  log("RegisterCaCertificate through the form; its first device is listed");
  await page.getByLabel("Search").fill("meter");
  await page.getByRole("button", { name: "Search" }).click();
  await deviceRow(page, "meter-9").waitFor({ timeout: WAIT });
  await page.getByLabel("Search").fill("nothing-like-it");
  await page.getByRole("button", { name: "Search" }).click();
  await page.locator("#dev-page", { hasText: "0 device(s)" }).waitFor({ timeout: WAIT });
  log("device search by name");

  // Inactivating a CA says what it affects before it does it.
  const meter = subscriber("meter-9", "meter-9");
  await page.getByRole("link", { name: "CAs" }).click();
  const fleet = page.locator("#ca-table tr", { hasText: "Console fleet" });
  for (let i = 0; ; i++) {
    await fleet.getByRole("button", { name: "Inactivate CA Console fleet" }).click();
    const asked = await (await confirm(page)).textContent();
    if (asked.includes("1 device certificate(s) and 1 live session(s)")) {
      await page.getByRole("button", { name: "Confirm" }).click();
      break;
    }
    await page.getByRole("button", { name: "Cancel" }).click();
    assert(i < 20, `the CA confirm never counted the live session: ${asked}`);
    await page.waitForTimeout(250);
  }
  await exitsWithin(meter, 5_000, "Inactivate CA");
  await waitCell(fleet, "td", "data-status", "Inactive", "the CA inactive");
  assert(!publishes("meter-9"), "a device of the inactive CA connected");
  await fleet.getByRole("button", { name: "Activate CA Console fleet" }).click();
  await waitCell(fleet, "td", "data-status", "Active", "the CA active");
  log("CA inactivation: the confirm counts devices and live sessions; the session is closed");

  // Sessions: look a client up, kick it.
  const kicked = subscriber("device-2", "console-kick");
  await page.getByRole("link", { name: "Sessions" }).click();
  await page.getByLabel("Client ID").fill("console-kick");
  for (let i = 0; ; i++) {
    await page.getByRole("button", { name: "Look up" }).click();
    try {
      await page.getByRole("button", { name: "Kick console-kick" }).waitFor({ timeout: 1_000 });
      break;
    } catch (e) {
      if (i > 10) throw new Error("console-kick never showed as online");
    }
  }
  await shot(page, "sessions");
  await page.getByRole("button", { name: "Kick console-kick" }).click();
  await (await confirm(page)).getByRole("button", { name: "Confirm" }).click();
  await exitsWithin(kicked, 5_000, "Kick");
  log("Sessions: look up and kick");

  // The overview's rates move with connections and refusals.
  certmq("pki", "create-ca", "--cn", "Stranger CA", "--out-cert", "stranger-ca.pem", "--out-key", "stranger-ca.key");
  certmq("pki", "issue-device", "--ca-cert", "stranger-ca.pem", "--ca-key", "stranger-ca.key", "--cn", "stranger",
    "--out-cert", "stranger.pem", "--out-key", "stranger.key");
  await page.getByRole("link", { name: "Overview" }).click();
  const rate = (id) => page.evaluate((id) => Number(document.getElementById(id)?.textContent), id);
  for (let i = 0; !((await rate("ov-connects")) > 0 && (await rate("ov-refusals")) > 0); i++) {
    assert(i < 40, "the overview's rates never moved");
    assert(publishes("device-2"), "device-2 could not connect");
    assert(!publishes("stranger"), "a device of an unregistered CA connected");
    await page.waitForTimeout(250);
  }
  const cas = Number(await page.locator("#ov-cas").textContent());
  assert(cas === 2, `the overview shows ${cas} CAs, not 2`);
  await shot(page, "overview");
  log("Overview: counts and rates from the metrics");

  await page.getByRole("button", { name: "Sign out" }).click();
  await page.getByLabel("Access key ID").waitFor({ timeout: WAIT });
  assert((await page.evaluate(() => sessionStorage.length)) === 0, "the key survived sign-out");
  await shot(page, "sign-in");
  log("Sign out forgets the key");
}

async function readonlyPhase(page) {
  // By keyboard only: the form's fields in tab order, Enter submits.
  await page.goto(`${ADMIN}/console/`);
  await page.getByLabel("Access key ID").waitFor({ timeout: WAIT });
  await page.keyboard.type(env.CERTMQ_KEY_ID);
  await page.keyboard.press("Tab");
  await page.keyboard.type(env.CERTMQ_KEY_SECRET);
  await page.keyboard.press("Enter");
  await page.locator("#ov-cas").waitFor({ timeout: WAIT });
  log("signed in by keyboard with the read-only key");

  const device = subscriber("device-3", "device-3");
  await page.getByRole("link", { name: "Devices" }).click();
  const row = deviceRow(page, "device-3");
  await waitCell(row, "td", "data-live", "1", "device-3 online");
  await row.getByRole("button", { name: "Inactivate device-3" }).click();
  await (await confirm(page)).getByRole("button", { name: "Confirm" }).click();
  const refused = await errorText(page);
  assert(refused.includes("PermissionCheckFailed"), `a read-only Inactivate showed: ${refused}`);
  await waitCell(row, "td", "data-status", "Active", "device-3 still active");
  const outcome = await Promise.race([device.exited, new Promise((r) => setTimeout(() => r("open"), 500))]);
  assert(outcome === "open", "the read-only key's Inactivate closed the session");
  device.kill();
  log("a read-only key's Inactivate shows PermissionCheckFailed and changes nothing");
}

const browser = await chromium.launch({
  executablePath: "/usr/bin/chromium",
  headless: true,
  args: ["--no-sandbox"],
});
let failed = false;
try {
  const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
  const page = await context.newPage();
  const foreign = [];
  const violations = [];
  page.on("request", (request) => {
    if (!request.url().startsWith(ADMIN)) foreign.push(request.url());
  });
  page.on("console", (message) => {
    if (message.type() === "error" && /Content Security Policy|Refused to/.test(message.text())) {
      violations.push(message.text());
    }
  });
  page.on("pageerror", (error) => violations.push(String(error)));
  if (env.CERTMQ_PHASE === "admin") await adminPhase(page);
  else await readonlyPhase(page);
  assert(foreign.length === 0, `requests outside the broker: ${foreign.join(", ")}`);
  assert(violations.length === 0, `page errors or CSP violations: ${violations.join("; ")}`);
  log("passed");
} catch (e) {
  failed = true;
  console.log(`[console] FAILED: ${e.stack || e}`);
} finally {
  await browser.close();
}
process.exit(failed ? 1 : 0);
