// Drives the chat demo page in real headless Chromium (the system's
// /usr/bin/chromium; playwright-core never downloads a browser).
//
//   node tests/browser/chat.mjs http://127.0.0.1:8080/chat/ [NO_WS_URL]
//
// Opens two pages: alice over WebSocket, bob forced to SSE + POST
// (&transport=sse). With NO_WS_URL (the same chat mounted on a route where
// WebSocket upgrades are refused), a third page, carol, must fall back to SSE
// by itself and receive the room's messages too. Each types into #text and clicks #send; each page's #log
// must then show the other's message, and #users both names. Saves a
// screenshot of each page (CHAT_SCREENSHOT, default target/chat-browser.png;
// the SSE page goes next to it with "-sse" before the extension).
// Exit status 0 on success; on failure the reason and the pages' console.

import { mkdirSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { launch, close, open as openUrl, waitText, waitMessage, say, count, fail } from "./lib.mjs";

const base = process.argv[2];
const noWs = process.argv[3];
if (!base) {
  console.error("usage: node chat.mjs <chat page URL, e.g. http://127.0.0.1:8080/chat/>");
  process.exit(2);
}
const here = dirname(fileURLToPath(import.meta.url));
const shot = resolve(process.env.CHAT_SCREENSHOT || join(here, "..", "..", "target", "chat-browser.png"));
const shotSse = shot.replace(/(\.[^./]+)?$/, (ext) => "-sse" + (ext || ".png"));

const open = (name, query, viewport) => openUrl(name, new URL(query, base).href, viewport);

try {
  await launch();
  const alice = await open("alice/websocket", "?user=alice&room=lobby", { width: 1000, height: 640 });
  await waitText(alice, "#status", "websocket", "alice connects over WebSocket");
  const bob = await open("bob/sse", "?user=bob&room=lobby&transport=sse", { width: 390, height: 740 });
  await waitText(bob, "#status", "sse", "bob connects over SSE");

  await waitText(alice, "#users", "bob", "alice sees bob in the room");
  await waitText(bob, "#users", "alice", "bob sees alice in the room");

  await say(alice, "hello from alice over websocket");
  await waitMessage(bob, "alice", "hello from alice over websocket", "bob receives alice's message");
  await say(bob, "hi alice, bob here on sse");
  await waitMessage(alice, "bob", "hi alice, bob here on sse", "alice receives bob's message");
  // Each also sees its own message, once.
  await waitMessage(alice, "alice", "hello from alice over websocket", "alice sees her own message");
  await waitMessage(bob, "bob", "hi alice, bob here on sse", "bob sees his own message");
  for (const [p, who] of [[alice, "alice"], [bob, "bob"]]) {
    for (const t of ["hello from alice over websocket", "hi alice, bob here on sse"]) {
      const n = await count(p, t);
      if (n !== 1) throw new Error(`${who}'s #log shows ${JSON.stringify(t)} ${n} times, expected once`);
    }
  }

  if (noWs) {
    const carol = await open("carol/fallback", new URL("?user=carol&room=lobby", noWs).href, { width: 800, height: 600 });
    await waitText(carol, "#status", "sse", "carol falls back to SSE when WebSocket is refused");
    await waitText(alice, "#users", "carol", "alice sees carol");
    await say(carol, "carol via fallback");
    await waitMessage(alice, "carol", "carol via fallback", "alice receives carol's message");
    await say(alice, "welcome carol");
    await waitMessage(carol, "alice", "welcome carol", "carol receives alice's message");
  }

  mkdirSync(dirname(shot), { recursive: true });
  await alice.screenshot({ path: shot, fullPage: true });
  await bob.screenshot({ path: shotSse, fullPage: true });
  console.log(JSON.stringify({ ok: true, screenshot: shot, screenshot_sse: shotSse }));
  await close();
  process.exit(0);
} catch (e) {
  await fail(e);
}
