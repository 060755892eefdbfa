"""Fake DeepL endpoints: ``POST /v2/translate`` and ``/v2/usage``.

The ``deepl`` SDK posts JSON (``text`` as a list, ``target_lang``, ``show_billed_characters``)
with an ``Authorization: DeepL-Auth-Key ...`` header; older clients and curl post forms
with ``text`` repeated, so both bodies are accepted.
"""

from __future__ import annotations

import time
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qsl

import orjson
from aiohttp import web

from mitrailleuse.simulator.app import SimState, json_response, parse_markers, retry_headers

TRANSLATE_PATH = "/v2/translate"
MAX_TEXTS = 50
MAX_BODY_BYTES = 128 * 1024
DEFAULT_CHARACTER_LIMIT = 1_000_000_000
QUOTA_EXCEEDED = 456

_HTML_502 = b"<html><head><title>502 Bad Gateway</title></head><body>Bad Gateway</body></html>"
_FULL_BODY = b'{"translations": [{"detected_source_language": "EN", "text": "[DE] hello"}]}'
"""A valid answer; ``[[truncated]]`` sends its first half."""


def translation_of(text: str, target_lang: str) -> str:
    """Return the simulator's deterministic translation: ``"[TARGET] text"``."""
    return f"[{target_lang.upper()}] {text}"


def _message(status: int) -> str:
    if status == QUOTA_EXCEEDED:
        return "Quota Exceeded"
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return f"Simulated error {status}"


def deepl_error(
    status: int, message: str | None = None, headers: dict[str, str] | None = None
) -> web.Response:
    """Answer ``status`` with a DeepL-shaped ``{"message": ...}`` body."""
    return json_response({"message": message or _message(status)}, status, headers)


def _auth_ok(header: str | None) -> bool:
    return (
        header is not None
        and header.startswith("DeepL-Auth-Key ")
        and bool(header[len("DeepL-Auth-Key ") :].strip())
    )


class DeepLApi:
    """Handlers of the fake DeepL API, bound to one simulator state."""

    def __init__(self, state: SimState) -> None:
        self.state = state

    def routes(self) -> list[web.RouteDef]:
        """Return the route table of the DeepL endpoints."""
        return [
            web.post(TRANSLATE_PATH, self.translate),
            web.get("/v2/usage", self.usage),
            web.post("/v2/usage", self.usage),
        ]

    async def usage(self, request: web.Request) -> web.Response:
        """Report the characters translated so far and the configured limit."""
        if not _auth_ok(request.headers.get("Authorization")):
            return deepl_error(403, "Authorization failure, check auth_key")
        limit = self.state.settings.deepl_character_limit
        return json_response(
            {
                "character_count": self.state.deepl_characters,
                "character_limit": DEFAULT_CHARACTER_LIMIT if limit is None else limit,
            }
        )

    async def translate(self, request: web.Request) -> web.Response:
        """Answer ``POST /v2/translate`` and log it."""
        state = self.state
        state.translate_requests += 1
        started = time.time()
        texts: list[str] = []
        response = await self._translate(request, texts)
        state.record(started, TRANSLATE_PATH, response.status, texts)
        return response

    async def _read_params(self, request: web.Request) -> dict[str, Any] | web.Response:
        """Decode a JSON, urlencoded or multipart body into ``{text: [...], ...}``."""
        if (request.content_length or 0) > MAX_BODY_BYTES:
            return deepl_error(413, "Request Entity Too Large")
        content_type = request.content_type
        if content_type == "multipart/form-data":
            form = await request.post()
            params: dict[str, Any] = {k: v for k, v in form.items() if isinstance(v, str)}
            params["text"] = [v for v in form.getall("text", []) if isinstance(v, str)]
            return params
        raw = await request.read()
        if len(raw) > MAX_BODY_BYTES:
            return deepl_error(413, "Request Entity Too Large")
        if content_type == "application/json":
            try:
                body = orjson.loads(raw)
            except orjson.JSONDecodeError:
                return deepl_error(400, "Invalid request: the body is not valid JSON.")
            if not isinstance(body, dict):
                return deepl_error(400, "Invalid request: expected a JSON object.")
            return body
        pairs = parse_qsl(raw.decode("utf-8", "replace"), keep_blank_values=True)
        params = dict(pairs)
        params["text"] = [value for key, value in pairs if key == "text"]
        return params

    async def _translate(self, request: web.Request, texts: list[str]) -> web.Response:
        state = self.state
        if not _auth_ok(request.headers.get("Authorization")):
            return deepl_error(403, "Authorization failure, check auth_key")
        params = await self._read_params(request)
        if isinstance(params, web.Response):
            return params
        given = params.get("text")
        if isinstance(given, str):
            given = [given]
        if not given or not isinstance(given, list):
            return deepl_error(400, "Parameter 'text' not specified.")
        if not all(isinstance(text, str) for text in given):
            return deepl_error(400, "Invalid request: 'text' must be a list of strings.")
        texts.extend(given)
        if len(given) > MAX_TEXTS:
            return deepl_error(
                400, f"Too many texts in request: {len(given)}, the maximum is {MAX_TEXTS}."
            )
        target = params.get("target_lang")
        if not isinstance(target, str) or not target:
            return deepl_error(400, "Parameter 'target_lang' not specified.")
        admission = state.admit()
        if admission.rejected:
            return deepl_error(429, "Too many requests", admission.headers)
        await state.delay()
        for text in given:
            markers = parse_markers(text)
            if markers is not None:
                response = await self._fault(text, markers)
                if response is not None:
                    return response
        if state.random_failure():
            return deepl_error(500, "Internal Server Error")
        characters = sum(map(len, given))
        limit = state.settings.deepl_character_limit
        if limit is not None and state.deepl_characters + characters > limit:
            return deepl_error(QUOTA_EXCEEDED)
        state.deepl_characters += characters
        state.translated_texts += len(given)
        source = params.get("source_lang")
        detected = source.upper() if isinstance(source, str) and source else "EN"
        target = target.upper()
        return json_response(
            {
                "translations": [
                    {
                        "detected_source_language": detected,
                        "text": f"[{target}] {text}",
                        "billed_characters": len(text),
                    }
                    for text in given
                ]
            }
        )

    async def _fault(self, text: str, markers: dict[str, int | None]) -> web.Response | None:
        """Apply the fault markers of one text; ``None`` means carry on."""
        status = self.state.fault_status("deepl", text, markers)
        if status is not None:
            return deepl_error(status, headers=retry_headers(1.0) if status == 429 else None)
        return await self.state.body_fault(markers, _FULL_BODY, html=_HTML_502)
