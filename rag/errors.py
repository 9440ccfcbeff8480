"""The one exception type the library raises for problems a user can act on."""


class RagError(Exception):
    """A user-facing error: its message is shown as-is (Chinese first, English after)."""
