// Shared equipment for the browser end-to-end tests: a voicegate process on free ports, Debian's
// chromium launched through playwright-core with a WAV file as its microphone, and WAV writing.
//
// The tests are meant to run in a loopback-only network namespace (scripts/e2e.sh does that), so
// every candidate is 127.0.0.1 and nothing leaves the machine.

import { spawn } from "node:child_process";
import { mkdtempSync, readFileSync, writeFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createServer } from "node:net";
import { chromium } from "playwright-core";

export const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";

/** A free TCP port on 127.0.0.1 (UDP ports of the same number are free in practice). */
export function freePort() {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.once("error", reject);
    srv.listen(0, "127.0.0.1", () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

/**
 * Starts voicegate (the binary in $VOICEGATE_BIN) on free ports bound to 127.0.0.1 and resolves
 * once it logs "listening on". `env` adds VOICEGATE__... overrides.
 */
export async function startVoicegate(env = {}) {
  const bin = process.env.VOICEGATE_BIN;
  if (!bin) throw new Error("set VOICEGATE_BIN to the voicegate binary");
  const httpPort = await freePort();
  const udpPort = await freePort();
  const child = spawn(bin, [], {
    env: {
      ...process.env,
      RUST_LOG: process.env.RUST_LOG || "info",
      VOICEGATE__HTTP__BIND: `127.0.0.1:${httpPort}`,
      VOICEGATE__MEDIA__BIND_IP: "127.0.0.1",
      VOICEGATE__MEDIA__UDP_PORT: String(udpPort),
      ...env,
    },
    stdio: ["ignore", "pipe", "pipe"],
  });
  let log = "";
  const onData = (d) => {
    log += d.toString();
    if (process.env.E2E_VERBOSE) process.stderr.write(d);
  };
  child.stdout.on("data", onData);
  child.stderr.on("data", onData);
  await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`voicegate did not start:\n${log}`)), 15000);
    const check = () => {
      if (log.includes("listening on")) {
        clearTimeout(timer);
        resolve();
      }
    };
    child.stdout.on("data", check);
    child.stderr.on("data", check);
    child.once("exit", (code) => reject(new Error(`voicegate exited with ${code}:\n${log}`)));
  });
  return {
    url: `http://127.0.0.1:${httpPort}`,
    get log() {
      return log;
    },
    async stop() {
      if (child.exitCode !== null) return child.exitCode;
      child.kill("SIGTERM");
      return await new Promise((resolve) => child.once("exit", resolve));
    },
  };
}

/**
 * Starts the container image in $VOICEGATE_IMAGE with podman, sharing this network namespace
 * (--network=host), on free ports bound to 127.0.0.1, and resolves once it logs "listening on".
 * With `publish`, the container gets its own network instead and only the HTTP port and the one
 * UDP port are published, as a deployment does, with media.public_ips naming the address callers
 * reach. `env` adds VOICEGATE__... overrides, `podmanArgs` more options of `podman run`. stop()
 * stops it the way an orchestrator does (SIGTERM, then a wait), resolves with its exit code and
 * removes it.
 */
export async function startContainer({ env = {}, publish = false, podmanArgs = [] } = {}) {
  const image = process.env.VOICEGATE_IMAGE;
  if (!image) throw new Error("set VOICEGATE_IMAGE to the image to test");
  const httpPort = await freePort();
  const udpPort = await freePort();
  const name = `voicegate-test-${process.pid}-${httpPort}`;
  const settings = publish
    ? // The image's own HTTP bind (0.0.0.0:8080) behind a published port; the UDP port is
      // published under its own number, because answers advertise media.udp_port.
      { VOICEGATE__MEDIA__UDP_PORT: String(udpPort), VOICEGATE__MEDIA__PUBLIC_IPS: "127.0.0.1", ...env }
    : {
        VOICEGATE__HTTP__BIND: `127.0.0.1:${httpPort}`,
        VOICEGATE__MEDIA__BIND_IP: "127.0.0.1",
        VOICEGATE__MEDIA__UDP_PORT: String(udpPort),
        ...env,
      };
  const network = publish
    ? ["-p", `127.0.0.1:${httpPort}:8080/tcp`, "-p", `127.0.0.1:${udpPort}:${udpPort}/udp`]
    : ["--network=host"];
  const args = ["run", "--detach", "--name", name, "--stop-timeout", "30", ...network, ...podmanArgs];
  for (const [k, v] of Object.entries(settings)) args.push("-e", `${k}=${v}`);
  args.push(image);
  const run = await podman(...args);
  if (run.code !== 0) throw new Error(`podman run failed: ${run.out}`);
  // The container's own output (its stdout and stderr, what a log collector reads), not podman's.
  const logs = spawn("podman", ["logs", "--follow", name], { stdio: ["ignore", "pipe", "pipe"] });
  let log = "";
  const onData = (d) => {
    log += d.toString();
    if (process.env.E2E_VERBOSE) process.stderr.write(d);
  };
  logs.stdout.on("data", onData);
  logs.stderr.on("data", onData);
  const logsDone = new Promise((resolve) => logs.once("exit", resolve));
  const exitCode = async () => {
    await podman("wait", name);
    await logsDone;
    const code = Number((await podman("inspect", "--format", "{{.State.ExitCode}}", name)).out);
    await podman("rm", "--force", name);
    return code;
  };
  const started = await until(30000, () => log.includes("listening on") || logs.exitCode !== null);
  if (!started || !log.includes("listening on")) {
    await podman("stop", name);
    throw new Error(`the container did not start (exit code ${await exitCode()}):\n${log}`);
  }
  let stopped = null;
  return {
    name,
    url: `http://127.0.0.1:${httpPort}`,
    get log() {
      return log;
    },
    podman,
    /** Stops the container (the image's stop signal, SIGTERM, then a wait); its exit code. */
    stop() {
      stopped ??= podman("stop", name).then(exitCode);
      return stopped;
    },
  };
}

/** Runs `podman <args>`: { code, out } with its stdout and stderr. */
export function podman(...args) {
  return new Promise((resolve) => {
    const p = spawn("podman", args, { stdio: ["ignore", "pipe", "pipe"] });
    let out = "";
    p.stdout.on("data", (d) => (out += d));
    p.stderr.on("data", (d) => (out += d));
    p.once("exit", (code) => resolve({ code, out: out.trim() }));
  });
}

/** Writes 16-bit PCM mono `samples` (Int16Array) at `rate` Hz as a WAV file. */
/** Samples of a 16-bit mono WAV (as espeak-ng writes it) and its rate. */
export function readWav(path) {
  const b = readFileSync(path);
  let i = 12;
  let rate = 0;
  while (i + 8 <= b.length) {
    const id = b.toString("ascii", i, i + 4);
    const len = b.readUInt32LE(i + 4);
    if (id === "fmt ") rate = b.readUInt32LE(i + 12);
    if (id === "data") {
      const out = new Int16Array(len / 2);
      for (let k = 0; k < out.length; k++) out[k] = b.readInt16LE(i + 8 + 2 * k);
      return { samples: out, rate };
    }
    i += 8 + len + (len & 1);
  }
  throw new Error(`no data in ${path}`);
}

export function writeWav(path, samples, rate) {
  const data = Buffer.alloc(samples.length * 2);
  samples.forEach((s, i) => data.writeInt16LE(s, i * 2));
  const header = Buffer.alloc(44);
  header.write("RIFF", 0);
  header.writeUInt32LE(36 + data.length, 4);
  header.write("WAVE", 8);
  header.write("fmt ", 12);
  header.writeUInt32LE(16, 16);
  header.writeUInt16LE(1, 20); // PCM
  header.writeUInt16LE(1, 22); // mono
  header.writeUInt32LE(rate, 24);
  header.writeUInt32LE(rate * 2, 28);
  header.writeUInt16LE(2, 32);
  header.writeUInt16LE(16, 34);
  header.write("data", 36);
  header.writeUInt32LE(data.length, 40);
  writeFileSync(path, Buffer.concat([header, data]));
}

/**
 * Tone bursts: `freq` Hz for `onMs`, silence for `offMs`, repeated for `seconds`. Bursts rather
 * than a steady tone, because the browser's noise suppression learns a steady tone as noise.
 */
export function toneBursts(freq, seconds, rate = 48000, onMs = 400, offMs = 100, amplitude = 12000) {
  const n = Math.round(seconds * rate);
  const out = new Int16Array(n);
  const period = ((onMs + offMs) * rate) / 1000;
  const on = (onMs * rate) / 1000;
  for (let i = 0; i < n; i++) {
    const inBurst = i % period < on;
    out[i] = inBurst ? Math.round(Math.sin((2 * Math.PI * freq * i) / rate) * amplitude) : 0;
  }
  return out;
}

/** Launches headless chromium with `wav` as its microphone. Returns { context, page, close }. */
export async function launchBrowser(wav) {
  const profile = mkdtempSync(join(tmpdir(), "vg-chromium-"));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    args: [
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
      "--use-fake-ui-for-media-stream",
      "--use-fake-device-for-media-stream",
      `--use-file-for-fake-audio-capture=${wav}`,
      "--autoplay-policy=no-user-gesture-required",
      "--allow-loopback-in-peer-connection",
    ],
  });
  // Every call's offer → connected as the page saw it: from the POST of its offer to the first
  // "connected" of its RTCPeerConnection. Each is logged as it happens and kept in connectTimes.
  const connectTimes = [];
  await context.exposeFunction("__voicegateConnected", (ms) => {
    connectTimes.push(ms);
    console.log(`offer→connected (chromium): ${ms.toFixed(1)} ms`);
  });
  await context.addInitScript(() => {
    let offeredAt = null;
    const fetch0 = window.fetch.bind(window);
    window.fetch = (input, init) => {
      const url = typeof input === "string" ? input : input instanceof URL ? input.href : input.url;
      const method = (init && init.method) || (typeof input === "object" && input.method) || "GET";
      if (method.toUpperCase() === "POST" && url.includes("/webrtc/v1/offer")) offeredAt = performance.now();
      return fetch0(input, init);
    };
    const Base = window.RTCPeerConnection;
    window.RTCPeerConnection = class extends Base {
      constructor(...args) {
        super(...args);
        let reported = false;
        this.addEventListener("connectionstatechange", () => {
          if (!reported && this.connectionState === "connected" && offeredAt !== null) {
            reported = true;
            window.__voicegateConnected(performance.now() - offeredAt);
          }
        });
      }
    };
  });
  const page = context.pages()[0] || (await context.newPage());
  return {
    context,
    page,
    connectTimes,
    async close() {
      await context.close();
      rmSync(profile, { recursive: true, force: true });
    },
  };
}

/** Polls `fn` until it returns a truthy value or `ms` pass; returns the last value. */
export async function until(ms, fn, every = 100) {
  const end = Date.now() + ms;
  let v;
  while (Date.now() < end) {
    v = await fn();
    if (v) return v;
    await new Promise((r) => setTimeout(r, every));
  }
  return v;
}

/**
 * A local stand-in for an OpenAI-compatible chat API: `POST /v1/chat/completions` answered with
 * server-sent events, `reply` cut into word tokens, the first after `firstAfterMs` and the rest
 * `gapMs` apart. Resolves to { url, requests, close }; `requests` holds each request's JSON body.
 */
export async function startChatStandIn(reply, firstAfterMs = 200, gapMs = 50) {
  const { createServer: createHttpServer } = await import("node:http");
  const requests = [];
  const server = createHttpServer((req, res) => {
    let body = "";
    req.on("data", (d) => (body += d));
    req.on("end", async () => {
      requests.push(JSON.parse(body || "null"));
      res.writeHead(200, { "Content-Type": "text/event-stream", "Cache-Control": "no-cache" });
      const tokens = reply.split(/(?<= )/);
      for (let i = 0; i < tokens.length; i++) {
        await new Promise((r) => setTimeout(r, i === 0 ? firstAfterMs : gapMs));
        if (res.destroyed) return;
        res.write(`data: ${JSON.stringify({ object: "chat.completion.chunk", choices: [{ index: 0, delta: { content: tokens[i] } }] })}\n\n`);
      }
      res.end("data: [DONE]\n\n");
    });
  });
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  return {
    url: `http://127.0.0.1:${server.address().port}`,
    requests,
    close: () => new Promise((resolve) => server.close(resolve)),
  };
}

/**
 * A dialog app (a WebSocket server on a free loopback port) for the tests that need to see what
 * voicegate sends it: records every event in `events`, and calls `onEvent(event, say, ws)` for
 * each, where `say(id, text)` sends a tts.speak. Returns { url, events, close }.
 */
export async function startDialogApp(onEvent = () => {}) {
  const { WebSocketServer } = await import("ws");
  const port = await freePort();
  const wss = new WebSocketServer({ host: "127.0.0.1", port });
  const events = [];
  wss.on("connection", (ws) => {
    const say = (id, text) => ws.send(JSON.stringify({ type: "tts.speak", utterance_id: id, text }));
    ws.on("message", (data) => {
      let e;
      try {
        e = JSON.parse(data.toString());
      } catch {
        return;
      }
      events.push(e);
      onEvent(e, say, ws);
    });
  });
  await new Promise((resolve) => wss.once("listening", resolve));
  return { url: `ws://127.0.0.1:${port}/`, events, close: () => wss.close() };
}

/** A fresh directory under the system's temp dir (for a test's WAV files), removed when `t` ends. */
export function tempDir(t, prefix = "vg-e2e-") {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}
