"""Chunks: which items make chunk ``k``, how they are packed into calls and messages, their file.

A run's items are cut into chunks of ``chunk_size`` (``<provider>.batch.batch_size``): chunk
``k`` always holds the items of ordinals ``k * chunk_size`` to ``(k + 1) * chunk_size - 1``, so
a resumed run finds each chunk's earlier records in its part file and sends only the items that
have none. The feeder builds chunks (:func:`build_chunk`), the workers group a message's items
into calls again (:func:`group_calls`), and the assembler writes one part file per chunk
(:func:`part_path`).
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mitrailleuse.config import TaskConfig
from mitrailleuse.inputs import Cursor, Item, iter_items
from mitrailleuse.providers import InvalidItem, Provider, provider_class
from mitrailleuse.records import ItemRef, invalid_input, read_records
from mitrailleuse.taskfolder import TaskFolder

if TYPE_CHECKING:
    from mitrailleuse.pipeline.run_state import RunState

#: How a part file is named: ``part-0000042.jsonl`` holds chunk 42.
PART_GLOB = "part-*.jsonl"


def chunk_of(ordinal: int, chunk_size: int) -> int:
    """The chunk an item belongs to."""
    return ordinal // chunk_size


def items_in_chunk(number: int, chunk_size: int, total: int) -> int:
    """How many of the run's ``total`` items chunk ``number`` holds (the last may be short)."""
    return max(0, min(chunk_size, total - number * chunk_size))


def read_chunk(
    folder: TaskFolder, start: Cursor, limit: int | None, chunk_size: int
) -> list[tuple[Item, Cursor]]:
    """The items of the chunk that begins at ``start``, each with the cursor after it."""
    return list(islice(iter_items(folder.input_files(), start, limit), chunk_size))


def part_path(folder: TaskFolder, number: int) -> Path:
    """Where chunk ``number``'s records are kept."""
    return folder.parts_dir / f"part-{number:07d}.jsonl"


def part_files(folder: TaskFolder) -> list[tuple[int, Path]]:
    """The part files written so far, as ``(chunk number, path)`` in input order."""
    if not folder.parts_dir.exists():
        return []
    paths = sorted(folder.parts_dir.glob(PART_GLOB))
    return [(int(path.stem.split("-")[1]), path) for path in paths]


def carry_over(folder: TaskFolder, number: int, run: RunState) -> set[str]:
    """Ids of chunk ``number`` already recorded on disk by an earlier run, counted into this one."""
    path = part_path(folder, number)
    if not path.exists():
        return set()
    records = list(read_records(path))
    run.carry(number, records)
    return {record["id"] for record in records}


@dataclass(slots=True)
class Chunk:
    """The items of one chunk that must be sent, packed into Celery messages.

    A message holds up to ``general.calls_per_message`` provider calls (each of up to the
    provider's ``max_items_per_call`` items), made one after the other by one worker thread.
    """

    number: int
    messages: list[list[dict[str, Any]]] = field(default_factory=list)

    @property
    def size(self) -> int:
        """How many items go to the provider."""
        return sum(len(message) for message in self.messages)

    @property
    def items(self) -> list[dict[str, Any]]:
        """Every item to send, in order."""
        return [item for message in self.messages for item in message]


def group_calls(
    provider: type[Provider], items: list[dict[str, Any]]
) -> list[list[dict[str, Any]]]:
    """Pack items into calls: same group key, at most the provider's items and bytes a call."""
    calls: list[list[dict[str, Any]]] = []
    open_calls: dict[Hashable, tuple[list[dict[str, Any]], int]] = {}
    for item in items:
        key = provider.group_key(item["request"])
        added = provider.payload_size(item["request"])
        call, size = open_calls.get(key, (None, 0))
        fits = (
            call is not None
            and len(call) < provider.max_items_per_call
            and (provider.max_bytes_per_call is None or size + added <= provider.max_bytes_per_call)
        )
        if not fits:
            call, size = [], 0
            calls.append(call)
        call.append(item)
        open_calls[key] = (call, size + added)
    return calls


def build_chunk(
    run: RunState,
    number: int,
    items: Iterable[Item],
    config: TaskConfig,
    already_recorded: set[str],
) -> Chunk:
    """Turn a chunk's items into messages of calls; invalid items get their failed record now."""
    items = list(items)
    name = run.provider
    provider, section = provider_class(name), config.provider(name)
    sent: list[dict[str, Any]] = []
    invalid: list[tuple[int, dict[str, Any]]] = []
    duplicates = run.duplicate_ids(
        [(item.id, item.ordinal, item.place) for item in items if item.id != item.place]
    )
    for item in items:
        first = duplicates.get(item.ordinal)
        item_id = item.place if first is not None else item.id
        if item_id in already_recorded:
            continue
        ref = ItemRef(item_id, item.input_file, item.index, item.ordinal)
        if first is not None:
            reason = f"duplicate custom_id {item.id!r}: item {first} has it"
            invalid.append((item.ordinal, invalid_input(ref, name, reason)))
            continue
        if item.data is None:
            invalid.append((item.ordinal, invalid_input(ref, name, item.error or "invalid")))
            continue
        try:
            sent.append(ref.with_request(provider.build_request(item.data, section)))
        except InvalidItem as error:
            invalid.append((item.ordinal, invalid_input(ref, name, str(error))))
    if invalid:
        run.store_records(number, invalid)
    calls = group_calls(provider, sent)
    per_message = config.general.calls_per_message
    packed = [calls[n : n + per_message] for n in range(0, len(calls), per_message)]
    return Chunk(number, [[item for call in message for item in call] for message in packed])
