// The demo page recovering across a restart of its node, in real headless
// Chromium (driven by tests/it/chat_browser.rs):
//
//   node tests/browser/recover.mjs http://127.0.0.1:PORT/chat/
//
// Opens dave's page over WebSocket and prints READY once it is connected.
// The test then stops dave's node, sends a message through another node of
// the cluster and starts dave's node again on the same port. The page must
// reconnect by itself, rejoin with its room's epoch and offset, and show the
// message it missed, once, without a "you may have missed messages" note.
// Saves a screenshot (CHAT_SCREENSHOT). Exit status 0 on success.

import { mkdirSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { launch, close, open, waitText, waitMessage, count, fail } from "./lib.mjs";

const base = process.argv[2];
if (!base) {
  console.error("usage: node recover.mjs <chat page URL>");
  process.exit(2);
}
const here = dirname(fileURLToPath(import.meta.url));
const shot = resolve(process.env.CHAT_SCREENSHOT || join(here, "..", "..", "target", "chat-recover.png"));
const MISSED = "sent while dave's node restarted";

try {
  await launch();
  const dave = await open("dave/websocket", new URL("?user=dave&room=lobby", base).href, { width: 900, height: 600 });
  await waitText(dave, "#status", "websocket", "dave connects over WebSocket");
  await waitText(dave, "#users", "dave", "dave is in the room");
  console.log("READY");
  await waitText(dave, "#log", "disconnected", "dave sees his node go away");
  await waitMessage(dave, "alice", MISSED, "dave recovers the message he missed");
  await waitText(dave, "#status", "websocket", "dave is connected again");
  const n = await count(dave, MISSED);
  if (n !== 1) throw new Error(`the missed message shows ${n} times, expected once`);
  if ((await count(dave, "may have missed")) !== 0) throw new Error("the page says messages may be lost, but the history was kept");
  mkdirSync(dirname(shot), { recursive: true });
  await dave.screenshot({ path: shot, fullPage: true });
  console.log(JSON.stringify({ ok: true, screenshot: shot }));
  await close();
  process.exit(0);
} catch (e) {
  await fail(e);
}
