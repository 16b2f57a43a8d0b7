// phoenix.js in a big room of the chat example's server (the `chat_node` binary, path in
// `CHAT_NODE`): BIG_ROOM_CLIENTS sockets (default 300), each the unmodified client with its
// default options (`new Socket(url, {transport: WebSocket})`) and a `Presence`, join one room
// all at once; every client's list must converge to all of them, then to the half that stays
// after the other half disconnects at once. No socket may be closed by the server (e.g. 1013,
// a full outbound queue) and no channel errored (e.g. `lagged`). The times to converge and the
// `presence_diff`s per client are reported as test diagnostics.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";

import { Presence, Socket } from "phoenix";
import WebSocket from "ws";

import { startChatNode, withTimeout } from "../lib/helpers.mjs";

const CLIENTS = clientCount();
/** Per phase: from the first connect (or the disconnects) to every list being exact. */
const DEADLINE_MS = 60_000;

function clientCount() {
  const raw = process.env.BIG_ROOM_CLIENTS ?? "300";
  const n = Number(raw);
  if (!Number.isInteger(n) || n < 2) {
    throw new Error(`BIG_ROOM_CLIENTS must be an integer of at least 2, got ${raw}`);
  }
  return n;
}

let node;
/** The phase the test is in, for the record of closes and errors. */
const now = { phase: "phase 1" };

before(async () => {
  node = await startChatNode();
});

after(async () => {
  await node?.stop();
});

/**
 * One client: a socket joining `topic` as `user` with a Presence, and what happened to it.
 * `onSync` is called after every sync of its Presence; `start` is the `performance.now()` the
 * join time is measured from.
 */
function client(url, topic, user, onSync, start) {
  const socket = new Socket(url, { transport: WebSocket });
  const c = {
    user,
    socket,
    opens: 0,
    /** Socket closes: `code reason in phase`. */
    closes: [],
    socketErrors: 0,
    /** Channel errors (a `phx_error` from the server, or the socket failing under it). */
    channelErrors: [],
    joinOks: 0,
    /** When the first join reply came, in ms from `start`. */
    joinedMs: undefined,
    joinErrors: [],
    joinTimeouts: 0,
    diffs: 0,
    syncs: 0,
    /** Keys in the Presence, by its onJoin/onLeave. */
    count: 0,
    /** Keys `presence.list()` gave at the last check. */
    size: 0,
  };
  socket.onOpen(() => c.opens++);
  socket.onClose((e) => {
    c.closes.push(`${e.code}${e.reason ? " " + e.reason : ""} in ${now.phase}`);
  });
  socket.onError(() => c.socketErrors++);
  socket.connect();
  const channel = socket.channel(topic, { user });
  c.presence = new Presence(channel);
  // A second binding next to the Presence's own: phoenix.js calls both.
  channel.on("presence_diff", () => c.diffs++);
  channel.onError((reason) =>
    c.channelErrors.push(`${JSON.stringify(reason ?? null)} in ${now.phase}`),
  );
  // Keys listed, kept by the join/leave callbacks: `presence.list()` walks every key, too slow
  // to call on each of the ~N syncs of N clients; `exact` calls it once this count fits.
  c.presence.onJoin((_key, current) => {
    if (!current) c.count++;
  });
  c.presence.onLeave((_key, current) => {
    if (current.metas.length === 0) c.count--;
  });
  c.presence.onSync(() => {
    c.syncs++;
    onSync(c);
  });
  channel
    .join()
    .receive("ok", () => {
      c.joinOks++;
      c.joinedMs ??= performance.now() - start;
    })
    .receive("error", (resp) => c.joinErrors.push(JSON.stringify(resp)))
    .receive("timeout", () => c.joinTimeouts++);
  return c;
}

/** Whether `c`'s Presence lists exactly the users of `expected` (a Set). */
function exact(c, expected) {
  if (c.count !== expected.size) {
    c.size = c.count;
    return false;
  }
  const keys = c.presence.list((key) => key);
  c.size = keys.length;
  return keys.length === expected.size && keys.every((k) => expected.has(k));
}

/** `values` counted by value, most frequent first: `"a" x3, "b" x1`. */
function tally(values) {
  const counts = new Map();
  for (const v of values) counts.set(v, (counts.get(v) ?? 0) + 1);
  const top = [...counts].sort((a, b) => b[1] - a[1]).slice(0, 5);
  return top.map(([v, n]) => `${v} x${n}`).join(", ") + (counts.size > 5 ? ", ..." : "");
}

/** A one-line account of what went wrong (or right) for `clients`, for failures and the log. */
function summary(clients) {
  const sizes = clients.map((c) => c.size).sort((a, b) => a - b);
  const closes = clients.flatMap((c) => c.closes);
  const chanErrors = clients.flatMap((c) => c.channelErrors);
  const joinErrors = clients.flatMap((c) => c.joinErrors);
  const some = (list) => (list.length ? ` (${tally(list)})` : "");
  return [
    `lists exact ${clients.filter((c) => c.exact).length}/${clients.length}`,
    `list sizes min ${sizes[0]} median ${sizes[sizes.length >> 1]} ` +
      `max ${sizes[sizes.length - 1]} (most common: ${tally(sizes)})`,
    `opened ${clients.filter((c) => c.opens > 0).length}/${clients.length}`,
    `joined ok ${clients.filter((c) => c.joinOks > 0).length}/${clients.length}`,
    `join timeouts ${clients.reduce((n, c) => n + c.joinTimeouts, 0)}`,
    `socket errors ${clients.reduce((n, c) => n + c.socketErrors, 0)}`,
    `socket closes ${closes.length}${some(closes)}`,
    `channel errors ${chanErrors.length}${some(chanErrors)}`,
    `join errors ${joinErrors.length}${some(joinErrors)}`,
  ].join("; ");
}

/** The clients the server closed, errored or refused: what it must not do. */
function troubledByServer(clients) {
  return clients.filter(
    (c) => c.closes.length || c.socketErrors || c.channelErrors.length || c.joinErrors.length,
  );
}

const mean = (clients, f) => (clients.reduce((n, c) => n + f(c), 0) / clients.length).toFixed(1);

test(
  "the official phoenix.js client, unmodified, converges in a big room",
  { timeout: 2 * DEADLINE_MS + 30_000 },
  async (t) => {
    const topic = `room:big-${randomBytes(6).toString("hex")}`;
    const users = Array.from({ length: CLIENTS }, (_, i) => `u${i}`);

    // The set every watched client must list in the current phase; `converged` is called when
    // every watched client lists exactly that (checked on each client's syncs).
    let expected = new Set(users);
    let target = 0;
    let exactCount = 0;
    let converged = () => {};
    const onSync = (c) => {
      if (!c.watched) return;
      const was = c.exact;
      c.exact = exact(c, expected);
      if (c.exact !== was) exactCount += c.exact ? 1 : -1;
      if (exactCount === target) converged();
    };
    /** Watches only `clients` from now on; resolves once they all list exactly `set`. */
    const phase = (all, clients, set) => {
      for (const c of all) c.watched = false;
      expected = set;
      target = clients.length;
      exactCount = 0;
      const done = new Promise((resolve) => {
        converged = resolve;
      });
      for (const c of clients) {
        c.watched = true;
        c.exact = false;
        onSync(c); // what is already there counts too
      }
      return done;
    };

    const clients = [];
    try {
      // Phase 1: every client connects and joins at once. Their events come on later ticks,
      // once `phase` watches them.
      const start = performance.now();
      for (const user of users) clients.push(client(node.url, topic, user, onSync, start));
      let done = phase(clients, clients, expected);
      await withTimeout(done, DEADLINE_MS, `all ${CLIENTS} lists to be exact`).catch((e) => {
        throw new Error(`${e.message}: ${summary(clients)}`);
      });
      const joinMs = performance.now() - start;
      const lastJoinOk = Math.max(...clients.map((c) => c.joinedMs ?? NaN));
      const phase1 = {
        diffs: mean(clients, (c) => c.diffs),
        syncs: mean(clients, (c) => c.syncs),
      };
      t.diagnostic(
        `phase 1: ${CLIENTS} clients joined ${topic}; every list exact (${CLIENTS} keys) after ` +
          `${joinMs.toFixed(0)} ms (last join reply after ${lastJoinOk.toFixed(0)} ms); ` +
          `per client ${phase1.diffs} presence_diffs, ${phase1.syncs} syncs on average`,
      );
      // Phase 2: half of them disconnect at once. The server must not have closed them before
      // (checked at the end, so that phase 2 is measured anyway).
      const leaving = clients.slice(0, Math.floor(CLIENTS / 2));
      const staying = clients.slice(leaving.length);
      const troubledLeaving = troubledByServer(leaving);
      const leavingTrouble = troubledLeaving.length ? summary(troubledLeaving) : "";
      for (const c of staying) {
        c.diffsBefore = c.diffs;
        c.syncsBefore = c.syncs;
      }
      now.phase = "phase 2";
      const leaveStart = performance.now();
      done = phase(clients, staying, new Set(staying.map((c) => c.user)));
      for (const c of leaving) c.socket.disconnect();
      const what = `the ${staying.length} remaining lists to be exact`;
      await withTimeout(done, DEADLINE_MS, what).catch((e) => {
        throw new Error(`${e.message}: ${summary(staying)}`);
      });
      const leaveMs = performance.now() - leaveStart;
      t.diagnostic(
        `phase 2: ${leaving.length} sockets disconnected at once; the ${staying.length} ` +
          `remaining lists exact after ${leaveMs.toFixed(0)} ms; per remaining client ` +
          `${mean(staying, (c) => c.diffs - c.diffsBefore)} presence_diffs, ` +
          `${mean(staying, (c) => c.syncs - c.syncsBefore)} syncs on average ` +
          `(${mean(staying, (c) => c.diffs)} presence_diffs in all)`,
      );
      t.diagnostic(`remaining clients: ${summary(staying)}`);
      const troubledStaying = troubledByServer(staying);
      assert.equal(
        troubledStaying.length,
        0,
        `the server closed or errored ${troubledStaying.length} remaining clients: ` +
          summary(troubledStaying),
      );
      assert.equal(
        troubledLeaving.length,
        0,
        `before they disconnected, the server closed or errored ${troubledLeaving.length} of ` +
          `the leaving clients: ${leavingTrouble}`,
      );
    } finally {
      // Phase 1's failures leave clients connecting or reconnecting: stop them all.
      for (const c of clients) c.watched = false;
      now.phase = "cleanup";
      await withTimeout(
        Promise.all(clients.map((c) => new Promise((resolve) => c.socket.disconnect(resolve)))),
        10_000,
        "the sockets to close",
      );
    }
  },
);
