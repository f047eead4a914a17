"""The one error type users see: a one-line message naming the field, the value and what is allowed."""


class BitallocError(ValueError):
    """Bad input or an impossible request. The CLI prints it as one line and exits 2."""


def bad(field: str, value, allowed: str) -> BitallocError:
    """Build the standard message: `field value is not allowed: allowed`."""
    shown = repr(value) if isinstance(value, str) else str(value)
    if len(shown) > 80:
        shown = shown[:77] + "..."
    return BitallocError(f"{field} {shown}: {allowed}")
