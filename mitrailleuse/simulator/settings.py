"""Knobs of the provider simulator, changeable live through ``POST /_sim/config``."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class SimulatorSettings(BaseModel):
    """How the fake OpenAI/DeepL server behaves.

    Every field can be changed while the server runs (``POST /_sim/config``), so one
    simulator can serve a whole test module with different scenarios.
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    latency_ms: float = Field(0, ge=0, description="Base latency added to accepted requests.")
    latency_jitter_ms: float = Field(0, ge=0, description="Uniform +/- jitter around latency.")
    rpm: int | None = Field(
        None, ge=1, description="Requests per sliding 60 s window (chat and translate share it)."
    )
    tpm: int | None = Field(None, ge=1, description="Chat tokens per sliding 60 s window.")
    error_rate: float = Field(0, ge=0, le=1, description="Fraction of random 500 answers.")
    seed: int = Field(0, description="Seed of the latency and error random generators.")
    batch_duration_s: float = Field(
        2.0, gt=0, description="Time a batch takes from creation to its final state."
    )
    deepl_character_limit: int | None = Field(
        None, ge=0, description="DeepL quota; a request crossing it gets 456."
    )
    record_log: bool = Field(True, description="Keep the per-request log of /_sim/log.")
    hang_s: float = Field(30, ge=0, description="How long a [[hang]] request sleeps.")
    upload_latency_ms: float = Field(
        0, ge=0, description="How long a file upload (POST /v1/files) takes to answer."
    )
    stream_chunk_ms: float = Field(
        0, ge=0, description="Pause before each chunk of a streamed chat answer (generation time)."
    )
