// Browser end to end: the page at / places an echo call from headless chromium, whose microphone
// is a WAV of 440 Hz tone bursts, and the page hears its own tone come back.

import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdirSync } from "node:fs";
import { join } from "node:path";
import { startVoicegate, launchBrowser, writeWav, toneBursts, until, tempDir } from "./lib.mjs";

const ARTIFACTS = new URL("./artifacts/", import.meta.url).pathname;

test("the page places an echo call and hears its own 440 Hz tone back", async (t) => {
  const dir = tempDir(t);
  const wav = join(dir, "tone440.wav");
  writeWav(wav, toneBursts(440, 10), 48000);

  const server = await startVoicegate();
  t.after(() => server.stop());
  const browser = await launchBrowser(wav);
  t.after(() => browser.close());
  const { page } = browser;
  page.on("console", (m) => process.env.E2E_VERBOSE && console.log("page:", m.text()));

  await page.goto(`${server.url}/`);
  await page.selectOption("#mode", "echo");
  await page.click("#call");
  const state = await until(10000, () => page.$eval("#state", (e) => (e.textContent === "connected" ? "connected" : "")));
  assert.equal(state, "connected", `call did not connect; server log:\n${server.log}`);
  const callId = await page.$eval("#callid", (e) => e.textContent);
  assert.match(callId, /^wrtc-[a-z0-9]{1,16}-[0-9a-f]{32}$/, "<prefix>-<node>-<32 hex>");

  // Sample the meters for a few seconds: the microphone must be live, and what comes back must
  // be loud and peak at the tone's frequency (the analyser's bins are 48000/4096 = 11.7 Hz wide).
  const samples = [];
  const end = Date.now() + 4000;
  while (Date.now() < end) {
    samples.push(await page.evaluate(() => window.voicegatePage.levels()));
    await new Promise((r) => setTimeout(r, 100));
  }
  const loud = samples.filter((s) => s.output > 0.02);
  const inputLive = samples.filter((s) => s.input > 0.02).length;
  assert.ok(inputLive >= samples.length / 3, `microphone barely live: ${JSON.stringify(samples.slice(0, 5))}`);
  assert.ok(loud.length >= samples.length / 3, `echo mostly silent: ${JSON.stringify(samples.slice(0, 10))}`);
  const atTone = loud.filter((s) => Math.abs(s.outputPeakHz - 440) <= 15);
  assert.ok(
    atTone.length >= loud.length * 0.8,
    `echo peaks elsewhere: ${JSON.stringify(loud.map((s) => Math.round(s.outputPeakHz)))}`,
  );

  mkdirSync(ARTIFACTS, { recursive: true });
  await page.screenshot({ path: join(ARTIFACTS, "echo-call.png") });

  // Hang up from the page: the server ends the call as a client hangup.
  await page.click("#hangup");
  assert.equal(await page.$eval("#state", (e) => e.textContent), "ended");
  const logged = await until(3000, () => server.log.includes(`reason=client-hangup`) || server.log.includes(`reason=peer-closed`));
  assert.ok(logged, `server did not end the call:\n${server.log}`);
  console.log(
    `echo e2e: ${loud.length}/${samples.length} loud samples, ${atTone.length} at 440 Hz; ` +
      `output level median ${median(loud.map((s) => s.output)).toFixed(3)}`,
  );
});

function median(xs) {
  const s = [...xs].sort((a, b) => a - b);
  return s.length ? s[Math.floor(s.length / 2)] : 0;
}

test("the page calls a server on another origin when that server's CORS allows it", async (t) => {
  const dir = tempDir(t);
  const wav = join(dir, "tone440.wav");
  writeWav(wav, toneBursts(440, 10), 48000);
  // The page comes from one server; the call goes to another (another port: another origin).
  const pageServer = await startVoicegate();
  t.after(() => pageServer.stop());
  const callServer = await startVoicegate();
  t.after(() => callServer.stop());
  const strictServer = await startVoicegate({ VOICEGATE__HTTP__ALLOWED_ORIGINS: "https://only.example" });
  t.after(() => strictServer.stop());
  const browser = await launchBrowser(wav);
  t.after(() => browser.close());
  const { page } = browser;
  // What the page asks of the call server, to see how it hangs up.
  const requests = [];
  page.on("request", (r) => requests.push({ method: r.method(), url: r.url() }));

  await page.goto(`${pageServer.url}/`);
  await page.selectOption("#mode", "echo");
  await page.fill("#server", callServer.url);
  await page.click("#call");
  const state = await until(10000, () => page.$eval("#state", (e) => (e.textContent === "connected" ? "connected" : "")));
  assert.equal(state, "connected", `cross-origin call did not connect; server log:\n${callServer.log}`);
  assert.ok(callServer.log.includes("offer received"), "the call went to the other server");
  assert.ok(!pageServer.log.includes("offer received"), "not to the page's own server");
  const heard = await until(5000, async () => {
    const l = await page.evaluate(() => window.voicegatePage.levels());
    return l.output > 0.02 && Math.abs(l.outputPeakHz - 440) <= 15;
  });
  assert.ok(heard, "the echo from the other origin was not heard");
  const callId = await page.$eval("#callid", (e) => e.textContent);

  // Hang up: the client read the Location of its call across origins (CORS exposes it) and
  // DELETEs that URL (preflighted), and the call server ends the call as a client hangup.
  await page.click("#hangup");
  const resource = `${callServer.url}/webrtc/v1/calls/${callId}`;
  const deleted = await until(3000, () => requests.some((r) => r.method === "DELETE" && r.url === resource));
  assert.ok(deleted, `no DELETE on ${resource}: ${JSON.stringify(requests.filter((r) => r.url.startsWith(callServer.url)))}`);
  assert.ok(!requests.some((r) => r.url.includes("/webrtc/v1/hangup")), "not the old hangup endpoint");
  const ended = await until(3000, async () => {
    const res = await fetch(`${callServer.url}/metrics`);
    return /voicegate_calls_total\{node="[a-z0-9]+",reason="client-hangup"\} 1\n/.test(await res.text());
  });
  assert.ok(ended, `the call server did not end the call as client-hangup:\n${callServer.log}`);
  const line = callServer.log.split("\n").find((l) => l.includes(callId) && l.includes("call ending"));
  assert.ok(line && line.includes("reason=client-hangup"), `call ending logged as: ${line}`);

  // A server whose allowlist does not name the page's origin: the browser refuses to read its
  // reply, so the call fails and the page says so.
  await page.fill("#server", strictServer.url);
  await page.click("#call");
  const failed = await until(10000, () => page.$eval("#state", (e) => (e.textContent === "failed" ? "failed" : "")));
  assert.equal(failed, "failed");
  const error = await page.$eval("#error", (e) => e.textContent);
  assert.ok(error.length > 0, "the page shows why");
});

// Setup latency as a browser sees it: calls placed from the page one after another, each hung
// up once connected; every call's offer → connected is logged (launchBrowser), and their median.
// Measured, not asserted: timing goals live in BENCHMARKS.md.
test("the page connects echo calls one after another and reports offer → connected", async (t) => {
  const CALLS = Number(process.env.E2E_CONNECT_CALLS || 10);
  const dir = tempDir(t);
  const wav = join(dir, "tone440.wav");
  writeWav(wav, toneBursts(440, 5), 48000);
  const server = await startVoicegate();
  t.after(() => server.stop());
  const browser = await launchBrowser(wav);
  t.after(() => browser.close());
  const { page } = browser;
  await page.goto(`${server.url}/`);
  await page.selectOption("#mode", "echo");
  const state = () => page.$eval("#state", (e) => e.textContent);
  for (let i = 0; i < CALLS; i++) {
    await page.click("#call");
    const connected = await until(10000, async () => ((await state()) === "connected" ? "connected" : ""));
    assert.equal(connected, "connected", `call ${i} did not connect; server log:\n${server.log}`);
    await page.click("#hangup");
    assert.equal(await until(3000, async () => ((await state()) === "ended" ? "ended" : "")), "ended");
  }
  assert.equal(browser.connectTimes.length, CALLS, "every call reported its offer → connected");
  const sorted = [...browser.connectTimes].sort((a, b) => a - b);
  console.log(
    `offer→connected (chromium, ${CALLS} calls): p50 ${median(sorted).toFixed(1)} ms, ` +
      `min ${sorted[0].toFixed(1)}, max ${sorted[sorted.length - 1].toFixed(1)} ms`,
  );
});
