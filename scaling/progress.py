"""Progress bars on long work, shown only on an interactive terminal (logs stay clean and
an error stays the one line on stderr)."""

from tqdm import tqdm


def bar(*args, enabled: bool = True, **kwargs) -> tqdm:
    return tqdm(*args, disable=None if enabled else True, **kwargs)
