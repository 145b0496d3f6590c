// The container image end to end (scripts/container-test.sh builds it and runs this file in a
// loopback-only network namespace, with the image in $VOICEGATE_IMAGE): what a deployment relies
// on. It answers /health and /ready, its HEALTHCHECK follows the configured port, it runs as a
// non-root user, a browser's echo call and dialog call are heard through it (so the codec, the
// speech engines and their data files are in the image), it drains on SIGTERM and exits 0, works
// with only its two ports published and media.public_ips set, and every line it logs is JSON.

import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { startContainer, launchBrowser, writeWav, toneBursts, until, tempDir } from "./lib.mjs";

/** The lines of `log` that are not a JSON object: plain text from the program or a library. */
function nonJsonLines(log) {
  return log
    .split("\n")
    .filter((l) => l.trim() !== "")
    .filter((l) => {
      try {
        const v = JSON.parse(l);
        return typeof v !== "object" || v === null || Array.isArray(v);
      } catch {
        return true;
      }
    });
}

/** Stops the container; it must exit 0 having logged nothing but JSON. */
async function stopCleanly(server) {
  const code = await server.stop();
  assert.equal(code, 0, `the container exited with ${code}; its log:\n${server.log}`);
  const bad = nonJsonLines(server.log);
  assert.deepEqual(bad, [], `lines that are not JSON in the container's log (log.format = json)`);
}

test("the log check refuses a plain-text line", () => {
  const json = '{"level":"INFO","fields":{"message":"listening on"}}';
  assert.deepEqual(nonJsonLines(`${json}\n\n${json}\n`), []);
  const pulse = "Failed to create secure directory (/home/voicegate/.config/pulse): No such file or directory";
  assert.deepEqual(nonJsonLines(`${pulse}\n${json}\n`), [pulse]);
  assert.deepEqual(nonJsonLines(`${json}\n"a string"\nnull\n`), ['"a string"', "null"]);
});

test("the image serves /health and /ready, passes its HEALTHCHECK on another port, and runs as non-root", async () => {
  // A read-only root filesystem, as Kubernetes' readOnlyRootFilesystem gives: nothing in the
  // image may need to write outside /tmp (and a library that fails to must not say so in plain
  // text on the log stream).
  const server = await startContainer({ podmanArgs: ["--read-only"] });
  try {
    const health = await fetch(`${server.url}/health`);
    assert.equal(health.status, 200);
    assert.equal(await health.text(), "ok");
    const ready = await fetch(`${server.url}/ready`);
    assert.equal(ready.status, 200);
    assert.equal(await ready.text(), "ready");

    // The server listens on a free port, not the image's 8080: the HEALTHCHECK must find it.
    assert.notEqual(new URL(server.url).port, "8080");
    const check = await server.podman("healthcheck", "run", server.name);
    assert.equal(check.code, 0, `HEALTHCHECK failed: ${check.out}`);

    // The process itself, as the kernel sees it (rootful podman maps no user ids).
    const pid = (await server.podman("inspect", "--format", "{{.State.Pid}}", server.name)).out;
    const uids = readFileSync(`/proc/${pid}/status`, "utf8").match(/^Uid:\s+(.*)$/m)[1].split(/\s+/);
    assert.ok(uids.every((u) => u !== "0"), `voicegate runs with uids ${uids}`);
  } finally {
    await stopCleanly(server);
  }
});

/** Places a call from the page at `server.url` in `mode` ("echo" or "" for dialog). */
async function call(t, server, mode, wavSamples) {
  const dir = tempDir(t, "vg-container-");
  const wav = join(dir, "mic.wav");
  writeWav(wav, wavSamples, 48000);
  const browser = await launchBrowser(wav);
  t.after(() => browser.close());
  const { page } = browser;
  await page.goto(`${server.url}/`);
  await page.selectOption("#mode", mode);
  await page.click("#call");
  const state = await until(15000, () => page.$eval("#state", (e) => (e.textContent === "connected" ? "connected" : "")));
  assert.equal(state, "connected", `call did not connect; container log:\n${server.log}`);
  return page;
}

/** Whether the page hears a loud 440 Hz tone within `ms`. */
function hears440(page, ms) {
  return until(ms, async () => {
    const l = await page.evaluate(() => window.voicegatePage.levels());
    return l.output > 0.02 && Math.abs(l.outputPeakHz - 440) <= 15;
  });
}

test("an echo call through the image is heard back, and SIGTERM drains it and exits 0", async (t) => {
  // A short grace, so the drain is seen while the call is still up and the test stays quick.
  const server = await startContainer({ env: { VOICEGATE__CALLS__SHUTDOWN_GRACE_MS: "3000" } });
  t.after(() => server.stop());
  const page = await call(t, server, "echo", toneBursts(440, 20));
  assert.ok(await hears440(page, 5000), `the echo was not heard; container log:\n${server.log}`);

  const stopping = server.stop();
  const draining = await until(3000, async () => {
    const res = await fetch(`${server.url}/ready`).catch(() => null);
    return res && res.status === 503 && (await res.text()) === "draining";
  });
  assert.ok(draining, "/ready did not turn 503 draining after SIGTERM");
  const code = await stopping;
  assert.equal(code, 0, `the container exited with ${code}; its log:\n${server.log}`);
  assert.ok(
    server.log.split("\n").some((l) => l.includes("call ending") && l.includes("shutdown")),
    `the call did not end with reason shutdown:\n${server.log}`,
  );
  assert.deepEqual(nonJsonLines(server.log), [], "lines that are not JSON in the container's log");
});

test("a dialog call through the image hears the demo app's greeting (espeak-ng and pocketsphinx)", async (t) => {
  const server = await startContainer();
  try {
    const page = await call(t, server, "", new Int16Array(48000 * 10));
    const heard = await until(8000, async () => (await page.evaluate(() => window.voicegatePage.levels())).output > 0.02);
    assert.ok(heard, `no greeting heard; container log:\n${server.log}`);
    await page.click("#hangup");
  } finally {
    await stopCleanly(server);
  }
});

test("with only its HTTP port and one UDP port published and media.public_ips set, a call connects", async (t) => {
  const server = await startContainer({ publish: true });
  try {
    const page = await call(t, server, "echo", toneBursts(440, 10));
    assert.ok(await hears440(page, 5000), `the echo was not heard; container log:\n${server.log}`);
    // The image's own bind, 0.0.0.0:8080, behind the published port: the HEALTHCHECK's default.
    const check = await server.podman("healthcheck", "run", server.name);
    assert.equal(check.code, 0, `HEALTHCHECK failed: ${check.out}`);
    await page.click("#hangup");
  } finally {
    await stopCleanly(server);
  }
});
