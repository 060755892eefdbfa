"""The OpenAI cookbook's ``api_request_parallel_processor.py`` control loop, re-created.

The baseline of ``bench_limits.py``: the script most people start from to push a file of
requests through a rate-limited API. Kept as the cookbook writes it, where it matters:

- one loop that takes the next request, refills request and token capacity pro rata (the
  buckets start *full*: a whole minute's requests may go in the first second), and sends the
  request as an asyncio task when the capacity covers it, sleeping 1 ms a turn;
- a failed call goes to a retry queue until its attempts (5) are spent, then is written as a
  failure: that item never gets an answer;
- after a rate-limit error every new request waits 15 s from that error, but the test is
  ``error.get("code") == "429"``, and OpenAI's code for a 429 is ``"rate_limit_exceeded"``: the
  pause never starts, and retries go out at the loop's pace.

Tokens are counted as the cookbook does for a chat request, with characters / 4 standing in for
tiktoken (whose files cannot be downloaded here).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import aiohttp

SECONDS_TO_PAUSE_AFTER_RATE_LIMIT_ERROR = 15
SECONDS_TO_SLEEP_EACH_LOOP = 0.001
MAX_ATTEMPTS = 5


@dataclass
class StatusTracker:
    """The cookbook's counters, one per run."""

    num_tasks_started: int = 0
    num_tasks_in_progress: int = 0
    num_tasks_succeeded: int = 0
    num_tasks_failed: int = 0
    num_rate_limit_errors: int = 0
    num_api_errors: int = 0
    num_other_errors: int = 0
    time_of_last_rate_limit_error: float = 0.0


@dataclass
class APIRequest:
    """One request, its attempts left, and the errors it met."""

    task_id: int
    request_json: dict[str, Any]
    token_consumption: int
    attempts_left: int
    result: list[Any] = field(default_factory=list)

    async def call_api(
        self,
        session: aiohttp.ClientSession,
        request_url: str,
        request_header: dict[str, str],
        retry_queue: asyncio.Queue[APIRequest],
        status_tracker: StatusTracker,
    ) -> None:
        error = None
        try:
            async with session.post(
                url=request_url, headers=request_header, json=self.request_json
            ) as response:
                response = await response.json()
            if "error" in response:
                status_tracker.num_api_errors += 1
                error = response
                if response["error"].get("code") == "429":
                    status_tracker.time_of_last_rate_limit_error = time.time()
                    status_tracker.num_rate_limit_errors += 1
                    status_tracker.num_api_errors -= 1
        except Exception as e:  # the cookbook catches everything here
            status_tracker.num_other_errors += 1
            error = e
        if error:
            self.result.append(error)
            if self.attempts_left:
                retry_queue.put_nowait(self)
            else:
                status_tracker.num_tasks_in_progress -= 1
                status_tracker.num_tasks_failed += 1
        else:
            status_tracker.num_tasks_in_progress -= 1
            status_tracker.num_tasks_succeeded += 1


def num_tokens_consumed_from_request(request_json: dict[str, Any]) -> int:
    """The cookbook's count for a chat completion: the prompt plus ``max_tokens`` (n = 1)."""
    completion_tokens = request_json.get("max_tokens", 15)
    num_tokens = 0
    for message in request_json["messages"]:
        num_tokens += 4
        for key, value in message.items():
            num_tokens += len(value) // 4
            if key == "name":
                num_tokens -= 1
    num_tokens += 2
    return num_tokens + completion_tokens


async def process_api_requests(
    requests: Iterable[dict[str, Any]],
    request_url: str,
    api_key: str,
    max_requests_per_minute: float,
    max_tokens_per_minute: float,
    max_attempts: int = MAX_ATTEMPTS,
) -> StatusTracker:
    """The cookbook's main loop, over ``requests`` instead of a file."""
    request_header = {"Authorization": f"Bearer {api_key}"}
    queue_of_requests_to_retry: asyncio.Queue[APIRequest] = asyncio.Queue()
    task_ids = iter(range(1 << 62))
    status_tracker = StatusTracker()
    next_request = None
    available_request_capacity = max_requests_per_minute
    available_token_capacity = max_tokens_per_minute
    last_update_time = time.time()
    file_not_finished = True
    pending = iter(requests)
    async with aiohttp.ClientSession() as session:
        while True:
            if next_request is None:
                if not queue_of_requests_to_retry.empty():
                    next_request = queue_of_requests_to_retry.get_nowait()
                elif file_not_finished:
                    try:
                        request_json = next(pending)
                        next_request = APIRequest(
                            task_id=next(task_ids),
                            request_json=request_json,
                            token_consumption=num_tokens_consumed_from_request(request_json),
                            attempts_left=max_attempts,
                        )
                        status_tracker.num_tasks_started += 1
                        status_tracker.num_tasks_in_progress += 1
                    except StopIteration:
                        file_not_finished = False

            current_time = time.time()
            seconds_since_update = current_time - last_update_time
            available_request_capacity = min(
                available_request_capacity + max_requests_per_minute * seconds_since_update / 60.0,
                max_requests_per_minute,
            )
            available_token_capacity = min(
                available_token_capacity + max_tokens_per_minute * seconds_since_update / 60.0,
                max_tokens_per_minute,
            )
            last_update_time = current_time

            if next_request:
                next_request_tokens = next_request.token_consumption
                if (
                    available_request_capacity >= 1
                    and available_token_capacity >= next_request_tokens
                ):
                    available_request_capacity -= 1
                    available_token_capacity -= next_request_tokens
                    next_request.attempts_left -= 1
                    asyncio.create_task(  # noqa: RUF006 - the cookbook keeps no reference
                        next_request.call_api(
                            session=session,
                            request_url=request_url,
                            request_header=request_header,
                            retry_queue=queue_of_requests_to_retry,
                            status_tracker=status_tracker,
                        )
                    )
                    next_request = None

            if status_tracker.num_tasks_in_progress == 0:
                break

            await asyncio.sleep(SECONDS_TO_SLEEP_EACH_LOOP)

            seconds_since_rate_limit_error = (
                time.time() - status_tracker.time_of_last_rate_limit_error
            )
            if seconds_since_rate_limit_error < SECONDS_TO_PAUSE_AFTER_RATE_LIMIT_ERROR:
                await asyncio.sleep(
                    SECONDS_TO_PAUSE_AFTER_RATE_LIMIT_ERROR - seconds_since_rate_limit_error
                )
    return status_tracker
