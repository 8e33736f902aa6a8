"""The one exception type the CLI turns into a clean, single-line error."""


class UserError(Exception):
    """A problem with the user's input or environment, reported without a traceback.

    The message must say what is wrong and where (file and line, row id, URL), so the user can fix it.
    """
