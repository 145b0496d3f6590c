// Browser end to end, the whole product: the page calls the embedded demo dialog app, its fake
// microphone says a sentence, the transcript shows it, the demo app answers "You said: ...", the
// answer audio arrives and pocketsphinx (through voicegate-bench recognize) hears those words in
// it. Then the page's keypad sends DTMF "1#", which reaches the dialog app: it answers
// "You pressed one" and "You pressed hash".

import { test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { join } from "node:path";
import { startVoicegate, launchBrowser, writeWav, until, readWav, tempDir } from "./lib.mjs";

const REPO = new URL("..", import.meta.url).pathname;
const GRAMMAR = join(REPO, "tests/fixtures/test.gram");
const SENTENCE = "what is the weather like today";

/** The louder stretches of `samples`, as [start, end) sample ranges (gaps of 400 ms split them). */
function voicedRegions(samples, rate) {
  const frame = Math.round(rate / 50);
  const loud = [];
  for (let i = 0; i + frame <= samples.length; i += frame) {
    let sum = 0;
    for (let k = i; k < i + frame; k++) sum += samples[k] * samples[k];
    loud.push(Math.sqrt(sum / frame) > 300);
  }
  const regions = [];
  let start = -1;
  let quiet = 0;
  loud.forEach((l, f) => {
    if (l) {
      if (start < 0) start = f;
      quiet = 0;
    } else if (start >= 0 && ++quiet >= 20) {
      regions.push([start * frame, (f - quiet + 1) * frame]);
      start = -1;
    }
  });
  if (start >= 0) regions.push([start * frame, loud.length * frame]);
  return regions;
}

test("a spoken conversation from the page, checked by ear", async (t) => {
  const dir = tempDir(t);
  const speech = join(dir, "speech.wav");
  execFileSync("espeak-ng", ["-v", "en-us", "-s", "160", "-w", speech, SENTENCE]);
  const { samples, rate } = readWav(speech);
  // 5 s of silence (the greeting plays meanwhile), the sentence, then silence.
  const mic = new Int16Array(rate * 5 + samples.length + rate * 15);
  mic.set(samples, rate * 5);
  const micWav = join(dir, "mic.wav");
  writeWav(micWav, mic, rate);

  const server = await startVoicegate({ VOICEGATE__ASR__POCKETSPHINX__GRAMMAR: GRAMMAR, VOICEGATE__ASR__POCKETSPHINX__DECODERS: "1" });
  t.after(() => server.stop());
  const browser = await launchBrowser(micWav);
  t.after(() => browser.close());
  const { page } = browser;

  await page.goto(`${server.url}/`);
  await page.click("#call");
  const connected = await until(10000, () => page.$eval("#state", (e) => e.textContent === "connected"));
  assert.ok(connected, `call did not connect; server log:\n${server.log}`);

  // Record what the page hears (48 kHz) from now on.
  await page.evaluate(() => {
    const ctx = new AudioContext({ sampleRate: 48000 });
    const src = ctx.createMediaStreamSource(window.voicegatePage.call.remoteStream);
    const proc = ctx.createScriptProcessor(4096, 1, 1);
    window.__heard = [];
    proc.onaudioprocess = (e) => window.__heard.push(Array.from(e.inputBuffer.getChannelData(0)));
    src.connect(proc);
    proc.connect(ctx.destination);
  });

  const transcript = () => page.evaluate(() => window.voicegatePage.transcript());
  const heardFinal = await until(20000, async () => (await transcript()).find((l) => l.cls === "you final"));
  assert.ok(heardFinal, `no final transcript; page: ${JSON.stringify(await transcript())}\nserver log:\n${server.log}`);
  assert.equal(heardFinal.text, SENTENCE);
  const answered = await until(8000, async () => (await transcript()).find((l) => l.cls.startsWith("ai") && l.text.includes("You said:") && l.text.includes("today")));
  assert.ok(answered, `no answer in the transcript: ${JSON.stringify(await transcript())}`);
  assert.match(answered.text, /You said: what is the weather like today\.?/);
  // Let the answer finish playing.
  await new Promise((r) => setTimeout(r, 4000));
  const heard = await page.evaluate(() => window.__heard.flat());
  const pcm = Int16Array.from(heard, (x) => Math.max(-32768, Math.min(32767, Math.round(x * 32767))));
  const regions = voicedRegions(pcm, 48000);
  assert.ok(regions.length >= 2, `the greeting and the answer should both be audible: ${JSON.stringify(regions)}`);
  const [a, b] = regions[regions.length - 1];
  const answerWav = join(dir, "answer.wav");
  writeWav(answerWav, pcm.subarray(Math.max(0, a - 4800), Math.min(pcm.length, b + 9600)), 48000);
  const recognized = execFileSync(process.env.VOICEGATE_BENCH, ["recognize", answerWav, "--grammar", GRAMMAR]).toString().trim();
  assert.equal(recognized, `you said ${SENTENCE}`, "pocketsphinx hears the answer the page received");

  // DTMF from the page reaches the dialog app, which answers each key.
  await page.evaluate(() => window.voicegatePage.call.sendDtmf("1#"));
  const keys = await until(8000, async () => {
    const lines = await transcript();
    const ok = ["key 1", "key #"].every((k) => lines.some((l) => l.text === k)) && ["You pressed 1.", "You pressed hash."].every((k) => lines.some((l) => l.text === k));
    return ok && lines;
  });
  assert.ok(keys, `DTMF did not round-trip: ${JSON.stringify(await transcript())}`);
  console.log(`conversation e2e: heard "${heardFinal.text}", page heard "${recognized}", keys ok`);
  await page.screenshot({ path: join(new URL("./artifacts/", import.meta.url).pathname, "conversation.png") });
  await page.click("#hangup");
});
