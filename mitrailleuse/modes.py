"""How a run's items go: one live call each, or in the provider's native batches.

Each provider section's ``mode`` says which (``live``, ``batch``, or ``auto``: native batches
where the provider has them); the seed's ``batch.is_batch_active`` means ``batch``. The run,
its records and ``summary.json`` say the mode that ran (``realtime`` or ``batch``) and why.
"""

from __future__ import annotations

import logging

from mitrailleuse.config import ProviderSection
from mitrailleuse.errors import ConfigError
from mitrailleuse.providers import provider_class
from mitrailleuse.records import Mode

log = logging.getLogger(__name__)


def resolve_mode(provider: str, section: ProviderSection) -> tuple[Mode, str]:
    """How the provider's items go (``realtime`` or ``batch``), and why, from ``mode``.

    ``auto`` takes the provider's native batches where it has them; ``mode: batch`` asked of a
    provider without them is refused, and the seed's ``is_batch_active`` runs it live, saying so.
    """
    asked = section.run_mode()
    native = provider_class(provider).supports_native_batch
    said = f"mode {section.mode}" if section.mode else "batch.is_batch_active"
    if asked == "live":
        return "realtime", "mode live" if section.mode else "live, the default mode"
    if native:
        return "batch", f"{said}: {provider}'s native batches (discounted, within 24 h)"
    if asked == "auto":
        return "realtime", f"mode auto: {provider} has no native batch API"
    if section.mode == "batch":
        raise ConfigError(
            f"{provider}.mode is 'batch' but {provider} has no native batch API: "
            "use 'live' or 'auto'"
        )
    log.warning("%s has no native batch API: is_batch_active runs the live path", provider)
    return "realtime", f"batch.is_batch_active, but {provider} has no native batch API"
