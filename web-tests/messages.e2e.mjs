// Browser end to end, messages between the page and the dialog app over the page's data
// channel: the page's call.send(obj) reaches a dialog app (a node WebSocket server here) as
// client.message, and the app's client.send comes back to the page as a "message" event.

import { test } from "node:test";
import assert from "node:assert/strict";
import { join } from "node:path";
import { startVoicegate, launchBrowser, writeWav, until, startDialogApp, tempDir } from "./lib.mjs";

/** Answers each client.message with a client.send. */
const echoMessages = (e, _say, ws) => {
  if (e.type === "client.message") {
    ws.send(JSON.stringify({ type: "client.send", call_id: e.call_id, data: { youSaid: e.data } }));
  }
};

test("the page and the dialog app message each other over the data channel", async (t) => {
  const dir = tempDir(t);
  const wav = join(dir, "silence.wav");
  writeWav(wav, new Int16Array(48000 * 10), 48000); // a quiet microphone
  const app = await startDialogApp(echoMessages);
  t.after(() => app.close());
  const server = await startVoicegate({ VOICEGATE__DIALOG__URL: app.url });
  t.after(() => server.stop());
  const browser = await launchBrowser(wav);
  t.after(() => browser.close());
  const { page } = browser;
  const got = [];
  await page.exposeFunction("vgGot", (detail) => got.push(detail));

  await page.goto(`${server.url}/`);
  await page.click("#call");
  const state = await until(10000, () => page.$eval("#state", (e) => (e.textContent === "connected" ? "connected" : "")));
  assert.equal(state, "connected", `call did not connect; server log:\n${server.log}`);
  const started = await until(5000, () => app.events.find((e) => e.type === "call.started"));
  assert.ok(started, "the dialog app got call.started");

  await page.evaluate(() => {
    const call = window.voicegatePage.call;
    call.addEventListener("message", (e) => {
      if (e.detail.type === "message") window.vgGot(e.detail);
    });
    call.send({ clicked: "pay", amount: 12.5 });
  });
  const sent = await until(5000, () => app.events.find((e) => e.type === "client.message"));
  assert.ok(sent, `the app never got the page's message: ${JSON.stringify(app.events.map((e) => e.type))}`);
  assert.deepEqual(sent.data, { clicked: "pay", amount: 12.5 });
  assert.equal(sent.call_id, started.call_id);

  const back = await until(5000, () => got[0]);
  assert.ok(back, "the page never got the app's message");
  assert.deepEqual(back, { type: "message", data: { youSaid: { clicked: "pay", amount: 12.5 } } });

  // A value that is not an object travels too.
  await page.evaluate(() => window.voicegatePage.call.send("plain text"));
  const second = await until(5000, () => got[1]);
  assert.deepEqual(second, { type: "message", data: { youSaid: "plain text" } });
  console.log("messages e2e: page -> app -> page round trips");
  await page.click("#hangup");
});
