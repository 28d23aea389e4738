"""The registry of structured layer families (the package's docstring says what a family carries)."""
FAMILIES = {}


def register_family(cls):
    """Class decorator: add a layer family to the registry under `cls.kind`."""
    if cls.kind in FAMILIES and FAMILIES[cls.kind] is not cls:
        raise ValueError(f"a layer family named {cls.kind!r} is already registered ({FAMILIES[cls.kind].__name__})")
    FAMILIES[cls.kind] = cls
    return cls


def unregister_family(kind: str) -> None:
    """Remove a family (a test's toy family when it is done)."""
    FAMILIES.pop(kind, None)


def names() -> tuple:
    """Every registered family's name, in registration order: `--variant`'s structured choices."""
    return tuple(FAMILIES)


def family(kind: str):
    """The layer class of family `kind`; KeyError for a name that is not one (check with `names()`)."""
    return FAMILIES[kind]


def family_of(module):
    """The family a built layer belongs to, or None for a layer that is not a family's (nn.Linear, ...)."""
    return next((cls for cls in FAMILIES.values() if type(module) is cls), None) or \
        next((cls for cls in FAMILIES.values() if isinstance(module, cls)), None)


def flag_fields() -> tuple:
    """The ModelSpec fields that set any family's structure (scale, n_dyad, ...), each once."""
    return tuple(dict.fromkeys(f for cls in FAMILIES.values() for f in cls.flags))
