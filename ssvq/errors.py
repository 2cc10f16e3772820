"""The project's error types. Every one of them is bad input from the user's side
(a file, a field, an option): the CLI prints its message as one line and exits
with status 2. Nothing here imports any other part of the project."""


class SsvqError(Exception):
    """Bad input: the message names the file or field, expected against found."""
    exit_status = 2


class UserError(SsvqError):
    """A bad command-line argument or input file that is not an image."""


class ConfigError(SsvqError, ValueError):
    """An accelerator build configuration or a per-layer configuration that is
    invalid, or a layer configuration the build cannot run."""


class ImageError(SsvqError, ValueError):
    """A memory image that does not satisfy docs/FORMAT.md."""


class SimError(RuntimeError):
    """The simulator could not be built or produced no results (not bad input:
    the CLI reports it with exit status 1)."""
