from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class CreateTaskRequest(_message.Message):
    __slots__ = ("user_id", "api", "task_name", "config_json", "input_paths", "items")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    API_FIELD_NUMBER: _ClassVar[int]
    TASK_NAME_FIELD_NUMBER: _ClassVar[int]
    CONFIG_JSON_FIELD_NUMBER: _ClassVar[int]
    INPUT_PATHS_FIELD_NUMBER: _ClassVar[int]
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    api: str
    task_name: str
    config_json: str
    input_paths: _containers.RepeatedScalarFieldContainer[str]
    items: _containers.RepeatedCompositeFieldContainer[_struct_pb2.Struct]
    def __init__(self, user_id: _Optional[str] = ..., api: _Optional[str] = ..., task_name: _Optional[str] = ..., config_json: _Optional[str] = ..., input_paths: _Optional[_Iterable[str]] = ..., items: _Optional[_Iterable[_Union[_struct_pb2.Struct, _Mapping]]] = ...) -> None: ...

class TaskRef(_message.Message):
    __slots__ = ("task_path",)
    TASK_PATH_FIELD_NUMBER: _ClassVar[int]
    task_path: str
    def __init__(self, task_path: _Optional[str] = ...) -> None: ...

class Counts(_message.Message):
    __slots__ = ("total", "done", "succeeded", "failed", "cached")
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    SUCCEEDED_FIELD_NUMBER: _ClassVar[int]
    FAILED_FIELD_NUMBER: _ClassVar[int]
    CACHED_FIELD_NUMBER: _ClassVar[int]
    total: int
    done: int
    succeeded: int
    failed: int
    cached: int
    def __init__(self, total: _Optional[int] = ..., done: _Optional[int] = ..., succeeded: _Optional[int] = ..., failed: _Optional[int] = ..., cached: _Optional[int] = ...) -> None: ...

class Task(_message.Message):
    __slots__ = ("task_path", "user_id", "task_name", "api", "state", "counts", "run_id", "mode")
    TASK_PATH_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    TASK_NAME_FIELD_NUMBER: _ClassVar[int]
    API_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    COUNTS_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    task_path: str
    user_id: str
    task_name: str
    api: str
    state: str
    counts: Counts
    run_id: str
    mode: str
    def __init__(self, task_path: _Optional[str] = ..., user_id: _Optional[str] = ..., task_name: _Optional[str] = ..., api: _Optional[str] = ..., state: _Optional[str] = ..., counts: _Optional[_Union[Counts, _Mapping]] = ..., run_id: _Optional[str] = ..., mode: _Optional[str] = ...) -> None: ...

class ListTasksRequest(_message.Message):
    __slots__ = ("user_id", "state", "page_size", "page_token")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    state: str
    page_size: int
    page_token: str
    def __init__(self, user_id: _Optional[str] = ..., state: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListTasksResponse(_message.Message):
    __slots__ = ("tasks", "next_page_token")
    TASKS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    tasks: _containers.RepeatedCompositeFieldContainer[Task]
    next_page_token: str
    def __init__(self, tasks: _Optional[_Iterable[_Union[Task, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class WatchTaskRequest(_message.Message):
    __slots__ = ("task_path", "after_event_id")
    TASK_PATH_FIELD_NUMBER: _ClassVar[int]
    AFTER_EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    task_path: str
    after_event_id: int
    def __init__(self, task_path: _Optional[str] = ..., after_event_id: _Optional[int] = ...) -> None: ...

class Progress(_message.Message):
    __slots__ = ("event_id", "state", "counts", "spent_usd", "projected_usd", "requests_per_minute", "tokens_per_minute", "requests_per_minute_limit", "tokens_per_minute_limit", "finished")
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    COUNTS_FIELD_NUMBER: _ClassVar[int]
    SPENT_USD_FIELD_NUMBER: _ClassVar[int]
    PROJECTED_USD_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_PER_MINUTE_FIELD_NUMBER: _ClassVar[int]
    TOKENS_PER_MINUTE_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_PER_MINUTE_LIMIT_FIELD_NUMBER: _ClassVar[int]
    TOKENS_PER_MINUTE_LIMIT_FIELD_NUMBER: _ClassVar[int]
    FINISHED_FIELD_NUMBER: _ClassVar[int]
    event_id: int
    state: str
    counts: Counts
    spent_usd: float
    projected_usd: float
    requests_per_minute: float
    tokens_per_minute: float
    requests_per_minute_limit: float
    tokens_per_minute_limit: float
    finished: bool
    def __init__(self, event_id: _Optional[int] = ..., state: _Optional[str] = ..., counts: _Optional[_Union[Counts, _Mapping]] = ..., spent_usd: _Optional[float] = ..., projected_usd: _Optional[float] = ..., requests_per_minute: _Optional[float] = ..., tokens_per_minute: _Optional[float] = ..., requests_per_minute_limit: _Optional[float] = ..., tokens_per_minute_limit: _Optional[float] = ..., finished: _Optional[bool] = ...) -> None: ...

class GetResultsRequest(_message.Message):
    __slots__ = ("task_path", "start_index")
    TASK_PATH_FIELD_NUMBER: _ClassVar[int]
    START_INDEX_FIELD_NUMBER: _ClassVar[int]
    task_path: str
    start_index: int
    def __init__(self, task_path: _Optional[str] = ..., start_index: _Optional[int] = ...) -> None: ...

class Record(_message.Message):
    __slots__ = ("index", "id", "status", "output", "record_json")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    RECORD_JSON_FIELD_NUMBER: _ClassVar[int]
    index: int
    id: str
    status: str
    output: str
    record_json: str
    def __init__(self, index: _Optional[int] = ..., id: _Optional[str] = ..., status: _Optional[str] = ..., output: _Optional[str] = ..., record_json: _Optional[str] = ...) -> None: ...

class SendSingleRequest(_message.Message):
    __slots__ = ("user_id", "api", "prompt", "config_json", "timeout_s")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    API_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    CONFIG_JSON_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_S_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    api: str
    prompt: str
    config_json: str
    timeout_s: float
    def __init__(self, user_id: _Optional[str] = ..., api: _Optional[str] = ..., prompt: _Optional[str] = ..., config_json: _Optional[str] = ..., timeout_s: _Optional[float] = ...) -> None: ...

class NativeBatch(_message.Message):
    __slots__ = ("number", "batch_id", "status", "raw_status", "request_counts", "items")
    class RequestCountsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    NUMBER_FIELD_NUMBER: _ClassVar[int]
    BATCH_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    RAW_STATUS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_COUNTS_FIELD_NUMBER: _ClassVar[int]
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    number: int
    batch_id: str
    status: str
    raw_status: str
    request_counts: _containers.ScalarMap[str, int]
    items: int
    def __init__(self, number: _Optional[int] = ..., batch_id: _Optional[str] = ..., status: _Optional[str] = ..., raw_status: _Optional[str] = ..., request_counts: _Optional[_Mapping[str, int]] = ..., items: _Optional[int] = ...) -> None: ...

class BatchStatus(_message.Message):
    __slots__ = ("task", "batches")
    TASK_FIELD_NUMBER: _ClassVar[int]
    BATCHES_FIELD_NUMBER: _ClassVar[int]
    task: Task
    batches: _containers.RepeatedCompositeFieldContainer[NativeBatch]
    def __init__(self, task: _Optional[_Union[Task, _Mapping]] = ..., batches: _Optional[_Iterable[_Union[NativeBatch, _Mapping]]] = ...) -> None: ...
