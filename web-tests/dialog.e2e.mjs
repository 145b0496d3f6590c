// Browser end to end, dialog mode: the page places a normal call and hears the embedded demo
// dialog app's greeting ("Hello! Say something and I will repeat it.", about 2.5 s of speech).

import { test } from "node:test";
import assert from "node:assert/strict";
import { join } from "node:path";
import { startVoicegate, launchBrowser, writeWav, until, tempDir } from "./lib.mjs";

test("a normal call from the page hears the demo app's greeting", async (t) => {
  const dir = tempDir(t);
  const wav = join(dir, "silence.wav");
  writeWav(wav, new Int16Array(48000 * 10), 48000); // a quiet microphone

  const server = await startVoicegate();
  t.after(() => server.stop());
  const browser = await launchBrowser(wav);
  t.after(() => browser.close());
  const { page } = browser;

  await page.goto(`${server.url}/`);
  assert.equal(await page.$eval("#mode", (e) => e.value), "", "conversation is the default mode");
  await page.click("#call");
  const state = await until(10000, () => page.$eval("#state", (e) => (e.textContent === "connected" ? "connected" : "")));
  assert.equal(state, "connected", `call did not connect; server log:\n${server.log}`);

  // Sample what the page hears for 5 s: the greeting is loud for roughly 2-3.5 s, then quiet.
  const samples = [];
  const end = Date.now() + 5000;
  while (Date.now() < end) {
    samples.push(await page.evaluate(() => window.voicegatePage.levels().output));
    await new Promise((r) => setTimeout(r, 50));
  }
  const loud = samples.filter((l) => l > 0.01).length;
  const loudSeconds = (loud * 50) / 1000;
  assert.ok(loudSeconds >= 1.5 && loudSeconds <= 4.0, `greeting heard for ${loudSeconds} s: ${JSON.stringify(samples.map((s) => +s.toFixed(3)))}`);
  assert.ok(samples.slice(-10).every((l) => l < 0.01), "quiet after the greeting");
  assert.ok(server.log.includes("call started"), "the dialog app got call.started");
  console.log(`dialog e2e: greeting audible for ${loudSeconds.toFixed(2)} s`);
  await page.click("#hangup");
});
