// Helpers shared by the browser tests (chat.mjs, recover.mjs): the system
// Chromium through playwright-core, pages with their console captured, and
// waits with deadlines that say what they waited for.

import { chromium } from "playwright-core";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

const CHROMIUM = "/usr/bin/chromium";
export const TIMEOUT = 20_000;
const ARGS = [
  "--headless",
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
  "--no-first-run",
];

export const console_lines = [];
const profile = mkdtempSync(join(tmpdir(), "wsgate-chromium-"));
let context;

export async function launch() {
  context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    args: ARGS,
    timeout: TIMEOUT,
  });
}

export async function close() {
  try {
    await context?.close();
  } catch (_) {}
  rmSync(profile, { recursive: true, force: true });
}

export async function open(name, url, viewport) {
  const page = await context.newPage();
  await page.setViewportSize(viewport);
  page.on("console", (m) => console_lines.push(`[${name}] ${m.type()}: ${m.text()}`));
  page.on("pageerror", (e) => console_lines.push(`[${name}] page error: ${e.message}`));
  await page.goto(url, { timeout: TIMEOUT });
  return page;
}

export async function waitText(page, selector, needle, what) {
  try {
    await page.waitForFunction(
      ([sel, text]) => (document.querySelector(sel)?.textContent || "").includes(text),
      [selector, needle],
      { timeout: TIMEOUT },
    );
  } catch (e) {
    const now = await page.locator(selector).textContent().catch(() => "?");
    throw new Error(`${what}: ${selector} never contained ${JSON.stringify(needle)} (it has ${JSON.stringify(now)})`);
  }
}

/// Waits for a #log entry showing `from` and `text`.
export async function waitMessage(page, from, text, what) {
  try {
    await page.waitForFunction(
      ([f, t]) => [...document.querySelectorAll("#log > *")].some((li) => li.textContent.includes(f) && li.textContent.includes(t)),
      [from, text],
      { timeout: TIMEOUT },
    );
  } catch (e) {
    const log = await page.locator("#log").innerText().catch(() => "?");
    throw new Error(`${what}: no #log entry from ${from} with ${JSON.stringify(text)}; the log reads:\n${log}`);
  }
}

export async function say(page, text) {
  await page.fill("#text", text);
  await page.click("#send");
}

/// How many #log entries contain `text`.
export function count(page, text) {
  return page.evaluate((t) => [...document.querySelectorAll("#log > *")].filter((li) => li.textContent.includes(t)).length, text);
}

/// Prints why it failed and the pages' console, closes, exits 1.
export async function fail(e) {
  console.error(`FAILED: ${e.message}`);
  if (console_lines.length) console.error("browser console:\n" + console_lines.join("\n"));
  await close();
  process.exit(1);
}
