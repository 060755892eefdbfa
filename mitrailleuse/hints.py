"""What to do about a failure: one short hint per error type, shown in the end-of-run digest.

The digest (``summary.json``'s ``failures``, and the lines ``run`` and ``execute`` print) groups
a run's failed records by ``error.type``; a hint turns a count into a next step.
"""

from __future__ import annotations

from typing import Any

from mitrailleuse.providers import available_providers, provider_class

_HINTS = {
    "invalid_input": "fix those input lines (errors.jsonl names each) and execute again",
    "http_400": "the provider refused the request: check the model and api_information.setting",
    "http_401": "the provider refused the key: check it where the workers run",
    "http_403": "the key may not use this model or endpoint",
    "http_404": "unknown model or endpoint: check api_information.model and base_url",
    "http_413": "the request is too large for the model: shorten those items",
    "http_422": "the provider could not process the request: check the settings",
    "rate_limited": "the provider kept answering 429: lower rate_limit to your account's limits",
    "timeout": "calls outlived timeout_s: raise it, or check the provider's status",
    "connection_error": "the provider could not be reached: check base_url and proxies",
    "invalid_response": "the provider's answers were unreadable: check base_url",
    "quota_exceeded": "the account is out of quota: top it up, then execute again",
    "batch_expired": "the native batch expired twice: execute again to resend those items",
    "batch_missing": "the native batch lost those items twice: execute again to resend them",
    "invalid_output": "answers still broke the response schema after every re-ask: simplify "
    "the schema, say more in the prompt, or raise structured.max_reasks",
    "truncated": "answers were cut at the token limit: raise api_information.setting.max_tokens",
    "refusal": "the model declined those items (errors.jsonl says what it said)",
}


def hint(error_type: str, provider: str) -> str | None:
    """The next step for ``error_type`` failures of ``provider``, if there is a known one."""
    if error_type == "missing_api_key":
        variables = (
            provider_class(provider).key_variables if provider in available_providers() else ()
        )
        where = " or ".join(variables) or "the provider's key"
        return f"set {where} where the workers run"
    if error_type.startswith("http_5"):
        return "the provider failed every attempt: try again later"
    return _HINTS.get(error_type)


#: A run that used this share of a limit over its whole duration was held to it.
_HELD_SHARE = 0.8
#: Shorter runs say nothing about their pace (the budget starts full).
_PACE_MIN_S = 10.0


def pace_hint(summary: dict[str, Any], one_item_per_call: bool) -> str | None:
    """A hint when a rate budget (``summary["rate_limit"]``), not the provider, set the pace."""
    minutes = (summary.get("duration_s") or 0) / 60
    limits = summary.get("rate_limit")
    if not limits or minutes * 60 < _PACE_MIN_S:
        return None
    field = f"{summary.get('provider')}.rate_limit"
    calls = summary.get("attempts") or 0
    tokens = (summary.get("tokens") or {}).get("total_tokens") or 0
    for budget, used in (("requests", calls if one_item_per_call else 0), ("tokens", tokens)):
        limit = limits.get(f"{budget}_per_minute")
        if not limit or used / minutes < _HELD_SHARE * limit:
            continue
        pace = f"the rate budget set the pace: {used / minutes:,.0f} {budget}/min against "
        if budget in limits.get("announced_by_provider", ()):
            return pace + f"the {limit:,} a minute the provider announces for your account"
        return (
            pace + f"{field}.{budget}_per_minute {limit:,}; raise it (or leave it unset to "
            "follow the limit the provider announces) if your account allows more"
        )
    return None
