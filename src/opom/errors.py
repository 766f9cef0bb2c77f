"""Errors caused by user input. Their message names the fix; the CLI prints it without a traceback."""


class UserError(ValueError):
    """Bad input from the user (config, data, files)."""


class ConfigError(UserError):
    """A config value that cannot work."""


class DatasetError(UserError):
    """A dataset that cannot serve the requested split."""
