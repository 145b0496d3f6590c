// A voice agent for voicegate: a dialog app (WebSocket server) that streams an OpenAI-compatible
// model's answer into speech and handles barge-in, key presses and hangup.
//
// voicegate dials this server once per call (dialog.url = "ws://127.0.0.1:8765/") and sends
// events; we answer with commands (docs/dialog-protocol.md in the voicegate repository).
//
//   LLM_BASE_URL=https://api.openai.com LLM_MODEL=gpt-4o-mini LLM_API_KEY=sk-... node agent.mjs

import { WebSocketServer } from "ws";

const BASE_URL = (process.env.LLM_BASE_URL || "https://api.openai.com").replace(/\/+$/, "");
const MODEL = process.env.LLM_MODEL || "gpt-4o-mini";
const API_KEY = process.env.LLM_API_KEY || "";
const SYSTEM_PROMPT = process.env.SYSTEM_PROMPT ||
  "You are a helpful voice assistant on a phone call. Answer in one to three short spoken sentences, without lists, markdown or emoji.";
const PORT = Number(process.env.PORT || 8765);
const GREETING = "Hello! I am an AI assistant. How can I help you?";
const APOLOGY = "Sorry, I cannot answer right now. Please try again.";
const FAREWELL = "Goodbye! Thanks for calling.";
const MAX_HISTORY = 40; // messages kept besides the system prompt: a long call costs bounded requests
const LLM_TIMEOUT_MS = 30000; // the whole answer, first byte to last

function onCall(ws, callId) {
  const history = []; // {role, content}: what the caller actually heard
  let turn = 0;
  let answer = null; // {id, tokens, abort} while the model streams
  let lastSpoken = null; // utterance whose text ends the history, while it may play
  let farewell = null;

  const send = (command) => ws.readyState === ws.OPEN && ws.send(JSON.stringify({ call_id: callId, ...command }));
  const remember = (role, content) => {
    if (content.trim()) history.push({ role, content });
    history.splice(0, Math.max(0, history.length - MAX_HISTORY));
  };

  // Cancels the model's request (closing its connection); the history keeps `heard`.
  function stopAnswer(heard) {
    if (!answer) return;
    const { id, tokens, abort } = answer;
    answer = null;
    abort.abort();
    remember("assistant", heard ?? tokens.join(""));
    send({ type: "tts.stream", utterance_id: id, text: "", stream_end: true });
  }

  async function ask(text) {
    stopAnswer(); // a new turn replaces an answer still streaming
    turn += 1;
    remember("user", text);
    const me = { id: `turn-${turn}`, tokens: [], abort: new AbortController() };
    answer = me;
    const signal = AbortSignal.any([me.abort.signal, AbortSignal.timeout(LLM_TIMEOUT_MS)]);
    try {
      const res = await fetch(`${BASE_URL}/v1/chat/completions`, {
        method: "POST",
        headers: { "Content-Type": "application/json", ...(API_KEY && { Authorization: `Bearer ${API_KEY}` }) },
        body: JSON.stringify({ model: MODEL, messages: [{ role: "system", content: SYSTEM_PROMPT }, ...history], stream: true }),
        signal,
      });
      if (!res.ok) throw new Error(`HTTP ${res.status}: ${(await res.text()).slice(0, 200)}`);
      const decoder = new TextDecoder();
      let buffer = "";
      read: for await (const bytes of res.body) { // server-sent events, one "data: {...}" per chunk
        buffer += decoder.decode(bytes, { stream: true });
        let nl;
        while ((nl = buffer.indexOf("\n")) >= 0) {
          const line = buffer.slice(0, nl).trim();
          buffer = buffer.slice(nl + 1);
          if (!line.startsWith("data:")) continue;
          const data = line.slice(5).trim();
          if (data === "[DONE]") break read;
          for (const choice of JSON.parse(data).choices || []) {
            const token = choice.delta?.content;
            if (token && answer === me) { // speak it now: voicegate cuts the stream into sentences
              me.tokens.push(token);
              send({ type: "tts.stream", utterance_id: me.id, text: token });
            }
          }
        }
      }
    } catch (e) {
      if (answer !== me) return; // cancelled by a barge-in, a new turn or the hangup
      console.error(`call ${callId}: the model failed: ${e}`); // the caller hears an apology, or keeps what came
      if (me.tokens.length === 0) send({ type: "tts.stream", utterance_id: me.id, text: APOLOGY });
    }
    if (answer !== me) return;
    answer = null;
    remember("assistant", me.tokens.join(""));
    lastSpoken = me.id;
    send({ type: "tts.stream", utterance_id: me.id, text: "", stream_end: true });
  }

  ws.on("message", (data) => {
    const event = JSON.parse(data.toString());
    switch (event.type) {
      case "call.started":
        remember("assistant", GREETING);
        lastSpoken = "greeting";
        send({ type: "tts.speak", utterance_id: "greeting", text: GREETING });
        break;
      case "asr.final": {
        const text = (event.text || "").trim();
        if (!text) break;
        if (text.toLowerCase().includes("goodbye")) {
          stopAnswer();
          farewell = `farewell-${turn}`;
          send({ type: "tts.speak", utterance_id: farewell, text: FAREWELL });
        } else ask(text);
        break;
      }
      case "dtmf":
        ask(`(The caller pressed the key ${event.digit} on the keypad.)`);
        break;
      case "tts.interrupt": // barge-in: keep in the history only what the caller heard
        if (answer && answer.id === event.utterance_id) stopAnswer(event.played_text || "");
        else if (lastSpoken === event.utterance_id && history.at(-1)?.role === "assistant") {
          history.pop();
          remember("assistant", event.played_text || "");
        }
        break;
      case "tts.ended":
        if (event.utterance_id === farewell) send({ type: "hangup", reason: "caller-said-goodbye" });
        break;
      case "call.ended":
        stopAnswer();
        break;
    }
  });
  ws.on("close", () => {
    stopAnswer(); // the call is over: cancel the model's request
    console.error(`call ${callId}: gone`);
  });
}

const server = new WebSocketServer({ host: "127.0.0.1", port: PORT });
server.on("connection", (ws, req) => {
  const callId = new URL(req.url, "http://x").searchParams.get("call_id") || "";
  console.error(`call ${callId}: connected`);
  onCall(ws, callId);
});
server.on("listening", () => console.error(`agent listening on ws://127.0.0.1:${PORT}/ (model ${MODEL} at ${BASE_URL})`));
