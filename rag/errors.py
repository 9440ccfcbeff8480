"""The exception types the library raises for problems a user can act on."""


class RagError(Exception):
    """A user-facing error: its message is shown as-is (Chinese first, English after)."""


class NotFoundError(RagError):
    """A user-facing error about something named that does not exist (a report, a citation's lines).

    Callers that report status codes (the HTTP API) answer it with 404 rather than 400."""
