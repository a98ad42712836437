"""The one exception type that user-facing code raises for bad input.

The CLI turns it into a single line ``error: <message>`` on stderr and exit code 2.
"""


class ElmanlabError(Exception):
    """Bad input or an unrecoverable user-level problem; the message names the fix."""
