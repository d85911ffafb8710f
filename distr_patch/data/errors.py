"""The one error type of the data layer: its message names the option to fix."""


class DataError(ValueError):
    """A data option (``--data``, a column, a split) is wrong; the message says which and why."""


def missing_column(option: str, column: str, available) -> DataError:
    import difflib

    available = list(available)
    near = difflib.get_close_matches(column, available, n=1)
    hint = f" (did you mean {near[0]!r}?)" if near else ""
    return DataError(f"{option}: column {column!r} is not in the data set{hint}; its columns are: "
                     f"{', '.join(available)}")
