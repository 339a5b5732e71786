"""longrun-client: the Python client of the longrun API.

    from longrun_client import Client

    with Client("http://127.0.0.1:8000", "lr_...") as client:
        for event in client.runs.create_and_stream("count", agent="ticker"):
            print(event.type, event.data)

Depends on httpx and httpx-sse only: nothing of the longrun server.
"""

from longrun_client._version import __version__
from longrun_client.aio import AsyncClient
from longrun_client.errors import (
    APIConnectionError,
    APIError,
    AuthenticationError,
    BadRequest,
    Conflict,
    LongrunError,
    NotFound,
    RateLimited,
    ServerError,
    ServiceUnavailable,
    WaitTimeout,
)
from longrun_client.models import (
    Cancellation,
    CancelledEvent,
    DoneEvent,
    ErrorEvent,
    Event,
    Message,
    NoticeEvent,
    ResumedEvent,
    Resumption,
    Run,
    RunPage,
    StartEvent,
    Submission,
    TokenEvent,
    ToolEndEvent,
    ToolStartEvent,
    UsageEvent,
)
from longrun_client.schedules import Schedule, SchedulePage
from longrun_client.sync import Client

__all__ = [
    "APIConnectionError",
    "APIError",
    "AsyncClient",
    "AuthenticationError",
    "BadRequest",
    "Cancellation",
    "CancelledEvent",
    "Client",
    "Conflict",
    "DoneEvent",
    "ErrorEvent",
    "Event",
    "LongrunError",
    "Message",
    "NotFound",
    "NoticeEvent",
    "RateLimited",
    "ResumedEvent",
    "Resumption",
    "Run",
    "RunPage",
    "Schedule",
    "SchedulePage",
    "ServerError",
    "ServiceUnavailable",
    "StartEvent",
    "Submission",
    "TokenEvent",
    "ToolEndEvent",
    "ToolStartEvent",
    "UsageEvent",
    "WaitTimeout",
    "__version__",
]
