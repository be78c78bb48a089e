"""Jobs for tests/faults/test_poison.py: each hands the master a text or a
value of the caller's choosing (an error, a result, a callback's error) that
no string column or terminal takes as it is: lone surrogates from
os.fsdecode, NUL, ESC and bidi controls, deep nesting, huge sizes."""

import json
import os

import phoenix

app = phoenix.App(heartbeat_interval=0.2, heartbeat_timeout=10.0, kill_grace=1.0, workers=4, callback_timeout=5.0)


def _text(params):
    """The poison text: given as is, or as bytes (latin-1 code points) decoded as a path would be."""
    if "fsdecode" in params:
        return os.fsdecode(params["fsdecode"].encode("latin-1"))
    return params["text"] * params.get("repeat", 1)


@app.job(retries=0)
def raises(params):
    raise RuntimeError(f"cannot import {_text(params)}")


@app.job(retries=0)
def returns(params):
    if "nest" in params:
        value = []
        for _ in range(params["nest"]):
            value = [value]
        return value
    if "json" in params:
        return json.loads(params["json"])  # NaN, Infinity: what json.loads takes and JSON does not
    return {"text": _text(params)}


@app.job(retries=0)
def echo(params):
    return params


@app.on_failed
def failed_callback(info, error):
    if "callback" in (info.params or {}):
        name = os.fsdecode(info.params["callback"].encode("latin-1")) * info.params.get("callback_repeat", 1)
        raise RuntimeError(f"callback could not write {name}")


@app.on_finished
def finished_callback(info, result):
    if isinstance(result, dict) and "callback" in result:
        raise RuntimeError(f"callback could not write {os.fsdecode(result['callback'].encode('latin-1'))}")
