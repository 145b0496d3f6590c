// Browser end to end on hard networks:
// - a caller that may only use a TURN relay (iceTransportPolicy "relay", as behind a restrictive
//   firewall) reaches voicegate through a real coturn, started here on loopback;
// - a caller whose network drops for 8 s (nftables in this loopback-only namespace drops every
//   UDP packet to or from voicegate's media port) gets its call back: the page's client restarts
//   ICE by itself, the dialog app hears call.media interrupted and restored and no call.ended, and
//   what it says after the restore is heard. The page comes from another origin than the call's
//   server, as a team's web app does: the restart's PATCH with If-Match, and the ETag it reads,
//   cross origins under the server's CORS.

import { test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync, spawn } from "node:child_process";
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { startVoicegate, launchBrowser, writeWav, toneBursts, until, freePort, startDialogApp, tempDir } from "./lib.mjs";

const TURNSERVER = ["/usr/bin/turnserver", "/usr/sbin/turnserver"].find((p) => existsSync(p));

/** coturn on loopback with one long-term-credential user, relaying to loopback peers. */
async function startCoturn() {
  const port = await freePort();
  const dir = mkdtempSync(join(tmpdir(), "vg-coturn-"));
  const child = spawn(
    TURNSERVER,
    [
      "-n",
      "--no-tls",
      "--no-dtls",
      "--no-cli",
      "--listening-ip=127.0.0.1",
      `--listening-port=${port}`,
      "--relay-ip=127.0.0.1",
      "--min-port=40000",
      "--max-port=40999",
      "--allow-loopback-peers",
      "--lt-cred-mech",
      "--user=caller:relay-secret",
      "--realm=voicegate.test",
      `--db=${join(dir, "turndb")}`,
      `--pidfile=${join(dir, "turnserver.pid")}`,
      "--log-file=stdout",
      "--simple-log",
    ],
    { stdio: ["ignore", "pipe", "pipe"] },
  );
  let log = "";
  child.stdout.on("data", (d) => (log += d));
  child.stderr.on("data", (d) => (log += d));
  // Printed once its listeners and relay threads are up.
  await until(5000, () => log.includes("Total General servers"));
  return {
    url: `turn:127.0.0.1:${port}?transport=udp`,
    get log() {
      return log;
    },
    stop() {
      child.kill("SIGTERM");
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** The local candidate type of the page's call's selected candidate pair ("relay", "host", ...). */
async function selectedLocalType(page) {
  return page.evaluate(async () => {
    const stats = await window.voicegatePage.call.pc.getStats();
    let pair;
    stats.forEach((s) => {
      if (s.type === "transport" && s.selectedCandidatePairId) pair = stats.get(s.selectedCandidatePairId);
    });
    if (!pair) {
      stats.forEach((s) => {
        if (s.type === "candidate-pair" && s.nominated && s.state === "succeeded") pair = s;
      });
    }
    return pair ? stats.get(pair.localCandidateId).candidateType : null;
  });
}

async function connected(page, ms = 10000) {
  return until(ms, () => page.$eval("#state", (e) => (e.textContent === "connected" ? "connected" : "")));
}

test("a caller forced to relay reaches voicegate through a TURN server", { skip: !TURNSERVER && "coturn is not installed (scripts/setup.sh --test)" }, async (t) => {
  const dir = tempDir(t);
  const wav = join(dir, "tone440.wav");
  writeWav(wav, toneBursts(440, 12), 48000);
  const turn = await startCoturn();
  t.after(() => turn.stop());
  const server = await startVoicegate();
  t.after(() => server.stop());
  const browser = await launchBrowser(wav);
  t.after(() => browser.close());
  const { page } = browser;

  await page.goto(`${server.url}/`);
  await page.evaluate((url) => {
    window.voicegatePage.callOptions = {
      iceServers: [{ urls: url, username: "caller", credential: "relay-secret" }],
      iceTransportPolicy: "relay",
    };
  }, turn.url);
  await page.selectOption("#mode", "echo");
  await page.click("#call");
  assert.equal(await connected(page), "connected", `no connection through the relay; voicegate:\n${server.log}\ncoturn:\n${turn.log}`);
  assert.equal(await selectedLocalType(page), "relay", "the media goes through the TURN relay");
  const offer = await page.evaluate(() => window.voicegatePage.call.pc.localDescription.sdp);
  assert.ok(!/typ host/.test(offer), "the relay-only caller offered no host candidate");
  const heard = await until(5000, async () => {
    const l = await page.evaluate(() => window.voicegatePage.levels());
    return l.output > 0.02 && Math.abs(l.outputPeakHz - 440) <= 15;
  });
  assert.ok(heard, "the echo came back through the relay");
  await page.click("#hangup");
});

/** Greets, and speaks again when media returns. */
const greetAndWelcomeBack = (e, say) => {
  if (e.type === "call.started") say("hello", "Hello there.");
  if (e.type === "call.media" && e.state === "restored") {
    say("back", "Welcome back. You were away for a moment, and now you can hear me again clearly.");
  }
};

function nft(...args) {
  execFileSync("nft", args, { stdio: "pipe" });
}

const NFT = ["/usr/sbin/nft", "/sbin/nft", "/usr/bin/nft"].some((p) => existsSync(p));

test(
  "an 8 s network cut: the page restarts ICE, the call and its dialog go on, speech is heard again",
  { skip: !NFT && "nftables is not installed (scripts/setup.sh --test)" },
  async (t) => {
    const dir = tempDir(t);
    const wav = join(dir, "silence.wav");
    writeWav(wav, new Int16Array(48000 * 40), 48000); // a quiet microphone
    const app = await startDialogApp(greetAndWelcomeBack);
    t.after(() => app.close());
    const udpPort = await freePort();
    const server = await startVoicegate({
      VOICEGATE__DIALOG__URL: app.url,
      VOICEGATE__MEDIA__UDP_PORT: String(udpPort),
    });
    t.after(() => server.stop());
    const pageServer = await startVoicegate();
    t.after(() => pageServer.stop());
    const browser = await launchBrowser(wav);
    t.after(() => browser.close());
    const { page } = browser;
    const seen = [];
    await page.exposeFunction("vgSeen", (what) => seen.push(what));

    await page.goto(`${pageServer.url}/`);
    await page.fill("#server", server.url);
    await page.click("#call");
    assert.equal(await connected(page), "connected", `call did not connect:\n${server.log}`);
    await page.evaluate(() => {
      const call = window.voicegatePage.call;
      call.addEventListener("reconnecting", () => window.vgSeen("reconnecting"));
      call.addEventListener("reconnected", () => window.vgSeen("reconnected"));
    });
    const hello = await until(8000, () => app.events.find((e) => e.type === "tts.ended" && e.utterance_id === "hello"));
    assert.ok(hello, `the greeting never ended: ${JSON.stringify(app.events)}`);

    // Cut: every UDP packet to or from the media port is dropped (HTTP still works, as on a
    // network that lost its UDP path or a laptop moving between networks).
    nft("add", "table", "inet", "vgcut");
    nft("add", "chain", "inet", "vgcut", "out", "{ type filter hook output priority 0 ; }");
    nft("add", "rule", "inet", "vgcut", "out", "udp", "dport", String(udpPort), "drop");
    nft("add", "rule", "inet", "vgcut", "out", "udp", "sport", String(udpPort), "drop");
    let cut = true;
    const restore = () => {
      if (cut) nft("delete", "table", "inet", "vgcut");
      cut = false;
    };
    t.after(restore);
    const cutAt = Date.now();
    const reconnecting = await until(8000, () => seen.includes("reconnecting"));
    assert.ok(reconnecting, "the client did not start reconnecting during the cut");
    assert.equal(await page.$eval("#state", (e) => e.textContent), "reconnecting", "the page shows it");
    await new Promise((r) => setTimeout(r, Math.max(0, 8000 - (Date.now() - cutAt))));
    restore();
    const restoredAt = Date.now();

    assert.equal(await connected(page, 15000), "connected", `the call did not come back:\n${server.log}`);
    assert.ok(seen.includes("reconnected"), `events: ${seen}`);
    const back = await until(5000, () => app.events.some((e) => e.type === "call.media" && e.state === "restored"));
    assert.ok(back, `no call.media restored: ${JSON.stringify(app.events.map((e) => e.type))}`);
    const heard = await until(8000, async () => (await page.evaluate(() => window.voicegatePage.levels())).output > 0.02);
    assert.ok(heard, "the dialog app's answer after the restore was not heard");
    const types = app.events.map((e) => (e.type === "call.media" ? `call.media:${e.state}` : e.type));
    assert.deepEqual(
      types.filter((x) => x.startsWith("call.")),
      ["call.started", "call.media:interrupted", "call.media:restored"],
      `one call, interrupted once and restored once: ${types}`,
    );
    assert.ok(server.log.includes("ICE restarted by the caller"), "the server saw the restart");
    const etag = await page.evaluate(() => window.voicegatePage.call.etag);
    assert.match(etag || "", /^"[A-Za-z0-9+/]+"$/, "the page read the ETag across origins");
    console.log(
      `network-change e2e: reconnected ${((Date.now() - restoredAt) / 1000).toFixed(1)} s after the restore, ` +
        `client events ${seen.join(",")}`,
    );
    await page.click("#hangup");
    const ended = await until(3000, () => app.events.find((e) => e.type === "call.ended"));
    assert.equal(ended && ended.reason, "client-hangup", "the call ended only when the caller hung up");
  },
);

test("an ICE restart the server answers 404 or 421 ends the call as call-gone at once, not after retries", async (t) => {
  const dir = tempDir(t);
  const wav = join(dir, "tone.wav");
  writeWav(wav, toneBursts(440, 20), 48000);
  const server = await startVoicegate();
  t.after(() => server.stop());
  const browser = await launchBrowser(wav);
  t.after(() => browser.close());
  const { page } = browser;
  await page.goto(`${server.url}/`);
  for (const status of [404, 421]) {
    await page.selectOption("#mode", "echo");
    await page.click("#call");
    assert.equal(await connected(page), "connected", `call did not connect:\n${server.log}`);
    // The restart's PATCH gets `status`, as from a server that lost the call (404) or from a
    // node that is not the call's (421, a call id naming another node).
    await page.route("**/webrtc/v1/calls/*", (route) =>
      route.request().method() === "PATCH" ? route.fulfill({ status, body: "" }) : route.continue(),
    );
    const ended = await page.evaluate(
      () =>
        new Promise((resolve) => {
          const call = window.voicegatePage.call;
          const started = Date.now();
          call.addEventListener("state", (e) => {
            if (e.detail.state === "ended") resolve({ reason: e.detail.reason, ms: Date.now() - started });
          });
          call._restartIce();
          setTimeout(() => resolve({ reason: "still going", ms: Date.now() - started }), 8000);
        }),
    );
    assert.equal(ended.reason, "call-gone", `${status}: ${JSON.stringify(ended)}`);
    console.log(`restart answered ${status}: the call ended as ${ended.reason} after ${ended.ms} ms`);
    await page.unroute("**/webrtc/v1/calls/*");
  }
});
