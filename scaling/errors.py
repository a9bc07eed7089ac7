"""One exception for bad input: the CLI turns it into one line on stderr and exit code 2."""


class InputError(Exception):
    """Bad input or configuration. The message names the file, key or value at fault."""
