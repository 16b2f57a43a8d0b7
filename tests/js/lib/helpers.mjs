// Helpers for the phoenix.js end-to-end tests: the Rust test server, sockets, waits.
import { spawn } from "node:child_process";
import { once } from "node:events";
import { existsSync } from "node:fs";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import path from "node:path";

import { Socket, Presence } from "phoenix";
import WebSocket from "ws";

const here = path.dirname(fileURLToPath(import.meta.url));
const workspace = path.resolve(here, "..", "..", "..");

/** Where `cargo build -p presence-tests --bin js_test_server` puts the server. */
export function serverBinary() {
  if (process.env.PRESENCE_TEST_SERVER) return process.env.PRESENCE_TEST_SERVER;
  const target = process.env.CARGO_TARGET_DIR
    ? path.resolve(workspace, process.env.CARGO_TARGET_DIR)
    : path.join(workspace, "target");
  const exe = process.platform === "win32" ? "js_test_server.exe" : "js_test_server";
  return path.join(target, "debug", exe);
}

/** Starts the Rust test server; resolves with {url, stop}. Fails if it does not print its port. */
export async function startServer({ timeoutMs = 10_000, env = {} } = {}) {
  const bin = serverBinary();
  if (!existsSync(bin)) {
    throw new Error(
      `test server not found at ${bin}: run \`cargo build -p presence-tests --bin js_test_server\` first ` +
        "(or set PRESENCE_TEST_SERVER)"
    );
  }
  // stdin stays open: the server exits when it closes (also if this process dies).
  const child = spawn(bin, [], {
    stdio: ["pipe", "pipe", "inherit"],
    env: { ...process.env, ...env },
  });
  const lines = createInterface({ input: child.stdout });
  const port = await withTimeout(
    new Promise((resolve, reject) => {
      lines.on("line", (line) => {
        const m = /^PORT (\d+)$/.exec(line.trim());
        if (m) resolve(Number(m[1]));
      });
      child.once("exit", (code, signal) =>
        reject(new Error(`test server exited early (code ${code}, signal ${signal})`))
      );
      child.once("error", reject);
    }),
    timeoutMs,
    "the test server to print its port"
  );
  return {
    url: `ws://127.0.0.1:${port}/socket`,
    async stop() {
      if (child.exitCode !== null || child.signalCode !== null) return;
      const exited = once(child, "exit");
      child.stdin.end();
      const timer = setTimeout(() => child.kill("SIGKILL"), 5_000);
      await exited;
      clearTimeout(timer);
    },
  };
}

/**
 * Starts the chat example's server (the `chat_node` binary named by `CHAT_NODE`) on a free
 * port; resolves with {url, stop}. It exits when its stdin closes (also if this process dies).
 */
export async function startChatNode({ timeoutMs = 15_000, env = {} } = {}) {
  const bin = process.env.CHAT_NODE;
  if (!bin || !existsSync(bin)) {
    throw new Error(`CHAT_NODE must name the chat_node binary (got ${bin})`);
  }
  const node = spawn(bin, [], {
    stdio: ["pipe", "pipe", "inherit"],
    env: { ...process.env, PORT: "0", CHAT_NODE_EXIT_WITH_STDIN: "1", RUST_LOG: "warn", ...env },
  });
  const lines = createInterface({ input: node.stdout });
  const addr = await withTimeout(
    new Promise((resolve, reject) => {
      lines.on("line", (line) => {
        const m = /^LISTENING (\S+)$/.exec(line.trim());
        if (m) resolve(m[1]);
      });
      node.once("exit", (code) => reject(new Error(`chat_node exited early (${code})`)));
    }),
    timeoutMs,
    "the chat node to listen",
  );
  return {
    url: `ws://${addr}/socket`,
    async stop() {
      if (node.exitCode !== null || node.signalCode !== null) return;
      const exited = once(node, "exit");
      node.stdin.end();
      const timer = setTimeout(() => node.kill("SIGKILL"), 5_000);
      await exited;
      clearTimeout(timer);
    },
  };
}

/** Rejects with a clear message if `promise` does not settle within `ms`. */
export function withTimeout(promise, ms, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/** Polls `check` (every 10 ms) until it returns truthy; fails after `ms` with `what`. */
export async function until(check, what, ms = 5_000) {
  const deadline = Date.now() + ms;
  for (;;) {
    const value = check();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

let nextSocketId = 1;

/**
 * A connected phoenix.js Socket over `ws`, with fast reconnect/rejoin backoffs. Records
 * opens, closes (with codes), errors and every message received.
 */
export async function connect(url, opts = {}) {
  const socketId = `s${nextSocketId++}`;
  const socket = new Socket(url, {
    transport: WebSocket,
    params: { socket_id: socketId },
    timeout: 2_000,
    reconnectAfterMs: () => 20,
    rejoinAfterMs: () => 50,
    ...opts,
  });
  const record = { socketId, opens: 0, closes: [], errors: 0, messages: [] };
  socket.onOpen(() => record.opens++);
  socket.onClose((event) => record.closes.push(event.code));
  socket.onError(() => record.errors++);
  socket.onMessage((msg) => record.messages.push(msg));
  socket.connect();
  await until(() => record.opens > 0, "the socket to open");
  return { socket, record };
}

/**
 * Joins `topic` with `params` and a `Presence`, recording its callbacks. Resolves once the
 * join reply is ok.
 */
export async function joinRoom(socket, topic, params) {
  const channel = socket.channel(topic, params);
  const presence = new Presence(channel);
  const events = { joins: [], leaves: [], syncs: 0 };
  presence.onJoin((key, current, joined) => events.joins.push({ key, current, joined }));
  presence.onLeave((key, current, left) => events.leaves.push({ key, current, left }));
  presence.onSync(() => events.syncs++);
  await push(channel.join(), "join " + topic);
  return { channel, presence, events };
}

/**
 * Joins the chat example's `room:<room>` with `params` and a `Presence`, recording the
 * `new_msg`s. Resolves once the join reply is ok.
 */
export async function joinChat(socket, room, params) {
  const channel = socket.channel(`room:${room}`, params);
  const presence = new Presence(channel);
  const messages = [];
  channel.on("new_msg", (m) => messages.push(m));
  await push(channel.join(), `join room:${room}`);
  return { channel, presence, messages };
}

/** `{user: "status,status"}` of a chat room's Presence, one status per meta. */
export function statuses(presence) {
  return Object.fromEntries(
    presence.list((user, { metas }) => [user, metas.map((m) => m.status).join(",")]).sort(),
  );
}

/** Resolves with the `ok` response of a Push; rejects on error or timeout. */
export function push(p, what) {
  return new Promise((resolve, reject) => {
    p.receive("ok", resolve)
      .receive("error", (resp) => reject(new Error(`${what}: error ${JSON.stringify(resp)}`)))
      .receive("timeout", () => reject(new Error(`${what}: timeout`)));
  });
}

/** `{key: [device, ...]}` of a Presence, keys and devices sorted. */
export function devices(presence) {
  const entries = presence.list((key, p) => [key, p.metas.map((m) => m.device).sort()]);
  entries.sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
  return Object.fromEntries(entries);
}

/** The set of phx_refs a Presence holds for `key`. */
export function refs(presence, key) {
  const out = [];
  presence.list((k, p) => {
    if (k === key) out.push(...p.metas.map((m) => m.phx_ref));
  });
  return out.sort();
}

export function disconnect(socket) {
  return new Promise((resolve) => socket.disconnect(resolve));
}
