// Browser end to end, turn-taking: over the demo app's greeting the page's microphone says
// "okay" (a backchannel): the greeting pauses, resumes and is heard to its end, and the final
// reaches the page marked as a backchannel, not a turn. Then the caller asks something, and
// talks over the answer with a real sentence: that interrupts it, and the app's answer to the
// new sentence follows.

import { test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { startVoicegate, launchBrowser, writeWav, until, readWav, tempDir } from "./lib.mjs";

function say(dir, name, text) {
  const path = join(dir, `${name}.wav`);
  execFileSync("espeak-ng", ["-v", "en-us", "-s", "160", "-w", path, text]);
  return readWav(path);
}

test("a backchannel over the greeting is not a turn; a sentence over an answer is", async (t) => {
  const dir = tempDir(t);
  const grammar = join(dir, "turns.gram");
  writeFileSync(
    grammar,
    "#JSGF V1.0;\ngrammar turns;\npublic <u> = okay | what is the weather like today | stop talking please ;\n",
  );
  const okay = say(dir, "okay", "okay");
  const ask = say(dir, "ask", "what is the weather like today");
  const stop = say(dir, "stop", "stop talking please");
  const rate = okay.rate;
  // The greeting starts about a second after the microphone does; "okay" lands inside it, the
  // question after it, and "stop talking please" over the answer to the question.
  const mic = new Int16Array(rate * 24);
  mic.set(okay.samples, Math.round(rate * 1.6));
  mic.set(ask.samples, rate * 6);
  const stopAt = 6 * rate + ask.samples.length + Math.round(rate * 1.6);
  mic.set(stop.samples, stopAt);
  const micWav = join(dir, "mic.wav");
  writeWav(micWav, mic, rate);

  const server = await startVoicegate({
    VOICEGATE__ASR__POCKETSPHINX__GRAMMAR: grammar,
    VOICEGATE__ASR__POCKETSPHINX__DECODERS: "1",
  });
  t.after(() => server.stop());
  const browser = await launchBrowser(micWav);
  t.after(() => browser.close());
  const { page } = browser;

  await page.goto(`${server.url}/`);
  await page.click("#call");
  const connected = await until(10000, () => page.$eval("#state", (e) => e.textContent === "connected"));
  assert.ok(connected, `call did not connect; server log:\n${server.log}`);

  const transcript = () => page.evaluate(() => window.voicegatePage.transcript());
  const backchannel = await until(12000, async () => (await transcript()).find((l) => l.cls === "you final backchannel"));
  assert.ok(backchannel, `no backchannel final; page: ${JSON.stringify(await transcript())}\nserver log:\n${server.log}`);
  assert.equal(backchannel.text, "okay");
  const answered = await until(25000, async () =>
    (await transcript()).find((l) => l.cls.startsWith("ai") && l.text.includes("You said: stop talking please")),
  );
  assert.ok(answered, `no answer to the interruption: ${JSON.stringify(await transcript())}\nserver log:\n${server.log}`);
  const lines = await transcript();
  const finals = lines.filter((l) => l.cls.startsWith("you final")).map((l) => l.text);
  assert.deepEqual(finals, ["okay", "what is the weather like today", "stop talking please"], JSON.stringify(lines));
  // The greeting was never cut ("okay" only paused it): the one interruption is the answer
  // the caller talked over.
  const barged = (server.log.match(/caller barged in/g) || []).length;
  assert.equal(barged, 1, `one real interruption:\n${server.log}`);
  console.log(`turns e2e: finals ${JSON.stringify(finals)}, one interruption`);
  await page.click("#hangup");
});
