"""How qsub reads its own arguments and a job script's directives, re-done in Python.

The submit filter sees what qsub sees (its arguments and the script on stdin) and must
agree with qsub on which ``-l`` values the job ends up with; this module follows Torque
6.1.3's code so that it does (src/cmds/qsub_functions.c, src/lib/Libcmds/
add_verify_resources.c):

- Directives are lines that, after leading white space, start with the prefix (``#PBS``,
  or qsub's ``-C PREFIX``; an empty prefix turns directives off). Reading stops at the
  first "executable" line: one whose first non-blank character is not ``#``, unless the
  line starts with ``:`` or ``#!`` (get_script, isexecutable, ispbsdir).
- Lines are read with fgets into a 32768-byte buffer, so longer lines are read in
  pieces; a CR before the LF is dropped; a directive ending in a backslash continues on
  the next line. C strings end at a NUL byte.
- A directive's text is split like a shell would (quotes, backslashes; make_argv) and
  parsed with getopt, which on Linux also takes options after non-options.
- ``-l`` lists are split into ``name=value`` pairs on commas, a value may be quoted
  (add_verify_resources). For each resource name the command line wins over the script;
  within either, the last one given wins (hash_priority_add_or_exit).
- qsub finds ``-C``'s prefix and the script as the first argument that is not an option
  (find_job_script_index): the argument after any ``-C...`` is the prefix.

Pure functions over bytes and strings; nothing here imports anything heavy.
"""
from __future__ import annotations

TYPE_CHECKING = False     # typing itself costs the filter ~10 ms on every qsub

if TYPE_CHECKING:      # the filter runs on every qsub: typing and dataclasses cost milliseconds
    from typing import Dict, List, Optional, Sequence, Tuple

#: qsub's option letters on Linux, ``:`` after those taking a value (qsub_functions.c).
GETOPT_ARGS = "a:A:b:c:C:d:D:e:EfF:hi:Ij:J:k:K:l:L:m:M:nN:o:p:P:q:r:S:t:T:u:v:Vw:W:Xxz-:"
_TAKES_VALUE = {GETOPT_ARGS[i] for i in range(len(GETOPT_ARGS) - 1) if GETOPT_ARGS[i + 1] == ":"}
MAX_LINE_LEN = 32768          # src/include/cmds.h; fgets keeps one byte for the NUL
DEFAULT_PREFIX = "#PBS"
_C_SPACE = b" \t\n\v\f\r"     # isspace() in the C locale


class Unparsable(Exception):
    """qsub itself would reject this (e.g. an unmatched quote in a directive)."""


def getopt(argv: Sequence[str]) -> Tuple[List[Tuple[str, str]], List[str]]:
    """GNU getopt over qsub's option string: (option, value) pairs and the non-options.

    GNU getopt permutes: options after a non-option are still options; ``--`` ends them.
    Unknown letters are skipped (qsub would print its usage and fail on its own)."""
    options: List[Tuple[str, str]] = []
    loose: List[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        i += 1
        if arg == "--":
            loose.extend(argv[i:])
            break
        if not arg.startswith("-") or arg == "-":
            loose.append(arg)
            continue
        j = 1
        while j < len(arg):
            letter = arg[j]
            j += 1
            if letter in _TAKES_VALUE:
                if j < len(arg):
                    options.append((letter, arg[j:]))
                elif i < len(argv):
                    options.append((letter, argv[i]))
                    i += 1
                break
            options.append((letter, ""))
    return options, loose


def prefix_and_script(args: Sequence[str]) -> Tuple[Optional[str], Optional[str]]:
    """find_job_script_index: the ``-C`` prefix (the argument after the last ``-C...``
    before the script) and the script's path (the first argument that is no option)."""
    prefix, skip_next = None, False
    for i, arg in enumerate(args):
        if skip_next:
            skip_next = False
            continue
        if arg.startswith("-"):
            letter = arg[1:2]
            if letter and letter != "I" and letter + ":" in GETOPT_ARGS:
                skip_next = len(arg) <= 2
                if letter == "C" and i + 1 < len(args):
                    prefix = args[i + 1]
            continue
        return prefix, arg
    return prefix, None


def make_argv(line: str) -> List[str]:
    """A directive's text split as qsub's make_argv does (quotes kept out, backslash escapes)."""
    words: List[str] = []
    buf: List[str] = []
    started = False
    i, n = 0, len(line)
    while i < n and line[i] in " \t\n\v\f\r":
        i += 1
    while i < n:
        ch = line[i]
        if ch in "\"'":
            end = line.find(ch, i + 1)
            if end < 0:
                raise Unparsable(f"unmatched {ch}")
            buf.append(line[i + 1:end])
            started = True
            i = end + 1
        elif ch == "\\":
            buf.append(line[i + 1:i + 2])
            started = True
            i += 2
        elif ch in " \t\n\v\f\r":
            words.append("".join(buf))
            buf, started = [], False
            while i < n and line[i] in " \t\n\v\f\r":
                i += 1
        else:
            buf.append(ch)
            started = True
            i += 1
    if started or buf:
        words.append("".join(buf))
    return words


def split_resources(text: str) -> List[Tuple[str, str]]:
    """``-l`` value into (name, value) pairs, as add_verify_resources reads it.

    Malformed pieces (no name, no ``=``) are dropped: qsub refuses those lists itself."""
    pairs: List[Tuple[str, str]] = []
    r, n = 0, len(text)
    while r < n:
        while r < n and text[r] in " \t\n\v\f\r":
            r += 1
        eq = r
        while eq < n and text[eq] not in "=,":
            eq += 1
        if eq == r or eq >= n or text[eq] != "=":
            break                                  # qsub: "illegal -l value"
        name = text[r:eq].split(None, 1)[0] if text[r:eq].strip() else ""
        v = eq + 1
        while v < n and text[v] in " \t\n\v\f\r":
            v += 1
        comma = text.find(",", v)
        quoted = False
        for q in ("'", '"'):
            pos = text.find(q, v)
            if pos >= 0 and (comma < 0 or pos < comma):
                v, quoted = pos + 1, True
                break
        e, braces = v, False
        while e < n:
            ch = text[e]
            if ch == "[" and not quoted:
                braces = True
            if braces and ch == "]":
                braces = False
            if quoted:
                if ch in "'\"":
                    break
            elif ch == "," and not braces:
                break
            e += 1
        if name:
            pairs.append(("gres" if name.startswith("gpus") else name, text[v:e]))
        if quoted:
            while e < n and text[e] in "'\"":
                e += 1
        r = e
        if r < n and text[r] == ",":
            r += 1
            if r >= n:
                break
    return pairs


def _chunks(data: bytes) -> List[bytes]:
    """The pieces fgets(buf, MAX_LINE_LEN) returns, one after the other."""
    out: List[bytes] = []
    start, n, size = 0, len(data), MAX_LINE_LEN - 1
    while start < n:
        nl = data.find(b"\n", start, start + size)
        end = nl + 1 if nl >= 0 else min(start + size, n)
        out.append(data[start:end])
        start = end
    return out


def _c_string(piece: bytes) -> bytes:
    nul = piece.find(b"\0")
    return piece if nul < 0 else piece[:nul]


def _is_executable(line: bytes) -> bool:
    if line[:1] == b":" or line[:2] == b"#!":
        return False
    stripped = line.lstrip(_C_SPACE)
    return bool(stripped) and stripped[:1] != b"#"


class Directive:
    def __init__(self, first: int, last: int, argv: List[str]) -> None:
        self.first = first     # index of its first piece
        self.last = last       # index of its last piece (continuations)
        self.argv = argv


class Script:
    """A job script as qsub reads it: pieces (lines), directives, where reading stopped."""

    def __init__(self, pieces: List[bytes]) -> None:
        self.pieces = pieces
        self.directives: List[Directive] = []
        self.first_command = -1    # index of the first executable piece; -1: none
        self.unparsable = ""       # why qsub would refuse a directive ('' if it would not)


def read_script(data: bytes, prefix: Optional[str]) -> Script:
    """Directives of a script, as get_script reads them with this prefix."""
    script = Script(_chunks(data))
    pre = (DEFAULT_PREFIX if prefix is None else prefix).encode("utf-8", "surrogateescape")
    i, n = 0, len(script.pieces)
    while i < n:
        line = _c_string(script.pieces[i])
        if line.endswith(b"\r\n"):
            line = line[:-2] + b"\n"
        rest = line.lstrip(_C_SPACE)
        if pre and rest.startswith(pre):
            first = i
            text = rest[len(pre):]
            while text.endswith(b"\\\n") and i + 1 < n:
                i += 1
                text = text[:-2] + _c_string(script.pieces[i])
            try:
                argv = make_argv(text.decode("utf-8", "surrogateescape"))
            except Unparsable as exc:
                script.unparsable = script.unparsable or str(exc)
                argv = []
            script.directives.append(Directive(first, i, argv))
        elif _is_executable(line):
            script.first_command = i
            break
        i += 1
    return script


class Submission:
    """What qsub would submit: resources with where each came from, and the rest we need."""

    def __init__(self, script: Script, prefix: Optional[str], script_path: Optional[str], interactive: bool,
                 workdir: Optional[str], cmdline: Dict[str, str], directives: Dict[str, str]) -> None:
        self.script = script
        self.prefix = prefix
        self.script_path = script_path
        self.interactive = interactive
        self.workdir = workdir            # -d / -w
        self.cmdline = cmdline            # resource -> value, command line
        self.directives = directives      # resource -> value, script directives

    @property
    def resources(self) -> Dict[str, str]:
        merged = dict(self.directives)
        merged.update(self.cmdline)
        return merged

    def source(self, name: str) -> str:
        return "cmdline" if name in self.cmdline else "script" if name in self.directives else ""


def _resources(options: Sequence[Tuple[str, str]]) -> Dict[str, str]:
    found: Dict[str, str] = {}
    for letter, value in options:
        if letter == "l":
            for name, val in split_resources(value):
                found[name] = val
    return found


def read_submission(args: Sequence[str], data: bytes) -> Submission:
    prefix, script_path = prefix_and_script(args)
    options, _ = getopt(args)
    script = read_script(data, prefix)
    script_options: List[Tuple[str, str]] = []
    for directive in script.directives:
        script_options.extend(getopt(directive.argv)[0])
    workdir = None
    for letter, value in options:
        if letter in "dw":
            workdir = value
    return Submission(script=script, prefix=prefix, script_path=script_path,
                      interactive=any(letter == "I" for letter, _ in options), workdir=workdir,
                      cmdline=_resources(options), directives=_resources(script_options))
