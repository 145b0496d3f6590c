// voicegate browser client: one voice call to a voicegate server.
//
// A plain ES module with no dependencies and no build step. It wraps the whole signaling dance:
// getUserMedia, an RTCPeerConnection with one audio transceiver, the offer (waiting for ICE
// gathering so the offer carries its candidates: voicegate does not trickle), the POST to
// /webrtc/v1/offer, the answer, and the hangup (DELETE on the call's resource URL, which the
// offer's reply names in Location). Works against a server on another origin when that server's
// CORS allowlist lets the page's origin in.
//
//   import { VoicegateCall } from "./voicegate.js";
//   const call = new VoicegateCall({ server: "https://voice.example.com", mode: "echo" });
//   call.addEventListener("state", (e) => console.log(e.detail.state));
//   call.addEventListener("track", (e) => (audioElement.srcObject = e.detail.stream));
//   call.addEventListener("message", (e) => console.log(e.detail)); // transcript, speech state
//   await call.start();
//   call.sendDtmf("1#");
//   call.send({ clicked: "pay" }); // to the dialog app, as client.message
//   await call.hangup();
//
// When the caller's network changes (Wi-Fi to mobile, a VPN, a laptop waking), the connection
// goes "disconnected" or "failed"; the client then restarts ICE by itself: pc.restartIce(), a new
// offer, its ICE fragment sent with PATCH to the call's Location (RFC 9725; If-Match with the
// ETag), and the server's fragment applied. It emits "reconnecting" (state "reconnecting") and,
// once media flows again, "reconnected" (state "connected"). The call, its dialog and its
// playout carry on; the server holds what it had to say meanwhile.
//
// The "message" events come over a data channel the client opens ("voicegate"): the caller's
// speech as recognized ({"type": "asr.partial" | "asr.final", "text"}), what voicegate is saying
// ({"type": "assistant", "utterance_id", "text"} per segment as it starts playing), speech state
// ({"type": "tts.started" | "tts.ended" | "tts.interrupt", ...}) and key presses
// ({"type": "dtmf", "digit"}), in the same shapes the dialog app receives, and what the dialog
// app sent the page with client.send ({"type": "message", "data"}).
//
// call.send(data) sends the dialog app any JSON value over the same channel; the app gets it as
// {"type": "client.message", "data"}. Messages sent before the channel opens wait for it. The
// server drops a message longer than its page.max_message_bytes (8 KiB by default) and what a
// page sends faster than page.messages_per_s (10 a second, bursts of 20), so send state
// changes, not a stream.

/** Call states, in the order a successful call goes through them. */
export const States = Object.freeze({
  IDLE: "idle",
  MICROPHONE: "microphone", // asking for the microphone
  CONNECTING: "connecting", // offer sent, waiting for media
  CONNECTED: "connected",
  RECONNECTING: "reconnecting", // the network changed; restarting ICE
  ENDED: "ended", // hung up (by us or the server) or lost
  FAILED: "failed", // could not be set up
});

/** Error raised when the server refuses the offer; `status` and `reason` come from its reply. */
export class OfferError extends Error {
  constructor(status, reason) {
    super(`offer refused (${status}): ${reason}`);
    this.name = "OfferError";
    this.status = status;
    this.reason = reason;
  }
}

export class VoicegateCall extends EventTarget {
  /**
   * @param {object} [options]
   * @param {string} [options.server] Base URL of the voicegate server; "" means the page's origin.
   * @param {string} [options.mode] "echo" for an echo test call; omit for a normal call.
   * @param {any} [options.payload] Any JSON value, handed to the dialog app.
   * @param {RTCIceServer[]} [options.iceServers] STUN/TURN servers for the browser's gathering.
   * @param {number} [options.gatherTimeoutMs] Longest wait for ICE gathering before sending the offer.
   * @param {MediaTrackConstraints|boolean} [options.audio] getUserMedia audio constraints.
   * @param {string|(() => Promise<string>)} [options.token] A call token from your backend, sent as
   *   `Authorization: Bearer` (needed when the server runs with auth.mode = "token"). A function
   *   is called for each call, so every call gets a fresh, short-lived token.
   * @param {RTCIceTransportPolicy} [options.iceTransportPolicy] "relay" to send media through the
   *   TURN server in iceServers only (callers behind restrictive networks); default "all".
   * @param {boolean} [options.reconnect] Restart ICE when the network changes (default true).
   * @param {number} [options.reconnectAfterMs] How long "disconnected" may last before a restart
   *   (default 2000; "failed" restarts at once).
   * @param {number} [options.maxReconnects] Restarts tried in a row before the call counts as
   *   lost (default 6, one every reconnectAfterMs + 4 s: longer than the server waits).
   */
  constructor(options = {}) {
    super();
    this.server = (options.server || "").replace(/\/+$/, "");
    this.mode = options.mode || "";
    this.payload = options.payload;
    this.iceServers = options.iceServers || [];
    this.gatherTimeoutMs = options.gatherTimeoutMs ?? 3000;
    this.audio = options.audio ?? { echoCancellation: true, noiseSuppression: true, autoGainControl: true };
    this.token = options.token;
    this.iceTransportPolicy = options.iceTransportPolicy || "all";
    this.reconnect = options.reconnect ?? true;
    this.reconnectAfterMs = options.reconnectAfterMs ?? 2000;
    this.maxReconnects = options.maxReconnects ?? 6;
    /** The ICE session's entity tag (ETag), for If-Match on PATCH. */
    this.etag = null;
    this._restarting = false;
    // What call.send queued before the data channel opened (JSON texts).
    this._outbox = [];
    this._restartTimer = null;
    this.state = States.IDLE;
    this.callId = null;
    /** The call's resource URL (absolute), from the offer reply's Location; null before. */
    this.location = null;
    this.pc = null;
    this.localStream = null;
    this.remoteStream = null;
    this._ownsStream = false;
  }

  /**
   * Places the call. Resolves once the answer is applied (media connects shortly after;
   * watch the "state" event for "connected").
   * @param {MediaStream} [stream] A microphone stream to use instead of calling getUserMedia.
   */
  async start(stream) {
    if (this.state !== States.IDLE) throw new Error(`call already ${this.state}`);
    try {
      this._setState(States.MICROPHONE);
      this._ownsStream = !stream;
      this.localStream = stream || (await navigator.mediaDevices.getUserMedia({ audio: this.audio }));

      const pc = new RTCPeerConnection({
        iceServers: this.iceServers,
        iceTransportPolicy: this.iceTransportPolicy,
        bundlePolicy: "max-bundle",
      });
      this.pc = pc;
      for (const track of this.localStream.getAudioTracks()) pc.addTrack(track, this.localStream);
      if (this.localStream.getAudioTracks().length === 0) pc.addTransceiver("audio", { direction: "recvonly" });
      pc.addEventListener("track", (e) => {
        this.remoteStream = e.streams[0] || new MediaStream([e.track]);
        this.dispatchEvent(new CustomEvent("track", { detail: { stream: this.remoteStream } }));
      });
      pc.addEventListener("connectionstatechange", () => this._onConnectionState());
      // The server's event channel (opened by us: browsers surface answerer-created channels
      // unreliably). Messages are JSON objects.
      this.channel = pc.createDataChannel("voicegate", { ordered: true });
      this.channel.addEventListener("message", (e) => {
        let detail;
        try {
          detail = JSON.parse(e.data);
        } catch {
          return;
        }
        this.dispatchEvent(new CustomEvent("message", { detail }));
      });
      this.channel.addEventListener("open", () => {
        for (const text of this._outbox.splice(0)) this.channel.send(text);
      });

      this._setState(States.CONNECTING);
      await pc.setLocalDescription(await pc.createOffer());
      await waitForGathering(pc, this.gatherTimeoutMs);

      const body = { type: "offer", sdp: pc.localDescription.sdp };
      if (this.payload !== undefined) body.payload = this.payload;
      const query = this.mode ? `?mode=${encodeURIComponent(this.mode)}` : "";
      const headers = { "Content-Type": "application/json" };
      const token = typeof this.token === "function" ? await this.token() : this.token;
      if (token) headers.Authorization = `Bearer ${token}`;
      const res = await fetch(`${this.server}/webrtc/v1/offer${query}`, {
        method: "POST",
        headers,
        body: JSON.stringify(body),
      });
      const reply = await res.json().catch(() => ({}));
      if (!res.ok) throw new OfferError(res.status, reply.error || res.statusText);
      this.callId = reply.call_id;
      // Relative to the offer's URL. Absent from an older server (or one whose CORS does not
      // expose it): hangup then falls back to the hangup endpoint.
      const location = res.headers.get("Location");
      this.location = location ? new URL(location, res.url).href : null;
      this.etag = res.headers.get("ETag");
      this.dispatchEvent(new CustomEvent("answer", { detail: { callId: this.callId } }));
      if (this.state !== States.CONNECTING) return; // hung up while the offer was in flight
      await pc.setRemoteDescription({ type: "answer", sdp: reply.sdp });
    } catch (err) {
      this._teardown();
      this._setState(States.FAILED, { error: err });
      throw err;
    }
  }

  /**
   * Sends the dialog app a message: any JSON value but null (it arrives as
   * {"type": "client.message", "data"}). Before the call's data channel opens, it waits.
   */
  send(data) {
    if (data === undefined || data === null) throw new TypeError("send needs a JSON value");
    if (!this.channel) throw new Error("the call has not started");
    const text = JSON.stringify({ type: "message", data });
    if (this.channel.readyState === "open") this.channel.send(text);
    else if (this.channel.readyState === "connecting") this._outbox.push(text);
    else throw new Error("the call's data channel is closed");
  }

  /**
   * Sends DTMF key presses (RFC 4733, as a phone keypad would): digits 0-9, *, #, A-D; "," is a
   * two-second pause.
   */
  sendDtmf(tones, durationMs = 100, gapMs = 70) {
    const sender = this.pc && this.pc.getSenders().find((s) => s.track && s.track.kind === "audio");
    if (!sender || !sender.dtmf) throw new Error("DTMF is not available on this call");
    sender.dtmf.insertDTMF(tones, durationMs, gapMs);
  }

  /**
   * Ends the call: tells the server (DELETE on the call's resource URL, or the hangup endpoint
   * of a server that gave none; idempotent there) and closes the connection.
   */
  async hangup() {
    if (this.state === States.ENDED || this.state === States.FAILED) return;
    const callId = this.callId;
    // The request goes out before the connection closes, so the server hears the hangup itself
    // rather than noticing the closed connection first. keepalive lets it finish when the page
    // is being unloaded.
    let told = null;
    if (this.location) {
      told = fetch(this.location, { method: "DELETE", keepalive: true });
    } else if (callId) {
      told = fetch(`${this.server}/webrtc/v1/hangup?call_id=${encodeURIComponent(callId)}`, {
        method: "POST",
        keepalive: true,
      });
    }
    this._setState(States.ENDED, { reason: "local-hangup" });
    // The connection closes once the server has the hangup (or after a second at most): closed
    // first, the server could notice the closed connection before the request (a cross-origin
    // DELETE waits for its preflight) and end the call as "peer-closed".
    if (told) {
      await Promise.race([told.catch(() => {}), new Promise((resolve) => setTimeout(resolve, 1000))]);
    }
    this._teardown();
  }

  _onConnectionState() {
    const s = this.pc && this.pc.connectionState;
    if (!s || this.state === States.ENDED) return;
    if (s === "connected") {
      clearTimeout(this._restartTimer);
      if (this.state === States.RECONNECTING) {
        this._attempts = 0;
        this.dispatchEvent(new CustomEvent("reconnected", { detail: { callId: this.callId } }));
      }
      this._setState(States.CONNECTED);
    } else if (s === "closed") {
      this._end("connection-closed");
    } else if (!this._canRestart()) {
      if (s === "failed") this._end("connection-failed");
    } else if (s === "failed") {
      this._restartIce();
    } else if (s === "disconnected" && !this._restarting) {
      clearTimeout(this._restartTimer);
      this._restartTimer = setTimeout(() => {
        if (this.pc && this.pc.connectionState !== "connected") this._restartIce();
      }, this.reconnectAfterMs);
    }
  }

  _canRestart() {
    return this.reconnect && this.location && (this.state === States.CONNECTED || this.state === States.RECONNECTING);
  }

  _end(reason) {
    clearTimeout(this._restartTimer);
    this._teardown();
    this._setState(States.ENDED, { reason });
  }

  /**
   * Restarts ICE: a new offer with new credentials, its fragment PATCHed to the call's resource,
   * the server's fragment applied. Tried again (up to maxReconnects in a row) while media does
   * not come back; a call the server no longer has (404), or that no longer lives where its
   * URL leads (421: the node that answered is not the call's, as after the call's node went
   * away), ends as "call-gone": asking again cannot bring it back.
   */
  async _restartIce() {
    if (this._restarting || !this._canRestart()) return;
    this._restarting = true;
    clearTimeout(this._restartTimer);
    this._attempts = (this._attempts || 0) + 1;
    const attempt = this._attempts;
    this._setState(States.RECONNECTING);
    this.dispatchEvent(new CustomEvent("reconnecting", { detail: { callId: this.callId, attempt } }));
    const pc = this.pc;
    try {
      pc.restartIce();
      await pc.setLocalDescription(await pc.createOffer());
      await waitForGathering(pc, this.gatherTimeoutMs);
      const res = await fetch(this.location, {
        method: "PATCH",
        headers: { "Content-Type": "application/trickle-ice-sdpfrag", "If-Match": this.etag || "*" },
        body: iceFragment(pc.localDescription.sdp),
      });
      if (res.status === 404 || res.status === 421) {
        this._end("call-gone");
        return;
      }
      if (!res.ok) throw new Error(`ICE restart refused (${res.status})`);
      this.etag = res.headers.get("ETag") || this.etag;
      const theirs = await res.text();
      if (this.pc !== pc || this.state === States.ENDED) return;
      await pc.setRemoteDescription({ type: "answer", sdp: withIce(pc.remoteDescription.sdp, theirs) });
    } catch (err) {
      this.dispatchEvent(new CustomEvent("reconnect-error", { detail: { error: err, attempt } }));
    } finally {
      this._restarting = false;
    }
    if (this.state !== States.RECONNECTING) return;
    if (attempt >= this.maxReconnects) {
      // Give the last attempt its time, then give up.
      this._restartTimer = setTimeout(() => {
        if (this.state === States.RECONNECTING) this._end("connection-lost");
      }, this.reconnectAfterMs + 4000);
      return;
    }
    // Not back yet: try again unless media returns first.
    this._restartTimer = setTimeout(() => {
      if (this.state === States.RECONNECTING) this._restartIce();
    }, this.reconnectAfterMs + 4000);
  }

  _teardown() {
    clearTimeout(this._restartTimer);
    if (this.pc) {
      this.pc.close();
    }
    if (this.localStream && this._ownsStream) {
      for (const t of this.localStream.getTracks()) t.stop();
    }
  }

  _setState(state, extra = {}) {
    if (this.state === state) return;
    this.state = state;
    this.dispatchEvent(new CustomEvent("state", { detail: { state, callId: this.callId, ...extra } }));
  }
}

/** Resolves when ICE gathering completes, or after `timeoutMs` with what was gathered so far. */
export function waitForGathering(pc, timeoutMs) {
  if (pc.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => {
      clearTimeout(timer);
      pc.removeEventListener("icegatheringstatechange", check);
      resolve();
    };
    const check = () => pc.iceGatheringState === "complete" && done();
    const timer = setTimeout(done, timeoutMs);
    pc.addEventListener("icegatheringstatechange", check);
  });
}

/** The ICE part of a description as an application/trickle-ice-sdpfrag (RFC 8840). */
export function iceFragment(sdp) {
  const lines = sdp.split(/\r?\n/);
  const pick = (prefix) => {
    const l = lines.find((x) => x.startsWith(prefix));
    return l ? l.slice(prefix.length) : null;
  };
  const out = [`a=ice-ufrag:${pick("a=ice-ufrag:")}`, `a=ice-pwd:${pick("a=ice-pwd:")}`];
  const m = lines.find((x) => x.startsWith("m="));
  if (m) out.push(m);
  const mid = pick("a=mid:");
  if (mid !== null) out.push(`a=mid:${mid}`);
  const seen = new Set();
  for (const l of lines) {
    if (l.startsWith("a=candidate:") && !seen.has(l)) {
      seen.add(l);
      out.push(l);
    }
  }
  out.push("a=end-of-candidates");
  return out.join("\r\n") + "\r\n";
}

/**
 * `sdp` with the fragment's ICE credentials in place of its own and the fragment's candidates in
 * place of its candidates (in the first media section): the server's answer to an ICE restart.
 */
export function withIce(sdp, fragment) {
  const frag = fragment.split(/\r?\n/);
  const ufrag = frag.find((l) => l.startsWith("a=ice-ufrag:"));
  const pwd = frag.find((l) => l.startsWith("a=ice-pwd:"));
  const candidates = frag.filter((l) => l.startsWith("a=candidate:") || l === "a=end-of-candidates");
  const out = [];
  let sections = 0;
  for (const line of sdp.split(/\r?\n/)) {
    if (line === "") continue;
    if (line.startsWith("m=") && ++sections === 2) out.push(...candidates);
    if (line.startsWith("a=candidate:") || line === "a=end-of-candidates") continue;
    if (line.startsWith("a=ice-ufrag:") && ufrag) out.push(ufrag);
    else if (line.startsWith("a=ice-pwd:") && pwd) out.push(pwd);
    else out.push(line);
  }
  if (sections < 2) out.push(...candidates);
  return out.join("\r\n") + "\r\n";
}
