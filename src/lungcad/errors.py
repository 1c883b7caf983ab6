"""Errors meant for the user: the CLI prints their message on one line, without a traceback."""


class LungcadError(Exception):
    """A problem the user can fix; the message names the file and what is wrong with it."""


class InputError(LungcadError):
    """A bad input file or folder (truncated DICOM, no CT series, unreadable MetaImage, ...)."""

