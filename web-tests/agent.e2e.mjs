// Browser end to end with the demo as an LLM agent: voicegate's demo app is pointed at a local
// stand-in for an OpenAI-compatible model (demo.llm.base_url); the page's fake microphone asks a
// question, the stand-in streams its answer token by token, and the page hears it: pocketsphinx
// (through voicegate-bench recognize) finds the stand-in's words in the audio the page received.

import { test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { join } from "node:path";
import { startVoicegate, launchBrowser, writeWav, until, readWav, startChatStandIn, tempDir } from "./lib.mjs";

const REPO = new URL("..", import.meta.url).pathname;
const GRAMMAR = join(REPO, "tests/fixtures/test.gram");
const QUESTION = "what is the weather like today";
// A phrase of the test grammar, so the recognizer can check what the page heard.
const ANSWER = "the quick brown fox jumps over the lazy dog";

test("the page talks to the demo agent and hears the model's answer", async (t) => {
  const llm = await startChatStandIn(`${ANSWER}.`, 200, 60);
  t.after(() => llm.close());
  const dir = tempDir(t);
  const speech = join(dir, "speech.wav");
  execFileSync("espeak-ng", ["-v", "en-us", "-s", "160", "-w", speech, QUESTION]);
  const { samples, rate } = readWav(speech);
  // 5 s of silence (the greeting plays meanwhile), the question, then silence.
  const mic = new Int16Array(rate * 5 + samples.length + rate * 15);
  mic.set(samples, rate * 5);
  const micWav = join(dir, "mic.wav");
  writeWav(micWav, mic, rate);

  const server = await startVoicegate({
    VOICEGATE__ASR__POCKETSPHINX__GRAMMAR: GRAMMAR,
    VOICEGATE__ASR__POCKETSPHINX__DECODERS: "1",
    VOICEGATE__DEMO__LLM__BASE_URL: llm.url,
    VOICEGATE__DEMO__LLM__MODEL: "standin-1",
  });
  t.after(() => server.stop());
  const browser = await launchBrowser(micWav);
  t.after(() => browser.close());
  const { page } = browser;

  await page.goto(`${server.url}/`);
  await page.click("#call");
  const connected = await until(10000, () => page.$eval("#state", (e) => e.textContent === "connected"));
  assert.ok(connected, `call did not connect; server log:\n${server.log}`);
  await page.evaluate(() => {
    const ctx = new AudioContext({ sampleRate: 48000 });
    const src = ctx.createMediaStreamSource(window.voicegatePage.call.remoteStream);
    const proc = ctx.createScriptProcessor(4096, 1, 1);
    window.__heard = [];
    window.__mark = 0;
    proc.onaudioprocess = (e) => window.__heard.push(Array.from(e.inputBuffer.getChannelData(0)));
    src.connect(proc);
    proc.connect(ctx.destination);
  });

  const transcript = () => page.evaluate(() => window.voicegatePage.transcript());
  const heardFinal = await until(20000, async () => (await transcript()).find((l) => l.cls === "you final"));
  assert.ok(heardFinal, `no final transcript; page: ${JSON.stringify(await transcript())}\nserver log:\n${server.log}`);
  assert.equal(heardFinal.text, QUESTION);
  // From here on, what the page hears is the answer.
  await page.evaluate(() => (window.__mark = Math.max(0, window.__heard.length - 3)));
  const answered = await until(10000, async () => (await transcript()).find((l) => l.cls.startsWith("ai") && l.text.includes("lazy dog")));
  assert.ok(answered, `no answer in the transcript: ${JSON.stringify(await transcript())}\nserver log:\n${server.log}`);
  assert.equal(llm.requests.length, 1, "one request per turn");
  const messages = llm.requests[0].messages;
  assert.deepEqual(messages.at(-1), { role: "user", content: QUESTION });
  assert.equal(llm.requests[0].stream, true);
  // Let the answer finish playing.
  await new Promise((r) => setTimeout(r, 4500));
  const heard = await page.evaluate(() => window.__heard.slice(window.__mark).flat());
  const pcm = Int16Array.from(heard, (x) => Math.max(-32768, Math.min(32767, Math.round(x * 32767))));
  const answerWav = join(dir, "answer.wav");
  writeWav(answerWav, pcm, 48000);
  const recognized = execFileSync(process.env.VOICEGATE_BENCH, ["recognize", answerWav, "--grammar", GRAMMAR]).toString().trim();
  assert.equal(recognized, ANSWER, "pocketsphinx hears the model's answer in what the page received");
  console.log(`agent e2e: asked "${heardFinal.text}", the page heard "${recognized}"`);
  await page.screenshot({ path: join(new URL("./artifacts/", import.meta.url).pathname, "agent.png") });
  await page.click("#hangup");
});
