// Browser end to end with call tokens: a page on one origin calls a voicegate on another origin
// that requires tokens (auth.mode = "token"). The token comes from `voicegate token`, as a
// team's backend would mint it; it travels in the Authorization header, which the server's CORS
// must allow. Without a token the browser can read the 401's reason and the page shows it.

import { test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { join } from "node:path";
import { startVoicegate, launchBrowser, writeWav, toneBursts, until, tempDir } from "./lib.mjs";

const SECRET = "an end-to-end test secret of forty bytes.";

/** A token printed by `voicegate token`, signed with SECRET. */
function mintToken(...args) {
  return execFileSync(process.env.VOICEGATE_BIN, ["token", "--ttl", "120", ...args], {
    env: { ...process.env, VOICEGATE__AUTH__SECRETS: SECRET },
  })
    .toString()
    .trim();
}

test("a page on another origin places a call with a token from `voicegate token`", async (t) => {
  const dir = tempDir(t);
  const wav = join(dir, "tone440.wav");
  writeWav(wav, toneBursts(440, 10), 48000);
  const pageServer = await startVoicegate();
  t.after(() => pageServer.stop());
  const callServer = await startVoicegate({
    VOICEGATE__AUTH__MODE: "token",
    VOICEGATE__AUTH__SECRETS: SECRET,
  });
  t.after(() => callServer.stop());
  const browser = await launchBrowser(wav);
  t.after(() => browser.close());
  const { page } = browser;

  await page.goto(`${pageServer.url}/`);
  await page.selectOption("#mode", "echo");
  await page.fill("#server", callServer.url);

  // No token: refused, and the page can read why (the 401 crossed origins).
  await page.click("#call");
  const failed = await until(10000, () => page.$eval("#state", (e) => (e.textContent === "failed" ? "failed" : "")));
  assert.equal(failed, "failed", `the call without a token was not refused; log:\n${callServer.log}`);
  const error = await page.$eval("#error", (e) => e.textContent);
  assert.match(error, /call token is required/, "the page shows the server's reason");

  // With a token for an echo test, minted by the CLI: the call connects and the tone comes back.
  await page.fill("#token", mintToken("--sub", "e2e-caller", "--mode", "echo", "--jti", "e2e-1"));
  await page.click("#call");
  const state = await until(10000, () => page.$eval("#state", (e) => (e.textContent === "connected" ? "connected" : "")));
  assert.equal(state, "connected", `the call with a token did not connect; log:\n${callServer.log}`);
  const heard = await until(5000, async () => {
    const l = await page.evaluate(() => window.voicegatePage.levels());
    return l.output > 0.02 && Math.abs(l.outputPeakHz - 440) <= 15;
  });
  assert.ok(heard, "the echo of the token call was not heard");
  await page.click("#hangup");

  // The same single-use token again: refused.
  await page.click("#call");
  const reused = await until(10000, () => page.$eval("#state", (e) => (e.textContent === "failed" ? "failed" : "")));
  assert.equal(reused, "failed");
  assert.match(await page.$eval("#error", (e) => e.textContent), /already used/);
});
