// phoenix.js (the official client) against presence-poem: channels, Presence sync, heartbeats
// and reconnects. Run `cargo build -p presence-poem --example js_test_server` first.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";

import {
  connect,
  devices,
  disconnect,
  joinRoom,
  push,
  refs,
  startServer,
  until,
} from "../lib/helpers.mjs";

const TEST_TIMEOUT = 20_000;
let server;

before(async () => {
  server = await startServer();
});

after(async () => {
  await server?.stop();
});

/** Runs `fn(open)`; every socket opened through `open` is disconnected afterwards. */
async function withSockets(fn) {
  const sockets = [];
  const open = async (opts) => {
    const conn = await connect(server.url, opts);
    sockets.push(conn.socket);
    return conn;
  };
  try {
    await fn(open);
  } finally {
    await Promise.all(sockets.map(disconnect));
  }
}

const same = (a, b) => JSON.stringify(a) === JSON.stringify(b);

/** Waits until `presence` lists exactly `expected` ({key: [devices]}). */
function untilDevices(presence, expected, who) {
  return until(
    () => same(devices(presence), expected),
    `${who} to list ${JSON.stringify(expected)} (has ${JSON.stringify(devices(presence))})`
  );
}

test("presence_state then presence_diff keep Presence in sync (onJoin, onLeave, onSync, list)", { timeout: TEST_TIMEOUT }, async () => {
  await withSockets(async (open) => {
    const a = await open();
    const ra = await joinRoom(a.socket, "room:sync", { user: "alice", device: "phone" });
    await untilDevices(ra.presence, { alice: ["phone"] }, "alice");
    assert.ok(ra.events.syncs >= 1, "onSync after the state");
    const own = ra.events.joins.find((j) => j.key === "alice");
    assert.equal(own.current, undefined);
    assert.equal(own.joined.metas.length, 1);
    assert.equal(own.joined.metas[0].device, "phone");
    assert.equal(typeof own.joined.metas[0].phx_ref, "string");

    const b = await open();
    const rb = await joinRoom(b.socket, "room:sync", { user: "bob", device: "laptop" });
    const both = { alice: ["phone"], bob: ["laptop"] };
    await untilDevices(rb.presence, both, "bob");
    await untilDevices(ra.presence, both, "alice");

    const bobJoin = ra.events.joins.find((j) => j.key === "bob");
    assert.ok(bobJoin, "onJoin for bob");
    assert.equal(bobJoin.current, undefined);
    assert.equal(bobJoin.joined.metas[0].device, "laptop");
    // bob's own join may also arrive as a diff after the state: onJoin again, same ref.
    assert.deepEqual([...new Set(rb.events.joins.map((j) => j.key))].sort(), ["alice", "bob"]);
    assert.equal(refs(rb.presence, "bob").length, 1);
    assert.deepEqual(ra.presence.list((key) => key).sort(), ["alice", "bob"]);
    assert.deepEqual(
      ra.presence.list((key, p) => `${key}:${p.metas.length}`).sort(),
      ["alice:1", "bob:1"]
    );
    assert.equal(ra.events.leaves.length, 0);

    // Wire shapes: the state is a push on the channel's join_ref, diffs are broadcasts.
    const state = a.record.messages.find((m) => m.event === "presence_state");
    assert.equal(state.join_ref, ra.channel.joinRef());
    assert.equal(state.ref, null);
    const diffs = a.record.messages.filter((m) => m.event === "presence_diff");
    assert.ok(diffs.length >= 1);
    for (const d of diffs) {
      assert.equal(d.join_ref, null);
      assert.equal(d.ref, null);
      assert.equal(d.topic, "room:sync");
    }
    assert.ok(diffs.some((d) => d.payload.joins.bob && Object.keys(d.payload.leaves).length === 0));
  });
});

test("two devices under one key, then an update (one diff: join with phx_ref_prev, leave of the old meta)", { timeout: TEST_TIMEOUT }, async () => {
  await withSockets(async (open) => {
    const w = await open();
    const rw = await joinRoom(w.socket, "room:devices", { user: "carol", device: "desktop" });
    const phone = await open();
    await joinRoom(phone.socket, "room:devices", { user: "alice", device: "phone" });
    // The watcher sees the phone before the web device joins: joins within the server's diff
    // window would otherwise come merged, as one join of both devices.
    await untilDevices(rw.presence, { alice: ["phone"], carol: ["desktop"] }, "the watcher");
    const web = await open();
    const rweb = await joinRoom(web.socket, "room:devices", { user: "alice", device: "web" });
    await untilDevices(rw.presence, { alice: ["phone", "web"], carol: ["desktop"] }, "the watcher");
    await untilDevices(rweb.presence, { alice: ["phone", "web"], carol: ["desktop"] }, "alice on web");
    const second = rw.events.joins.filter((j) => j.key === "alice")[1];
    assert.equal(second.current.metas.length, 1, "the second device joins an existing key");
    assert.equal(second.joined.metas.length, 1);
    const [webRef] = second.joined.metas.map((m) => m.phx_ref);

    const reply = await push(rweb.channel.push("update", { device: "tablet" }), "update");
    assert.equal(typeof reply.phx_ref, "string");
    await untilDevices(rw.presence, { alice: ["phone", "tablet"], carol: ["desktop"] }, "the watcher");

    const update = w.record.messages.find(
      (m) => m.event === "presence_diff" && m.payload.joins.alice && m.payload.leaves.alice
    );
    assert.ok(update, "the update arrives as one diff");
    assert.equal(update.payload.joins.alice.metas.length, 1);
    assert.equal(update.payload.leaves.alice.metas.length, 1);
    assert.equal(update.payload.joins.alice.metas[0].phx_ref, reply.phx_ref);
    assert.equal(update.payload.joins.alice.metas[0].phx_ref_prev, webRef);
    assert.equal(update.payload.leaves.alice.metas[0].phx_ref, webRef);
    assert.equal(update.payload.leaves.alice.metas[0].device, "web");

    const leave = rw.events.leaves.find((l) => l.key === "alice");
    assert.ok(leave, "onLeave for the old meta");
    assert.equal(leave.left.metas[0].device, "web");
    assert.deepEqual(leave.current.metas.map((m) => m.device).sort(), ["phone", "tablet"]);
    assert.equal(refs(rw.presence, "alice").length, 2);
    assert.ok(!refs(rw.presence, "alice").includes(webRef));
  });
});

test("leaving the channel and closing the socket remove presences", { timeout: TEST_TIMEOUT }, async () => {
  await withSockets(async (open) => {
    const a = await open();
    const ra = await joinRoom(a.socket, "room:leave", { user: "alice", device: "phone" });
    const b = await open();
    const rb = await joinRoom(b.socket, "room:leave", { user: "bob", device: "laptop" });
    const c = await open();
    await joinRoom(c.socket, "room:leave", { user: "carol", device: "web" });
    await untilDevices(ra.presence, { alice: ["phone"], bob: ["laptop"], carol: ["web"] }, "alice");

    await push(rb.channel.leave(), "leave");
    await untilDevices(ra.presence, { alice: ["phone"], carol: ["web"] }, "alice");
    const bobLeft = ra.events.leaves.find((l) => l.key === "bob");
    assert.equal(bobLeft.current.metas.length, 0, "onLeave with no metas left");
    assert.equal(bobLeft.left.metas[0].device, "laptop");

    await disconnect(c.socket);
    await untilDevices(ra.presence, { alice: ["phone"] }, "alice");
    assert.ok(ra.events.leaves.some((l) => l.key === "carol"));
    assert.equal(ra.channel.state, "joined");
  });
});

test("heartbeats every 100 ms are answered and the connection stays up", { timeout: TEST_TIMEOUT }, async () => {
  await withSockets(async (open) => {
    const s = await open({ heartbeatIntervalMs: 100 });
    const r = await joinRoom(s.socket, "room:heartbeat", { user: "alice", device: "phone" });
    const heartbeatReplies = () =>
      s.record.messages.filter(
        (m) => m.topic === "phoenix" && m.event === "phx_reply" && m.payload.status === "ok"
      ).length;
    await until(() => heartbeatReplies() >= 8, "8 heartbeat replies");
    assert.deepEqual(s.record.closes, [], "no close (a missed heartbeat reply closes the socket)");
    assert.equal(s.record.opens, 1);
    assert.equal(s.record.errors, 0);
    assert.equal(r.channel.state, "joined");
    assert.deepEqual(await push(r.channel.push("ping", { n: 1 }), "ping"), { n: 1 });
    assert.deepEqual(devices(r.presence), { alice: ["phone"] });
  });
});

test("the server closes the socket (1001): phoenix.js reconnects, rejoins and Presence resyncs", { timeout: TEST_TIMEOUT }, async () => {
  await withSockets(async (open) => {
    const w = await open();
    const rw = await joinRoom(w.socket, "room:reconnect", { user: "bob", device: "laptop" });
    const a = await open();
    const ra = await joinRoom(a.socket, "room:reconnect", { user: "alice", device: "phone" });
    const expected = { alice: ["phone"], bob: ["laptop"] };
    await untilDevices(rw.presence, expected, "bob");
    await untilDevices(ra.presence, expected, "alice");
    const [oldRef] = refs(rw.presence, "alice");
    const oldJoinRef = ra.channel.joinRef();

    ra.channel.push("disconnect_socket", {});
    await until(() => a.record.closes.includes(1001), "the socket to be closed with 1001");
    await until(() => a.record.opens === 2, "phoenix.js to reconnect");
    await until(
      () => ra.channel.state === "joined" && ra.channel.joinRef() !== oldJoinRef,
      "the channel to rejoin"
    );

    // Both clients converge on alice's new presence; the old one is gone everywhere.
    const fresh = (p) => {
      const rs = refs(p, "alice");
      return rs.length === 1 && rs[0] !== oldRef;
    };
    await until(() => fresh(rw.presence), "bob to see alice's new presence only");
    await until(() => fresh(ra.presence), "alice's Presence to resync");
    assert.deepEqual(devices(ra.presence), expected);
    assert.deepEqual(devices(rw.presence), expected);
    assert.deepEqual(refs(ra.presence, "alice"), refs(rw.presence, "alice"));
    assert.ok(
      rw.events.leaves.some((l) => l.key === "alice" && l.left.metas[0].phx_ref === oldRef),
      "bob saw the old presence leave"
    );
    const states = a.record.messages.filter((m) => m.event === "presence_state");
    assert.equal(states.length, 2, "one presence_state per join");
    assert.equal(states[1].join_ref, ra.channel.joinRef());
  });
});

test("a channel crash (phx_error): phoenix.js rejoins on the same socket and Presence resyncs", { timeout: TEST_TIMEOUT }, async () => {
  await withSockets(async (open) => {
    const w = await open();
    const rw = await joinRoom(w.socket, "room:crash", { user: "bob", device: "laptop" });
    const a = await open();
    const ra = await joinRoom(a.socket, "room:crash", { user: "alice", device: "phone" });
    const expected = { alice: ["phone"], bob: ["laptop"] };
    await untilDevices(rw.presence, expected, "bob");
    const [oldRef] = refs(rw.presence, "alice");
    const oldJoinRef = ra.channel.joinRef();
    let errored = 0;
    ra.channel.onError(() => errored++);

    ra.channel.push("crash", {});
    await until(() => errored > 0, "phx_error on the channel");
    const error = a.record.messages.find((m) => m.event === "phx_error");
    assert.deepEqual(error.payload, { reason: "channel_crash" });
    await until(
      () => ra.channel.state === "joined" && ra.channel.joinRef() !== oldJoinRef,
      "the channel to rejoin"
    );
    await until(() => {
      const rs = refs(rw.presence, "alice");
      return rs.length === 1 && rs[0] !== oldRef;
    }, "bob to see alice's new presence only");
    await until(() => same(refs(ra.presence, "alice"), refs(rw.presence, "alice")), "alice to resync");
    assert.deepEqual(devices(ra.presence), expected);
    assert.deepEqual(a.record.closes, [], "the socket stayed up");
    assert.equal(a.record.opens, 1);
  });
});

test("the server stops the channel (phx_close): no rejoin, the presence leaves", { timeout: TEST_TIMEOUT }, async () => {
  await withSockets(async (open) => {
    const w = await open();
    const rw = await joinRoom(w.socket, "room:close", { user: "bob", device: "laptop" });
    const a = await open();
    const ra = await joinRoom(a.socket, "room:close", { user: "alice", device: "phone" });
    await untilDevices(rw.presence, { alice: ["phone"], bob: ["laptop"] }, "bob");
    let closed = 0;
    ra.channel.onClose(() => closed++);

    await push(ra.channel.push("close_channel", {}), "close_channel");
    await until(() => closed > 0, "phx_close on the channel");
    await untilDevices(rw.presence, { bob: ["laptop"] }, "bob");
    // Well past the 50 ms rejoin backoff: still closed, still gone.
    await new Promise((r) => setTimeout(r, 300));
    assert.equal(ra.channel.state, "closed");
    assert.deepEqual(devices(rw.presence), { bob: ["laptop"] });
    assert.equal(a.record.messages.filter((m) => m.event === "phx_join").length, 0);
    assert.equal(a.socket.isConnected(), true);
  });
});
