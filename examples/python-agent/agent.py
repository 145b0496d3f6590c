#!/usr/bin/env python3
"""A voice agent for voicegate: a dialog app (WebSocket server) that streams an OpenAI-compatible
model's answer into speech and handles barge-in, key presses and hangup.

voicegate dials this server once per call (dialog.url = "ws://127.0.0.1:8765/") and sends events;
we answer with commands (docs/dialog-protocol.md in the voicegate repository).

    LLM_BASE_URL=https://api.openai.com LLM_MODEL=gpt-4o-mini LLM_API_KEY=sk-... python agent.py
"""
import asyncio
import json
import os
import sys

import aiohttp
from aiohttp import web

BASE_URL = os.environ.get("LLM_BASE_URL", "https://api.openai.com").rstrip("/")
MODEL = os.environ.get("LLM_MODEL", "gpt-4o-mini")
API_KEY = os.environ.get("LLM_API_KEY", "")
SYSTEM_PROMPT = os.environ.get(
    "SYSTEM_PROMPT",
    "You are a helpful voice assistant on a phone call. "
    "Answer in one to three short spoken sentences, without lists, markdown or emoji.",
)
PORT = int(os.environ.get("PORT", "8765"))
GREETING = "Hello! I am an AI assistant. How can I help you?"
APOLOGY = "Sorry, I cannot answer right now. Please try again."
FAREWELL = "Goodbye! Thanks for calling."
MAX_HISTORY = 40  # messages kept besides the system prompt: a long call costs bounded requests
LLM_TIMEOUT = aiohttp.ClientTimeout(total=30)  # the whole answer, first byte to last


def log(*args):
    print(*args, file=sys.stderr, flush=True)


class Call:
    """One call: its conversation and the answer being streamed."""

    def __init__(self, ws, http, call_id):
        self.ws, self.http, self.call_id = ws, http, call_id
        self.history = []  # {"role": ..., "content": ...}, what the caller actually heard
        self.turn = 0
        self.answer = None  # (task, utterance_id, [tokens so far]) while the model streams
        self.last_spoken = None  # utterance whose text ends the history, while it may play
        self.farewell = None

    async def send(self, **command):
        if not self.ws.closed:
            await self.ws.send_json({"call_id": self.call_id, **command})

    def remember(self, role, text):
        if text.strip():
            self.history.append({"role": role, "content": text})
        del self.history[:-MAX_HISTORY]

    async def on_event(self, event):
        kind = event.get("type")
        if kind == "call.started":
            self.remember("assistant", GREETING)
            self.last_spoken = "greeting"
            await self.send(type="tts.speak", utterance_id="greeting", text=GREETING)
        elif kind == "asr.final" and event.get("text", "").strip():
            text = event["text"].strip()
            if "goodbye" in text.lower():
                await self.stop_answer(heard=None)
                self.farewell = f"farewell-{self.turn}"
                await self.send(type="tts.speak", utterance_id=self.farewell, text=FAREWELL)
            else:
                await self.ask(text)
        elif kind == "dtmf":
            await self.ask(f"(The caller pressed the key {event.get('digit')} on the keypad.)")
        elif kind == "tts.interrupt":
            # Barge-in: keep in the history only what the caller heard (played_text).
            heard, uid = event.get("played_text", ""), event.get("utterance_id")
            if self.answer and self.answer[1] == uid:
                await self.stop_answer(heard=heard)
            elif self.last_spoken == uid and self.history and self.history[-1]["role"] == "assistant":
                self.history.pop()
                self.remember("assistant", heard)
        elif kind == "tts.ended" and event.get("utterance_id") == self.farewell:
            await self.send(type="hangup", reason="caller-said-goodbye")
        elif kind == "call.ended":
            await self.stop_answer(heard=None)

    async def ask(self, text):
        await self.stop_answer(heard=None)  # a new turn replaces an answer still streaming
        self.turn += 1
        self.remember("user", text)
        uid, tokens = f"turn-{self.turn}", []
        task = asyncio.create_task(self.stream_answer(uid, tokens))
        self.answer = (task, uid, tokens)

    async def stop_answer(self, heard):
        """Cancels the model's request (closing its connection); the history keeps `heard`."""
        if not self.answer:
            return
        task, uid, tokens = self.answer
        self.answer = None
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass
        self.remember("assistant", "".join(tokens) if heard is None else heard)
        await self.send(type="tts.stream", utterance_id=uid, text="", stream_end=True)

    async def stream_answer(self, uid, tokens):
        messages = [{"role": "system", "content": SYSTEM_PROMPT}] + self.history
        headers = {"Authorization": f"Bearer {API_KEY}"} if API_KEY else {}
        body = {"model": MODEL, "messages": messages, "stream": True}
        try:
            async with self.http.post(f"{BASE_URL}/v1/chat/completions", json=body,
                                      headers=headers, timeout=LLM_TIMEOUT) as res:
                if res.status != 200:
                    raise RuntimeError(f"HTTP {res.status}: {(await res.text())[:200]}")
                async for line in res.content:  # server-sent events, one "data: {...}" per chunk
                    data = line.decode("utf-8", "replace").strip()
                    if not data.startswith("data:"):
                        continue
                    data = data[5:].strip()
                    if data == "[DONE]":
                        break
                    for choice in json.loads(data).get("choices", []):
                        token = (choice.get("delta") or {}).get("content")
                        if token:  # speak it now: voicegate cuts the stream into sentences
                            tokens.append(token)
                            await self.send(type="tts.stream", utterance_id=uid, text=token)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # the caller hears an apology, or keeps what came
            log(f"call {self.call_id}: the model failed: {e!r}")
            if not tokens:
                await self.send(type="tts.stream", utterance_id=uid, text=APOLOGY)
        self.answer = None  # only this task's own answer can be current here: others were cancelled
        self.remember("assistant", "".join(tokens))
        self.last_spoken = uid
        await self.send(type="tts.stream", utterance_id=uid, text="", stream_end=True)


async def dialog(request):
    ws = web.WebSocketResponse(heartbeat=None)
    await ws.prepare(request)
    call = Call(ws, request.app["http"], request.query.get("call_id", ""))
    log(f"call {call.call_id}: connected")
    try:
        async for msg in ws:
            if msg.type == aiohttp.WSMsgType.TEXT:
                await call.on_event(json.loads(msg.data))
    finally:
        await call.stop_answer(heard=None)  # the call is over: cancel the model's request
        log(f"call {call.call_id}: gone")
    return ws


async def main():
    app = web.Application()
    app["http"] = aiohttp.ClientSession()
    app.router.add_get("/", dialog)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", PORT).start()
    log(f"agent listening on ws://127.0.0.1:{PORT}/ (model {MODEL} at {BASE_URL})")
    try:
        await asyncio.Event().wait()
    finally:
        await app["http"].close()


if __name__ == "__main__":
    asyncio.run(main())
