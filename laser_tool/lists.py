"""Comma-separated option values (`--budgets 0.5,0.25`, `--ranks params:0.1,params:0.2`, `--blocks 0,1`):
one parser, so every list option splits, trims and refuses the same way."""
from .errors import UserError


def comma_list(text, flag: str, convert=None, example: str = "", what: str = "valid") -> list:
    """The non-empty, stripped items of `text` ("a, b,c" -> ["a", "b", "c"]), each passed through
    `convert` (a ValueError there names the item: "'x' is not WHAT"). An empty list is refused: a list
    option given at all must name something."""
    items = [part.strip() for part in str(text).split(",") if part.strip()]
    hint = f"; e.g. {flag} {example}" if example else ""
    if not items:
        raise UserError(f"{flag} {text!r} names nothing{hint}")
    if convert is None:
        return items
    out = []
    for item in items:
        try:
            out.append(convert(item))
        except ValueError:
            raise UserError(f"{flag} {text!r}: {item!r} is not {what}{hint}") from None
    return out
