// phoenix.js's LongPoll transport (the npm package, unmodified) against presence-poem's
// `/socket/longpoll`: the chat contract over long poll, beside a websocket client in the same
// room; and the fallback of `longPollFallbackMs` from a websocket route that refuses upgrades.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";

import { LongPoll, Presence } from "phoenix";
import { connect, disconnect, joinChat, push, startChatNode, startServer, statuses, until } from "../lib/helpers.mjs";

let node;

before(async () => {
  // Sessions end 1.5 windows after the last poll: 3 s here, so a long-poll client that
  // disconnects leaves the room within seconds.
  node = await startChatNode({ env: { PRESENCE_LONGPOLL_WINDOW_MS: "2000" } });
});

after(async () => {
  await node?.stop();
});

test("the chat contract over LongPoll, with a websocket client in the room", { timeout: 60_000 }, async () => {
  const room = `lp-${Date.now()}`;
  const lp = await connect(node.url, { transport: LongPoll });
  const ws = await connect(node.url);
  try {
    assert.equal(lp.socket.transportName(lp.socket.transport), "LongPoll");
    assert.ok(lp.socket.conn instanceof LongPoll, "the connection is a LongPoll");
    const a = await joinChat(lp.socket, room, { user: "ann", status: "away" });
    // presence_state over long poll lists ann herself.
    await until(() => statuses(a.presence).ann === "away", "ann's presence_state");
    const b = await joinChat(ws.socket, room, { user: "bob" });
    // A presence_diff reaches the long-poll client, a presence_state the websocket one.
    await until(() => statuses(a.presence).bob === "online", "ann (long poll) to see bob join");
    await until(() => statuses(b.presence).ann === "away", "bob (websocket) to list ann");

    await push(a.channel.push("status", { status: "busy" }), "status over long poll");
    await until(() => statuses(b.presence).ann === "busy", "bob to see ann busy");
    await push(b.channel.push("status", { status: "lunch" }), "status over websocket");
    await until(() => statuses(a.presence).bob === "lunch", "ann to see bob at lunch");

    // Messages both ways, several in one event-loop turn (phoenix.js batches them in one POST).
    await Promise.all(
      [1, 2, 3].map((i) => push(a.channel.push("new_msg", { body: `from ann ${i}` }), "new_msg")),
    );
    await until(() => b.messages.length === 3, "bob to get ann's three messages");
    assert.deepEqual(
      b.messages.map((m) => m.body),
      ["from ann 1", "from ann 2", "from ann 3"],
    );
    await push(b.channel.push("new_msg", { body: "from bob" }), "new_msg");
    await until(() => a.messages.length === 4, "ann to get bob's message (and her own)");
    assert.deepEqual(a.messages.map((m) => `${m.user}: ${m.body}`), [
      "ann: from ann 1",
      "ann: from ann 2",
      "ann: from ann 3",
      "bob: from bob",
    ]);
    // A bad push is answered with a reason over long poll too.
    await assert.rejects(push(a.channel.push("new_msg", { body: "" }), "empty"), /error/);

    // The long-poll client leaves as a closed websocket does.
    await disconnect(lp.socket);
    await until(() => !("ann" in statuses(b.presence)), "ann to leave bob's list", 15_000);
  } finally {
    await disconnect(lp.socket);
    await disconnect(ws.socket);
  }
});

test("longPollFallbackMs falls back when websocket upgrades are refused", { timeout: 60_000 }, async () => {
  const server = await startServer({ env: { JS_TEST_REFUSE_WEBSOCKET: "1" } });
  // Without it the websocket connects: the same client stays on websockets.
  const plain = await startServer();
  try {
    const { socket, record } = await connect(server.url, { longPollFallbackMs: 3_000 });
    try {
      assert.equal(socket.transportName(socket.transport), "LongPoll", "fell back");
      assert.ok(record.errors >= 1, "the websocket failed first");
      const channel = socket.channel("room:fallback", { user: "fay", device: "phone" });
      const presence = new Presence(channel);
      await push(channel.join(), "join over the fallback");
      await until(() => presence.list().length === 1, "fay's presence_state");
      const reply = await push(channel.push("ping", { n: 1 }), "ping");
      assert.deepEqual(reply, { n: 1 });
    } finally {
      await disconnect(socket);
    }
    const ws = await connect(plain.url, { longPollFallbackMs: 3_000 });
    try {
      assert.equal(ws.socket.transportName(ws.socket.transport), "WebSocket");
    } finally {
      await disconnect(ws.socket);
    }
  } finally {
    await server.stop();
    await plain.stop();
  }
});
