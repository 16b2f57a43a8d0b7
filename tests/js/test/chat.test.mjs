// phoenix.js against the chat example's server (the `chat_node` binary of presence-tests),
// exactly as the chat contract describes it: `new Socket(".../socket", {transport: WebSocket})`,
// topics `room:<name>`, join params `{user, status}`, events `status` and `new_msg`.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";

import { connect, disconnect, joinChat, push, startChatNode, statuses, until } from "../lib/helpers.mjs";

let node;
let url;

before(async () => {
  node = await startChatNode();
  url = node.url;
});

after(async () => {
  await node?.stop();
});

/** phoenix.js speaking the V1 (JSON object) serializer: `vsn` alone only changes the URL. */
const V1 = {
  vsn: "1.0.0",
  encode: (msg, callback) => callback(JSON.stringify(msg)),
  decode: (raw, callback) => callback(JSON.parse(raw)),
};

test("the chat contract through phoenix.js, both serializers", { timeout: 30_000 }, async () => {
  const room = `js-${Date.now()}`;
  const ann = await connect(url); // vsn 2.0.0 by default
  const bob = await connect(url, V1);
  try {
    const a = await joinChat(ann.socket, room, { user: "ann" });
    const b = await joinChat(bob.socket, room, { user: "bob", status: "busy" });
    await until(() => statuses(a.presence).bob === "busy", "ann to see bob");
    await until(() => Object.keys(statuses(b.presence)).length === 2, "bob's state (V1) to list both");
    assert.deepEqual(statuses(b.presence), { ann: "online", bob: "busy" });
    const meta = a.presence.list((user, { metas }) => (user === "ann" ? metas[0] : null)).find(Boolean);
    assert.ok(meta.online_at > 1_600_000_000, "online_at is unix seconds");

    await push(b.channel.push("status", { status: "away" }), "status");
    await until(() => statuses(a.presence).bob === "away", "ann to see bob away");

    await push(a.channel.push("new_msg", { body: "hello" }), "new_msg");
    await until(() => b.messages.length === 1, "bob to get the message");
    assert.deepEqual(b.messages[0], { user: "ann", body: "hello" });

    await disconnect(bob.socket);
    await until(() => !("bob" in statuses(a.presence)), "bob to leave ann's list");
  } finally {
    await disconnect(ann.socket);
    await disconnect(bob.socket);
  }
});

test("a bad join is refused with a reason", { timeout: 15_000 }, async () => {
  const { socket } = await connect(url);
  try {
    const channel = socket.channel("room:lobby", { user: "" });
    const reply = await new Promise((resolve, reject) => {
      channel.join().receive("error", resolve).receive("ok", () => reject(new Error("joined")));
    });
    assert.match(reply.reason, /1 to 64/);
    channel.leave();
  } finally {
    await disconnect(socket);
  }
});
