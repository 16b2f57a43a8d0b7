// End-to-end test of the chat page in headless Chromium, driven by playwright-core.
// The Rust test `tests/tests/browser_chat.rs` starts the chat server and runs this file with
// CHAT_URL set; SCREENSHOT_DIR says where to save screenshots.
import { test, after } from "node:test";
import assert from "node:assert/strict";
import { chromium } from "playwright-core";
import path from "node:path";

const url = process.env.CHAT_URL;
// The same server behind a proxy that refuses websocket upgrades.
const blockedUrl = process.env.BLOCKED_CHAT_URL;
const shots = process.env.SCREENSHOT_DIR || ".";
const executablePath = process.env.CHROMIUM || "/usr/bin/chromium";
const TIMEOUT = 15000;

const browser = await chromium.launch({
  executablePath,
  args: [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
  ],
});
after(() => browser.close());

async function openAs(name, room, { noWebSocket = false, at = url } = {}) {
  const context = await browser.newContext();
  if (noWebSocket) {
    // As a browser where websockets are unavailable: the page must fall back to long poll.
    await context.addInitScript(() => { delete window.WebSocket; });
  }
  const page = await context.newPage();
  page.on("pageerror", (e) => console.error(`[${name}] page error:`, e));
  await page.goto(at, { waitUntil: "load" });
  await page.fill("#name", name);
  await page.fill("#room", room);
  await page.click("#join");
  await page.waitForSelector(`#presences li[data-user="${name}"]`, { timeout: TIMEOUT });
  return { context, page };
}

async function users(page) {
  return page.$$eval("#presences li", (lis) => lis.map((li) => li.dataset.user));
}

test("two users see each other, a status change and a leave", { timeout: 60000 }, async () => {
  const room = `e2e-${Date.now()}`;
  const alice = await openAs("alice", room);
  const bob = await openAs("bob", room);

  // Each page lists both users.
  await alice.page.waitForSelector('#presences li[data-user="bob"]', { timeout: TIMEOUT });
  assert.deepEqual(await users(alice.page), ["alice", "bob"]);
  assert.deepEqual(await users(bob.page), ["alice", "bob"]);
  assert.equal(await alice.page.textContent("#count"), "2");

  // Bob goes away; Alice's page shows it.
  await bob.page.selectOption("#status", "away");
  await alice.page.waitForSelector('#presences li[data-user="bob"][data-status="away"]', { timeout: TIMEOUT });
  assert.equal(await alice.page.textContent('#presences li[data-user="bob"] .status'), "away");

  // A message reaches the other page.
  await alice.page.fill("#body", "hello bob");
  await alice.page.press("#body", "Enter");
  await bob.page.waitForSelector("#messages li:has-text('hello bob')", { timeout: TIMEOUT });

  await alice.page.screenshot({ path: path.join(shots, "chat-two-users.png"), fullPage: true });

  // Bob closes his page; he leaves Alice's list.
  await bob.context.close();
  await alice.page.waitForFunction(
    () => !document.querySelector('#presences li[data-user="bob"]'),
    null,
    { timeout: TIMEOUT },
  );
  assert.deepEqual(await users(alice.page), ["alice"]);
  await alice.page.screenshot({ path: path.join(shots, "chat-after-leave.png"), fullPage: true });
  await alice.context.close();
});

test("a second device of the same user is counted", { timeout: 60000 }, async () => {
  const room = `devices-${Date.now()}`;
  const one = await openAs("carol", room);
  const two = await openAs("carol", room);
  await one.page.waitForSelector('#presences li[data-user="carol"][data-devices="2"]', { timeout: TIMEOUT });
  assert.equal(await users(one.page).then((u) => u.length), 1);
  await two.context.close();
  await one.page.waitForSelector('#presences li[data-user="carol"][data-devices="1"]', { timeout: TIMEOUT });
  await one.context.close();
});

test("user names that are JavaScript prototype keys work", { timeout: 60000 }, async () => {
  const room = `proto-${Date.now()}`;
  const names = ["__proto__", "constructor", "toString"];
  const pages = [];
  for (const name of names) pages.push(await openAs(name, room));
  for (const { page } of pages) {
    for (const name of names) {
      await page.waitForSelector(`#presences li[data-user="${name}"]`, { timeout: TIMEOUT });
    }
    assert.deepEqual((await users(page)).sort(), [...names].sort());
  }
  await pages[0].context.close();
  await pages[1].page.waitForFunction(
    () => !document.querySelector('#presences li[data-user="__proto__"]'),
    null,
    { timeout: TIMEOUT },
  );
  assert.deepEqual((await users(pages[1].page)).sort(), ["constructor", "toString"]);
  for (const { context } of pages.slice(1)) await context.close();
});

test("a bad join shows the server's reason", { timeout: 30000 }, async () => {
  const context = await browser.newContext();
  const page = await context.newPage();
  await page.goto(url, { waitUntil: "load" });
  await page.fill("#name", "x".repeat(64));
  await page.evaluate(() => { document.getElementById("name").maxLength = 200; });
  await page.fill("#name", "x".repeat(65));
  await page.click("#join");
  await page.waitForSelector("#messages li.system:has-text('could not join')", { timeout: TIMEOUT });
  await context.close();
});

test("without WebSocket the page falls back to long poll, joins, lists and chats", { timeout: 90000 }, async () => {
  const room = `longpoll-${Date.now()}`;
  const dora = await openAs("dora", room, { noWebSocket: true });
  assert.equal(await dora.page.evaluate(() => typeof WebSocket), "undefined");
  const eve = await openAs("eve", room);
  // Each page says which transport it uses.
  await dora.page.waitForSelector('#conn[data-state="connected"]', { timeout: TIMEOUT });
  assert.equal(await dora.page.textContent("#conn"), "connected (long poll)");
  assert.equal(await eve.page.textContent("#conn"), "connected (websocket)");

  // Both list both, whatever their transport.
  await dora.page.waitForSelector('#presences li[data-user="eve"]', { timeout: TIMEOUT });
  await eve.page.waitForSelector('#presences li[data-user="dora"]', { timeout: TIMEOUT });
  assert.deepEqual(await users(dora.page), ["dora", "eve"]);

  // A status change and messages, both ways.
  await dora.page.selectOption("#status", "busy");
  await eve.page.waitForSelector('#presences li[data-user="dora"][data-status="busy"]', { timeout: TIMEOUT });
  await dora.page.fill("#body", "hello from long poll");
  await dora.page.press("#body", "Enter");
  await eve.page.waitForSelector("#messages li:has-text('hello from long poll')", { timeout: TIMEOUT });
  await eve.page.fill("#body", "hello from a websocket");
  await eve.page.press("#body", "Enter");
  await dora.page.waitForSelector("#messages li:has-text('hello from a websocket')", { timeout: TIMEOUT });
  await dora.page.screenshot({ path: path.join(shots, "chat-long-poll.png"), fullPage: true });

  // Eve leaves dora's list at once; dora leaves eve's once her session expires (the server's
  // long-poll window is short in this test).
  await eve.page.selectOption("#status", "away");
  await dora.page.waitForSelector('#presences li[data-user="eve"][data-status="away"]', { timeout: TIMEOUT });
  const watcher = await openAs("fred", room);
  await eve.context.close();
  await dora.page.waitForFunction(
    () => !document.querySelector('#presences li[data-user="eve"]'),
    null,
    { timeout: TIMEOUT },
  );
  await dora.context.close();
  await watcher.page.waitForFunction(
    () => !document.querySelector('#presences li[data-user="dora"]'),
    null,
    { timeout: TIMEOUT },
  );
  await watcher.context.close();
});

test("behind a proxy that refuses websockets the page falls back to long poll", { timeout: 60000 }, async () => {
  assert.ok(blockedUrl, "BLOCKED_CHAT_URL is set");
  const room = `blocked-${Date.now()}`;
  const gus = await openAs("gus", room, { at: blockedUrl });
  assert.equal(await gus.page.evaluate(() => typeof WebSocket), "function");
  assert.equal(await gus.page.textContent("#conn"), "connected (long poll)");
  const hal = await openAs("hal", room);
  await gus.page.waitForSelector('#presences li[data-user="hal"]', { timeout: TIMEOUT });
  await hal.page.waitForSelector('#presences li[data-user="gus"]', { timeout: TIMEOUT });
  await hal.page.fill("#body", "can you hear me");
  await hal.page.press("#body", "Enter");
  await gus.page.waitForSelector("#messages li:has-text('can you hear me')", { timeout: TIMEOUT });
  await gus.context.close();
  await hal.context.close();
});

test("the status page counts the joined clients and refreshes itself", { timeout: 60000 }, async () => {
  const room = `status-${Date.now()}`;
  const dave = await openAs("dave", room);
  const erin = await openAs("erin", room);
  await dave.page.waitForSelector('#presences li[data-user="erin"]', { timeout: TIMEOUT });

  const context = await browser.newContext();
  const page = await context.newPage();
  const status = new URL("/presence", url).toString();
  const response = await page.goto(status, { waitUntil: "load" });
  assert.equal(response.status(), 200);
  assert.equal(await page.textContent("#node"), "browser-test");
  // Other tests' pages may still be closing: at least this test's two sockets and channels.
  assert.ok(Number(await page.textContent("#sockets-open")) >= 2);
  assert.ok(Number(await page.textContent("#channels-open")) >= 2);
  const row = `#rooms tr[data-room="room:${room}"]`;
  assert.equal(await page.textContent(`${row} .keys`), "2");
  assert.equal(await page.textContent(`${row} .metas`), "2");
  // No script and no CDN: the page is the server's HTML, refreshed by a meta tag.
  assert.equal(await page.$$eval("script", (s) => s.length), 0);
  assert.equal(await page.getAttribute('meta[http-equiv="refresh"]', "content"), "2");
  await page.screenshot({ path: path.join(shots, "presence-status.png"), fullPage: true });

  // The same counts in the Prometheus text.
  const metrics = await (await fetch(new URL("/metrics", url))).text();
  assert.match(metrics, /^presence_sockets_open \d+/m);
  assert.match(metrics, /^presence_channels_joined\{route="room:\*"\} [1-9]/m);
  assert.match(metrics, /^presence_channel_joins_total\{route="room:\*",outcome="ok"\} [1-9]/m);
  // The room among the ten largest, as a gauge of its own (refreshed every 10 s).
  const gauge = new RegExp(`^presence_topic_presences\\{presence="RoomPresence",topic="room:${room}"\\} 2$`, "m");
  const deadline = Date.now() + 15_000;
  let text = metrics;
  while (!gauge.test(text) && Date.now() < deadline) {
    await new Promise((r) => setTimeout(r, 500));
    text = await (await fetch(new URL("/metrics", url))).text();
  }
  assert.match(text, gauge);

  // Erin leaves: the next refresh shows one user in the room.
  await erin.context.close();
  await page.waitForFunction(
    (sel) => document.querySelector(sel)?.textContent === "1",
    `${row} .keys`,
    { timeout: TIMEOUT },
  );
  await dave.context.close();
  await context.close();
});
