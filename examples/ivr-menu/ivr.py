#!/usr/bin/env python3
"""A phone menu (IVR) for voicegate, no LLM: say "sales" or "support", or press 1 or 2.

Run voicegate with the menu's grammar so the recognizer hears exactly the menu's phrases:

    VOICEGATE__ASR__POCKETSPHINX__GRAMMAR=examples/ivr-menu/menu.gram \\
    VOICEGATE__DIALOG__URL=ws://127.0.0.1:8766/ ./scripts/run.sh
    python ivr.py
"""
import json
import os
import sys

import aiohttp
from aiohttp import web

PORT = int(os.environ.get("PORT", "8766"))
MENU = "Welcome. Say sales or press 1. Say support or press 2. Say repeat or press 9 to hear this again."
# What each choice says before the call is handed over, and the hangup reason that names it.
CHOICES = {
    "sales": ("Connecting you to sales. Goodbye.", "transfer-sales"),
    "support": ("Connecting you to support. Goodbye.", "transfer-support"),
    "operator": ("Connecting you to an operator. Goodbye.", "transfer-operator"),
    "goodbye": ("Goodbye!", "caller-said-goodbye"),
}
KEYS = {"1": "sales", "2": "support", "0": "operator", "9": "repeat"}


def choice_of(text):
    """The menu entry a recognized phrase names (the grammar allows "i want to talk to sales")."""
    words = text.lower().split()
    return next((c for c in [*CHOICES, "repeat"] if c in words), None)


async def dialog(request):
    ws = web.WebSocketResponse(heartbeat=None)
    await ws.prepare(request)
    call_id = request.query.get("call_id", "")
    state = {"n": 0, "leaving": None}  # utterance counter; the goodbye to hang up after

    async def say(text):
        state["n"] += 1
        uid = f"ivr-{state['n']}"
        await ws.send_json({"type": "tts.speak", "call_id": call_id, "utterance_id": uid, "text": text})
        return uid

    async def choose(choice):
        if choice == "repeat" or choice is None:
            await say(MENU if choice else "Sorry, I did not get that. " + MENU)
            return
        text, reason = CHOICES[choice]
        state["leaving"] = (await say(text), reason)

    async for msg in ws:
        if msg.type != aiohttp.WSMsgType.TEXT:
            continue
        event = json.loads(msg.data)
        kind = event.get("type")
        if state["leaving"] and kind not in ("tts.ended", "call.ended"):
            continue  # the caller made a choice: the menu is done
        if kind == "call.started":
            await say(MENU)
        elif kind == "asr.final":
            await choose(choice_of(event.get("text", "")))
        elif kind == "dtmf":
            await choose(KEYS.get(event.get("digit")))
        elif kind == "tts.ended" and state["leaving"] and event.get("utterance_id") == state["leaving"][0]:
            # Here a real IVR would transfer the call; the hangup reason tells your logs where.
            await ws.send_json({"type": "hangup", "call_id": call_id, "reason": state["leaving"][1]})
    print(f"call {call_id}: gone", file=sys.stderr, flush=True)
    return ws


if __name__ == "__main__":
    app = web.Application()
    app.router.add_get("/", dialog)
    print(f"menu listening on ws://127.0.0.1:{PORT}/", file=sys.stderr, flush=True)
    web.run_app(app, host="127.0.0.1", port=PORT, print=None)
