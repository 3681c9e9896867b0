"""Reading a stored traceback's text: the exception it ends with, without the code."""

from __future__ import annotations

# The lines that join the tracebacks of a chain of exceptions, as Python prints them.
_CHAINED = (
    "During handling of the above exception, another exception occurred:",
    "The above exception was the direct cause of the following exception:",
)
_HEADER = "Traceback (most recent call last):"


def exception_line(text: str | None) -> str:
    """The "Type: message" line of a stored traceback ("" if there is none): read from the
    first traceback on, frame lines skipped, through the chain of exceptions to the last.
    Read forward, so a message that quotes another traceback (a remote error's) is not
    taken for the exception itself."""
    lines = (text or "").splitlines()
    at = next((i for i, line in enumerate(lines) if line.startswith(_HEADER)), None)
    found = ""
    while at is not None:
        i = at + 1
        while i < len(lines) and (not lines[i].strip() or lines[i][0].isspace()):
            i += 1  # the frames
        if i >= len(lines):
            break
        found, at = lines[i].strip(), None
        for j in range(i + 1, len(lines) - 1):
            if lines[j] in _CHAINED:
                k = j + 1
                while k < len(lines) and not lines[k].strip():
                    k += 1
                if k < len(lines) and lines[k].startswith(_HEADER):
                    at = k
                    break
    return found
